"""Darknet ``.weights`` files: the batchnorm blocks of ``load_weights``/``save_weights``.

Layout (``src/parser.c``, every fork): a header of three int32 ``major, minor,
revision`` and ``seen`` (uint64 when ``major*10 + minor >= 2``, else uint32),
then every layer's blocks in cfg order as float32 (little-endian, as written on
x86).  Which blocks a layer has is decided by the cfg (``parse_cfg``):
``[convolutional]`` biases, [scales, rolling_mean, rolling_variance], weights;
``[connected]`` biases, weights, [scales, rolling_mean, rolling_variance];
``[batchnorm]`` (pjreddie) scales, rolling_mean, rolling_variance or (AlexeyAB)
biases first as well.

Darknet's own ``load_weights`` stops silently at the end of a short file and
ignores extra bytes.  ``read_weights`` instead requires the file size to be
exactly what the cfg implies and raises ``WeightsFormatError`` (a
``ValueError``) naming the file, the offset and the layer where it goes wrong.
Values are returned bit for bit as stored (NaN payloads, -0.0, denormals).
A file that cannot be opened raises the ``OSError`` subclass (``FileNotFoundError``,
``IsADirectoryError``...) with a message naming which file (.cfg, .weights, base,
output) it was.
"""
import contextlib
import errno
import io
import numbers
import os
import stat
import tempfile
from dataclasses import dataclass, field

import numpy as np

from .._validate import check_dim, routine_prefix, setting_text, short_repr
from ..batchnorm_layer import PATHS, BatchNormLayer
from ..dialects import BN_BLOCKS, PJREDDIE, Dialect, get_dialect, others
from .kinds import MAJOR_VERSION, MAX_MINOR_VERSION, WEIGHTS, file_kind
from .parser import (INT_MAX, INT_MIN, LayerSpec, Network, check_path, header_bytes,
                     parse_cfg, reword_os_error)

_F32 = np.dtype("<f4")
CHUNK = 1 << 22                                       # floats per copy chunk (16 MB)


class WeightsFormatError(ValueError):
    """A ``.weights`` file that does not match its cfg or is not a Darknet weights file.

    ``path`` and ``offset`` (bytes from the start of the file, or None) are
    also attributes.
    """

    def __init__(self, path, offset, message):
        self.path, self.offset = path, offset
        where = f"{path}" + (f" (byte offset {offset})" if offset is not None else "")
        super().__init__(f"{where}: {message}")


