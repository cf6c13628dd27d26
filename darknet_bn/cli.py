"""``darknet-bn`` / ``python -m darknet_bn``: one argparse sub-command per module.

Each module in ``COMMANDS`` provides ``HELP`` (one line), ``add_arguments(parser)``
and ``run(args) -> int`` (the exit status).
"""
import argparse
import importlib
import sys

COMMANDS = {
    "demo": "darknet_bn.demo",
    "inspect": "darknet_bn.inspect_cmd",
    "compare": "darknet_bn.compare",
    "fold": "darknet_bn.fold_cmd",
    "check": "darknet_bn.check_cmd",
    "to-weights": "darknet_bn.to_weights_cmd",
}


def build_parser():
    parser = argparse.ArgumentParser(
        prog="darknet-bn",
        description="Darknet's batch-normalization layer on the CPU, bit for bit.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, module_name in COMMANDS.items():
        module = importlib.import_module(module_name)
        p = sub.add_parser(name, help=module.HELP, description=module.__doc__,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        module.add_arguments(p)
        p.set_defaults(_run=module.run)
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    return args._run(args)


if __name__ == "__main__":
    sys.exit(main())
