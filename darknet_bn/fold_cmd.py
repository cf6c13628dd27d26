"""Write the .weights file Darknet writes after folding batchnorm into the weights.

--dialect alexeyab: what ``load_network_custom`` (``fuse_conv_batchnorm``, run by
every AlexeyAB inference: detector test/demo/map, the classifier, the Python
binding) followed by ``save_weights`` writes: every [convolutional] layer with
batchnorm folded, [connected] and [batchnorm] layers unchanged.
--dialect pjreddie: what ``darknet denormalize cfg weights out`` writes
([convolutional] and [connected] layers folded).

The output is byte-identical to Darknet's.  OUT must not be an input file.

Exit status: 0 when written; 2 for an unreadable or invalid file, or an OUT that
would overwrite an input (one line on stderr, nothing written).
"""
from ._cmd import CFG_FILE, OUT_FILE, WEIGHTS_FILE, add_writer_arguments, check_files, fail
from .darknet.fold import fold_weights

HELP = "fold batchnorm into the conv/connected weights as Darknet does (bit for bit)"


FILES = (CFG_FILE, WEIGHTS_FILE, OUT_FILE)


def add_arguments(p):
    add_writer_arguments(p, WEIGHTS_FILE, "folded .weights file to write",
                         "the Darknet fork whose folding to reproduce")


def run(args):
    try:
        check_files(args, FILES)
        res = fold_weights(args.cfg, args.weights, args.out, dialect=args.dialect)
    except (ValueError, TypeError, OSError) as e:
        return fail("fold", e)
    print(f"{res.path}: {len(res.folded)} layers folded ({args.dialect}): "
          f"{', '.join(map(str, res.folded)) or 'none'}")
    return 0
