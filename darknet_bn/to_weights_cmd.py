"""Write the Darknet .weights file of a PyTorch state_dict for a cfg.

STATE_DICT is loaded with torch.load(weights_only=True) on the CPU; its
conv/linear and batchnorm tensors are paired with the cfg's [convolutional],
[connected] and [batchnorm] layers strictly (names carrying cfg indices such as
module_list.N, then order and shapes; every layer paired, nothing left over)
and written in Darknet's block order, as they are (running_var is Darknet's
rolling_variance).  The header is the fork's (version 0.2, revision 0 for
pjreddie, 5 for AlexeyAB) with --seen N (default 0), or copied from
--header-from W (version, revision and seen).  OUT goes through a temporary
file and must not be an input.  Python: darknet_bn.torch.save_darknet_weights.

Exit status: 0 when written; 2 for an unreadable or unpairable input, a layer
the model cannot supply (nonzero conv bias beside batchnorm, bias on a pjreddie
[batchnorm], [local], weighted [shortcut]) or an OUT that is an input (one line
on stderr, nothing written).
"""
from ._cmd import (CFG_FILE, OUT_FILE, STATE_DICT_FILE, File, add_writer_arguments,
                   check_files, fail)
from .darknet.kinds import WEIGHTS

HELP = "write a PyTorch state_dict as the Darknet .weights file of a cfg"
FILES = (CFG_FILE, STATE_DICT_FILE, OUT_FILE,
         File("header_from", "--header-from", (WEIGHTS,), option=True))


def add_arguments(p):
    add_writer_arguments(p, STATE_DICT_FILE, ".weights file to write",
                         "the Darknet fork whose layout and header to write")
    header = p.add_mutually_exclusive_group()
    header.add_argument("--seen", type=int, default=0,
                        help="images trained on, stored in the header (default 0)")
    header.add_argument("--header-from", metavar="W", default=None,
                        help="copy version, revision and seen from this .weights file")


def run(args):
    try:
        check_files(args, FILES)
        from .darknet.model import load_torch_file
        from .torch_weights import write_state_dict_weights
        state = load_torch_file(args.state_dict)
        out = write_state_dict_weights(state, args.cfg, args.out, dialect=args.dialect,
                                       seen=args.seen, header_from=args.header_from)
    except (ValueError, TypeError, OSError, RuntimeError) as e:
        return fail("to-weights", e)
    print(f"{out}: written for {args.cfg} ({args.dialect})")
    return 0