@dataclass(frozen=True)
class WeightsHeader:
    """The header ``save_weights`` writes: version and ``seen`` (images trained on)."""
    major: int = MAJOR_VERSION
    minor: int = MAX_MINOR_VERSION
    revision: int = 0
    seen: int = 0

    @property
    def nbytes(self):
        return header_bytes(self.major, self.minor)

    def validate(self, where="WeightsHeader"):
        """Raise ``TypeError``/``ValueError`` (prefixed with ``where``) unless
        ``save_weights`` could write this header: version 0.0 to 0.2, ``revision``
        a C int, ``seen`` within its ``uint64`` (``uint32`` before version 0.2)."""
        for name in ("major", "minor", "revision", "seen"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
                raise TypeError(f"{where}: header.{name} must be an int, got "
                                f"{type(value).__name__} {value!r}")
        if self.major != MAJOR_VERSION or not 0 <= self.minor <= MAX_MINOR_VERSION:
            raise ValueError(f"{where}: header version {self.major}.{self.minor} is not one "
                             f"Darknet writes; use 0.{MAX_MINOR_VERSION}")
        if not INT_MIN <= self.revision <= INT_MAX:
            raise ValueError(f"{where}: header.revision={self.revision} is not a 32-bit int "
                             f"({INT_MIN} to {INT_MAX})")
        bits = 64 if self.nbytes == 20 else 32
        if not 0 <= self.seen < 2 ** bits:
            hint = ("" if bits == 64 else
                    "; use header version 0.2, which stores seen as 64 bits")
            raise ValueError(f"{where}: header.seen={self.seen} is out of range for header "
                             f"version {self.major}.{self.minor}, which stores seen as a "
                             f"uint{bits}: 0 to {2 ** bits - 1}{hint}")

    def to_bytes(self):
        """The header's bytes; ``validate`` first (``ValueError`` if out of range)."""
        self.validate("WeightsHeader.to_bytes")
        ints = np.array([self.major, self.minor, self.revision], dtype="<i4").tobytes()
        seen_t = "<u8" if self.nbytes == 20 else "<u4"
        return ints + np.array([self.seen], dtype=seen_t).tobytes()


@dataclass
class BatchNormRecord:
    """The batchnorm parameters of one layer, as stored in the file (float32, 1-D).

    ``biases`` is None for a pjreddie ``[batchnorm]`` section, which does not
    store them (Darknet's layer then adds zero biases).  ``spec`` is the layer's
    ``LayerSpec`` (shapes, offsets); ``dialect`` the fork whose layout was read (a
    ``Dialect``; a name is accepted where a record is passed in).

    ``weights`` is the layer's own weights block for a ``[convolutional]`` or
    ``[connected]`` layer, flat and filter-major as stored (``filters x
    size*size*c/groups``, or ``outputs x inputs``), when ``read_weights`` was
    asked for it (``layer_weights=True``); otherwise None, as always for a
    ``[batchnorm]`` section, which has none.  ``write_weights`` writes it when
    it is not None.
    """
    index: int
    section: str
    channels: int
    biases: object
    scales: np.ndarray
    rolling_mean: np.ndarray
    rolling_variance: np.ndarray
    dialect: object = PJREDDIE
    spec: object = field(default=None, repr=False)
    weights: object = field(default=None, repr=False)

    def arrays(self):
        """``{block name: array}`` for the blocks present (biases omitted when None)."""
        return {name: getattr(self, name) for name in BN_BLOCKS
                if getattr(self, name) is not None}


@dataclass
class DarknetWeights:
    """``read_weights``' result: the header and one ``BatchNormRecord`` per BN layer."""
    path: str
    dialect: object
    header: WeightsHeader
    network: Network
    layers: list

    def layer(self, index):
        """The record of cfg layer ``index`` (KeyError if it carries no batchnorm)."""
        for rec in self.layers:
            if rec.index == index:
                return rec
        raise KeyError(f"layer {index} carries no batchnorm parameters; BN layers: "
                       f"{[r.index for r in self.layers]}")


# --------------------------------------------------------------------------
# argument checks (every public function runs them before any work)
# --------------------------------------------------------------------------
def _show(value, n=80):
    """``repr(value)`` cut to ``n`` characters (an int too long for repr: its size)."""
    return short_repr(repr(value) if isinstance(value, str) else value, n)


def type_name(value):
    return f"{type(value).__name__} {_show(value)}"


def check_record(routine, record, name="record"):
    """A ``BatchNormRecord`` whose fields have the types ``read_weights`` gives.

    ``TypeError`` naming ``name`` (and the field) otherwise; ``ValueError`` for
    ``channels < 1``.  Array shapes are checked by the callers (against the
    cfg or ``channels``).
    """
    if not isinstance(record, BatchNormRecord):
        raise TypeError(f"{routine}: {name} must be a BatchNormRecord (an element of "
                        f"read_weights(...).layers), got {type_name(record)}; pass e.g. "
                        "read_weights(cfg, weights).layer(0)")
    for field_name in ("index", "channels"):
        value = getattr(record, field_name)
        if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
            raise TypeError(f"{routine}: {name}.{field_name} must be an int, got "
                            f"{type_name(value)}")
    if record.channels < 1:
        raise ValueError(f"{routine}: {name}.channels must be >= 1, got {record.channels}")
    if not isinstance(record.section, str):
        raise TypeError(f"{routine}: {name}.section must be the cfg section name (a str), "
                        f"got {type_name(record.section)}")
    if not isinstance(record.dialect, (str, Dialect)):
        raise TypeError(f"{routine}: {name}.dialect must be a Dialect or a dialect name (a "
                        f"str), got {type_name(record.dialect)}")
    get_dialect(record.dialect, routine)
    if record.spec is not None and not isinstance(record.spec, LayerSpec):
        raise TypeError(f"{routine}: {name}.spec must be the layer's LayerSpec (from "
                        f"parse_cfg) or None, got {type_name(record.spec)}")
    for block in (*BN_BLOCKS, "weights"):
        arr = getattr(record, block)
        if arr is None and block in ("biases", "weights"):
            continue
        if not isinstance(arr, np.ndarray) or not np.issubdtype(arr.dtype, np.floating):
            dtype = f" of {arr.dtype}" if isinstance(arr, np.ndarray) else ""
            none = (" (or None, where the file stores none)" if block == "biases" else
                    " (or None: not read)" if block == "weights" else "")
            raise TypeError(f"{routine}: {name}.{block} must be a float32 numpy array{none}, "
                            f"got {type(arr).__name__}{dtype}; use np.asarray(x, np.float32)")
    return record


def check_weights(routine, weights, name="weights"):
    """A ``DarknetWeights`` (what ``read_weights`` returns) with valid records."""
    if not isinstance(weights, DarknetWeights):
        raise TypeError(f"{routine}: {name} must be a DarknetWeights (what read_weights "
                        f"returns), got {type_name(weights)}; pass read_weights(cfg, "
                        "weights_file)")
    if not isinstance(weights.layers, (list, tuple)):
        raise TypeError(f"{routine}: {name}.layers must be a list of BatchNormRecord, got "
                        f"{type_name(weights.layers)}")
    for i, rec in enumerate(weights.layers):
        check_record(routine, rec, f"{name}.layers[{i}]")
    return weights


def _check_layer_args(routine, batch, kernel, dialect=None, h=None, w=None):
    """The ``BatchNormLayer`` arguments, checked in the caller's name (None: default)."""
    check_dim(routine, "batch", batch)
    for name, value in (("h", h), ("w", w)):
        if value is not None:
            check_dim(routine, name, value)
    if dialect is not None:
        get_dialect(dialect, routine)
    if kernel is not None and (not isinstance(kernel, str) or kernel not in PATHS):
        raise ValueError(f"{routine}: unknown kernel {kernel!r}; use one of {sorted(PATHS)} "
                         "(or None for the default)")


def check_cfg_arg(routine, cfg, name="cfg_path"):
    """``cfg_path``: a ``Network`` or a path (checked, not parsed yet)."""
    if isinstance(cfg, Network):
        return cfg
    if not isinstance(cfg, (str, bytes, os.PathLike)):
        raise TypeError(f"{routine}: {name} must be a .cfg path (str or os.PathLike) or a "
                        f"Network from parse_cfg, got {type_name(cfg)}; pass e.g. "
                        f"{name}='yolov4.cfg'")
    return check_path(routine, name, cfg, "yolov4.cfg")


# --------------------------------------------------------------------------
# reading
# --------------------------------------------------------------------------
def network_from(cfg, dialect, routine):
    if isinstance(cfg, Network):
        if dialect is not None and cfg.dialect is not get_dialect(dialect, routine):
            raise ValueError(f"{routine}: the Network was parsed with dialect "
                             f"{cfg.dialect.name!r} but dialect={str(dialect)!r} was passed; "
                             "parse it again with that dialect")
        return cfg
    return parse_cfg(cfg, dialect=PJREDDIE if dialect is None else dialect)


def open_weights(path, what):
    """``(file, size)`` of a ``.weights`` file to read; OSError naming ``what``."""
    try:
        f = open(path, "rb")
    except OSError as e:
        raise reword_os_error(e, f"cannot open the {what}", path) from None
    st = os.fstat(f.fileno())
    if not stat.S_ISREG(st.st_mode):
        f.close()
        raise WeightsFormatError(path, None, f"the {what} is not a regular file")
    return f, st.st_size


def read_header(path, f):
    """``load_weights``' header read, checked: the version must be one Darknet writes.

    ``f`` is a binary file object positioned at the start of the file; ``path``
    (``str`` or ``os.PathLike``) names it in error messages.
    """
    path = check_path("read_header", "path", path, "yolov4.weights")
    if isinstance(f, io.TextIOBase) or not callable(getattr(f, "read", None)):
        raise TypeError(f"read_header: f must be a binary file object, got {type_name(f)}; "
                        "pass open(path, 'rb')")
    raw = f.read(12)
    if len(raw) < 12:
        raise WeightsFormatError(path, len(raw), f"file is {len(raw)} bytes, too short for "
                                 "the 12-byte version header; not a Darknet .weights file")
    major, minor, revision = (int(v) for v in np.frombuffer(raw, "<i4"))
    if major != MAJOR_VERSION or not 0 <= minor <= MAX_MINOR_VERSION:
        kind = file_kind(path)
        if kind is not None and kind != WEIGHTS:
            raise WeightsFormatError(path, None, f"this is {kind}, not a Darknet .weights "
                                     "file (the header does not start with version 0.x)")
        raise WeightsFormatError(
            path, 0, f"header says version {major}.{minor}.{revision}; this reader knows "
            f"Darknet weights versions 0.0 to 0.{MAX_MINOR_VERSION} (every fork writes 0.2). "
            "A newer version (or a legacy transposed file, major/minor > 1000) may lay out "
            "the floats differently; convert it with Darknet's own save_weights")
    seen_t = np.dtype("<u8") if header_bytes(major, minor) == 20 else np.dtype("<u4")
    raw = f.read(seen_t.itemsize)
    if len(raw) < seen_t.itemsize:
        raise WeightsFormatError(path, 12 + len(raw), "file ends inside the header's 'seen'")
    return WeightsHeader(major, minor, revision, int(np.frombuffer(raw, seen_t)[0]))


def _locate(net, float_pos):
    """(layer spec, block name) holding float ``float_pos``, or None past the end."""
    for spec in net.layers:
        for name, count in spec.blocks:
            start = spec.offsets[name]
            if start <= float_pos < start + count:
                return spec, name
    return None


def check_size(path, net, header, size):
    """Exact size check; the error says where a short file ends or how much is extra."""
    expected = header.nbytes + 4 * net.float_count
    if size == expected:
        return
    if size < expected:
        floats, partial = divmod(size - header.nbytes, 4)
        spec, block = _locate(net, floats)
        msg = (f"truncated: {size} bytes but the cfg implies {expected} "
               f"({header.nbytes}-byte header + {net.float_count} floats); the file ends "
               f"inside layer {spec.index} [{spec.section}] (cfg line {spec.line}), block "
               f"'{block}'" + (", mid-float" if partial else ""))
    else:
        msg = (f"oversized: {size} bytes but the cfg implies {expected} ({header.nbytes}-byte "
               f"header + {net.float_count} floats); {size - expected} extra bytes after the "
               "last layer")
    matches = [d.name for d in others(net.dialect) if _dialect_size(net, header, d) == size]
    if matches:
        msg += f". The size matches {setting_text('dialect', matches[0])}: pass that dialect"
    else:
        msg += ". Check that the .weights belongs to this .cfg (same filters, classes, order)"
    raise WeightsFormatError(path, min(size, expected), msg)


def _dialect_size(net, header, dialect):
    """The size of the file for ``net``'s cfg read with ``dialect``, or None."""
    try:
        alt = parse_cfg(net.path, dialect=dialect)
    except (ValueError, OSError):
        return None
    return header.nbytes + 4 * alt.float_count


def read_weights(cfg_path, weights_path, *, dialect=None, layer_weights=False):
    """``load_weights`` for the batchnorm parameters: a ``DarknetWeights``.

    ``cfg_path`` may also be a ``Network`` from ``parse_cfg``.  ``dialect``:
    ``"pjreddie"`` (default for a path), ``"alexeyab"`` or ``"hankai"``; for a ``Network`` it
    defaults to the dialect it was parsed with.  Every layer with
    ``bn_channels > 0`` gives one ``BatchNormRecord`` with the stored floats,
    bit for bit.  With ``layer_weights=True`` each record of a
    ``[convolutional]`` or ``[connected]`` layer also holds that layer's
    weights block (``record.weights``; folding needs it).  Raises
    ``WeightsFormatError`` if the header is not a version
    Darknet writes or the size is not exactly what the cfg implies (checked
    before anything is allocated); ``ValueError`` if ``dialect`` contradicts the
    ``Network``'s; whatever ``parse_cfg`` raises; ``OSError`` naming the .weights
    file if it cannot be opened; ``TypeError`` for a ``cfg_path`` that is neither a
    path nor a ``Network``, or a ``weights_path`` that is not a path (``str`` or
    ``os.PathLike``).
    """
    cfg = check_cfg_arg("read_weights", cfg_path)
    path = check_path("read_weights", "weights_path", weights_path, "yolov4.weights")
    if dialect is not None:
        get_dialect(dialect, "read_weights")
    if not isinstance(layer_weights, (bool, np.bool_)):
        raise TypeError(f"read_weights: layer_weights must be True or False, got "
                        f"{type_name(layer_weights)}")
    net = network_from(cfg, dialect, "read_weights")
    f, size = open_weights(path, ".weights file")
    with f:
        header = read_header(path, f)
        check_size(path, net, header, size)
        records = []
        for spec in net.bn_layers:
            arrays = {}
            blocks = dict(spec.blocks)
            names = spec.bn_blocks + (("weights",) if layer_weights and "weights" in blocks
                                      else ())
            for name in names:
                f.seek(header.nbytes + 4 * spec.offsets[name])
                raw = f.read(4 * blocks[name])
                arrays[name] = np.frombuffer(raw, _F32).astype(np.float32)
            records.append(BatchNormRecord(
                spec.index, spec.section, spec.bn_channels, arrays.get("biases"),
                arrays["scales"], arrays["rolling_mean"], arrays["rolling_variance"],
                net.dialect, spec, arrays.get("weights")))
    return DarknetWeights(path, net.dialect, header, net, records)


# --------------------------------------------------------------------------
# writing
# --------------------------------------------------------------------------
def _check_records(path, net, records):
    """Every BN layer of ``net`` has exactly one record with exactly its blocks."""
    by_index = {}
    for rec in records:
        if rec.index in by_index:
            raise ValueError(f"write_weights({path}): two records for layer {rec.index}")
        by_index[rec.index] = rec
    specs = {s.index: s for s in net.bn_layers}
    extra = sorted(set(by_index) - set(specs))
    missing = sorted(set(specs) - set(by_index))
    if extra or missing:
        raise ValueError(f"write_weights({path}): the records do not match the cfg's "
                         f"batchnorm layers (missing {missing}, not BN layers in the cfg "
                         f"{extra}); read them with read_weights for this cfg")
    for idx, spec in specs.items():
        rec = by_index[idx]
        where = f"write_weights({path}): layer {idx} [{spec.section}]"
        counts = dict(spec.blocks)
        for name in (*BN_BLOCKS, "weights"):
            arr = getattr(rec, name)
            if name == "weights" and arr is None:
                continue                               # taken from the base file
            stored = name in spec.bn_blocks or (name == "weights" and name in counts)
            if not stored:
                if arr is not None:
                    raise ValueError(f"{where}: dialect {net.dialect.name!r} stores no {name} for "
                                     f"this layer; set record.{name} = None (the value would "
                                     "be lost)")
                continue
            if not isinstance(arr, np.ndarray) or arr.dtype != np.float32:
                raise TypeError(f"{where}: {name} must be a float32 numpy array (bits are "
                                f"written as they are), got {type(arr).__name__} "
                                f"{getattr(arr, 'dtype', '')}; use np.asarray(x, np.float32)")
            need = counts[name] if name == "weights" else spec.bn_channels
            if arr.shape != (need,):
                raise ValueError(f"{where}: {name} has shape {arr.shape}, the cfg needs "
                                 f"({need},)")
    return by_index


def copy_floats(src, dst, count):
    """Copy ``count`` floats from file ``src`` to ``dst`` in chunks (WeightsFormatError if
    ``src`` ends early)."""
    while count:
        n = min(count, CHUNK)
        raw = src.read(4 * n)
        if len(raw) != 4 * n:
            raise WeightsFormatError(getattr(src, "name", "base"), src.tell(),
                                     "base file ended early")
        dst.write(raw)
        count -= n


def normal_file_mode(path):
    """The permission bits ``open(path, "w")`` would leave: those of the regular file
    already at ``path``, else ``0o666`` less the process umask."""
    try:
        st = os.stat(path)
        if stat.S_ISREG(st.st_mode):
            return stat.S_IMODE(st.st_mode)
    except OSError:
        pass
    return 0o666 & ~_umask()


def _umask():
    """The process umask, read without changing it where Linux reports it (setting it
    back and forth would race with other threads creating files)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_output(routine, out):
    """A binary file to write ``out`` through: a temporary file in the same
    directory, renamed to ``out`` when the block ends without an exception and
    removed otherwise, so a failure never leaves a partial file.  The file gets the
    mode ``open(out, "w")`` would give it (``normal_file_mode``), not the
    temporary file's 0600.  ``OSError`` naming ``out`` (a directory given as
    output, a missing directory...)."""
    directory = os.path.dirname(os.path.abspath(out))
    if os.path.isdir(out):
        raise IsADirectoryError(errno.EISDIR, f"{routine_prefix(routine)}the output path is "
                                "a directory; pass a file name", out)
    mode = normal_file_mode(out)
    try:
        fd, tmp = tempfile.mkstemp(prefix=".darknet-weights-", dir=directory)
    except OSError as e:           # the message would name the temporary file, not `out`
        raise reword_os_error(e, f"{routine_prefix(routine)}cannot create the output file "
                                 f"in {directory!r}", out) from None
    try:
        with os.fdopen(fd, "wb") as dst:
            os.fchmod(dst.fileno(), mode)
            yield dst
        os.replace(tmp, out)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_weights(cfg_path, weights_path, weights, *, dialect=None, base=None, fill=None):
    """``save_weights``: write ``weights`` (a ``DarknetWeights``) as a ``.weights`` file.

    The header, the batchnorm blocks and the records' ``weights`` blocks (where
    not None) come from ``weights``; every other float
    (convolution weights, biases of layers without BN...) is copied from
    ``base``, a ``.weights`` file for the same cfg (default: ``weights.path``,
    the file it was read from).  With no base, pass ``fill=<float>`` to write
    that value everywhere else (e.g. to synthesize a file); otherwise this
    refuses, rather than invent weights.  ``dialect`` defaults to
    ``weights.dialect``.  The file is written to a temporary name and renamed,
    so a failure never leaves a partial file.  Reading a file and writing it
    back reproduces it byte for byte.

    Raises ``TypeError``/``ValueError`` (before parsing the cfg or creating
    anything) for arguments of the wrong type (``cfg_path`` neither a path nor a
    ``Network``, ``weights_path``/``base`` not a path, ``weights`` not a
    ``DarknetWeights``, ``fill`` not a real number), for records or a header
    ``save_weights`` could not write (``WeightsHeader.validate``: e.g. ``seen``
    out of range), ``WeightsFormatError`` for a base file that does not match
    the cfg, and ``OSError`` naming the output path (missing directory, a
    directory given as output...) or the base file.
    """
    routine = "write_weights"
    cfg = check_cfg_arg(routine, cfg_path)
    out = check_path(routine, "weights_path", weights_path, "out.weights")
    check_weights(routine, weights)
    if dialect is not None:
        get_dialect(dialect, routine)
    header = weights.header
    if not isinstance(header, WeightsHeader):
        raise TypeError(f"write_weights({out}): weights.header must be a WeightsHeader, got "
                        f"{type_name(header)}")
    header.validate(f"write_weights({out})")
    if base is not None:
        base = check_path(routine, "base", base, "yolov4.weights")
    if fill is not None:
        if isinstance(fill, (bool, np.bool_)) or not isinstance(fill, numbers.Real):
            raise TypeError(f"write_weights: fill must be a real number (the float32 written "
                            f"for every non-batchnorm float) or None, got {type_name(fill)}; "
                            "pass e.g. fill=0.0")
        try:
            value = float(fill)
        except OverflowError:                          # an int beyond a double
            value = None
        with np.errstate(over="ignore"):
            overflows = value is None or (np.isfinite(value)
                                          and not np.isfinite(np.float32(value)))
        if overflows:
            raise ValueError(f"write_weights: fill={_show(fill, 40)} overflows float32 (max "
                             f"{float(np.finfo(np.float32).max):.8g}); pass a smaller value "
                             "(or float('inf') if that is what you mean)")
    if base is not None and fill is not None:
        raise ValueError(f"write_weights({out}): pass base= or fill=, not both")
    if base is None and fill is None:
        if weights.path is not None:
            base = check_path(routine, "weights.path (the default base)", weights.path,
                              "yolov4.weights")
        else:
            raise ValueError(f"write_weights({out}): the non-batchnorm floats (conv "
                             "weights...) need a source: pass base=<a .weights file for "
                             "this cfg>, or fill=<value> to write that value everywhere "
                             "else")
    if dialect is None:
        dialect = weights.dialect
        if not isinstance(dialect, (str, Dialect)):
            raise TypeError(f"write_weights: weights.dialect must be a Dialect or a dialect "
                            f"name (a str), got {type_name(dialect)}; pass dialect= explicitly")
    net = network_from(cfg, dialect, routine)
    by_index = _check_records(out, net, weights.layers)
    src = None
    try:
        if base is not None:
            base = os.fspath(base)
            src, base_size = open_weights(base, "base .weights file")
            base_header = read_header(base, src)
            check_size(base, net, base_header, base_size)
        with atomic_output(routine, out) as dst:
            dst.write(header.to_bytes())
            filler = None if fill is None else np.full(CHUNK, fill, dtype=_F32).tobytes()
            for spec in net.layers:
                rec = by_index.get(spec.index)
                for name, count in spec.blocks:
                    if rec is not None and (name in spec.bn_blocks or (
                            name == "weights" and rec.weights is not None)):
                        dst.write(getattr(rec, name).astype(_F32, copy=False).tobytes())
                        if src is not None:
                            src.seek(4 * count, os.SEEK_CUR)
                    elif src is not None:
                        copy_floats(src, dst, count)
                    else:
                        while count:
                            n = min(count, CHUNK)
                            dst.write(filler[:4 * n])
                            count -= n
    finally:
        if src is not None:
            src.close()
    return out


# --------------------------------------------------------------------------
# BatchNormLayer from records
# --------------------------------------------------------------------------
def make_batchnorm_layer_from_record(record, *, batch=1, h=None, w=None, dialect=None,
                                     kernel=None):
    """A ``BatchNormLayer`` holding ``record``'s parameters, ready for inference.

    Like Darknet after ``load_weights``: ``scales``, ``rolling_mean``,
    ``rolling_variance`` (and ``biases``, zeros when the file stores none) are
    the stored floats; ``forward(x, train=False)`` then normalizes with the
    rolling statistics.  ``h, w`` default to the layer's output size (1x1 for
    ``[connected]``); the layer type is ``"batchnorm"`` for a ``[batchnorm]``
    section and ``"convolutional"`` (the in-place BN stage) otherwise.

    ``TypeError`` if ``record`` is not a ``BatchNormRecord`` (or its arrays are
    not float arrays), ``batch``, ``h``, ``w`` are not ints or ``dialect``,
    ``kernel`` not names; ``ValueError`` for sizes < 1 or unknown names.
    """
    routine = "make_batchnorm_layer_from_record"
    check_record(routine, record)
    _check_layer_args(routine, batch, kernel, dialect, h, w)
    spec = record.spec
    if h is None:
        h = spec.out_h if spec is not None else 1
    if w is None:
        w = spec.out_w if spec is not None else 1
    layer_type = "batchnorm" if record.section == "batchnorm" else "convolutional"
    layer = BatchNormLayer(batch, w, h, record.channels, dialect=dialect or record.dialect,
                           layer_type=layer_type, kernel=kernel)
    for name, arr in record.arrays().items():
        if arr.shape != (record.channels,):
            raise ValueError(f"make_batchnorm_layer_from_record: layer {record.index} {name} "
                             f"has shape {arr.shape}, expected ({record.channels},)")
        getattr(layer, name)[:] = arr
    return layer


def make_batchnorm_layers(weights, *, batch=1, kernel=None):
    """``{cfg layer index: BatchNormLayer}`` for every record of a ``DarknetWeights``.

    ``TypeError`` if ``weights`` is not one (e.g. None, a list of records).
    """
    check_weights("make_batchnorm_layers", weights)
    _check_layer_args("make_batchnorm_layers", batch, kernel)
    return {rec.index: make_batchnorm_layer_from_record(rec, batch=batch, kernel=kernel)
            for rec in weights.layers}
