"""Darknet's ``src/batchnorm_layer.c``: the layer struct, forward, backward, update.

Dimensions::

    batch               images in the batch
    c, h, w             input channels and plane size (= out_c, out_h, out_w)
    spatial             out_h * out_w
    outputs = inputs    c * h * w; every tensor buffer holds batch*outputs floats

``BatchNormLayer`` is Darknet's ``layer`` struct for one batchnorm stage, with
Darknet's field names.  Two kinds exist (``layer_type``):

- ``"batchnorm"``: a standalone ``[batchnorm]`` section.  ``forward`` copies the
  input into ``output``; ``backward`` copies the input gradient to ``net.delta``
  (returned, or written into the ``net_delta`` you pass).
- ``"convolutional"``: the BN stage inside a ``[convolutional]`` (or
  ``[connected]``) layer with ``batch_normalize=1``.  It works in place: the conv
  output is written into ``output`` and normalized there; the gradient is
  computed in place in ``delta`` (which is returned).

Sign convention (Darknet's): ``delta`` is the *negative* gradient of the loss
(``truth - prediction`` at the cost layer), and ``update`` *adds*
``learning_rate/batch * updates``.  ``scale_updates``/``bias_updates`` accumulate
(``+=``) across backward calls until ``update`` decays them by ``momentum``.

NaN and Inf are propagated exactly as Darknet propagates them (no checks, no
clipping): a NaN in a channel's input makes that channel's statistics, output
and gradient NaN, and it stays in ``rolling_mean``/``rolling_variance``.
"""
import numbers

import numpy as np
from numba import prange

from ._jit import BUF, INT, kernel, sig
from ._validate import (INDEX_MAX, check_buffer, check_dim, check_no_overlap, check_scalar,
                        check_state, overlapping_buffer, state_unchanged)
from .blas import (_axpy_cpu, _copy_cpu, _mean_cpu, _mean_delta_cpu, _normalize_cpu,
                   _normalize_delta_cpu, _scal_cpu, _variance_cpu, _variance_delta_cpu)
from .convolutional_layer import _add_bias, _backward_bias, _scale_bias
from .dialects import DIALECTS, Dialect, get_dialect
from .fused import backward_fused, forward_fused

LAYER_TYPES = ("batchnorm", "convolutional")

#: The layer's tensor buffers (batch*outputs floats each), in Darknet's order.
TENSOR_FIELDS = ("output", "delta", "x", "x_norm")
#: The layer's per-channel buffers (c floats each).
CHANNEL_FIELDS = ("mean", "variance", "rolling_mean", "rolling_variance", "scales", "biases",
                  "scale_updates", "bias_updates", "mean_delta", "variance_delta")
FIELDS = TENSOR_FIELDS + CHANNEL_FIELDS
#: The layer's dimensions (positive ints, fixed at construction).
DIM_FIELDS = ("batch", "c", "h", "w", "out_c", "out_h", "out_w", "outputs", "inputs")
#: Every non-buffer field the kernels and paths read; re-validated when one is reassigned.
STATE_FIELDS = DIM_FIELDS + ("dialect", "type", "kernel")


# --------------------------------------------------------------------------
# backward_scale_cpu
# --------------------------------------------------------------------------
@kernel(sig(BUF, BUF, INT, INT, INT, BUF))
def _backward_scale_cpu(x_norm, delta, batch, n, size, scale_updates):
    for f in prange(n):
        acc = np.float32(0.0)                          # float sum = 0
        for b in range(batch):
            base = size * (f + n * b)
            for i in range(size):
                acc += delta[base + i] * x_norm[base + i]
        scale_updates[f] += acc


def backward_scale_cpu(x_norm, delta, batch, n, size, scale_updates):
    """``backward_scale_cpu`` (batchnorm_layer.c): ``scale_updates[f] += sum(delta*x_norm)``.

    The per-channel sum starts at +0.0f, runs in (b, i) order in float32, and is
    added to ``scale_updates[f]`` once at the end.
    """
    r = "backward_scale_cpu"
    batch, n, size = (check_dim(r, "batch", batch), check_dim(r, "n", n),
                      check_dim(r, "size", size))
    what = f"batch*n*size = {batch}*{n}*{size}"
    check_buffer(r, "x_norm", x_norm, batch * n * size, what=what)
    check_buffer(r, "delta", delta, batch * n * size, what=what)
    check_buffer(r, "scale_updates", scale_updates, n, writable=True,
                 what=f"one value per channel, n = {n}")
    check_no_overlap(r, ("scale_updates", scale_updates), ("x_norm", x_norm), ("delta", delta))
    _backward_scale_cpu(x_norm, delta, batch, n, size, scale_updates)


