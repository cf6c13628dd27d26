"""Darknet's ``src/parser.c``: read a ``.cfg``, infer every layer's shape, lay out ``.weights``.

``parse_cfg(path, dialect=...)`` reproduces what ``parse_network_cfg`` leaves in
each layer struct (``c, h, w, out_c, out_h, out_w, filters (= l.n), size,
stride, groups, inputs, outputs, nweights``), section by section, with the
``make_*_layer`` rules of each fork, and the position of every block that
``load_weights`` reads (``blocks`` and float offsets after the header).  The
values are Darknet's struct fields, quirks included: a pjreddie ``[route]``
leaves ``c = h = w = 0``, ``[softmax]`` leaves ``out_* = 0``, a pjreddie
``[shortcut]`` stores the *from* layer's shape in ``c, h, w``.  They are checked
against Darknet's own parse of every cfg in ``data/golden/cfg``.

Parser-level differences between the forks are each fork's ``Dialect.cfg``
(``darknet_bn.dialects.CfgRules``, beside the fork's arithmetic):

=============================  ===============================  =================================
                               pjreddie                         alexeyab
=============================  ===============================  =================================
``[batchnorm]`` blocks         scales, rolling_mean,            biases, scales, rolling_mean,
                               rolling_variance                 rolling_variance
``[route] groups/group_id``    not read (refused here: the      ``out_c = sum(out_c)/groups``
                               shapes would silently differ)
``[shortcut] from``            one layer; ``c,h,w`` = from's    several; ``weights_type`` adds
                                                                ``(n+1)`` or ``(n+1)*c`` floats
``stride_x/stride_y``          not read (refused)               conv and maxpool
``l.n`` of batchnorm/connect.  0                                ``c`` / ``outputs``
``[reorg]``                    ``make_reorg_layer``             ``reorg_old`` (``[reorg3d]`` too)
sections only in this fork     deconvolutional, logistic, ...   local_avgpool, empty, sam, ...
=============================  ===============================  =================================

hank-ai's fork (``hankai``) reads a cfg as AlexeyAB's does, except that it has no
``[batchnorm]`` section (no standalone batchnorm layer on the CPU): a ``CfgError``
says so and names the forks that have one.

Everything that does not change shapes or the weights layout (activations,
loss options, anchors...) is read by Darknet elsewhere and ignored here.
Errors are ``CfgError`` (a ``ValueError``) naming the file and line.
"""
import os
import re
from dataclasses import dataclass, field

from .._validate import setting_text
from ..dialects import BN_BLOCKS, get_dialect, others
from .kinds import file_kind

#: Section name aliases shared by both forks (``string_to_layer_type``).
_ALIASES = {"conv": "convolutional", "conn": "connected", "max": "maxpool",
            "avg": "avgpool", "soft": "softmax", "lrn": "normalization",
            "network": "net", "deconv": "deconvolutional"}

#: Darknet reads integer options with ``atoi`` into a C ``int`` and computes shapes
#: and block sizes (``outputs = out_h*out_w*out_c``, ``nweights``...) in ``int``.
INT_MIN, INT_MAX = -2 ** 31, 2 ** 31 - 1
_INTEGER = re.compile(r"[+-]?[0-9]+")              # what atoi reads, with nothing after it

#: LayerSpec fields that are C ints in Darknet's layer struct.
_INT_FIELDS = ("c", "h", "w", "out_c", "out_h", "out_w", "filters", "size", "stride",
               "groups", "inputs", "outputs", "nweights", "bn_channels")

#: Options whose Darknet meaning changes what the file holds; refused everywhere.
_REFUSED_OPTIONS = {
    "dontload": "Darknet then skips this layer when loading, so the file no longer "
                "follows save_weights' layout",
    "dontloadscales": "Darknet then skips the batchnorm blocks when loading, so the file "
                      "no longer follows save_weights' layout",
}


class CfgError(ValueError):
    """A ``.cfg`` Darknet would reject or that this parser cannot read faithfully.

    The message names the file and line and says how to fix it; ``path`` and
    ``line`` are also attributes.
    """

    def __init__(self, path, line, message):
        self.path, self.line = path, line
        where = f"{path}:{line}" if line else f"{path}"
        super().__init__(f"{where}: {message}")


class UnsupportedCfgError(CfgError):
    """A section or option Darknet knows but that this parser does not model."""


