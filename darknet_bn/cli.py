"""``darknet-bn`` / ``python -m darknet_bn``: one argparse sub-command per module.

Each module in ``COMMANDS`` provides ``HELP`` (one line), ``add_arguments(parser)``
and ``run(args) -> int`` (the exit status).  A command that needs an optional extra
that is not installed ends with one line naming the ``pip install`` that adds it
(exit status 2).
"""
import argparse
import importlib
import sys

from . import __version__

COMMANDS = {
    "demo": "darknet_bn.demo",
    "inspect": "darknet_bn.inspect_cmd",
    "compare": "darknet_bn.compare",
    "fold": "darknet_bn.fold_cmd",
    "check": "darknet_bn.check_cmd",
    "to-weights": "darknet_bn.to_weights_cmd",
}

#: Optional packages -> the extra of darknet_bn that installs them.
EXTRAS = {"torch": "torch", "onnx": "onnx", "onnxscript": "onnx", "matplotlib": "plot"}


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
    package = (error.name or "").partition(".")[0]
    if package not in EXTRAS:
        return None
    return f"this needs {package}, which is not installed: pip install " \
           f"'darknet_bn[{EXTRAS[package]}]'"


def main(argv=None):
    args = build_parser().parse_args(argv)
    try:
        return args._run(args)
    except ModuleNotFoundError as e:
        fix = missing_extra(e)
        if fix is None:
            raise
        print(f"darknet-bn {args.command}: {fix}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
