"""Darknet's inference-time folding of batchnorm into the weights, bit for bit.

Origins, one routine each (the C is quoted where it is ported):

- AlexeyAB ``src/network.c`` ``fuse_conv_batchnorm``: run by ``load_network_custom``
  (``detector test/demo/map``, the classifier, the Python binding) on every
  ``[convolutional]`` layer with ``batch_normalize``, per filter ``f``, all in
  double, rounded to float once on store::

      biases[f] = biases[f] - (double)scales[f] * rolling_mean[f] / (sqrt((double)rolling_variance[f] + .00001));
      double precomputed = scales[f] / (sqrt((double)rolling_variance[f] + .00001));
      weights[f*filter_size + i] *= precomputed;      /* filter_size = size*size*c/groups */

  ``[connected]`` and ``[batchnorm]`` layers are not folded.  hank-ai's fork
  (``darknet_network.cpp``, run by ``load_network_custom`` and by its ONNX exporter
  unless ``-dontfuse``) has the same lines: compiled as C++ they compute the same bits,
  since every operand is cast to double explicitly (``sqrt((double)...)`` is
  ``sqrt(double)`` whatever overloads are in scope).
- pjreddie ``src/convolutional_layer.c`` ``denormalize_convolutional_layer`` and
  ``src/connected_layer.c`` ``denormalize_connected_layer`` (run by ``darknet
  denormalize``, ``examples/darknet.c`` ``denormalize_net``), per filter ``i``::

      float scale = scales[i]/sqrt(rolling_variance[i] + .00001);   /* .000001 for connected */
      weights[i*size + j] *= scale;                                  /* float x float */
      biases[i] -= rolling_mean[i] * scale;                          /* float */
      scales[i] = 1; rolling_mean[i] = 0; rolling_variance[i] = 1;

  followed by ``batch_normalize = 0``.

Both then ``save_weights``: a folded layer loses its batchnorm blocks (biases,
then weights); every other layer is written as read.  ``fold_weights`` writes
that file.  NaN and Inf propagate as in the C (a negative variance gives NaN).

Darknet folds in memory (``batch_normalize = 0`` on the layer) and leaves the
cfg as it is, so the folded file no longer matches the original cfg: read with
it, the file is too short.  ``folded_cfg`` gives the cfg that goes with the
folded file: the original, byte for byte, with ``batch_normalize=0`` (and, in
AlexeyAB, ``cbn=0``) on every folded layer; ``fold_weights(...,
out_cfg_path=...)`` writes it beside the weights.
"""
import contextlib
import os
from dataclasses import dataclass

import numpy as np
from numba import prange

from .._jit import BUF, INT, kernel, sig
from .._validate import (argument_name, check_buffer, check_dim, check_no_overlap,
                         routine_prefix)
from ..dialects import FUSE, PJREDDIE, get_dialect
from .parser import UnsupportedCfgError, check_path, read_cfg
from .weights import (WeightsHeader, atomic_output, check_cfg_arg, copy_floats, network_from,
                      open_weights, read_header, read_weights, type_name)

#: The double literals of the folding code (not the float ``.00001f`` of normalize_cpu).
FUSE_EPS = np.float64(.00001)                 # fuse_conv_batchnorm: sqrt((double)var + .00001)
DENORMALIZE_CONV_EPS = np.float64(.00001)     # denormalize_convolutional_layer: var + .00001
DENORMALIZE_CONNECTED_EPS = np.float64(.000001)   # denormalize_connected_layer: var + .000001

LAYER_TYPES = ("convolutional", "connected")


# --------------------------------------------------------------------------
# kernels
# --------------------------------------------------------------------------
@kernel(sig(BUF, BUF, BUF, BUF, BUF, INT, INT))
def _fuse_conv_batchnorm(weights, biases, scales, rolling_mean, rolling_variance, n,
                         filter_size):
    for f in prange(n):
        root = np.sqrt(np.float64(rolling_variance[f]) + FUSE_EPS)
        s = np.float64(scales[f])
        # biases[f] - (double)scales[f] * rolling_mean[f] / sqrt(...): double, one rounding
        biases[f] = np.float32(np.float64(biases[f]) - s * np.float64(rolling_mean[f]) / root)
        precomputed = s / root                         # double precomputed
        base = f * filter_size
        for i in range(filter_size):
            weights[base + i] = np.float32(np.float64(weights[base + i]) * precomputed)