# --------------------------------------------------------------------------
# The layer: one-to-one compositions of the routines ("blas" path)
# --------------------------------------------------------------------------
def _forward_blas(l, input, train):
    """``forward_batchnorm_layer``, composed of the routines exactly as the C does.

    ``input`` (validated, or None when the data is already in ``l.output``) is
    copied into ``l.output`` first: ``copy_cpu(l.outputs*l.batch, net.input, 1,
    l.output, 1)`` for ``[batchnorm]``; the conv output for ``[convolutional]``.
    """
    d, n, sp = l.dialect, l.batch * l.outputs, l.out_h * l.out_w
    if input is not None:
        _copy_cpu(n, input, 1, l.output, 1)
    if d.copy_x_in_inference:                          # pjreddie: before the branch
        _copy_cpu(n, l.output, 1, l.x, 1)
    if train:
        _mean_cpu(l.output, l.batch, l.out_c, sp, l.mean)
        _variance_cpu(l.output, l.mean, l.batch, l.out_c, sp, l.variance)
        _scal_cpu(l.out_c, d.rolling_keep, l.rolling_mean, 1)
        _axpy_cpu(l.out_c, d.rolling_new, l.mean, 1, l.rolling_mean, 1)
        _scal_cpu(l.out_c, d.rolling_keep, l.rolling_variance, 1)
        _axpy_cpu(l.out_c, d.rolling_new, l.variance, 1, l.rolling_variance, 1)
        if not d.copy_x_in_inference:                  # alexeyab: training only
            _copy_cpu(n, l.output, 1, l.x, 1)
        _normalize_cpu(l.output, l.mean, l.variance, l.batch, l.out_c, sp, d.code)
        _copy_cpu(n, l.output, 1, l.x_norm, 1)
    else:
        _normalize_cpu(l.output, l.rolling_mean, l.rolling_variance, l.batch, l.out_c, sp,
                       d.code)
    _scale_bias(l.output, l.scales, l.batch, l.out_c, sp)
    _add_bias(l.output, l.biases, l.batch, l.out_c, sp)


def _backward_blas(l, delta, train, mean, variance, net_delta):
    """``backward_batchnorm_layer``, composed of the routines exactly as the C does.

    ``delta`` (validated, or None when already in ``l.delta``) is copied into
    ``l.delta`` first.  ``mean``/``variance`` are the statistics the dialect uses
    (rolling ones for a pjreddie inference-mode backward).  ``net_delta`` (a
    ``[batchnorm]`` layer's output gradient buffer, else None) receives
    ``copy_cpu(l.outputs*l.batch, l.delta, 1, net.delta, 1)`` at the end.
    """
    d, n, sp = l.dialect, l.batch * l.outputs, l.out_h * l.out_w
    if delta is not None:
        _copy_cpu(n, delta, 1, l.delta, 1)
    if d.backward_bias_in_bn:
        _backward_bias(l.bias_updates, l.delta, l.batch, l.out_c, sp)
    _backward_scale_cpu(l.x_norm, l.delta, l.batch, l.out_c, sp, l.scale_updates)
    _scale_bias(l.delta, l.scales, l.batch, l.out_c, sp)
    _mean_delta_cpu(l.delta, variance, l.batch, l.out_c, sp, l.mean_delta)
    _variance_delta_cpu(l.x, l.delta, mean, variance, l.batch, l.out_c, sp, l.variance_delta)
    _normalize_delta_cpu(l.x, mean, variance, l.mean_delta, l.variance_delta,
                         l.batch, l.out_c, sp, l.delta, d.code)
    if net_delta is not None:
        _copy_cpu(n, l.delta, 1, net_delta, 1)


#: Execution paths: name -> (forward(l, input, train),
#: backward(l, delta, train, mean, variance, net_delta)); the layer validates
#: every argument before calling them.
#: "blas" composes the one-to-one routines exactly as batchnorm_layer.c does.
PATHS = {"blas": (_forward_blas, _backward_blas)}
PATHS["fused"] = (forward_fused, backward_fused)   # darknet_bn/fused.py: bit-identical, faster
DEFAULT_KERNEL = "fused"


def forward_batchnorm_layer(l, input=None, train=True):
    """``forward_batchnorm_layer`` (batchnorm_layer.c); same as ``l.forward``."""
    return l.forward(input, train)


def backward_batchnorm_layer(l, delta=None, train=True, net_delta=None):
    """``backward_batchnorm_layer`` (batchnorm_layer.c); same as ``l.backward``."""
    return l.backward(delta, train, net_delta=net_delta)


