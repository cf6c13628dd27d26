"""``darknet-bn`` / ``python -m darknet_bn``: one argparse sub-command per module.

Each module in ``COMMANDS`` provides ``HELP`` (one line), ``add_arguments(parser)``
and ``run(args) -> int`` (the exit status).  Every command follows the same
conventions: bad input ends with exit status 2 and one line on stderr, in the
command line's words (``--dialect alexeyab``, ``OUT``), naming the argument and the
fix; a command that needs an optional extra that is not installed names the
``pip install`` that adds it; a reader that closes the pipe early (``| head -1``)
gets no traceback, and the exit status stays the command's own.
"""
import argparse
import importlib
import sys

from . import __version__
from ._cmd import WORDS, PipeSafeOutput
from ._extras import missing_package
from ._validate import command_line_words

COMMANDS = {
    "demo": "darknet_bn.demo",
    "inspect": "darknet_bn.inspect_cmd",
    "compare": "darknet_bn.compare",
    "fold": "darknet_bn.fold_cmd",
    "check": "darknet_bn.check_cmd",
    "fix": "darknet_bn.fix_cmd",
    "to-weights": "darknet_bn.to_weights_cmd",
}


def build_parser():
    parser = argparse.ArgumentParser(
        prog="darknet-bn",
        description="Darknet's batch-normalization layer on the CPU, bit for bit.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, module_name in COMMANDS.items():
        module = importlib.import_module(module_name)
        p = sub.add_parser(name, help=module.HELP, description=module.__doc__,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        module.add_arguments(p)
        p.set_defaults(_run=module.run)
    return parser


def missing_extra(error):
    """The one-line fix for a ModuleNotFoundError of an optional package, else None."""
    return missing_package((error.name or "").partition(".")[0])


def main(argv=None):
    """Run one command; its exit status.  Standard output is ``PipeSafeOutput``: a
    reader that closes the pipe early (``| head``) ends nothing but the output."""
    stdout = sys.stdout
    sys.stdout = output = PipeSafeOutput(stdout)
    try:
        return _main(argv)
    finally:
        output.flush()
        sys.stdout = stdout


def _main(argv):
    args = build_parser().parse_args(argv)
    try:
        with command_line_words(WORDS):
            return args._run(args)
    except ModuleNotFoundError as e:
        fix = missing_extra(e)
        if fix is None:
            raise
        print(f"darknet-bn {args.command}: {fix}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