@kernel(sig(BUF, BUF, BUF, BUF, BUF, INT, INT, "float64"))
def _denormalize_layer(weights, biases, scales, rolling_mean, rolling_variance, n, size, eps):
    for i in prange(n):
        # float scale = scales[i]/sqrt(rolling_variance[i] + eps): double, rounded on store
        scale = np.float32(np.float64(scales[i]) / np.sqrt(np.float64(rolling_variance[i]) + eps))
        base = i * size
        for j in range(size):
            weights[base + j] = weights[base + j] * scale          # float *= float
        biases[i] = biases[i] - rolling_mean[i] * scale            # float -= float * float
        scales[i] = np.float32(1.0)
        rolling_mean[i] = np.float32(0.0)
        rolling_variance[i] = np.float32(1.0)


# --------------------------------------------------------------------------
# argument checks
# --------------------------------------------------------------------------
def _layer_buffers(routine, weights, biases, scales, rolling_mean, rolling_variance, n, size,
                   *, write_bn, size_name):
    """The five buffers of one layer: ``n`` per channel, ``n*size`` weights."""
    what = f"one value per filter, n = {n}"
    check_buffer(routine, "weights", weights, n * size, writable=True,
                 what=f"n*{size_name} = {n}*{size}, filter-major")
    check_buffer(routine, "biases", biases, n, writable=True, what=what)
    for name, arr in (("scales", scales), ("rolling_mean", rolling_mean),
                      ("rolling_variance", rolling_variance)):
        check_buffer(routine, name, arr, n, writable=write_bn, what=what)
    reads = (("scales", scales), ("rolling_mean", rolling_mean),
             ("rolling_variance", rolling_variance))
    check_no_overlap(routine, ("weights", weights), ("biases", biases), *reads)
    check_no_overlap(routine, ("biases", biases), *reads)
    if write_bn:
        check_no_overlap(routine, ("scales", scales), *reads[1:])
        check_no_overlap(routine, ("rolling_mean", rolling_mean), reads[2])


# --------------------------------------------------------------------------
# Darknet's routines, in place as in the C
# --------------------------------------------------------------------------
def fuse_conv_batchnorm(weights, biases, scales, rolling_mean, rolling_variance, n,
                        filter_size):
    """AlexeyAB's ``fuse_conv_batchnorm`` (network.c) for one ``[convolutional]`` layer.

    In place on ``weights`` (``n*filter_size``, filter-major; ``filter_size =
    size*size*c/groups``) and ``biases`` (``n``); the batchnorm buffers are
    only read (Darknet frees them).  Double arithmetic with ``.00001`` in
    double, one rounding to float per stored value (module docstring).
    """
    routine = "fuse_conv_batchnorm"
    n, filter_size = check_dim(routine, "n", n), check_dim(routine, "filter_size", filter_size)
    _layer_buffers(routine, weights, biases, scales, rolling_mean, rolling_variance, n, filter_size,
                   write_bn=False, size_name="filter_size")
    _fuse_conv_batchnorm(weights, biases, scales, rolling_mean, rolling_variance, n,
                         filter_size)


def denormalize_convolutional_layer(weights, biases, scales, rolling_mean, rolling_variance,
                                    n, filter_size):
    """pjreddie's ``denormalize_convolutional_layer`` (convolutional_layer.c), in place.

    ``scale = (float)(scales/sqrt(var + .00001))`` in double; weights and biases
    are then updated in float; ``scales``, ``rolling_mean``,
    ``rolling_variance`` are reset to 1, 0, 1 as the C does.
    """
    _denormalize("denormalize_convolutional_layer", weights, biases, scales, rolling_mean,
                 rolling_variance, ("n", n), ("filter_size", filter_size),
                 DENORMALIZE_CONV_EPS)


def denormalize_connected_layer(weights, biases, scales, rolling_mean, rolling_variance,
                                outputs, inputs):
    """pjreddie's ``denormalize_connected_layer`` (connected_layer.c), in place.

    As ``denormalize_convolutional_layer`` with ``.000001`` and ``inputs``
    weights per output (``weights`` is ``outputs x inputs``, row-major).
    """
    _denormalize("denormalize_connected_layer", weights, biases, scales, rolling_mean,
                 rolling_variance, ("outputs", outputs), ("inputs", inputs),
                 DENORMALIZE_CONNECTED_EPS)


