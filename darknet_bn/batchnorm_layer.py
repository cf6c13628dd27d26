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

A fork without a standalone layer on the CPU (hank-ai's: ``Dialect.layer_types``)
has only ``"convolutional"``; ``"batchnorm"`` is refused at construction.

Sign convention (Darknet's): ``delta`` is the *negative* gradient of the loss
(``truth - prediction`` at the cost layer), and ``update`` *adds*
``learning_rate/batch * updates``.  ``scale_updates``/``bias_updates`` accumulate
(``+=``) across backward calls until ``update`` decays them by ``momentum``.

The execution paths run on the layer's private ``_Struct`` (Darknet's struct
proper).  Users reach its buffers only through views and checked copies, and its
dimensions, dialect and type are read-only, so it stays consistent by
construction: each call validates its own arguments only.

NaN and Inf are propagated exactly as Darknet propagates them (no checks, no
clipping): a NaN in a channel's input makes that channel's statistics, output
and gradient NaN, and it stays in ``rolling_mean``/``rolling_variance``.
"""
import bisect
import numbers

import numpy as np
from numba import prange

from . import fused
from ._jit import BUF, INT, kernel, sig
from ._validate import (check_buffer, check_dim, check_no_overlap, check_scalar,
                        check_two_values_per_channel)
from .blas import (axpy_cpu, copy_cpu, mean_cpu, mean_delta_cpu, normalize_cpu,
                   normalize_delta_cpu, scal_cpu, variance_cpu, variance_delta_cpu)
from .convolutional_layer import add_bias, backward_bias, scale_bias
from .dialects import get_dialect

LAYER_TYPES = ("batchnorm", "convolutional")

#: The layer's tensor buffers (batch*outputs floats each), in Darknet's order.
TENSOR_FIELDS = ("output", "delta", "x", "x_norm")
#: The layer's per-channel buffers (c floats each).
CHANNEL_FIELDS = ("mean", "variance", "rolling_mean", "rolling_variance", "scales", "biases",
                  "scale_updates", "bias_updates", "mean_delta", "variance_delta")
FIELDS = TENSOR_FIELDS + CHANNEL_FIELDS
#: The layer's dimensions (positive ints, fixed at construction).
DIM_FIELDS = ("batch", "c", "h", "w", "out_c", "out_h", "out_w", "outputs", "inputs")


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
    routine = "backward_scale_cpu"
    batch, n, size = (check_dim(routine, "batch", batch), check_dim(routine, "n", n),
                      check_dim(routine, "size", size))
    what = f"batch*n*size = {batch}*{n}*{size}"
    check_buffer(routine, "x_norm", x_norm, batch * n * size, what=what)
    check_buffer(routine, "delta", delta, batch * n * size, what=what)
    check_buffer(routine, "scale_updates", scale_updates, n, writable=True,
                 what=f"one value per channel, n = {n}")
    check_no_overlap(routine, ("scale_updates", scale_updates), ("x_norm", x_norm),
                     ("delta", delta))
    _backward_scale_cpu(x_norm, delta, batch, n, size, scale_updates)


# --------------------------------------------------------------------------
# The layer: one-to-one compositions of the routines ("blas" path)
# --------------------------------------------------------------------------
def _forward_blas(l, input, train):
    """``forward_batchnorm_layer``, composed of the routines exactly as the C does.

    ``input`` (validated, or None when the data is already in ``l.output``) is
    copied into ``l.output`` first: ``copy_cpu(l.outputs*l.batch, net.input, 1,
    l.output, 1)`` for ``[batchnorm]``; the conv output for ``[convolutional]``.
    Each routine is the public one (it checks its arguments again: this path is
    the reference, not the fast one).
    """
    dialect, n, sp = l.dialect, l.batch * l.outputs, l.out_h * l.out_w
    if input is not None:
        copy_cpu(n, input, 1, l.output, 1)
    if dialect.copy_x_in_inference:                          # pjreddie: before the branch
        copy_cpu(n, l.output, 1, l.x, 1)
    if train:
        mean_cpu(l.output, l.batch, l.out_c, sp, l.mean)
        variance_cpu(l.output, l.mean, l.batch, l.out_c, sp, l.variance)
        scal_cpu(l.out_c, dialect.rolling_keep, l.rolling_mean, 1)
        axpy_cpu(l.out_c, dialect.rolling_new, l.mean, 1, l.rolling_mean, 1)
        scal_cpu(l.out_c, dialect.rolling_keep, l.rolling_variance, 1)
        axpy_cpu(l.out_c, dialect.rolling_new, l.variance, 1, l.rolling_variance, 1)
        if not dialect.copy_x_in_inference:                  # alexeyab: training only
            copy_cpu(n, l.output, 1, l.x, 1)
        normalize_cpu(l.output, l.mean, l.variance, l.batch, l.out_c, sp, dialect=dialect)
        copy_cpu(n, l.output, 1, l.x_norm, 1)
    else:
        normalize_cpu(l.output, l.rolling_mean, l.rolling_variance, l.batch, l.out_c, sp,
                      dialect=dialect)
    scale_bias(l.output, l.scales, l.batch, l.out_c, sp)
    add_bias(l.output, l.biases, l.batch, l.out_c, sp)


def _backward_blas(l, delta, train, mean, variance, net_delta):
    """``backward_batchnorm_layer``, composed of the routines exactly as the C does.

    ``delta`` (validated, or None when already in ``l.delta``) is copied into
    ``l.delta`` first.  ``mean``/``variance`` are the statistics the dialect uses
    (rolling ones for a pjreddie inference-mode backward).  ``net_delta`` (a
    ``[batchnorm]`` layer's output gradient buffer, else None) receives
    ``copy_cpu(l.outputs*l.batch, l.delta, 1, net.delta, 1)`` at the end.
    """
    dialect, n, sp = l.dialect, l.batch * l.outputs, l.out_h * l.out_w
    if delta is not None:
        copy_cpu(n, delta, 1, l.delta, 1)
    if dialect.backward_bias_in_bn:
        backward_bias(l.bias_updates, l.delta, l.batch, l.out_c, sp)
    backward_scale_cpu(l.x_norm, l.delta, l.batch, l.out_c, sp, l.scale_updates)
    scale_bias(l.delta, l.scales, l.batch, l.out_c, sp)
    mean_delta_cpu(l.delta, variance, l.batch, l.out_c, sp, l.mean_delta, dialect=dialect)
    variance_delta_cpu(l.x, l.delta, mean, variance, l.batch, l.out_c, sp, l.variance_delta,
                       dialect=dialect)
    normalize_delta_cpu(l.x, mean, variance, l.mean_delta, l.variance_delta,
                        l.batch, l.out_c, sp, l.delta, dialect=dialect)
    if net_delta is not None:
        copy_cpu(n, l.delta, 1, net_delta, 1)


def _in_own_buffer(arr, buffer):
    """``arr``, or, when the caller's array is read-only, ``buffer`` holding a copy of it
    (the kernels then run in place, as they do on ``l.forward(None)``).  A read-only
    array is another Numba type: passing it on compiled a second specialization of
    the fused kernel on its first call (25 s here), for an array it only reads."""
    if arr is None or arr.flags.writeable:
        return arr
    np.copyto(buffer, arr)
    return None


def _forward_fused(l, input, train):
    """``forward_batchnorm_layer`` through the fused kernel API (``darknet_bn.fused``):
    one kernel per pass, bit-identical to ``_forward_blas``."""
    dialect = l.dialect
    input = _in_own_buffer(input, l.output)
    src = l.output if input is None else input
    if train:
        fused.forward_train(src, l.output, l.x, l.x_norm, l.mean, l.variance, l.rolling_mean,
                            l.rolling_variance, l.scales, l.biases, l.batch, l.out_c, l.spatial,
                            dialect.rolling_keep, dialect.rolling_new, dialect, l.workspace, 1)
    else:
        fused.forward_infer(src, l.output, l.x, l.rolling_mean, l.rolling_variance, l.scales,
                            l.biases, l.batch, l.out_c, l.spatial, dialect, l.workspace,
                            int(dialect.copy_x_in_inference))


def _backward_fused(l, delta, train, mean, variance, net_delta):
    """``backward_batchnorm_layer`` through the fused kernel API; same contract as
    ``_backward_blas``."""
    write_net = net_delta is not None
    delta = _in_own_buffer(delta, l.delta)
    fused.backward(l.delta if delta is None else delta, l.delta,
                   net_delta if write_net else l.delta, l.x, l.x_norm, mean, variance,
                   l.scales, l.bias_updates, l.scale_updates, l.mean_delta, l.variance_delta,
                   l.batch, l.out_c, l.spatial, l.dialect, l.workspace,
                   int(l.dialect.backward_bias_in_bn), int(write_net))


#: Execution paths: name -> (forward(l, input, train),
#: backward(l, delta, train, mean, variance, net_delta)), where ``l`` is the
#: layer's ``_Struct``; the layer validates every argument before calling them.
#: "blas" composes the one-to-one routines exactly as batchnorm_layer.c does.
#: "fused" runs the kernel API of ``darknet_bn.fused``: bit-identical, faster.
PATHS = {"blas": (_forward_blas, _backward_blas), "fused": (_forward_fused, _backward_fused)}
DEFAULT_KERNEL = "fused"


def forward_batchnorm_layer(l, input=None, *positional, train=None):
    """``forward_batchnorm_layer`` (batchnorm_layer.c); same as ``l.forward``."""
    return l.forward(input, *positional, train=train)


def backward_batchnorm_layer(l, delta=None, *positional, train=None, net_delta=None):
    """``backward_batchnorm_layer`` (batchnorm_layer.c); same as ``l.backward``."""
    return l.backward(delta, *positional, train=train, net_delta=net_delta)


def update_batchnorm_layer(l, batch, learning_rate, momentum, decay):
    """``update_batchnorm_layer`` (AlexeyAB's batchnorm_layer.c); same as ``l.update``."""
    return l.update(learning_rate, momentum, decay, batch)


def _check_train(routine, train, positional):
    """Darknet's ``net.train``, always explicit: a keyword argument, True/False or 1/0."""
    if positional or train is None:
        got = (f"{len(positional)} more positional argument(s)" if positional
               else "no train argument")
        raise TypeError(f"{routine}: pass train=True or train=False as a keyword (Darknet's "
                        "net.train: batch statistics that update the rolling ones, or "
                        f"inference with the rolling statistics); got {got}")
    if isinstance(train, (bool, np.bool_)) or (isinstance(train, numbers.Integral)
                                               and int(train) in (0, 1)):
        return bool(train)
    raise TypeError(f"{routine}: train must be True/False (or Darknet's 1/0), got {train!r}")


def _check_trainable(routine, s):
    check_two_values_per_channel(routine, s.batch, s.out_h * s.out_w, spatial_name="h*w",
                                 fix=", or pass train=False")


class _Struct:
    """Darknet's ``layer`` struct proper: what the execution paths read and write.

    Dimensions, dialect and layer type are plain attributes; the buffers are
    disjoint flat float32 views of one block.  Only ``BatchNormLayer`` holds it, and
    it hands out views of the buffers, never these arrays: nothing outside can
    reshape, re-type, resize, freeze or replace them.  ``spans`` lists each
    buffer's ``(start address, end address, name)``, sorted, for aliasing checks.
    """

    def __init__(self, batch, w, h, c, dialect, layer_type):
        self.batch, self.w, self.h, self.c = batch, w, h, c
        self.out_w, self.out_h, self.out_c = w, h, c
        self.spatial = h * w
        self.outputs = self.inputs = c * h * w
        self.workspace = fused.Workspace()
        self.dialect, self.type = dialect, layer_type
        # net.delta of a standalone layer: the previous layer's delta, kept here
        # when the caller does not pass one, so backward allocates nothing.
        names = FIELDS + (("net_delta",) if layer_type == "batchnorm" else ())
        sizes = [c if name in CHANNEL_FIELDS else batch * self.outputs for name in names]
        starts, total = _layout(sizes, [PAGE_OFFSETS[name] for name in names])
        raw = np.zeros(total + _ALIGN, dtype=np.float32)
        skip = (-raw.__array_interface__["data"][0]) % (4 * _ALIGN) // 4   # 64-byte aligned
        self.block = raw[skip:skip + total]
        spans = []
        for name, size, start in zip(names, sizes, starts):
            view = self.block[start:start + size]
            setattr(self, name, view)
            address = view.__array_interface__["data"][0]
            spans.append((address, address + view.nbytes, name))
        self.net_delta = getattr(self, "net_delta", None)
        self.scales[:] = 1
        self.spans = sorted(spans)
        self.starts = [s[0] for s in self.spans]


_ALIGN = 16                 # floats: the block starts on a 64-byte boundary
_PAGE = 1024                # floats: 4 KiB, the address period of L1 sets and 4K aliasing

#: Where each buffer starts in a 4 KiB page, in floats, relative to the block's start
#: (``_layout``).  The tensor buffers sit 64 bytes apart, each stored stream at or
#: *below* the streams the same pass loads at the same index (mod 4 KiB): forward
#: loads ``output`` (in place) and stores ``x``, ``x_norm``, ``output``; the backward's
#: normalize pass loads ``x`` and ``delta`` (in place) and stores ``delta`` and
#: ``net_delta``.  The per-channel buffers follow from 1 KiB on, 256 bytes apart.
PAGE_OFFSETS = dict({"output": 0, "x": -16, "delta": -32, "x_norm": -48, "net_delta": -64},
                    **{name: 256 + 64 * i for i, name in enumerate(CHANNEL_FIELDS)})


def _padded(size):
    return -(-size // _ALIGN) * _ALIGN


def _layout(sizes, offsets):
    """``(starts, total)``: where each buffer begins in the block, and the block's size.

    Buffer ``i`` begins at the first position after buffer ``i - 1`` whose offset in
    a 4 KiB page is ``offsets[i]`` floats (mod 4 KiB; ``PAGE_OFFSETS``), so no two
    buffers share a page offset (each start is 64-byte aligned).  Packed end to end,
    buffers whose sizes are multiples of 4 KiB (e.g. ``c = 1024``, or ``batch*c*h*w``
    a multiple of 1024) would all begin at the same page offset, and a kernel that
    stores to one (``mean_delta[i]``) and then loads the same index of another
    (``x[j*c + i]``) hits 4K aliasing (the load waits for an unrelated store with the
    same low 12 address bits) and competes for the same L1 sets: the FC-like train
    steps (256,1024,1,1) and (64,4096,1,1) took 1.06 - 1.28x as long packed.  A
    stored stream a little *after* a loaded one (0 < store - load < ~700 bytes mod
    4 KiB) hits the same stall on every element; ``PAGE_OFFSETS`` keeps each pass's
    stores at or below its loads (docs/benchmarks.md, "Buffer placement", "Input
    placement").  The cost is at most 4 KiB of padding per buffer.
    """
    starts, pos = [], 0
    for offset, size in zip(offsets, sizes):
        pos += (offset - pos) % _PAGE
        starts.append(pos)
        pos += size
    return starts, _padded(pos)


class _Fixed:
    """A dimension or kind of the layer: read-only, fixed at construction."""

    def __set_name__(self, owner, name):
        self.name = name

    def __get__(self, layer, owner=None):
        return self if layer is None else getattr(layer._s, self.name)

    def __set__(self, layer, value):
        raise AttributeError(
            f"BatchNormLayer.{self.name} is fixed at construction (the buffers are sized "
            f"and the paths chosen for it); create a new BatchNormLayer(batch, w, h, c, "
            f"dialect=..., layer_type=...) instead")

    def __delete__(self, layer):
        self.__set__(layer, None)


class _Buffer:
    """A buffer of the layer.  Reading gives a fresh flat view of the layer's own array:
    values written through it reach the kernels, while reshaping, re-typing or
    freezing the view does not affect the layer.  Assigning copies a float32
    array of the same size in (``l.scales = w``; a tensor also as (batch, c, h, w))."""

    def __init__(self, tensor):
        self.tensor = tensor

    def __set_name__(self, owner, name):
        self.name = name

    def __get__(self, layer, owner=None):
        if layer is None:
            return self
        own = getattr(layer._s, self.name)
        return None if own is None else own[:]

    def __set__(self, layer, value):
        r, own = f"BatchNormLayer.{self.name}", getattr(layer._s, self.name)
        if own is None:
            raise ValueError(f"{r}: a layer_type={layer.type!r} layer has no {self.name} "
                             "(only a standalone 'batchnorm' layer has one)")
        if self.tensor:
            value = layer._tensor_shape(r, self.name, value)
        else:
            check_buffer(r, self.name, value, layer.c, what=f"one value per channel, c = "
                         f"{layer.c}")
        np.copyto(own, value)            # overlap-safe, also for l.x = l.output

    def __delete__(self, layer):
        raise AttributeError(f"BatchNormLayer.{self.name} cannot be deleted; write zeros "
                             f"into it instead (l.{self.name}[:] = 0)")


class BatchNormLayer:
    """Darknet's layer struct for a batchnorm stage (``make_batchnorm_layer``).

    ``BatchNormLayer(batch, w, h, c, *, dialect="pjreddie", layer_type="batchnorm",
    kernel=DEFAULT_KERNEL)``: the argument order of Darknet's
    ``make_batchnorm_layer(batch, w, h, c)``.  All buffers are allocated (fixing
    pjreddie's CPU build, which leaves ``x``, ``x_norm``, ``mean_delta`` and
    ``variance_delta`` unallocated); ``scales`` start at 1, everything else at 0.

    The buffers (``output``, ``scales``, ... and ``net_delta``) read as flat float32
    views of the layer's own arrays: write values in place (``l.scales[:] = w``)
    or assign (``l.scales = w`` copies ``w`` in after checking it).  The
    dimensions, ``dialect`` and ``type`` are read-only; ``kernel`` may be switched.
    """

    batch, c, h, w, out_c, out_h, out_w, outputs, inputs = (_Fixed() for _ in DIM_FIELDS)
    dialect, type = _Fixed(), _Fixed()
    output, delta, x, x_norm = (_Buffer(tensor=True) for _ in TENSOR_FIELDS)
    (mean, variance, rolling_mean, rolling_variance, scales, biases, scale_updates,
     bias_updates, mean_delta, variance_delta) = (_Buffer(tensor=False) for _ in CHANNEL_FIELDS)
    net_delta = _Buffer(tensor=True)

    def __init__(self, batch, w, h, c, *, dialect="pjreddie", layer_type="batchnorm",
                 kernel=None):
        routine = "BatchNormLayer"
        batch, w, h, c = (check_dim(routine, "batch", batch), check_dim(routine, "w", w),
                          check_dim(routine, "h", h), check_dim(routine, "c", c))
        dialect = get_dialect(dialect, routine)
        if not isinstance(layer_type, str) or layer_type not in LAYER_TYPES:
            raise ValueError(f"{routine}: unknown layer_type {layer_type!r}; use one of "
                             f"{LAYER_TYPES}")
        if layer_type not in dialect.layer_types:
            raise ValueError(f"{routine}: layer_type={layer_type!r}: "
                             f"{dialect.no_standalone_text()}; pass "
                             f"layer_type={dialect.layer_types[0]!r}")
        kernel = _check_kernel(routine, DEFAULT_KERNEL if kernel is None else kernel)
        n = batch * c * h * w
        names = FIELDS + ("net_delta",)
        floats = _layout([c if name in CHANNEL_FIELDS else n for name in names],
                         [PAGE_OFFSETS[name] for name in names])[1]
        if (floats + _ALIGN) * np.dtype(np.float32).itemsize > np.iinfo(np.intp).max:
            raise ValueError(f"{routine}: batch*c*h*w = {batch}*{c}*{h}*{w} = "
                             f"{n} floats per buffer cannot be allocated; use smaller "
                             "dimensions")
        self._s = _Struct(batch, w, h, c, dialect, layer_type)
        self._kernel = kernel

    def __reduce__(self):
        """Pickle and deepcopy: a new layer with copies of the buffers' values."""
        buffers = self.buffers()
        if self._s.net_delta is not None:
            buffers["net_delta"] = self.net_delta
        return _rebuild, ((self.batch, self.w, self.h, self.c, self.dialect.name, self.type,
                           self._kernel), buffers)

    # ------------------------------------------------------------------
    def __repr__(self):
        return (f"BatchNormLayer(batch={self.batch}, w={self.w}, h={self.h}, c={self.c}, "
                f"dialect={self.dialect.name!r}, layer_type={self.type!r}, "
                f"kernel={self._kernel!r})")

    @property
    def kernel(self):
        """The execution path (a key of ``PATHS``); may be switched at any time."""
        return self._kernel

    @kernel.setter
    def kernel(self, value):
        self._kernel = _check_kernel("BatchNormLayer.kernel", value)

    @property
    def has_update(self):
        """False for a pjreddie ``[batchnorm]`` layer: Darknet has no CPU update for it."""
        return self.type == "convolutional" or self.dialect.standalone_update

    def buffers(self):
        """The layer's buffers by Darknet name: views of its own arrays (not copies)."""
        return {name: getattr(self._s, name)[:] for name in FIELDS}

    def _tensor_shape(self, routine, name, arr):
        """A tensor argument as a flat float32 buffer of batch*outputs elements; also
        accepts a C-contiguous (batch, c, h, w) array."""
        s = self._s
        if isinstance(arr, np.ndarray) and arr.ndim == 4:
            if arr.shape != (s.batch, s.c, s.h, s.w):
                raise ValueError(
                    f"{routine}: {name} has shape {arr.shape}, expected "
                    f"(batch, c, h, w) = {(s.batch, s.c, s.h, s.w)}")
            if not arr.flags.c_contiguous:
                raise ValueError(
                    f"{routine}: {name} is not C-contiguous (strides {arr.strides}); "
                    f"pass np.ascontiguousarray({name})")
            arr = arr.reshape(-1)
        return check_buffer(routine, name, arr, s.batch * s.outputs,
                            what=f"batch*c*h*w = {s.batch}*{s.c}*{s.h}*{s.w}")

    def _own_buffer(self, arr):
        """``(name, same start)`` of the layer's buffer that ``arr`` (a flat array)
        shares memory with, or None."""
        s = self._s
        if not np.may_share_memory(arr, s.block):
            return None
        start = arr.__array_interface__["data"][0]
        # the last buffer starting before arr ends (the spans are disjoint and sorted)
        i = bisect.bisect_left(s.starts, start + arr.nbytes) - 1
        if arr.nbytes and i >= 0 and s.spans[i][1] > start:
            return s.spans[i][2], s.spans[i][0] == start
        return None

    def _tensor_arg(self, routine, name, arr, target):
        """A tensor argument that will be copied into the buffer ``target``; None
        when it is that buffer itself (e.g. ``l.forward(l.output)``)."""
        arr = self._tensor_shape(routine, name, arr)
        hit = self._own_buffer(arr)
        if hit is None:
            return arr
        own, same_start = hit
        if same_start and own == target:
            return None
        raise ValueError(
            f"{routine}: {name} shares memory with layer.{own}; the layer writes its buffers "
            f"in parallel, so pass a separate array (e.g. {name}.copy())")

    # ------------------------------------------------------------------
    def forward(self, input=None, *positional, train=None):
        """``forward_batchnorm_layer``: normalize, scale, shift; returns ``output``.

        ``input``: the layer's input (``net.input`` for a ``batchnorm`` layer, the
        conv output for a ``convolutional`` one), copied into ``output`` first.
        ``None`` uses what is already in ``output`` (convolutional only).
        ``train`` (keyword, required: Darknet's ``net.train``): batch statistics
        and rolling update (True) or rolling statistics (False).  The returned
        array is a view of ``output``, overwritten by the next call.
        """
        routine = "BatchNormLayer.forward"
        train = _check_train(routine, train, positional)
        s = self._s
        if input is None:
            if s.type == "batchnorm":
                raise ValueError(f"{routine}: a standalone batchnorm layer needs its input "
                                 "(net.input); pass it as the first argument")
        else:
            input = self._tensor_arg(routine, "input", input, "output")
        if train:
            _check_trainable(routine, s)
        # --- validated; nothing above modified state ---
        PATHS[self._kernel][0](s, input, train)
        return s.output[:]

    def backward(self, delta=None, *positional, train=None, net_delta=None):
        """``backward_batchnorm_layer``: returns the gradient w.r.t. the layer's input.

        ``delta``: the gradient w.r.t. ``output`` (Darknet's sign: negative
        gradient), copied into ``self.delta`` first; ``None`` uses ``self.delta``
        as it is.  ``train`` (keyword, required) as in ``forward``.  For a
        ``batchnorm`` layer the result is copied into ``net_delta`` (the previous
        layer's delta; default: the layer's own ``net_delta``) and returned; for
        ``convolutional`` it is (a view of) ``self.delta``, computed in place.
        With ``train=False`` pjreddie uses the rolling statistics (and the stale
        ``x_norm`` of the last training step), AlexeyAB the last batch's.
        """
        routine = "BatchNormLayer.backward"
        train = _check_train(routine, train, positional)
        s = self._s
        if delta is not None:
            delta = self._tensor_arg(routine, "delta", delta, "delta")
        if net_delta is not None:
            if s.type != "batchnorm":
                raise ValueError(f"{routine}: net_delta is only for layer_type='batchnorm'; a "
                                 "convolutional BN stage returns its gradient in l.delta")
            check_buffer(routine, "net_delta", net_delta, s.batch * s.outputs, writable=True,
                         what=f"batch*c*h*w = {s.batch}*{s.c}*{s.h}*{s.w}")
            hit = self._own_buffer(net_delta)
            if hit == ("net_delta", True):
                net_delta = None                       # the layer's own: the default
            elif hit is not None:
                raise ValueError(f"{routine}: net_delta shares memory with layer.{hit[0]}; pass a "
                                 "separate array (or none: the layer's own net_delta)")
            elif delta is not None:
                check_no_overlap(routine, ("net_delta", net_delta), ("delta", delta))
        if train:
            _check_trainable(routine, s)
        # --- validated; nothing above modified state ---
        mean, variance = s.mean, s.variance
        if not train and s.dialect.inference_backward_uses_rolling:
            # pjreddie: if(!net.train){ l.mean = l.rolling_mean; l.variance = l.rolling_variance; }
            mean, variance = s.rolling_mean, s.rolling_variance
        out = net_delta
        if s.type == "batchnorm" and net_delta is None:
            net_delta, out = s.net_delta, s.net_delta[:]
        PATHS[self._kernel][1](s, delta, train, mean, variance, net_delta)
        return s.delta[:] if s.type != "batchnorm" else out

    def update(self, learning_rate, momentum, decay, batch=None):
        """Darknet's update of the BN parameters (``biases``, ``scales``).

        ``axpy_cpu(c, learning_rate/batch, bias_updates, 1, biases, 1);
        scal_cpu(c, momentum, bias_updates, 1)``, then the same for
        ``scale_updates``/``scales``: AlexeyAB's ``update_batchnorm_layer`` and the
        BN part of every fork's ``update_convolutional_layer``.  ``learning_rate/batch``
        is a float32 division.  ``batch`` is Darknet's ``batch*subdivisions``
        (default ``self.batch``).  ``decay`` only applies to conv weights, which this
        stage does not own; it is validated and otherwise unused.

        A pjreddie ``[batchnorm]`` layer has no update on CPU in Darknet: this is
        then a no-op (see ``has_update``) and returns False; otherwise True.
        """
        routine = "BatchNormLayer.update"
        lr = check_scalar(routine, "learning_rate", learning_rate)
        momentum = check_scalar(routine, "momentum", momentum)
        check_scalar(routine, "decay", decay)
        batch = None if batch is None else check_dim(routine, "batch", batch)
        if not self.has_update:
            return False
        s = self._s
        batch = s.batch if batch is None else batch
        rate = np.float32(lr / np.float32(batch))      # float / int -> float
        axpy_cpu(s.c, rate, s.bias_updates, 1, s.biases, 1)
        scal_cpu(s.c, momentum, s.bias_updates, 1)
        axpy_cpu(s.c, rate, s.scale_updates, 1, s.scales, 1)
        scal_cpu(s.c, momentum, s.scale_updates, 1)
        return True


def _check_kernel(routine, kernel):
    if not isinstance(kernel, str) or kernel not in PATHS:
        raise ValueError(f"{routine}: unknown kernel {kernel!r}; use one of {sorted(PATHS)}")
    return kernel


def _rebuild(args, buffers):
    batch, w, h, c, dialect, layer_type, kernel = args
    layer = BatchNormLayer(batch, w, h, c, dialect=dialect, layer_type=layer_type,
                           kernel=kernel)
    for name, values in buffers.items():
        setattr(layer, name, values)
    return layer