# --------------------------------------------------------------------------
# read_cfg
# --------------------------------------------------------------------------
@dataclass
class Section:
    """One ``[section]`` of a cfg: its name (aliases resolved), header line, options."""
    type: str
    line: int
    options: dict = field(default_factory=dict)   #: key -> (value, line)
    path: str = ""

    def error(self, message, key=None, cls=CfgError):
        line = self.options[key][1] if key in self.options else self.line
        return cls(self.path, line, f"[{self.type}] {message}")

    def has(self, key):
        return key in self.options

    def find_str(self, key, default=None):
        """``option_find_str``: the value, or ``default``."""
        return self.options[key][0] if key in self.options else default

    def _c_int(self, key, text):
        """``atoi(text)``, checked: decimal digits only, within a C ``int``."""
        if not _INTEGER.fullmatch(text):
            raise ValueError(text)
        value = int(text, 10)
        if not INT_MIN <= value <= INT_MAX:
            raise self.error(f"{key}={value} is outside the C int range ({INT_MIN} to "
                             f"{INT_MAX}) Darknet reads it into (atoi would overflow); use a "
                             "smaller value", key)
        return value

    def find_int(self, key, default, *, minimum=None):
        """``option_find_int``, but a value that is not an integer is an error
        (Darknet's ``atoi`` would silently read ``"3x"`` as 3 and ``"x"`` as 0), and
        so is one outside the C ``int`` range."""
        if key not in self.options:
            return default
        text = self.options[key][0]
        try:
            value = self._c_int(key, text)
        except ValueError as e:
            if isinstance(e, CfgError):
                raise
            raise self.error(f"{key}={text!r} is not an integer; write e.g. {key}={default}",
                             key) from None
        if minimum is not None and value < minimum:
            raise self.error(f"{key}={value} must be >= {minimum}", key)
        return value

    def find_int_list(self, key):
        """A comma-separated list of integers (``layers=``, ``from=``, ``mask=``)."""
        text = self.options[key][0]
        try:
            return [self._c_int(key, t) for t in text.split(",")]
        except ValueError as e:
            if isinstance(e, CfgError):
                raise
            raise self.error(f"{key}={text!r} must be comma-separated integers, "
                             f"e.g. {key}=-1,-4", key) from None


def _strip(line):
    """``strip`` (utils.c): Darknet removes every space, tab and newline of a line."""
    return "".join(ch for ch in line if ch not in " \t\n\r")


def check_path(routine, name, value, example):
    """A path argument (``str``, ``bytes`` or ``os.PathLike``) as ``os.fspath`` gives it.

    ``TypeError`` naming ``name`` for anything else (None, an int, a list...),
    ``ValueError`` for an empty path or one with a NUL byte (``open`` would
    fail with a message that does not say which argument it was).
    """
    if not isinstance(value, (str, bytes, os.PathLike)):
        raise TypeError(f"{routine}: {name} must be a file path (str or os.PathLike), got "
                        f"{type(value).__name__} {value!r:.80}; pass e.g. {name}={example!r}")
    try:
        path = os.fspath(value)
    except TypeError as e:             # __fspath__ returning something else
        raise TypeError(f"{routine}: {name} must be a file path (str or os.PathLike): {e}; "
                        f"pass e.g. {name}={example!r}") from None
    if not path:
        raise ValueError(f"{routine}: {name} is an empty path; pass e.g. {name}={example!r}")
    if ("\0" if isinstance(path, str) else b"\0") in path:
        raise ValueError(f"{routine}: {name} {path!r:.80} contains a NUL byte, which no file "
                         f"name can; pass e.g. {name}={example!r}")
    return path


def read_cfg(path):
    """``read_cfg`` (parser.c): the sections of a cfg in file order, with line numbers.

    Blank lines and lines starting with ``#`` or ``;`` are skipped; every other
    line is ``[section]`` or ``key=value``.  Where Darknet only prints a warning
    (a line without ``=``, an option before the first section, a repeated key)
    this raises ``CfgError`` instead, so nothing is silently dropped.  A UTF-8
    byte order mark at the start (some Windows editors add one) is skipped;
    Darknet's own reader does not skip it.  A file that cannot be opened raises
    the ``OSError`` (``FileNotFoundError``, ``IsADirectoryError``...) with a
    message naming the .cfg file; a ``path`` that is not a path (None, an int...)
    ``TypeError``.
    """
    path = check_path("read_cfg", "path", path, "yolov4.cfg")
    try:
        with open(path, "r", encoding="utf-8-sig", errors="strict") as f:
            text = f.read()
    except UnicodeDecodeError as e:
        kind = file_kind(path)
        what = f"this is {kind}" if kind is not None else f"not a text file ({e})"
        raise CfgError(path, 0, f"{what}; pass a Darknet .cfg") from None
    except OSError as e:
        raise reword_os_error(e, "cannot open the .cfg file", path) from None
    sections = []
    for nu, raw in enumerate(text.splitlines(), start=1):
        line = _strip(raw)
        if not line or line[0] in "#;":
            continue
        if line[0] == "[":
            if not line.endswith("]") or len(line) < 3:
                raise CfgError(path, nu, f"malformed section header {raw.strip()!r}; "
                               "write e.g. [convolutional]")
            name = line[1:-1]
            sections.append(Section(_ALIASES.get(name, name), nu, {}, path))
            continue
        if not sections:
            raise CfgError(path, nu, f"option {raw.strip()!r} before the first section; "
                           "a cfg starts with [net]")
        key, sep, value = line.partition("=")
        if not sep or not key:
            raise CfgError(path, nu, f"could not parse {raw.strip()!r}; options are key=value")
        sec = sections[-1]
        if key in sec.options:
            raise CfgError(path, nu, f"[{sec.type}] option {key!r} repeated (first on line "
                           f"{sec.options[key][1]}); Darknet uses the first one, remove the other")
        sec.options[key] = (value, nu)
    if not sections:
        raise CfgError(path, 0, "config file has no sections")
    return sections