def _denormalize(routine, weights, biases, scales, rolling_mean, rolling_variance, count, size,
                 eps):
    """Validate, then ``_denormalize_layer``; ``count``/``size`` are (name, value) pairs."""
    n, size_value = check_dim(routine, *count), check_dim(routine, *size)
    _layer_buffers(routine, weights, biases, scales, rolling_mean, rolling_variance, n,
                   size_value, write_bn=True, size_name=size[0])
    _denormalize_layer(weights, biases, scales, rolling_mean, rolling_variance, n, size_value,
                       eps)


# --------------------------------------------------------------------------
# the functional form
# --------------------------------------------------------------------------
def fold_batchnorm(weights, biases, scales, rolling_mean, rolling_variance, *, dialect,
                   layer_type="convolutional"):
    """``(weights, biases)`` after the fork folds batchnorm into a layer: new float32 arrays.

    ``weights`` is the layer's flat, filter-major block as in the .weights file
    (``n x size*size*c/groups`` for ``[convolutional]``, ``n x inputs`` for
    ``[connected]``); ``n = len(biases)``, and ``scales``, ``rolling_mean``,
    ``rolling_variance`` have ``n`` values.  The inputs are not modified.

    - ``dialect="alexeyab"`` (and ``"hankai"``, the same formula): ``fuse_conv_batchnorm``.
      Neither folds ``[connected]``: ``layer_type="connected"`` is a ``ValueError``.
    - ``dialect="pjreddie"``: ``denormalize_convolutional_layer`` (``.00001``) or
      ``denormalize_connected_layer`` (``.000001``).

    ``TypeError``/``ValueError`` naming the argument (not float32, not flat and
    contiguous, wrong lengths, unknown dialect or layer type) before any work.
    """
    routine = "fold_batchnorm"
    dialect = get_dialect(dialect, routine)
    folding = dialect.folding
    if not isinstance(layer_type, str) or layer_type not in LAYER_TYPES:
        raise ValueError(f"{routine}: layer_type must be one of {LAYER_TYPES}, got "
                         f"{type_name(layer_type)}")
    if layer_type == "connected" and not folding.folds_connected:
        raise ValueError(f"{routine}: dialect {dialect.name!r} does not fold [connected] layers "
                         f"({folding.formula} folds only [convolutional]; its inference "
                         "runs normalize_cpu on them): keep their batchnorm, or pass "
                         f"dialect={PJREDDIE.name!r} for denormalize_connected_layer")
    n = biases.shape[0] if isinstance(biases, np.ndarray) and biases.ndim == 1 else 1
    check_buffer(routine, "biases", biases, n)
    if n < 1:
        raise ValueError(f"{routine}: biases is empty; a layer has at least one filter (n = "
                         "len(biases))")
    count = weights.shape[0] if isinstance(weights, np.ndarray) and weights.ndim == 1 else n
    size = max(count // n, 1)
    if count % n or count < n:
        raise ValueError(f"{routine}: weights has {count} elements, which is not a positive "
                         f"multiple of the n = {n} filters (len(biases)); pass the layer's "
                         "whole flat weights block (n x size*size*c/groups, or n x inputs)")
    check_buffer(routine, "weights", weights, n * size, what=f"n*{size}, filter-major")
    for name, arr in (("scales", scales), ("rolling_mean", rolling_mean),
                      ("rolling_variance", rolling_variance)):
        check_buffer(routine, name, arr, n, what=f"one value per filter, n = len(biases) = {n}")
    w, b = weights.copy(), biases.copy()
    if folding.formula == FUSE:
        _fuse_conv_batchnorm(w, b, scales, rolling_mean, rolling_variance, n, size)
    else:
        eps = DENORMALIZE_CONV_EPS if layer_type == "convolutional" else DENORMALIZE_CONNECTED_EPS
        _denormalize_layer(w, b, scales.copy(), rolling_mean.copy(), rolling_variance.copy(),
                           n, size, eps)
    return w, b


def fold_record(record, *, dialect=None):
    """``fold_batchnorm`` of a ``BatchNormRecord`` read with ``layer_weights=True``."""
    dialect = record.dialect if dialect is None else dialect
    if record.weights is None:
        raise ValueError(f"fold_record: layer {record.index} [{record.section}] has no weights "
                         "block; read it with read_weights(..., layer_weights=True)")
    return fold_batchnorm(record.weights, record.biases, record.scales, record.rolling_mean,
                          record.rolling_variance, dialect=dialect, layer_type=record.section)


def folds(spec, dialect):
    """Whether the fork folds this layer (a ``LayerSpec``) for inference."""
    folding = get_dialect(dialect, "folds").folding
    return bool(spec.bn_channels) and (
        spec.section == "convolutional"
        or (spec.section == "connected" and folding.folds_connected))


# --------------------------------------------------------------------------
# the file
# --------------------------------------------------------------------------
@dataclass(frozen=True)
class FoldResult:
    """What ``fold_weights`` wrote: the output path, the cfg indices it folded and the
    path of the cfg written with it (None when not asked for)."""
    path: str
    folded: tuple
    dialect: object
    cfg_path: str = None


#: The options that give a layer batchnorm, set to 0 on a folded layer.
_BATCHNORM_OPTIONS = ("batch_normalize", "cbn")


def folded_cfg(cfg_path, *, dialect):
    """The cfg that goes with the file ``fold_weights`` writes for ``cfg_path``: its
    text, every line as it is except ``batch_normalize=0`` (and ``cbn=0`` where
    present) on the layers the fork folds (``folds``).  Read with it, the folded
    file has exactly the size Darknet expects."""
    routine = "folded_cfg"
    cfg = check_cfg_arg(routine, cfg_path)
    net = network_from(cfg, get_dialect(dialect, routine), routine)
    path = net.path
    with open(path, "rb") as f:
        data = f.read()
    bom = data.startswith(b"\xef\xbb\xbf")
    lines = data.decode("utf-8-sig").splitlines(keepends=True)     # read_cfg's lines
    for spec, section in zip(net.layers, read_cfg(path)[1:]):
        if not folds(spec, net.dialect):
            continue
        for key in _BATCHNORM_OPTIONS:
            if section.has(key):
                line = lines[section.options[key][1] - 1]
                ending = line[len(line.rstrip("\r\n")):]
                lines[section.options[key][1] - 1] = f"{key}=0{ending}"
    return ("\ufeff" if bom else "") + "".join(lines)


def _same_file(a, b):
    try:
        return os.path.samefile(a, b)
    except OSError:
        return os.path.realpath(a) == os.path.realpath(b)


def _refuse_overwrite(routine, name, target, others):
    """``ValueError`` if output ``name`` is one of ``others`` (name -> path)."""
    for other, path in others.items():
        if _same_file(target, path):
            raise ValueError(f"{routine_prefix(routine)}{argument_name(name)} "
                             f"{os.fspath(target)!r} is the {argument_name(other)} file; "
                             "fold refuses to overwrite its input: pass another "
                             f"{argument_name(name)}")


def _check_foldable(net, routine):
    """Options whose folding Darknet does differently from plain ``fold_batchnorm``."""
    sections = read_cfg(net.path)[1:]
    for spec, sec in zip(net.layers, sections):
        if sec.find_int("flipped", 0) and spec.section == "convolutional":
            raise sec.error("flipped=1 is not supported by fold: Darknet transposes these "
                            "weights when loading and writes them transposed", "flipped",
                            UnsupportedCfgError)
        norm = sec.find_str("weights_normalization", "none")
        if (net.dialect.folding.formula == FUSE and spec.section == "shortcut"
                and spec.nweights
                and norm in ("relu", "softmax")):
            raise sec.error(f"weights_normalization={norm} is not supported by fold: "
                            "fuse_conv_batchnorm also normalizes these [shortcut] weights "
                            "(expf, lrelu), which darknet_bn does not reproduce",
                            "weights_normalization", UnsupportedCfgError)


def fold_weights(cfg_path, weights_path, out_path, *, dialect, out_cfg_path=None):
    """Write the ``.weights`` file Darknet writes after folding; a ``FoldResult``.

    - ``dialect="alexeyab"``: ``load_network_custom`` (``fuse_conv_batchnorm``)
      then ``save_weights``: every ``[convolutional]`` layer with batchnorm is
      folded; ``[connected]`` and ``[batchnorm]`` keep theirs.
    - ``dialect="pjreddie"``: ``darknet denormalize``: ``[convolutional]`` and
      ``[connected]`` layers with batchnorm are folded.

    A folded layer is written as biases then weights, without its batchnorm
    blocks; every other layer's floats are copied as read.  The header is the
    fork's ``save_weights`` header (version 0.2, revision 0 for pjreddie, 5 for
    AlexeyAB) with the input's ``seen``.  The file is byte-identical to
    Darknet's.  Darknet reads it only with a cfg that has ``batch_normalize=0`` on
    the folded layers: ``out_cfg_path`` writes that cfg too (``folded_cfg``).
    Refuses to overwrite its inputs (``ValueError``); the outputs are written to
    temporary files and renamed.  Raises what ``read_weights``
    raises for the inputs, ``UnsupportedCfgError`` for options whose folding is
    not reproduced (``flipped``, AlexeyAB ``[shortcut] weights_normalization``),
    ``TypeError``/``ValueError`` naming a wrong-typed argument, before any work.
    """
    return _fold_weights("fold_weights", cfg_path, weights_path, out_path, dialect,
                         out_cfg_path)


def _fold_weights(r, cfg_path, weights_path, out_path, dialect, out_cfg_path=None):
    cfg = check_cfg_arg(r, cfg_path)
    src_path = check_path(r, "weights_path", weights_path, "yolov4.weights")
    out = check_path(r, "out_path", out_path, "yolov4-folded.weights")
    out_cfg = None if out_cfg_path is None else check_path(r, "out_cfg_path", out_cfg_path,
                                                           "yolov4-folded.cfg")
    dialect = get_dialect(dialect, r)
    inputs = {"weights_path": src_path, "cfg_path": getattr(cfg, "path", cfg)}
    _refuse_overwrite(r, "out_path", out, inputs)
    if out_cfg is not None:
        _refuse_overwrite(r, "out_cfg_path", out_cfg, {**inputs, "out_path": out})
    net = network_from(cfg, dialect, r)
    _check_foldable(net, r)
    cfg_text = None if out_cfg_path is None else folded_cfg(net, dialect=dialect)
    w = read_weights(net, src_path, dialect=dialect, layer_weights=True)
    records = {rec.index: rec for rec in w.layers}
    header = WeightsHeader(0, 2, dialect.folding.save_weights_revision, w.header.seen)
    folded = []
    f, _ = open_weights(src_path, ".weights file")
    with contextlib.ExitStack() as stack:
        if cfg_text is not None:         # renamed after the weights; on failure, neither
            stack.enter_context(atomic_output(r, out_cfg)).write(cfg_text.encode("utf-8"))
        dst = stack.enter_context(atomic_output(r, out))
        stack.enter_context(f)
        in_header = read_header(src_path, f)
        dst.write(header.to_bytes())
        for spec in net.layers:
            if not spec.blocks:
                continue
            if folds(spec, dialect):
                wts, b = fold_record(records[spec.index], dialect=dialect)
                dst.write(b.astype("<f4", copy=False).tobytes())      # save_*_weights:
                dst.write(wts.astype("<f4", copy=False).tobytes())    # biases, weights
                folded.append(spec.index)
                continue
            f.seek(in_header.nbytes + 4 * spec.offsets[spec.blocks[0][0]])
            copy_floats(f, dst, spec.float_count)
    return FoldResult(out, tuple(folded), dialect, out_cfg)


def denormalize_net(cfg_path, weights_path, out_path):
    """pjreddie's ``denormalize_net`` (``darknet denormalize``): ``fold_weights`` with
    ``dialect="pjreddie"``."""
    return _fold_weights("denormalize_net", cfg_path, weights_path, out_path, PJREDDIE)


__all__ = ["fold_batchnorm", "fold_record", "fold_weights", "fuse_conv_batchnorm",
           "denormalize_convolutional_layer", "denormalize_connected_layer",
           "denormalize_net", "folds", "folded_cfg", "FoldResult"]