def update_batchnorm_layer(l, batch, learning_rate, momentum, decay):
    """``update_batchnorm_layer`` (AlexeyAB's batchnorm_layer.c); same as ``l.update``."""
    return l.update(learning_rate, momentum, decay, batch)


def _check_train(routine, train):
    if isinstance(train, (bool, np.bool_)) or (isinstance(train, numbers.Integral)
                                               and int(train) in (0, 1)):
        return bool(train)
    raise TypeError(f"{routine}: train must be True/False (or Darknet's 1/0), got {train!r}")


def _check_dialect(routine, name, dialect, fix):
    """One of the built-in dialects (a Dialect equal to a DIALECTS value)."""
    if not isinstance(dialect, Dialect):
        raise TypeError(f"{routine}: {name} must be a darknet_bn.dialects.Dialect (one of "
                        f"{sorted(DIALECTS)}), got {type(dialect).__name__} {dialect!r}; {fix}")
    if dialect not in DIALECTS.values():
        raise ValueError(f"{routine}: {name} {dialect!r} is not one of the built-in dialects "
                         f"{sorted(DIALECTS)}; {fix}")


class BatchNormLayer:
    """Darknet's layer struct for a batchnorm stage (``make_batchnorm_layer``).

    ``BatchNormLayer(batch, w, h, c, *, dialect="pjreddie", layer_type="batchnorm",
    kernel=DEFAULT_KERNEL)``: the argument order of Darknet's
    ``make_batchnorm_layer(batch, w, h, c)``.  All buffers are allocated (fixing
    pjreddie's CPU build, which leaves ``x``, ``x_norm``, ``mean_delta`` and
    ``variance_delta`` unallocated); ``scales`` start at 1, everything else at 0.
    The buffers are plain float32 numpy arrays and may be read or written
    directly (e.g. to load weights); keep their size, dtype and identity.
    """

    def __init__(self, batch, w, h, c, *, dialect="pjreddie", layer_type="batchnorm",
                 kernel=None):
        r = "BatchNormLayer"
        self.batch = check_dim(r, "batch", batch)
        self.w = check_dim(r, "w", w)
        self.h = check_dim(r, "h", h)
        self.c = check_dim(r, "c", c)
        self.dialect = get_dialect(dialect, r)
        _check_dialect(r, "dialect", self.dialect, f"pass one of {sorted(DIALECTS)}")
        if layer_type not in LAYER_TYPES:
            raise ValueError(f"{r}: unknown layer_type {layer_type!r}; use one of {LAYER_TYPES}")
        self.type = layer_type
        kernel = DEFAULT_KERNEL if kernel is None else kernel
        if not isinstance(kernel, str) or kernel not in PATHS:
            raise ValueError(f"{r}: unknown kernel {kernel!r}; use one of {sorted(PATHS)}")
        self.kernel = kernel
        self.out_w, self.out_h, self.out_c = self.w, self.h, self.c
        self.outputs = self.inputs = self.c * self.h * self.w
        n = self.batch * self.outputs
        if n * np.dtype(np.float32).itemsize > np.iinfo(np.intp).max:
            raise ValueError(f"{r}: batch*c*h*w = {self.batch}*{self.c}*{self.h}*{self.w} = "
                             f"{n} floats cannot be allocated; use smaller dimensions")
        for name in TENSOR_FIELDS:
            setattr(self, name, np.zeros(n, dtype=np.float32))
        for name in CHANNEL_FIELDS:
            setattr(self, name, np.zeros(self.c, dtype=np.float32))
        self.scales[:] = 1
        # net.delta of a standalone layer: the previous layer's delta, kept here
        # when the caller does not pass one, so backward allocates nothing.
        self.net_delta = np.zeros(n, dtype=np.float32) if layer_type == "batchnorm" else None

    # ------------------------------------------------------------------
    def __repr__(self):
        return (f"BatchNormLayer(batch={self.batch}, w={self.w}, h={self.h}, c={self.c}, "
                f"dialect={getattr(self.dialect, 'name', self.dialect)!r}, "
                f"layer_type={self.type!r}, "
                f"kernel={self.kernel!r})")

    @property
    def has_update(self):
        """False for a pjreddie ``[batchnorm]`` layer: Darknet has no CPU update for it."""
        return self.type == "convolutional" or self.dialect.standalone_update

    def buffers(self):
        """The layer's buffers by Darknet name (the live arrays, not copies)."""
        return {name: getattr(self, name) for name in FIELDS}

    def _own_buffers(self):
        return [(name, getattr(self, name)) for name in FIELDS]

    def _tensor_arg(self, routine, name, arr, target):
        """Validate a tensor argument that will be copied into ``target``.

        Accepts a flat float32 buffer of batch*outputs elements or a C-contiguous
        (batch, c, h, w) array.  Returns None when ``arr`` is ``target`` itself.
        """
        if isinstance(arr, np.ndarray) and arr.ndim == 4:
            if arr.shape != (self.batch, self.c, self.h, self.w):
                raise ValueError(
                    f"{routine}: {name} has shape {arr.shape}, expected "
                    f"(batch, c, h, w) = {(self.batch, self.c, self.h, self.w)}")
            if not arr.flags.c_contiguous:
                raise ValueError(
                    f"{routine}: {name} is not C-contiguous (strides {arr.strides}); "
                    f"pass np.ascontiguousarray({name})")
            arr = arr.reshape(-1)
        check_buffer(routine, name, arr, self.batch * self.outputs,
                     what=f"batch*c*h*w = {self.batch}*{self.c}*{self.h}*{self.w}")
        hit = overlapping_buffer(self, arr)      # the state was checked just before
        if hit is None:
            return arr
        own, same_start = hit
        if same_start and getattr(self, own) is target:
            return None                          # the target itself (same start and length)
        raise ValueError(
            f"{routine}: {name} shares memory with layer.{own}; the layer writes its buffers "
            f"in parallel, so pass a separate array (e.g. {name}.copy())")

    def _check_trainable(self, routine):
        if self.batch * self.out_h * self.out_w < 2:
            raise ValueError(
                f"{routine}: training with batch*h*w = 1 leaves one value per channel; "
                "Darknet's unbiased variance divides by batch*h*w - 1 = 0. "
                "Use batch >= 2 (or h*w >= 2), or pass train=False")

    def _check_state(self, routine):
        """The layer's own buffers and fields still fit together (users may assign
        buffers and fields, or reshape a buffer in place; a wrong one would make a
        kernel run out of bounds).  Cheap when nothing changed since the last call."""
        if state_unchanged(self):
            return
        dims = {}
        for name in DIM_FIELDS:
            value = getattr(self, name, None)
            integer = (isinstance(value, numbers.Integral)
                       and not isinstance(value, (bool, np.bool_)))
            if not integer or not 1 <= value <= INDEX_MAX:
                raise (ValueError if integer else TypeError)(
                    f"{routine}: layer.{name} must be a positive int, got "
                    f"{type(value).__name__} {value!r}; the dimensions are set by the "
                    "constructor: create a new BatchNormLayer(batch, w, h, c) instead")
            dims[name] = int(value)
        batch, c, h, w = dims["batch"], dims["c"], dims["h"], dims["w"]
        if ((dims["out_c"], dims["out_h"], dims["out_w"]) != (c, h, w)
                or dims["outputs"] != c * h * w or dims["inputs"] != dims["outputs"]):
            raise ValueError(
                f"{routine}: the layer's dimensions were modified (c, h, w = {c}, "
                f"{h}, {w}; out_c, out_h, out_w = {self.out_c}, {self.out_h}, "
                f"{self.out_w}; outputs = {self.outputs}); create a new BatchNormLayer instead")
        _check_dialect(routine, "layer.dialect", getattr(self, "dialect", None),
                       "assign layer.dialect = darknet_bn.dialects.get_dialect(name)")
        kind = getattr(self, "type", None)
        if not isinstance(kind, str) or kind not in LAYER_TYPES:
            raise ValueError(f"{routine}: layer.type must be one of {LAYER_TYPES}, got "
                             f"{kind!r}; it is set by the constructor (layer_type=...)")
        kernel = getattr(self, "kernel", None)
        if not isinstance(kernel, str) or kernel not in PATHS:
            raise ValueError(f"{routine}: layer.kernel must be one of {sorted(PATHS)}, got "
                             f"{kernel!r}; assign one of them")
        n = batch * dims["outputs"]
        standalone = kind == "batchnorm"
        check_state(routine, self, FIELDS + (("net_delta",) if standalone else ()),
                    (n,) * len(TENSOR_FIELDS) + (c,) * len(CHANNEL_FIELDS)
                    + ((n,) if standalone else ()), fields=STATE_FIELDS)

    # ------------------------------------------------------------------
    def forward(self, input=None, train=True):
        """``forward_batchnorm_layer``: normalize, scale, shift; returns ``output``.

        ``input``: the layer's input (``net.input`` for a ``batchnorm`` layer, the
        conv output for a ``convolutional`` one), copied into ``output`` first.
        ``None`` uses what is already in ``output`` (convolutional only).
        ``train``: batch statistics and rolling update (True) or rolling
        statistics (False).  The returned array is ``self.output``, overwritten by
        the next call.
        """
        r = "BatchNormLayer.forward"
        train = _check_train(r, train)
        self._check_state(r)
        if input is None:
            if self.type == "batchnorm":
                raise ValueError(f"{r}: a standalone batchnorm layer needs its input "
                                 "(net.input); pass it as the first argument")
        else:
            input = self._tensor_arg(r, "input", input, self.output)
        if train:
            self._check_trainable(r)
        # --- validated; nothing above modified state ---
        PATHS[self.kernel][0](self, input, train)
        return self.output

    def backward(self, delta=None, train=True, net_delta=None):
        """``backward_batchnorm_layer``: returns the gradient w.r.t. the layer's input.

        ``delta``: the gradient w.r.t. ``output`` (Darknet's sign: negative
        gradient), copied into ``self.delta`` first; ``None`` uses ``self.delta``
        as it is.  For a ``batchnorm`` layer the result is copied into
        ``net_delta`` (the previous layer's delta; default ``self.net_delta``) and
        returned; for ``convolutional`` it is ``self.delta``, computed in place.
        With ``train=False`` pjreddie uses the rolling statistics (and the stale
        ``x_norm`` of the last training step), AlexeyAB the last batch's.
        """
        r = "BatchNormLayer.backward"
        train = _check_train(r, train)
        self._check_state(r)
        if delta is not None:
            delta = self._tensor_arg(r, "delta", delta, self.delta)
        if net_delta is not None:
            if self.type != "batchnorm":
                raise ValueError(f"{r}: net_delta is only for layer_type='batchnorm'; a "
                                 "convolutional BN stage returns its gradient in l.delta")
            check_buffer(r, "net_delta", net_delta, self.batch * self.outputs, writable=True,
                         what=f"batch*c*h*w = {self.batch}*{self.c}*{self.h}*{self.w}")
            check_no_overlap(r, ("net_delta", net_delta), *self._own_buffers(),
                             *([("delta", delta)] if delta is not None else []))
        if train:
            self._check_trainable(r)
        # --- validated; nothing above modified state ---
        mean, variance = self.mean, self.variance
        if not train and self.dialect.inference_backward_uses_rolling:
            # pjreddie: if(!net.train){ l.mean = l.rolling_mean; l.variance = l.rolling_variance; }
            mean, variance = self.rolling_mean, self.rolling_variance
        if self.type == "batchnorm" and net_delta is None:
            net_delta = self.net_delta
        PATHS[self.kernel][1](self, delta, train, mean, variance, net_delta)
        return self.delta if self.type != "batchnorm" else net_delta

    def update(self, learning_rate, momentum, decay, batch=None):
        """Darknet's update of the BN parameters (``biases``, ``scales``).

        ``axpy_cpu(c, learning_rate/batch, bias_updates, 1, biases, 1);
        scal_cpu(c, momentum, bias_updates, 1)``, then the same for
        ``scale_updates``/``scales``: AlexeyAB's ``update_batchnorm_layer`` and the
        BN part of both forks' ``update_convolutional_layer``.  ``learning_rate/batch``
        is a float32 division.  ``batch`` is Darknet's ``batch*subdivisions``
        (default ``self.batch``).  ``decay`` only applies to conv weights, which this
        stage does not own; it is validated and otherwise unused.

        A pjreddie ``[batchnorm]`` layer has no update on CPU in Darknet: this is
        then a no-op (see ``has_update``) and returns False; otherwise True.
        """
        r = "BatchNormLayer.update"
        lr = check_scalar(r, "learning_rate", learning_rate)
        momentum = check_scalar(r, "momentum", momentum)
        check_scalar(r, "decay", decay)
        batch = None if batch is None else check_dim(r, "batch", batch)
        self._check_state(r)        # also before the no-op: has_update reads the fields
        if not self.has_update:
            return False
        batch = self.batch if batch is None else batch
        rate = np.float32(lr / np.float32(batch))      # float / int -> float
        _axpy_cpu(self.c, rate, self.bias_updates, 1, self.biases, 1)
        _scal_cpu(self.c, momentum, self.bias_updates, 1)
        _axpy_cpu(self.c, rate, self.scale_updates, 1, self.scales, 1)
        _scal_cpu(self.c, momentum, self.scale_updates, 1)
        return True
