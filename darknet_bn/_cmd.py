"""What the ``darknet-bn`` sub-commands share: the fork argument, the positional
files (checked by content before any work), one-line errors in the command line's
words, and a standard output that a closed pipe does not break."""
import os
import sys
from typing import NamedTuple

from ._validate import error_text
from .darknet.kinds import CFG, ONNX, TORCH, WEIGHTS, file_kind
from .dialects import get_dialect, names

#: The command line's words for the API's argument names, used by the API's messages
#: while a command runs (``darknet_bn._validate.command_line_words``).
WORDS = {"dialect": "--dialect", "eps": "--eps", "strict": "--strict", "seen": "--seen",
         "header_from": "--header-from", "cfg": "CFG", "cfg_path": "CFG",
         "weights": "WEIGHTS", "weights_path": "WEIGHTS", "converted": "MODEL",
         "model": "STATE_DICT", "out": "OUT", "out_path": "OUT"}


def dialect_name(text):
    """``--dialect``'s value: a fork named as ``get_dialect`` reads names (any case),
    as the fork's own name; another word is left as it is for argparse's choices
    check to report."""
    try:
        return get_dialect(text).name
    except ValueError:
        return text


def add_dialect_argument(parser, help):
    """``--dialect`` (required): the fork, by name in any case."""
    parser.add_argument("--dialect", required=True, type=dialect_name, choices=names(),
                        help=f"{help} (any case)")


def fail(command, error):
    """Print ``darknet-bn COMMAND: <first line of error>`` on stderr; exit status 2.
    An ``OSError`` is shown as ``file: reason``, without its errno."""
    if isinstance(error, OSError) and error.strerror:
        text = (f"{error.filename}: {error.strerror}" if error.filename is not None
                else error.strerror)
    else:
        text = error_text(error, None) or type(error).__name__
    print(f"darknet-bn {command}: {text}", file=sys.stderr)
    return 2


# --------------------------------------------------------------------------
# positional files
# --------------------------------------------------------------------------
class File(NamedTuple):
    """A positional file argument: ``dest`` in the parsed arguments, its ``METAVAR``,
    the kinds of file it takes (() for the file the command writes)."""
    dest: str
    metavar: str
    kinds: tuple = ()
    help: str = ""

    @property
    def what(self):
        return " or ".join(k.text for k in self.kinds)


CFG_FILE = File("cfg", "CFG", (CFG,), "Darknet .cfg file")
WEIGHTS_FILE = File("weights", "WEIGHTS", (WEIGHTS,), "matching .weights file")
MODEL_FILE = File("converted", "MODEL", (ONNX, TORCH),
                  "the converted model: an ONNX file, or a torch state_dict (.pt/.pth)")
STATE_DICT_FILE = File("state_dict", "STATE_DICT", (TORCH,),
                       "torch state_dict file (torch.save(model.state_dict(), path))")
OUT_FILE = File("out", "OUT")


class UsageError(ValueError):
    """A positional file that cannot be what its place asks for."""


def _ordinal(n):
    return f"{n}{ {1: 'st', 2: 'nd', 3: 'rd'}.get(n, 'th')}"


def _same_file(a, b):
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def check_files(args, files):
    """``UsageError`` for the first of ``files`` (the command's positional ``File``s,
    in order) that cannot be what its place asks for: a missing input, a directory,
    a file whose content is of another kind (an ONNX model given as WEIGHTS), an OUT
    that is an input or an existing file of an input's kind.  When another argument
    holds what the place asks for, the message gives the order of the arguments."""
    given = [(f, getattr(args, f.dest)) for f in files if getattr(args, f.dest) is not None]
    kinds = {f.dest: file_kind(path) for f, path in given}
    order = f"the order is {' '.join(f.metavar for f in files)}"

    def elsewhere(place):
        """``"; the 3rd argument (OUT) 'x' is ...; the order is ..."`` or ""."""
        for number, (other, path) in enumerate(given, 1):
            if other is not place and kinds[other.dest] in place.kinds:
                return (f", and the {_ordinal(number)} argument ({other.metavar}) {path!r} "
                        f"looks like {kinds[other.dest]}; {order}")
        return ""

    inputs = [(f, path) for f, path in given if f.kinds]
    for number, (place, path) in enumerate(given, 1):
        kind = kinds[place.dest]
        named = f"the {_ordinal(number)} argument ({place.metavar}) {path!r}"
        if place.kinds:
            if not os.path.exists(path):
                raise UsageError(f"{place.metavar} {path!r} does not exist{elsewhere(place)}")
            if os.path.isdir(path):
                raise UsageError(f"{place.metavar} {path!r} is a directory; pass "
                                 f"{place.what}")
            if kind is not None and kind not in place.kinds:
                raise UsageError(f"{named} looks like {kind}, not {place.what}; {order}")
            continue
        if os.path.isdir(path):
            raise UsageError(f"{place.metavar} {path!r} is a directory; pass the name of "
                             "the file to write")
        for source, source_path in inputs:
            if _same_file(path, source_path):
                raise UsageError(f"{place.metavar} {path!r} is the {source.metavar} file; "
                                 "the command refuses to overwrite an input: pass another "
                                 f"{place.metavar}")
        if kind is not None and kind != WEIGHTS:
            raise UsageError(f"{named} looks like {kind}, which {place.metavar} would "
                             f"overwrite; {order}")
        directory = os.path.dirname(os.path.abspath(path))
        if not os.path.isdir(directory):
            raise UsageError(f"{place.metavar} {path!r}: the directory {directory!r} does "
                             "not exist")


def add_file_arguments(parser, files):
    """The positional ``files``, in order, named by their metavars in the usage."""
    for f in files:
        parser.add_argument(f.dest, metavar=f.metavar, help=f.help)


def add_writer_arguments(parser, source, out_help, dialect_help):
    """``CFG SOURCE OUT --dialect D``: the commands that write a .weights file for a cfg.

    OUT goes through a temporary file and must not be an input (the command checks it).
    """
    add_file_arguments(parser, (CFG_FILE, source))
    parser.add_argument(OUT_FILE.dest, metavar=OUT_FILE.metavar,
                        help=f"{out_help} (not an input)")
    add_dialect_argument(parser, dialect_help)


# --------------------------------------------------------------------------
# standard output through a pipe
# --------------------------------------------------------------------------
class PipeSafeOutput:
    """``sys.stdout`` while a command runs: when the reader of a pipe has gone (EPIPE,
    as with ``darknet-bn check ... | head -1``), the rest of the output goes to
    ``/dev/null`` and the command runs on to its own exit status, with no traceback."""

    def __init__(self, stream):
        self.stream = stream

    def write(self, text):
        try:
            return self.stream.write(text)
        except BrokenPipeError:
            self.discard()
            return len(text)

    def flush(self):
        try:
            self.stream.flush()
        except BrokenPipeError:
            self.discard()

    def discard(self):
        """Point the stream's file descriptor at /dev/null: what it still buffers and
        what comes later (the interpreter's own flush at exit too) go nowhere."""
        devnull = os.open(os.devnull, os.O_WRONLY)
        try:
            os.dup2(devnull, self.stream.fileno())
        finally:
            os.close(devnull)

    def __getattr__(self, name):
        return getattr(self.stream, name)
