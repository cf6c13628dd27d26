"""What the ``darknet-bn`` sub-commands share: the fork argument and one-line errors."""
import sys

from ._validate import error_text
from .dialects import names


def add_dialect_argument(parser, help):
    """``--dialect`` (required): the fork, by name."""
    parser.add_argument("--dialect", required=True, choices=names(), help=help)


def fail(command, error):
    """Print ``darknet-bn COMMAND: <first line of error>`` on stderr; exit status 2."""
    print(f"darknet-bn {command}: {error_text(error, None) or type(error).__name__}",
          file=sys.stderr)
    return 2


def add_writer_arguments(parser, source, source_help, out_help, dialect_help):
    """``CFG SOURCE OUT --dialect D``: the commands that write a .weights file for a cfg.

    OUT goes through a temporary file and must not be an input (the command checks it).
    """
    parser.add_argument("cfg", help="Darknet .cfg file")
    parser.add_argument(source, help=source_help)
    parser.add_argument("out", help=f"{out_help} (not an input)")
    add_dialect_argument(parser, dialect_help)