def reword_os_error(e, what, path):
    """The same ``OSError`` subclass, its message saying which file it was."""
    if e.errno is None:
        return e
    return type(e)(e.errno, f"{what}: {e.strerror}", path)


# --------------------------------------------------------------------------
# layer specs
# --------------------------------------------------------------------------
@dataclass
class LayerSpec:
    """What ``parse_network_cfg`` leaves in one layer struct, plus its weights blocks.

    ``filters`` is Darknet's ``l.n``.  ``blocks`` lists ``(name, float count)``
    in the order ``load_weights`` reads them; ``offsets`` maps each block name to
    its float offset after the header (filled by ``parse_cfg``).
    """
    section: str
    index: int
    line: int
    c: int = 0
    h: int = 0
    w: int = 0
    out_c: int = 0
    out_h: int = 0
    out_w: int = 0
    filters: int = 0
    size: int = 0
    stride: int = 0
    groups: int = 0
    inputs: int = 0
    outputs: int = 0
    nweights: int = 0
    batch_normalize: int = 0
    bn_channels: int = 0
    input_layers: tuple = ()
    blocks: tuple = ()
    offsets: dict = field(default_factory=dict)

    @property
    def float_count(self):
        """Floats this layer occupies in a ``.weights`` file."""
        return sum(n for _, n in self.blocks)

    def offset(self, block):
        """Float offset (after the header) of ``block``, or -1 if the file has none."""
        return self.offsets.get(block, -1)

    bias_offset = property(lambda self: self.offset("biases"))
    scales_offset = property(lambda self: self.offset("scales"))
    rolling_mean_offset = property(lambda self: self.offset("rolling_mean"))
    rolling_variance_offset = property(lambda self: self.offset("rolling_variance"))

    @property
    def bn_blocks(self):
        """The batchnorm blocks this layer stores, in file order."""
        return tuple(name for name, _ in self.blocks
                     if name in BN_BLOCKS and (name != "biases" or self.bn_channels))

    @property
    def output_shape(self):
        return (self.out_c, self.out_h, self.out_w)


@dataclass
class Network:
    """A parsed cfg: the ``[net]`` input, the layers, and the weights size; ``dialect``
    is the ``Dialect`` whose parser read it."""
    path: str
    dialect: object
    batch: int
    h: int
    w: int
    c: int
    inputs: int
    layers: list
    float_count: int

    def file_bytes(self, major=0, minor=2):
        """Size of a complete ``.weights`` file for this cfg with that header version."""
        return header_bytes(major, minor) + 4 * self.float_count

    @property
    def bn_layers(self):
        return [l for l in self.layers if l.bn_channels]


def header_bytes(major, minor):
    """``load_weights``: 3 int32, then ``seen`` as uint64 if ``major*10+minor >= 2``."""
    return 12 + (8 if major * 10 + minor >= 2 else 4)


@dataclass
class _Params:
    """``size_params``: the previous layer's output, as Darknet hands it on."""
    batch: int
    inputs: int
    h: int
    w: int
    c: int
    index: int = 0


def _cdiv(a, b):
    """C integer division (truncates toward zero)."""
    q = abs(a) // abs(b)
    return q if (a >= 0) == (b > 0) else -q


def _need_image(sec, p, what):
    if not (p.h and p.w and p.c):
        raise sec.error(f"Layer before {what} layer must output image (Darknet's own check); "
                        f"the previous layer outputs h={p.h} w={p.w} c={p.c}")


def _check_out(sec, spec, hint):
    if spec.out_h < 1 or spec.out_w < 1 or spec.out_c < 1:
        raise sec.error(f"output would be {spec.out_c}x{spec.out_h}x{spec.out_w} for input "
                        f"{spec.c}x{spec.h}x{spec.w}; {hint}")


def _refuse(sec, keys, reason):
    for key in keys:
        if sec.has(key):
            raise sec.error(f"option {key}= is {reason}; parse with "
                            f"{setting_text('dialect', 'alexeyab')} if this cfg is for "
                            "AlexeyAB/darknet", key,
                            UnsupportedCfgError)


def _resolve_index(sec, key, index, current):
    """``if(index < 0) index = params.index + index``, checked against the layers so far."""
    absolute = current + index if index < 0 else index
    if not 0 <= absolute < current:
        raise sec.error(f"{key}= refers to layer {index} (= {absolute}) but only layers "
                        f"0..{current - 1} come before layer {current}", key)
    return absolute


