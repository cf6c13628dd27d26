"""Write the .weights file Darknet writes after folding batchnorm into the weights,
and the cfg that goes with it.

--dialect alexeyab: what ``load_network_custom`` (``fuse_conv_batchnorm``, run by
every AlexeyAB inference: detector test/demo/map, the classifier, the Python
binding) followed by ``save_weights`` writes: every [convolutional] layer with
batchnorm folded, [connected] and [batchnorm] layers unchanged.
--dialect pjreddie: what ``darknet denormalize cfg weights out`` writes
([convolutional] and [connected] layers folded).

OUT is byte-identical to Darknet's.  Darknet reads it only with a cfg that has
batch_normalize=0 on the folded layers (Darknet folds in memory and does not
write that cfg): fold writes it beside OUT, as OUT with .cfg in place of
.weights (--out-cfg to choose), the original cfg with only those lines changed.
Neither output may be an input file.

Exit status: 0 when written; 2 for an unreadable or invalid file, or an output
that would overwrite an input (one line on stderr, nothing written).
"""
import os

from ._cmd import (CFG_FILE, OUT_FILE, WEIGHTS_FILE, File, add_writer_arguments, check_files,
                   fail)
from .darknet.fold import fold_weights
from .darknet.kinds import CFG

HELP = "fold batchnorm into the conv/connected weights as Darknet does (bit for bit)"
OUT_CFG_FILE = File("out_cfg", "--out-cfg", (CFG,), written=True, option=True)
FILES = (CFG_FILE, WEIGHTS_FILE, OUT_FILE, OUT_CFG_FILE)


def add_arguments(p):
    add_writer_arguments(p, WEIGHTS_FILE, "folded .weights file to write",
                         "the Darknet fork whose folding to reproduce")
    p.add_argument("--out-cfg", metavar="PATH", default=None,
                   help="the cfg to write for OUT: CFG with batch_normalize=0 on the folded "
                        "layers (default: OUT with .cfg in place of .weights)")


def folded_cfg_path(out):
    """The default --out-cfg: OUT with ``.cfg`` in place of ``.weights`` (else added)."""
    stem, ext = os.path.splitext(out)
    return (stem if ext.lower() == ".weights" else out) + ".cfg"


def run(args):
    if args.out_cfg is None:
        args.out_cfg = folded_cfg_path(args.out)
    try:
        check_files(args, FILES)
        res = fold_weights(args.cfg, args.weights, args.out, dialect=args.dialect,
                           out_cfg_path=args.out_cfg)
    except (ValueError, TypeError, OSError) as e:
        return fail("fold", e)
    print(f"{res.path}: {len(res.folded)} layers folded ({args.dialect}): "
          f"{', '.join(map(str, res.folded)) or 'none'}")
    print(f"{res.cfg_path}: its cfg ({args.cfg} with batch_normalize=0 on those layers)")
    return 0
