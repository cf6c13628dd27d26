"""What the ``darknet-bn`` sub-commands share: the fork argument, the positional
files (checked by content before any work), one-line errors in the command line's
words, and a standard output that a closed pipe does not break."""
import os
import sys
from typing import NamedTuple

from ._validate import error_text
from .darknet.kinds import CFG, ONNX, OPENVINO, STATE_DICT, TFLITE, TORCH, WEIGHTS, file_kind
from .dialects import get_dialect, names

#: The command line's words for the API's argument names, used by the API's messages
#: while a command runs (``darknet_bn._validate.command_line_words``).
WORDS = {"dialect": "--dialect", "eps": "--eps", "strict": "--strict", "seen": "--seen",
         "header_from": "--header-from", "cfg": "CFG", "cfg_path": "CFG",
         "weights": "WEIGHTS", "weights_path": "WEIGHTS", "converted": "MODEL",
         "out": "OUT", "out_path": "OUT", "out_cfg_path": "--out-cfg"}


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
    """A file argument: ``dest`` in the parsed arguments, its ``METAVAR`` (or option),
    the kinds of file it takes (for a file the command writes: the kind it may
    replace), whether the command writes it, whether it is an option."""
    dest: str
    metavar: str
    kinds: tuple
    help: str = ""
    written: bool = False
    option: bool = False
    expected: str = ""                 #: what the place takes, if not its kinds' text

    @property
    def what(self):
        return self.expected or " or ".join(k.text for k in self.kinds)


CFG_FILE = File("cfg", "CFG", (CFG,), "Darknet .cfg file")
WEIGHTS_FILE = File("weights", "WEIGHTS", (WEIGHTS,), "matching .weights file")
MODEL_FILE = File("converted", "MODEL", (ONNX, TFLITE, OPENVINO, TORCH),
                  "the converted model: an ONNX file (float or int8), a TFLite file, an "
                  "OpenVINO IR .xml (its .bin beside it) or a torch state_dict (.pt/.pth)")
STATE_DICT_FILE = File("state_dict", "STATE_DICT", (TORCH,),
                       "torch state_dict file (torch.save(model.state_dict(), path))",
                       expected=STATE_DICT)
OUT_FILE = File("out", "OUT", (WEIGHTS,), written=True)


class UsageError(ValueError):
    """A file argument that cannot be what its place asks for."""


def _ordinal(n):
    return f"{n}{ {1: 'st', 2: 'nd', 3: 'rd'}.get(n, 'th')}"


def _same_file(a, b):
    try:
        return os.path.samefile(a, b)
    except OSError:
        return os.path.abspath(a) == os.path.abspath(b)


def check_files(args, files):
    """``UsageError`` for the first of ``files`` (the command's ``File`` arguments, the
    positional ones in order) that cannot be what its place asks for: a missing input,
    a directory, a file whose content is of another kind (an ONNX model given as
    WEIGHTS), a written file that is another argument's file or an existing file of
    another kind.  When a positional argument holds what another's place asks for,
    the message gives the order of the arguments."""
    given = [(f, getattr(args, f.dest)) for f in files if getattr(args, f.dest) is not None]
    kinds = {f.dest: file_kind(path) for f, path in given}
    positional = [f for f in files if not f.option]
    order = f"the order is {' '.join(f.metavar for f in positional)}"

    def named(place, path):
        if place.option:
            return f"{place.metavar} {path!r}"
        return (f"the {_ordinal(positional.index(place) + 1)} argument ({place.metavar}) "
                f"{path!r}")

    def elsewhere(place):
        """``", and the 3rd argument (OUT) 'x' looks like ...; the order is ..."`` or ""."""
        if place.option:
            return ""
        for other, path in given:
            if other is not place and not other.option and kinds[other.dest] in place.kinds:
                return f", and {named(other, path)} looks like {kinds[other.dest]}; {order}"
        return ""

    for number, (place, path) in enumerate(given):
        kind = kinds[place.dest]
        if not place.written:
            if not os.path.exists(path):
                raise UsageError(f"{place.metavar} {path!r} does not exist{elsewhere(place)}")
            if os.path.isdir(path):
                raise UsageError(f"{place.metavar} {path!r} is a directory; pass "
                                 f"{place.what}")
            if kind is not None and kind not in place.kinds:
                fits = not place.option and any(kind in f.kinds for f in positional
                                                if f is not place)
                raise UsageError(f"{named(place, path)} looks like {kind}, not "
                                 f"{place.what}" + (f"; {order}" if fits else ""))
            continue
        if os.path.isdir(path):
            raise UsageError(f"{place.metavar} {path!r} is a directory; pass the name of "
                             "the file to write")
        for other, other_path in given[:number] + [g for g in given if not g[0].written]:
            if other is not place and _same_file(path, other_path):
                why = ("the command writes each file once" if other.written else
                       "the command refuses to overwrite an input")
                raise UsageError(f"{place.metavar} {path!r} is the {other.metavar} file; "
                                 f"{why}: pass another {place.metavar}")
        if kind is not None and kind not in place.kinds:
            raise UsageError(f"{named(place, path)} looks like {kind}, which "
                             f"{place.metavar} would overwrite" +
                             ("" if place.option else f"; {order}"))
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