def _bn_blocks(n):
    return [("scales", n), ("rolling_mean", n), ("rolling_variance", n)]


def parse_convolutional(sec, p, layers, fd):
    """``parse_convolutional`` + ``make_convolutional_layer`` (convolutional_layer.c).

    ``padding = pad ? size/2 : padding``; ``out = (in + 2*padding - size)/stride + 1``
    (AlexeyAB: ``stride_x`` for width, ``stride_y`` for height; dilation does not
    enter the output size); ``nweights = c/groups * n * size*size``.  Weights:
    biases, [scales, rolling_mean, rolling_variance], weights.
    """
    n = sec.find_int("filters", 1, minimum=1)
    size = sec.find_int("size", 1, minimum=1)
    if fd.stride_xy:
        sx, sy = sec.find_int("stride_x", -1), sec.find_int("stride_y", -1)
        if sx < 1 or sy < 1:
            stride = sec.find_int("stride", 1, minimum=1)
            sx, sy = (stride if sx < 1 else sx), (stride if sy < 1 else sy)
        if sec.find_int("antialiasing", 0) or sec.has("share_index"):
            key = "share_index" if sec.has("share_index") else "antialiasing"
            raise sec.error(f"option {key}= is not supported by this parser (it adds a hidden "
                            "blur layer or shares another layer's weights); remove it", key,
                            UnsupportedCfgError)
    else:
        _refuse(sec, ("stride_x", "stride_y"), "AlexeyAB-only (pjreddie ignores it)")
        sx = sy = sec.find_int("stride", 1, minimum=1)
    padding = sec.find_int("padding", 0, minimum=0)
    if sec.find_int("pad", 0):
        padding = size // 2
    groups = sec.find_int("groups", 1)
    if fd.groups_clamp:
        if sec.find_int("xnor", 0):
            groups = 1                                 # disable groups for XNOR-net
        groups = max(groups, 1)
    elif groups < 1:
        raise sec.error(f"groups={groups} must be >= 1 (pjreddie divides by it)", "groups")
    bn = sec.find_int("batch_normalize", 0)
    if fd.conv_cbn and sec.find_int("cbn", 0):
        bn = 2
    _need_image(sec, p, "convolutional")
    s = LayerSpec("convolutional", p.index, sec.line, c=p.c, h=p.h, w=p.w, filters=n,
                  size=size, stride=sx, groups=groups, batch_normalize=bn)
    s.out_h = _cdiv(p.h + 2 * padding - size, sy) + 1
    s.out_w = _cdiv(p.w + 2 * padding - size, sx) + 1
    s.out_c = n
    _check_out(sec, s, "use a smaller size or stride, or pad=1")
    if p.c % groups:
        raise sec.error(f"groups={groups} does not divide the {p.c} input channels", "groups")
    s.nweights = (p.c // groups) * n * size * size
    s.inputs, s.outputs = p.w * p.h * p.c, s.out_h * s.out_w * s.out_c
    s.bn_channels = n if bn else 0
    s.blocks = (("biases", n), *(_bn_blocks(n) if bn else ()), ("weights", s.nweights))
    return s


def parse_connected(sec, p, layers, fd):
    """``parse_connected`` + ``make_connected_layer`` (connected_layer.c).

    ``c = inputs``, output ``outputs x 1 x 1``.  Weights: biases, weights
    (``outputs*inputs``), then [scales, rolling_mean, rolling_variance]: after
    the weights, unlike ``[convolutional]``.
    """
    outputs = sec.find_int("output", 1, minimum=1)
    bn = sec.find_int("batch_normalize", 0)
    s = LayerSpec("connected", p.index, sec.line, c=p.inputs, h=1, w=1, out_c=outputs,
                  out_h=1, out_w=1, inputs=p.inputs, outputs=outputs, batch_normalize=bn)
    if fd.n_for_bn_and_connected:
        s.filters, s.size, s.stride, s.groups = outputs, 1, 1, 1
    s.bn_channels = outputs if bn else 0
    s.blocks = (("biases", outputs), ("weights", outputs * p.inputs),
                *(_bn_blocks(outputs) if bn else ()))
    return s


def parse_batchnorm(sec, p, layers, fd):
    """``parse_batchnorm`` + ``make_batchnorm_layer`` (batchnorm_layer.c): shape unchanged.

    Weights: pjreddie ``load_batchnorm_weights`` reads scales, rolling_mean,
    rolling_variance (``c`` floats each, no biases); AlexeyAB reads biases first.
    """
    s = _same_shape(sec, p, "batchnorm")
    s.batch_normalize, s.bn_channels = 1, p.c
    if fd.n_for_bn_and_connected:
        s.filters = p.c
    s.blocks = tuple((name, p.c) for name in fd.batchnorm_blocks)
    return s


def _same_shape(sec, p, section, *, set_input=True):
    s = LayerSpec(section, p.index, sec.line, out_c=p.c, out_h=p.h, out_w=p.w,
                  inputs=p.inputs, outputs=p.inputs)
    if set_input:
        s.c, s.h, s.w = p.c, p.h, p.w
    return s


def parse_maxpool(sec, p, layers, fd, section="maxpool"):
    """``parse_maxpool`` + ``make_maxpool_layer`` (maxpool_layer.c).

    ``size`` defaults to ``stride``, ``padding`` to ``size-1``;
    ``out = (in + padding - size)/stride + 1``.  AlexeyAB: ``stride_x/stride_y``,
    and ``maxpool_depth=1`` keeps ``h, w`` and outputs ``out_channels`` channels.
    """
    stride = sec.find_int("stride", 1, minimum=1)
    if fd.stride_xy:
        sx = sec.find_int("stride_x", stride, minimum=1)
        sy = sec.find_int("stride_y", stride, minimum=1)
        if sec.find_int("antialiasing", 0):
            raise sec.error("antialiasing= is not supported by this parser (it adds a "
                            "hidden layer); remove it", "antialiasing", UnsupportedCfgError)
    else:
        _refuse(sec, ("stride_x", "stride_y", "maxpool_depth"),
                "AlexeyAB-only (pjreddie ignores it)")
        sx = sy = stride
    size = sec.find_int("size", stride, minimum=1)
    padding = sec.find_int("padding", size - 1, minimum=0)
    _need_image(sec, p, f"[{section}]")
    s = LayerSpec(section, p.index, sec.line, c=p.c, h=p.h, w=p.w, size=size, stride=sx)
    if fd.stride_xy and sec.find_int("maxpool_depth", 0):
        s.out_c = sec.find_int("out_channels", 1, minimum=1)
        s.out_h, s.out_w = p.h, p.w
    else:
        s.out_h = _cdiv(p.h + padding - size, sy) + 1
        s.out_w = _cdiv(p.w + padding - size, sx) + 1
        s.out_c = p.c
    _check_out(sec, s, "use a smaller size or stride")
    s.inputs, s.outputs = p.h * p.w * p.c, s.out_h * s.out_w * s.out_c
    return s


def parse_local_avgpool(sec, p, layers, fd):
    """AlexeyAB ``parse_local_avgpool``: ``make_maxpool_layer`` with ``avgpool=1``."""
    return parse_maxpool(sec, p, layers, fd, section="local_avgpool")


def parse_avgpool(sec, p, layers, fd):
    """``make_avgpool_layer`` (avgpool_layer.c): global average, output ``c x 1 x 1``."""
    _need_image(sec, p, "avgpool")
    return LayerSpec("avgpool", p.index, sec.line, c=p.c, h=p.h, w=p.w, out_c=p.c, out_h=1,
                     out_w=1, inputs=p.h * p.w * p.c, outputs=p.c)


def parse_route(sec, p, layers, fd):
    """``parse_route`` + ``make_route_layer`` (route_layer.c): concatenate channels.

    ``outputs`` is the sum of the inputs' ``outputs`` (AlexeyAB: divided by
    ``groups``); ``out_w, out_h`` are the first input's.  pjreddie leaves
    ``c, h, w`` at 0; AlexeyAB sets ``w, h`` to the first input's *input* size and
    ``c = out_c``.  Where Darknet only prints "The width and height of the input
    layers are different" and zeroes the output, this raises ``CfgError``.
    """
    if not sec.has("layers"):
        raise sec.error("Route Layer must specify input layers: layers=-1,-4")
    idx = [_resolve_index(sec, "layers", i, p.index) for i in sec.find_int_list("layers")]
    if fd.route_groups:
        groups = sec.find_int("groups", 1, minimum=1)
        group_id = sec.find_int("group_id", 0, minimum=0)
        if group_id >= groups:
            raise sec.error(f"group_id={group_id} must be < groups={groups}", "group_id")
    else:
        _refuse(sec, ("groups", "group_id"),
                "AlexeyAB-only (pjreddie ignores it and would concatenate whole layers)")
        groups = 1
    first = layers[idx[0]]
    s = LayerSpec("route", p.index, sec.line, filters=len(idx), input_layers=tuple(idx))
    s.out_w, s.out_h, s.out_c = first.out_w, first.out_h, first.out_c
    for i in idx[1:]:
        nxt = layers[i]
        if (nxt.out_w, nxt.out_h) != (first.out_w, first.out_h):
            raise sec.error(f"The width and height of the input layers are different: layer "
                            f"{idx[0]} outputs {first.out_w}x{first.out_h}, layer {i} "
                            f"{nxt.out_w}x{nxt.out_h}", "layers")
        s.out_c += nxt.out_c
    total = sum(layers[i].outputs for i in idx)
    if fd.route_groups:
        s.out_c //= groups
        s.outputs = s.inputs = total // groups
        s.w, s.h, s.c, s.groups = first.w, first.h, s.out_c, groups
    else:
        s.outputs = s.inputs = total
    if s.out_c < 1:
        raise sec.error(f"output has {s.out_c} channels", "layers")
    return s


def parse_shortcut(sec, p, layers, fd):
    """``parse_shortcut`` + ``make_shortcut_layer`` (shortcut_layer.c): add a layer's output.

    Output shape = the previous layer's.  pjreddie stores the *from* layer's
    ``out_c, out_h, out_w`` in ``c, h, w``; AlexeyAB the input's, and with
    ``weights_type=per_feature|per_layer`` (``n+1`` floats) or ``per_channel``
    (``(n+1)*c``) stores weights.
    """
    if not sec.has("from"):
        raise sec.error("Shortcut Layer must specify input layers: from=-3")
    raw = sec.find_int_list("from")
    if len(raw) > 1 and not fd.shortcut_multi:
        raise sec.error("from= with several layers is AlexeyAB-only; parse with "
                        f"{setting_text('dialect', 'alexeyab')}", "from", UnsupportedCfgError)
    idx = [_resolve_index(sec, "from", i, p.index) for i in raw]
    s = LayerSpec("shortcut", p.index, sec.line, out_c=p.c, out_h=p.h, out_w=p.w,
                  inputs=p.w * p.h * p.c, outputs=p.w * p.h * p.c, input_layers=tuple(idx))
    if fd.shortcut_multi:
        s.c, s.h, s.w, s.filters = p.c, p.h, p.w, len(idx)
        wt = sec.find_str("weights_type", "none")
        if wt in ("per_feature", "per_layer"):
            s.nweights = s.filters + 1
        elif wt == "per_channel":
            s.nweights = (s.filters + 1) * p.c
        elif wt != "none":
            raise sec.error(f"weights_type={wt!r}; use one of none, per_feature, per_channel",
                            "weights_type")
        if s.nweights:
            s.blocks = (("weights", s.nweights),)
    else:
        _refuse(sec, ("weights_type",), "AlexeyAB-only (pjreddie stores no weights)")
        src = layers[idx[0]]
        s.c, s.h, s.w = src.out_c, src.out_h, src.out_w
    return s


def parse_upsample(sec, p, layers, fd):
    """``make_upsample_layer`` (upsample_layer.c): ``out = in*stride`` (a negative
    stride downsamples: ``out = in/|stride|``)."""
    stride = sec.find_int("stride", 2)
    if stride == 0:
        raise sec.error("stride=0; use e.g. stride=2", "stride")
    s = LayerSpec("upsample", p.index, sec.line, c=p.c, h=p.h, w=p.w, out_c=p.c,
                  stride=abs(stride))
    if stride > 0:
        s.out_w, s.out_h = p.w * stride, p.h * stride
    else:
        s.out_w, s.out_h = p.w // -stride, p.h // -stride
    _check_out(sec, s, "check stride")
    s.inputs, s.outputs = p.w * p.h * p.c, s.out_w * s.out_h * s.out_c
    return s


def parse_dropout(sec, p, layers, fd):
    """``parse_dropout`` + ``make_dropout_layer``: ``out_*`` = input; ``c,h,w`` set only
    by AlexeyAB's dropblock."""
    s = _same_shape(sec, p, "dropout", set_input=fd.dropblock_sets_input
                    and bool(sec.find_int("dropblock", 0)))
    return s


def parse_activation(sec, p, layers, fd):
    """``parse_activation``: shape unchanged."""
    return _same_shape(sec, p, "activation")


def parse_empty(sec, p, layers, fd):
    """AlexeyAB ``[empty]``: shape unchanged."""
    return _same_shape(sec, p, "empty")


def parse_softmax(sec, p, layers, fd):
    """``parse_softmax`` + ``make_softmax_layer``: ``c,h,w`` = input, ``out_*`` left 0."""
    groups = sec.find_int("groups", 1, minimum=1)
    return LayerSpec("softmax", p.index, sec.line, c=p.c, h=p.h, w=p.w, groups=groups,
                     inputs=p.inputs, outputs=p.inputs)


def parse_cost(sec, p, layers, fd):
    """``make_cost_layer``: only ``inputs = outputs`` are set."""
    return LayerSpec("cost", p.index, sec.line, inputs=p.inputs, outputs=p.inputs)


def _detector(sec, p, section, n, per_anchor):
    s = LayerSpec(section, p.index, sec.line, c=n * per_anchor, h=p.h, w=p.w, out_c=n * per_anchor,
                  out_h=p.h, out_w=p.w, filters=n)
    s.outputs = s.inputs = p.h * p.w * n * per_anchor
    if s.outputs != p.inputs:
        raise sec.error(f"filters= in the previous [convolutional] layer doesn't correspond "
                        f"to classes= and the anchors: [{section}] needs {s.outputs} inputs "
                        f"({n} anchors x {per_anchor} per anchor x {p.h}x{p.w}), got "
                        f"{p.inputs}; set filters={n * per_anchor} there")
    return s


def parse_yolo(sec, p, layers, fd):
    """``parse_yolo`` + ``make_yolo_layer``: ``n`` = entries of ``mask`` (else ``num``),
    ``c = n*(classes+5)``; Darknet checks ``outputs == inputs``."""
    classes = sec.find_int("classes", 20, minimum=0)
    n = sec.find_int("num", 1, minimum=1)
    if sec.has("mask"):
        n = len(sec.find_int_list("mask"))
    return _detector(sec, p, "yolo", n, classes + 4 + 1)


def parse_region(sec, p, layers, fd):
    """``parse_region`` + ``make_region_layer``: ``c = num*(classes+coords+1)``."""
    coords = sec.find_int("coords", 4, minimum=0)
    classes = sec.find_int("classes", 20, minimum=0)
    n = sec.find_int("num", 1, minimum=1)
    return _detector(sec, p, "region", n, classes + coords + 1)


def parse_detection(sec, p, layers, fd):
    """``parse_detection`` + ``make_detection_layer``: ``h = w = side``, ``c, out_*`` left 0;
    Darknet asserts ``side*side*((1+coords)*num + classes) == inputs``."""
    coords = sec.find_int("coords", 1, minimum=0)
    classes = sec.find_int("classes", 1, minimum=0)
    n = sec.find_int("num", 1, minimum=1)
    side = sec.find_int("side", 7, minimum=1)
    need = side * side * ((1 + coords) * n + classes)
    if need != p.inputs:
        raise sec.error(f"side*side*((1+coords)*num+classes) = {need} but the previous layer "
                        f"outputs {p.inputs} values")
    return LayerSpec("detection", p.index, sec.line, h=side, w=side, filters=n,
                     inputs=p.inputs, outputs=p.inputs)


def parse_reorg(sec, p, layers, fd):
    """``make_reorg_layer`` / AlexeyAB ``make_reorg_old_layer``: ``out = in/stride``,
    ``out_c = c*stride^2`` (``reverse=1``: the other way); pjreddie's ``extra=k``
    flattens to ``out_c = c*h*w + k``."""
    stride = sec.find_int("stride", 1, minimum=1)
    reverse = sec.find_int("reverse", 0)
    _need_image(sec, p, "reorg")
    s = LayerSpec(sec.type, p.index, sec.line, c=p.c, h=p.h, w=p.w, stride=stride,
                  inputs=p.h * p.w * p.c)
    if reverse:
        s.out_w, s.out_h, s.out_c = p.w * stride, p.h * stride, p.c // (stride * stride)
    else:
        s.out_w, s.out_h, s.out_c = p.w // stride, p.h // stride, p.c * stride * stride
    _check_out(sec, s, "check stride and reverse")
    s.outputs = s.out_h * s.out_w * s.out_c
    extra = sec.find_int("extra", 0, minimum=0) if fd.reorg_extra else 0
    if extra:
        s.out_w = s.out_h = 0
        s.out_c = s.outputs = p.c * p.h * p.w + extra
    return s


def parse_local(sec, p, layers, fd):
    """``parse_local`` + ``make_local_layer`` (local_layer.c): unshared convolution.

    ``pad`` is a flag: ``out = (in - (pad ? 1 : size))/stride + 1``.  Weights:
    biases (``outputs``), weights (``size*size*c*n*out_h*out_w``); no batchnorm.
    """
    n = sec.find_int("filters", 1, minimum=1)
    size = sec.find_int("size", 1, minimum=1)
    stride = sec.find_int("stride", 1, minimum=1)
    pad = sec.find_int("pad", 0)
    _need_image(sec, p, "local")
    s = LayerSpec("local", p.index, sec.line, c=p.c, h=p.h, w=p.w, filters=n, size=size,
                  stride=stride, out_c=n)
    s.out_h = _cdiv(p.h - (1 if pad else size), stride) + 1
    s.out_w = _cdiv(p.w - (1 if pad else size), stride) + 1
    _check_out(sec, s, "use a smaller size or stride")
    s.inputs, s.outputs = p.w * p.h * p.c, s.out_h * s.out_w * n
    s.blocks = (("biases", s.outputs),
                ("weights", size * size * p.c * n * s.out_h * s.out_w))
    return s


#: section -> parse function (parse_network_cfg's dispatch).
PARSERS = {
    "convolutional": parse_convolutional, "connected": parse_connected,
    "batchnorm": parse_batchnorm, "maxpool": parse_maxpool,
    "local_avgpool": parse_local_avgpool, "avgpool": parse_avgpool, "route": parse_route,
    "shortcut": parse_shortcut, "upsample": parse_upsample, "dropout": parse_dropout,
    "activation": parse_activation, "empty": parse_empty, "softmax": parse_softmax,
    "cost": parse_cost, "yolo": parse_yolo, "region": parse_region,
    "detection": parse_detection, "reorg": parse_reorg, "reorg3d": parse_reorg,
    "local": parse_local,
}


def _check_c_ints(sec, spec):
    """Darknet computes shapes and block sizes in C ``int``: refuse what would overflow."""
    values = [(name, getattr(spec, name)) for name in _INT_FIELDS]
    values += [(f"the '{name}' block's float count", n) for name, n in spec.blocks]
    for name, value in values:
        if not INT_MIN <= value <= INT_MAX:
            raise sec.error(f"{name} = {value} does not fit the C int Darknet computes it "
                            f"in (max {INT_MAX}), so Darknet would overflow; use smaller "
                            "filters=, size= or input dimensions")


def _parse_net(sec):
    """``parse_net_options``: the input size and the mini-batch (``batch/subdivisions``)."""
    batch = sec.find_int("batch", 1, minimum=1)
    subdivs = sec.find_int("subdivisions", 1, minimum=1)
    time_steps = sec.find_int("time_steps", 1, minimum=1)
    h = sec.find_int("height", 0, minimum=0)
    w = sec.find_int("width", 0, minimum=0)
    c = sec.find_int("channels", 0, minimum=0)
    inputs = sec.find_int("inputs", h * w * c, minimum=0)
    if not inputs and not (h and w and c):
        raise sec.error("No input parameters supplied: set width=, height= and channels=")
    if inputs > INT_MAX:
        raise sec.error(f"width*height*channels = {inputs} is more than Darknet's C int "
                        f"holds ({INT_MAX}); use a smaller input size")
    return max(batch // subdivs * time_steps, 1), h, w, c, inputs


def parse_cfg(path, *, dialect="pjreddie"):
    """``parse_network_cfg`` (parser.c): the ``Network`` with one ``LayerSpec`` per section.

    ``dialect``: a name in ``DIALECTS`` or a ``Dialect`` (the fork that will read
    the file; see ``Dialect.cfg``).  Raises ``CfgError`` naming the file and
    line for an unknown section, an option that is not an integer (or not a C
    ``int``) where Darknet needs one, a shape or block size that overflows a C
    ``int``, impossible shapes, or an option that changes the weights layout
    in a way this parser does not model.  ``ValueError``/``TypeError`` for an
    unknown dialect or a ``path`` that is not a path (``str`` or ``os.PathLike``);
    ``OSError`` (see ``read_cfg``) if the file cannot be opened.
    """
    path = check_path("parse_cfg", "path", path, "yolov4.cfg")
    dialect = get_dialect(dialect, "parse_cfg")
    fd = dialect.cfg
    sections = read_cfg(path)
    net = sections[0]
    if net.type != "net":
        raise CfgError(path, net.line, f"first section is [{net.type}]; it must be [net] or "
                       "[network]")
    batch, h, w, c, inputs = _parse_net(net)
    params = _Params(batch, inputs, h, w, c)
    layers, offset = [], 0
    for index, sec in enumerate(sections[1:]):
        params.index = index
        if sec.type == "net":
            raise sec.error("a second [net] section; a cfg has one, at the top")
        if sec.type not in fd.sections:
            if sec.type == "batchnorm" and not dialect.standalone_batchnorm:
                forks = [setting_text("dialect", d.name) for d in others(dialect)
                         if d.cfg.knows(sec.type)]
                raise CfgError(path, sec.line, f"[batchnorm]: {dialect.no_standalone_text()}; "
                               f"pass {' or '.join(forks)} if the cfg is written for that "
                               "fork, or remove the section")
            if sec.type in fd.unsupported:
                raise UnsupportedCfgError(
                    path, sec.line, f"[{sec.type}] is {fd.unsupported[sec.type]}, which "
                    "darknet_bn's cfg parser does not model")
            other = [d.name for d in others(dialect) if d.cfg.knows(sec.type)]
            hint = (f"it exists only in {' and '.join(other)}'s Darknet: pass "
                    f"{setting_text('dialect', other[0])}" if other else
                    "check the spelling (Darknet would report 'Type not recognized')")
            raise CfgError(path, sec.line, f"unknown section [{sec.type}] for dialect "
                           f"{dialect.name!r}; {hint}")
        for key, why in _REFUSED_OPTIONS.items():
            if sec.find_int(key, 0):
                raise sec.error(f"{key}=1 is not supported: {why}; remove it", key,
                                UnsupportedCfgError)
        spec = PARSERS[sec.type](sec, params, layers, fd)
        _check_c_ints(sec, spec)
        for name, count in spec.blocks:
            spec.offsets[name] = offset
            offset += count
        layers.append(spec)
        params = _Params(batch, spec.outputs, spec.out_h, spec.out_w, spec.out_c, index + 1)
    if not layers:
        raise CfgError(path, net.line, "the cfg has no layers after [net]")
    return Network(path=path, dialect=dialect, batch=batch, h=h, w=w, c=c, inputs=inputs,
                   layers=layers, float_count=offset)
