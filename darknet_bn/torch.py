"""Darknet's batchnorm as PyTorch modules, bit-exact in training and evaluation.

Needs the ``torch`` extra (``pip install darknet_bn[torch]``); ``import darknet_bn``
alone never imports torch.  Public names:

- ``DarknetBatchNorm2d(num_features, eps=None, momentum=<the fork's>, *,
  dialect="pjreddie", bias_grad="darknet", keep_x_norm=True)``: an ``nn.BatchNorm2d``
  on ``(N, C, H, W)``, the BN stage of a ``[convolutional]`` layer or a standalone
  ``[batchnorm]`` section.
- ``DarknetBatchNorm1d(...)``: an ``nn.BatchNorm1d`` on ``(N, C)``, the BN stage of a
  ``[connected]`` layer (Darknet's h = w = 1), or ``(N, C, L)`` (spatial = L).
- ``convert_batchnorm(module, *, dialect)``: every ``nn.BatchNorm2d``/``BatchNorm1d``
  (subclasses included) and ``nn.SyncBatchNorm`` of a model replaced by the Darknet
  module (like ``SyncBatchNorm.convert_sync_batchnorm``).
- ``from_darknet(cfg, weights, *, dialect)``: ``{cfg layer index: module}`` holding a
  ``.weights`` file's batchnorm parameters, in eval mode.

``momentum`` is the rolling factor of Darknet's update (``scal_cpu(1 - momentum)``,
``axpy_cpu(momentum)``, float32), or None for the cumulative average; ``eps`` is the
fork's and read-only.  Under CPU autocast the input is upcast to float32 and the
output is float32.  ``torch.onnx.export`` records the eval function as ONNX's
``BatchNormalization`` (``_onnx_form``).

The modules keep ``nn.BatchNorm2d``'s state_dict names: ``weight`` (Darknet's
``scales``), ``bias`` (``biases``), ``running_mean``/``running_var``
(``rolling_mean``/``rolling_variance``) and ``num_batches_tracked`` (train forwards).

Training mode runs Darknet's ``forward_batchnorm_layer`` with ``net.train = 1``
(batch statistics, unbiased variance in the normalization, the fork's eps
placement, the rolling update ``scal(keep)``/``axpy(new)`` in float32) and, through
autograd, Darknet's ``backward_batchnorm_layer`` fed with ``delta = grad_output``.
Eval mode runs the forward with ``net.train = 0`` (rolling statistics).  The
arithmetic is ``darknet_bn.fused``'s kernels, called on the tensors' memory,
through the custom ops ``darknet_bn::*`` (so torch.compile, torch.export,
jit.trace and FX record them); an eval call that nothing records or
differentiates calls the inference op's implementation directly (``_eager``).

Signs.  Darknet's ``delta`` is the negative gradient and its updates add it.  The
backward is linear in ``delta`` and treats both signs alike, so feeding it the
ordinary gradient ``grad_output`` gives the ordinary gradients:
``x.grad = dL/dx``, ``weight.grad = dL/dweight`` (Darknet's ``scale_updates`` of one
call, accumulated from zero, with the opposite sign), ``bias.grad = dL/dbias``
(``bias_updates``).  Compared with feeding Darknet ``-grad_output``, only the sign
of a zero result can differ.

``bias.grad``.  pjreddie's backward computes ``backward_bias`` (the sum of
``grad_output`` per channel, plane sums added in batch order).  AlexeyAB's CPU
backward (and hank-ai's) never touches ``bias_updates``: with ``bias_grad="darknet"``
(default) the module returns a zero ``bias.grad`` for those forks, so the bias stays
where it is under ``torch.optim.SGD`` without weight decay, as in Darknet.
``bias_grad="sum"`` opts in to ``backward_bias``'s sum for every fork.

Eval-mode gradients are not Darknet's (an inference-mode Darknet backward reuses
the last training step's ``x_norm``): autograd gets the derivative of the eval
function, ``grad * weight / denom`` with the fork's float64 denominator.

Memory.  The kernels run on the tensors' own memory (no copy) when the input is
contiguous; a non-contiguous or ``channels_last`` input is copied to a contiguous
NCHW tensor first, and the output is contiguous NCHW.  Darknet's ``x``
(a copy of the input) is not written: the saved input serves as ``x``, and the
kernel skips that copy.  Darknet's ``x_norm`` goes to a buffer the module
keeps while training (``keep_x_norm=True``, the default; freed by ``eval()``), or,
with ``keep_x_norm=False``, to per-thread scratch, and the backward recomputes it.
Nothing else larger than a channel vector is allocated besides the output and the
gradients.
"""
import itertools
import numbers
import threading
import warnings
import weakref
from typing import Optional

import numpy as np
import torch
from torch import Tensor, nn

from . import fused
from .darknet.weights import check_record, read_weights
from .dialects import BY_CODE, get_dialect
from .torch_weights import load_darknet_weights, save_darknet_weights

__all__ = ["DarknetBatchNorm2d", "DarknetBatchNorm1d", "convert_batchnorm", "from_darknet",
           "module_from_record", "save_darknet_weights", "load_darknet_weights", "BIAS_GRADS"]

#: ``bias_grad`` choices: the fork's own (``"darknet"``) or ``backward_bias`` always.
BIAS_GRADS = ("darknet", "sum")

_F32 = torch.float32


# --------------------------------------------------------------------------
# tensors <-> the kernels' flat float32 buffers
# --------------------------------------------------------------------------
def _buf(t):
    """The flat float32 numpy view of a contiguous CPU tensor (shares its memory);
    ``detach`` (a new tensor object, about a microsecond) only where autograd needs it."""
    return (t.detach() if t.requires_grad else t).numpy().reshape(-1)


def _dims(x):
    """``(batch, filters, spatial)`` of a contiguous ``(N, C, ...)`` tensor."""
    batch, filters = x.shape[0], x.shape[1]
    return batch, filters, x.numel() // (batch * filters)


def _require_float32_cpu(where, name, t, fix, shape=None):
    """The one tensor check of the module, the ops and ``convert_batchnorm``: ``t`` is a
    contiguous float32 CPU tensor (of ``shape`` when given), else a ``TypeError`` naming
    ``name`` and what it is, with ``fix``."""
    if (isinstance(t, Tensor) and t.dtype == _F32 and t.device.type == "cpu"
            and not t.is_meta and t.is_contiguous()
            and (shape is None or tuple(t.shape) == shape)):
        return
    got = _describe(t) if isinstance(t, Tensor) else type(t).__name__
    of = f" of shape {shape}" if shape is not None else ""
    raise TypeError(f"{where}: {name} must be a contiguous float32 CPU tensor{of}, got {got}; "
                    f"{fix}")


def _check_op(op, x, like_x=(), vectors=(), train=False):
    """The ops are reachable as ``torch.ops.darknet_bn.*``: before a kernel runs on raw
    memory, every tensor must be a contiguous float32 CPU tensor of the size the
    kernel indexes (``like_x``: x's shape; ``vectors``: one value per channel)."""
    where = f"darknet_bn::{op}"
    for name, t in (("x", x),) + like_x + vectors:
        _require_float32_cpu(where, name, t, "use DarknetBatchNorm2d/1d, which prepares its "
                             "arguments")
    if x.dim() < 2 or x.numel() == 0:
        raise ValueError(f"{where}: x must be (N, C, ...) with elements, got shape "
                         f"{tuple(x.shape)}")
    for name, t in like_x:
        if t.shape != x.shape:
            raise ValueError(f"{where}: {name} has shape {tuple(t.shape)}, x "
                             f"{tuple(x.shape)}; they must match")
    for name, t in vectors:
        if tuple(t.shape) != (x.shape[1],):
            raise ValueError(f"{where}: {name} has shape {tuple(t.shape)}, expected "
                             f"({x.shape[1]},): one value per channel of x")
    if train and x.numel() == x.shape[1]:
        raise ValueError(f"{where}: training needs batch*h*w >= 2, got shape "
                         f"{tuple(x.shape)}")


def _prepare(op, x, dialect, **checks):
    """Every op's prologue: ``_check_op`` (``checks``), then ``(Dialect, (batch,
    filters, spatial))`` for the dialect code the op was given."""
    _check_op(op, x, **checks)
    if isinstance(dialect, numbers.Integral) and 0 <= dialect < len(BY_CODE):
        return BY_CODE[dialect], _dims(x)
    raise ValueError(f"darknet_bn::{op}: dialect must be one of "
                     f"{ {d.name: d.code for d in BY_CODE} }, got {dialect!r}")


def rolling_factors(routine, momentum, num_batches_tracked):
    """``(keep, new)``, the float32 factors of the rolling update ``scal_cpu(keep)`` then
    ``axpy_cpu(new)``: ``new = (float)momentum``, ``keep = (float)(1 - momentum)`` (the
    fork's defaults give Darknet's ``.99f``/``.01f`` and ``.9f``/``.1f``).  ``momentum``
    None: the cumulative average ``1/(num_batches_tracked + 1)``, the count including
    this call (``nn.BatchNorm2d``'s ``momentum=None``)."""
    if momentum is None:
        if (not isinstance(num_batches_tracked, Tensor) or num_batches_tracked.numel() != 1
                or num_batches_tracked.dtype.is_floating_point):
            raise TypeError(f"darknet_bn::{routine}: num_batches_tracked must be an integer "
                            f"tensor of one element, got {num_batches_tracked!r}")
        factor = 1.0 / float(int(num_batches_tracked) + 1)
    else:
        factor = float(momentum)
    if not 0.0 <= factor <= 1.0:
        raise ValueError(f"darknet_bn::{routine}: momentum must be in [0, 1] or None, got "
                         f"{momentum!r}")
    return np.float32(1.0 - factor), np.float32(factor)


class _TorchThreads:
    """Keeps torch's intra-op thread count across a kernel call: Numba's OpenMP layer
    and torch share libgomp, and a parallel Numba kernel sets the calling thread's
    OpenMP thread count to Numba's (``torch.get_num_threads()`` would change)."""

    def __enter__(self):
        self.n = torch.get_num_threads()

    def __exit__(self, *exc):
        if torch.get_num_threads() != self.n:
            torch.set_num_threads(self.n)


def _offset(t):
    """Where the tensor ``t``'s data starts in its 4 KiB page (bytes)."""
    return fused.page_offset(t.data_ptr())


def _empty_like(x, offset):
    """A new float32 tensor shaped like ``x`` whose data starts at page offset ``offset``
    (``fused.far_offset`` of the arrays the kernel loads while storing it: no 4K
    aliasing whatever the caller's placement), allocated by numpy: numpy asks the
    kernel for transparent huge pages on large arrays (``madvise(MADV_HUGEPAGE)``), so
    the first touch of a fresh output costs about a quarter of torch's default
    allocation (4 KiB page faults): 4.7 vs 19 ms to allocate and fill 88 MB here.
    torch does the same with ``THP_MEM_ALLOC_ENABLE=1``."""
    return torch.from_numpy(fused.placed_empty(x.numel(), offset).reshape(tuple(x.shape)))


_scratch = threading.local()


def _workspace():
    """This thread's ``fused.Workspace`` (the kernels' scratch, reused across calls)."""
    try:
        return _scratch.workspace
    except AttributeError:
        _scratch.workspace = fused.Workspace()
        return _scratch.workspace


def _scratch_buf(name, n, offset):
    """A per-thread float32 scratch buffer of ``n`` elements (``name``: "x_norm")
    starting at page offset ``offset``, grown to the largest ``n`` seen and reused:
    never allocated per call once grown."""
    store = getattr(_scratch, name, None)
    if store is None:
        store = fused.PlacedBuffer()
        setattr(_scratch, name, store)
    return store.view(n, offset)


class _XNormCache:
    """One module's ``x_norm`` buffer, kept from a training forward to its backward.

    ``ticket`` names the forward call whose ``x_norm`` the buffer holds (tickets are
    never reused); the backward uses the buffer only if its own forward's ticket is
    there, else it recomputes ``x_norm``.  ``lock`` makes writing the buffer and
    setting the ticket one step: a call that finds it taken (another thread using
    the same module) does without the buffer."""

    __slots__ = ("store", "buf", "ticket", "lock")

    def __init__(self):
        self.store = fused.PlacedBuffer()
        self.buf = None
        self.ticket = None
        self.lock = threading.Lock()

    def drop(self):
        with self.lock:
            self.store = fused.PlacedBuffer()
            self.buf = None
            self.ticket = None


_caches = {}                   # cache key (an int the ops take) -> _XNormCache
_cache_keys = itertools.count(1)
_tickets = itertools.count(1)


def _new_cache(owner):
    """A fresh cache key for ``owner``; the cache goes when the owner is collected."""
    key = next(_cache_keys)
    _caches[key] = _XNormCache()
    weakref.finalize(owner, _caches.pop, key, None)
    return key


# --------------------------------------------------------------------------
# custom ops: forward (train), its backward, forward (eval)
# --------------------------------------------------------------------------
@torch.library.custom_op("darknet_bn::batchnorm_train", mutates_args=(), device_types="cpu")
def batchnorm_train(x: Tensor, weight: Tensor, bias: Tensor, running_mean: Tensor,
                    running_var: Tensor, num_batches_tracked: Tensor,
                    momentum: Optional[float], dialect: int, bias_grad: bool, cache: int
                    ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """forward_batchnorm_layer, train = 1: ``(output, mean, variance, rolling_mean,
    rolling_variance, ticket)``.  The rolling update is ``scal_cpu(1 - momentum)`` then
    ``axpy_cpu(momentum)`` with float32 factors (``rolling_factors``); ``momentum``
    None: ``1/(num_batches_tracked + 1)``, the cumulative average.  ``rolling_*`` are
    the updated rolling statistics (new tensors: an op with an autograd formula must
    not mutate its inputs; the module copies them into its buffers).  Darknet's ``x``
    is the input itself (the kernel skips that copy); ``x_norm`` goes to the module's
    cache ``cache`` (0: none) when it is free, else to scratch.  ``ticket`` (one
    int64) tells the backward whether the cache still holds this call's ``x_norm``.
    ``bias_grad`` is for the backward."""
    d, (batch, filters, spatial) = _prepare(
        "batchnorm_train", x, dialect, train=True,
        vectors=(("weight", weight), ("bias", bias), ("running_mean", running_mean),
                 ("running_var", running_var)))
    keep, new = rolling_factors("batchnorm_train", momentum, num_batches_tracked)
    n = x.numel()
    away = fused.far_offset((_offset(x),))     # y and x_norm: half a page from x
    y = _empty_like(x, away)
    mean = torch.empty(filters, dtype=_F32)
    variance = torch.empty(filters, dtype=_F32)
    rolling_mean = running_mean.clone()
    rolling_variance = running_var.clone()
    ticket = next(_tickets)

    def run(x_norm):
        # Darknet's x is the input itself here (save_x = 0: the kernel skips the copy;
        # x_norm only fills the unused argument).
        with _TorchThreads():
            fused.forward_train(_buf(x), _buf(y), x_norm, x_norm, _buf(mean), _buf(variance),
                                _buf(rolling_mean), _buf(rolling_variance), _buf(weight),
                                _buf(bias), batch, filters, spatial, keep, new, d,
                                _workspace(), 0)

    entry = _caches.get(cache) if cache else None
    if entry is not None and entry.lock.acquire(blocking=False):
        try:
            entry.ticket = None
            entry.buf = entry.store.view(n, away)
            run(entry.buf)
            entry.ticket = ticket
        finally:
            entry.lock.release()
    else:
        run(_scratch_buf("x_norm", n, away))
    return (y, mean, variance, rolling_mean, rolling_variance,
            torch.tensor([ticket], dtype=torch.int64))


def _refuse_training_export(what):
    """ONNX has no form of Darknet's training forward (its rolling update, its backward)."""
    if torch.onnx.is_in_onnx_export():
        raise RuntimeError(
            f"{what}: ONNX export of training mode is not supported (Darknet's training "
            "forward, rolling update and backward have no ONNX form); call model.eval() "
            "before torch.onnx.export (the torchscript exporter's default training="
            "TrainingMode.EVAL does)")


@batchnorm_train.register_fake
def _(x, weight, bias, running_mean, running_var, num_batches_tracked, momentum, dialect,
      bias_grad, cache):
    # Fake kernels run as Python also under torch.export's strict (dynamo) capture,
    # which reads torch.onnx.is_in_onnx_export() as False in the traced code.
    _refuse_training_export("darknet_bn::batchnorm_train")
    c = x.shape[1]
    return (x.new_empty(x.shape), x.new_empty(c), x.new_empty(c), x.new_empty(c),
            x.new_empty(c), x.new_empty(1, dtype=torch.int64))


def _infer(x, out, mean, variance, scales, biases, dialect, src=None):
    """The inference kernel (normalize_cpu, scale_bias, add_bias without the ``x`` copy)
    of ``x`` into the flat buffer ``out``; ``dialect`` a ``Dialect``; ``src``: ``x``'s
    flat numpy view when the caller has it."""
    batch, filters = x.shape[0], x.shape[1]
    try:                        # _workspace() written out: the eval path's one more call
        workspace = _scratch.workspace
    except AttributeError:
        workspace = _workspace()
    if src is None:
        src = _buf(x)
    with _TorchThreads():
        fused.forward_infer(src, out, out, mean, variance, scales, biases, batch, filters,
                            src.shape[0] // (batch * filters), dialect, workspace, 0)


def _normalize(x, mean, variance, dialect, out):
    """normalize_cpu of ``x`` with ``mean``/``variance`` into ``out``: the forward's
    ``x_norm`` recomputed, through the inference kernel with scales 1 and biases 0.
    ``xn*1.0f + 0.0f`` is ``xn`` except that -0.0 becomes +0.0, which changes no sum
    the backward takes of it (``backward_scale_cpu``'s ``+= delta*x_norm`` starts at
    +0.0f, so adding a zero of either sign leaves every partial sum as it is)."""
    filters = x.shape[1]
    _infer(x, out, _buf(mean), _buf(variance), np.ones(filters, np.float32),
           np.zeros(filters, np.float32), dialect)


@torch.library.custom_op("darknet_bn::batchnorm_train_backward", mutates_args=(),
                         device_types="cpu")
def batchnorm_train_backward(grad_output: Tensor, x: Tensor, mean: Tensor, variance: Tensor,
                             weight: Tensor, dialect: int, bias_grad: bool, cache: int,
                             ticket: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """backward_batchnorm_layer, train = 1, with ``delta = grad_output`` and fresh
    (zero) ``scale_updates``/``bias_updates``: ``(x grad, weight grad, bias grad)``.
    ``x`` is the forward's input, ``mean``/``variance`` its batch statistics;
    ``x_norm`` comes from the module's cache if it still holds the forward's
    (``ticket``), else it is recomputed."""
    d, (batch, filters, spatial) = _prepare(
        "batchnorm_train_backward", x, dialect, train=True,
        like_x=(("grad_output", grad_output),),
        vectors=(("mean", mean), ("variance", variance), ("weight", weight)))
    n = x.numel()
    x_at, grad_at = _offset(x), _offset(grad_output)
    x_norm_at = fused.far_offset((x_at,))      # where a recomputed x_norm goes
    gx = _empty_like(x, fused.far_offset((x_at, grad_at, x_norm_at)))
    gw = torch.zeros(filters, dtype=_F32)
    gb = torch.zeros(filters, dtype=_F32)
    mean_delta = np.empty(filters, np.float32)
    variance_delta = np.empty(filters, np.float32)
    do_bias = int(d.backward_bias_in_bn or bias_grad)
    delta = _buf(gx)

    def run(x_norm):
        with _TorchThreads():
            fused.backward(_buf(grad_output), delta, delta, _buf(x), x_norm, _buf(mean),
                           _buf(variance), _buf(weight), _buf(gb), _buf(gw), mean_delta,
                           variance_delta, batch, filters, spatial, d, _workspace(), do_bias, 0)

    entry = _caches.get(cache) if cache else None
    if entry is not None and entry.lock.acquire(blocking=False):
        try:
            hit = entry.ticket is not None and entry.ticket == int(ticket[0])
            if hit:
                run(entry.buf[:n])
        finally:
            entry.lock.release()
        if hit:
            return gx, gw, gb
    x_norm = _scratch_buf("x_norm", n, x_norm_at)
    _normalize(x, mean, variance, d, x_norm)
    run(x_norm)
    return gx, gw, gb


@batchnorm_train_backward.register_fake
def _(grad_output, x, mean, variance, weight, dialect, bias_grad, cache, ticket):
    return x.new_empty(x.shape), weight.new_empty(weight.shape), weight.new_empty(weight.shape)


def _train_setup(ctx, inputs, output):
    x, weight, _bias, _rm, _rv, _nbt, _momentum, dialect, bias_grad, cache = inputs
    _y, mean, variance, rolling_mean, rolling_variance, ticket = output
    ctx.mark_non_differentiable(mean, variance, rolling_mean, rolling_variance, ticket)
    ctx.save_for_backward(x, mean, variance, weight, ticket)
    ctx.dialect, ctx.bias_grad, ctx.cache = dialect, bias_grad, cache


def _train_backward(ctx, grad_y, *_grad_statistics):
    if grad_y is None:
        return (None,) * 10
    x, mean, variance, weight, ticket = ctx.saved_tensors
    gx, gw, gb = batchnorm_train_backward(grad_y.contiguous(), x, mean, variance, weight,
                                          ctx.dialect, ctx.bias_grad, ctx.cache, ticket)
    return gx, gw, gb, None, None, None, None, None, None, None


batchnorm_train.register_autograd(_train_backward, setup_context=_train_setup)


@torch.library.custom_op("darknet_bn::batchnorm_infer", mutates_args=(), device_types="cpu")
def batchnorm_infer(x: Tensor, weight: Tensor, bias: Tensor, running_mean: Tensor,
                    running_var: Tensor, dialect: int) -> Tensor:
    """forward_batchnorm_layer, train = 0: normalize with the rolling statistics."""
    d, _ = _prepare("batchnorm_infer", x, dialect,
                    vectors=(("weight", weight), ("bias", bias),
                             ("running_mean", running_mean), ("running_var", running_var)))
    y = _empty_like(x, fused.far_offset((_offset(x),)))
    _infer(x, _buf(y), _buf(running_mean), _buf(running_var), _buf(weight), _buf(bias), d)
    return y


@batchnorm_infer.register_fake
def _(x, weight, bias, running_mean, running_var, dialect):
    return x.new_empty(x.shape)


@torch.library.custom_op("darknet_bn::batchnorm_infer_backward", mutates_args=(),
                         device_types="cpu")
def batchnorm_infer_backward(grad_output: Tensor, x: Tensor, weight: Tensor,
                             running_mean: Tensor, running_var: Tensor, dialect: int
                             ) -> tuple[Tensor, Tensor, Tensor]:
    """The derivative of the eval function ``(float)((x - m)/denom)*w + b``, not
    Darknet's inference-mode backward (which reuses the last training step's
    ``x_norm``): ``x grad = grad*w/denom`` per channel in float64, rounded to float32;
    ``weight grad = sum(grad*x_hat)``, ``bias grad = sum(grad)``.  An opaque op, so a
    compiled graph gives eager's bits."""
    shape = (1, -1) + (1,) * (x.dim() - 2)
    denom = torch.empty(x.shape[1], dtype=torch.float64)
    fused.normalize_denominators(_buf(running_var), denom.numpy(), BY_CODE[dialect])
    denom = denom.view(shape)
    dims = [0] + list(range(2, x.dim()))
    gx = (grad_output.double() * (weight.double().view(shape) / denom)).float()
    x_hat = ((x - running_mean.view(shape)).double() / denom).float()
    return gx, (grad_output * x_hat).sum(dims), grad_output.sum(dims)


@batchnorm_infer_backward.register_fake
def _(grad_output, x, weight, running_mean, running_var, dialect):
    return x.new_empty(x.shape), weight.new_empty(weight.shape), weight.new_empty(weight.shape)


def _infer_setup(ctx, inputs, output):
    x, weight, _bias, running_mean, running_var, dialect = inputs
    ctx.save_for_backward(x, weight, running_mean, running_var)
    ctx.dialect = dialect


def _infer_backward(ctx, grad_y):
    x, weight, running_mean, running_var = ctx.saved_tensors
    gx, gw, gb = batchnorm_infer_backward(grad_y.contiguous(), x, weight, running_mean,
                                          running_var, ctx.dialect)
    return gx, gw, gb, None, None, None


batchnorm_infer.register_autograd(_infer_backward, setup_context=_infer_setup)


def _no_second_order(op):
    def backward(ctx, *grads):
        raise NotImplementedError(
            f"darknet_bn::{op}: second-order gradients through DarknetBatchNorm2d/1d are "
            "not implemented (Darknet has no derivative of its batchnorm backward); a "
            "gradient penalty or Hessian product needs torch.nn.BatchNorm2d/1d")
    return backward


def _nothing_saved(ctx, inputs, output):
    pass


# The backward ops' own backward: a clear error instead of torch's "no autograd formula".
batchnorm_train_backward.register_autograd(_no_second_order("batchnorm_train_backward"),
                                           setup_context=_nothing_saved)
batchnorm_infer_backward.register_autograd(_no_second_order("batchnorm_infer_backward"),
                                           setup_context=_nothing_saved)

# --------------------------------------------------------------------------
# the modules
# --------------------------------------------------------------------------
def _describe(t):
    return f"dtype {t.dtype}, device {t.device}, shape {tuple(t.shape)}"


def _sqrt64(t):
    """The square root in float64 of a float32 tensor (``Dialect.torch_form``'s sqrt)."""
    return t.double().sqrt()


def _formulas():
    """Each fork's normalize_cpu, for messages."""
    return "; ".join(f"{d.name} {d.normalize_text}" for d in BY_CODE)


class _ForkMomentum:
    """The default ``momentum``: the fork's rolling factor (pjreddie .01, AlexeyAB .1)."""

    def __repr__(self):
        return "<the fork's rolling factor>"


FORK_MOMENTUM = _ForkMomentum()

#: The tensor types the quick check of ``_check`` accepts (others get every check).
_PLAIN = (Tensor, nn.Parameter)


def _eager():
    """True when a call is not being recorded: no torch.compile/torch.export (dynamo),
    jit.trace (nor the TorchScript ONNX exporter), dispatch or function mode (FX's
    make_fx, fake tensors, profilers' modes).  Only then may the eval forward skip
    the custom op: a recorder would see no op and keep its output as a constant."""
    return not (torch.compiler.is_compiling() or torch.jit.is_tracing()
                or torch._C._len_torch_dispatch_stack()
                or torch._C._is_torch_function_mode_enabled())


#: Input dtypes that CPU autocast hands the modules; they are upcast to float32.
_AUTOCAST_DTYPES = (torch.bfloat16, torch.float16)


#: The eval fast path's view cache before its first call: (data pointers, numpy views).
_NO_VIEWS = ((), ())


class _DarknetBatchNorm:
    """What DarknetBatchNorm2d and DarknetBatchNorm1d share (placed before
    ``nn.BatchNorm2d``/``nn.BatchNorm1d`` in their bases); ``_NDIMS`` and ``_LAYOUT``
    set the input shapes."""

    _NDIMS = (4,)
    _LAYOUT = "(N, C, H, W)"

    def __init__(self, num_features, eps=None, momentum=FORK_MOMENTUM, affine=True,
                 track_running_stats=True, device=None, dtype=None, *, bias=True,
                 dialect="pjreddie", bias_grad="darknet", keep_x_norm=True):
        routine = type(self).__name__
        if (isinstance(num_features, (bool, np.bool_))
                or not isinstance(num_features, numbers.Integral)):
            raise TypeError(f"{routine}: num_features must be an int (the channel count), got "
                            f"{type(num_features).__name__} {num_features!r}")
        if num_features < 1:
            raise ValueError(f"{routine}: num_features must be >= 1, got {num_features}")
        dialect = get_dialect(dialect, routine)
        for name, value in (("affine", affine), ("track_running_stats", track_running_stats),
                            ("bias", bias)):
            if value is not True:
                raise ValueError(f"{routine}: {name}={value!r}; Darknet's batchnorm always has "
                                 "scales, biases and rolling statistics: leave "
                                 f"{name}=True")
        if device is not None and torch.device(device).type != "cpu":
            raise ValueError(f"{routine}: device={device!r}; darknet_bn runs on the CPU: leave "
                             "device=None (or 'cpu')")
        if dtype is not None and dtype != _F32:
            raise ValueError(f"{routine}: dtype={dtype!r}; Darknet's arithmetic is float32: leave "
                             "dtype=None (or torch.float32)")
        if bias_grad not in BIAS_GRADS:
            raise ValueError(f"{routine}: bias_grad must be one of {BIAS_GRADS}, got "
                             f"{bias_grad!r}; 'darknet' = the fork's own backward, 'sum' = "
                             "backward_bias for every fork")
        if not isinstance(keep_x_norm, (bool, np.bool_)):
            raise TypeError(f"{routine}: keep_x_norm must be True or False, got {keep_x_norm!r}")
        # Set before _NormBase.__init__, which assigns eps and momentum (properties below).
        self.__dict__["dialect"] = dialect            # a Dialect; its name in repr/state
        if eps is not None:
            self._check_eps(eps)
        if momentum is FORK_MOMENTUM:
            # The shortest decimal of the fork's float32 factor: C's literal (.01, .1).
            momentum = float(str(dialect.rolling_new))
        super().__init__(int(num_features), float(dialect.normalize_eps), momentum, True, True,
                         device=None, dtype=_F32)
        self.bias_grad = bias_grad
        self.keep_x_norm = bool(keep_x_norm)
        self._x_norm_cache = _new_cache(self) if self.keep_x_norm else 0
        self.__dict__["_views"] = _NO_VIEWS

    # ---- eps: the fork's, read-only; momentum: checked when set
    @property
    def eps(self):
        """normalize_cpu's epsilon of the fork (float32 ``.000001f`` for pjreddie, outside
        the square root; ``.00001f`` for AlexeyAB, inside).  Read-only."""
        return float(self.dialect.normalize_eps)

    @eps.setter
    def eps(self, value):
        self._check_eps(value)

    def _check_eps(self, value):
        dialect = self.dialect
        if (isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_))
                and np.float32(value) == dialect.normalize_eps):
            return
        raise ValueError(f"{type(self).__name__}: eps is fixed by the fork's formulas "
                         f"({_formulas()}): {dialect.name}'s eps is "
                         f"{np.format_float_positional(dialect.normalize_eps)}f, "
                         f"got {value!r}; to use another eps, use torch.nn.BatchNorm2d/1d")

    @property
    def momentum(self):
        """The rolling factor: ``scal_cpu(1 - momentum)`` then ``axpy_cpu(momentum)`` on
        the rolling statistics, both factors rounded to float32 as C passes them.
        Defaults to the fork's (pjreddie .01, AlexeyAB .1); None: the cumulative average
        ``1/num_batches_tracked`` (as ``nn.BatchNorm2d``)."""
        return self.__dict__["_momentum"]

    @momentum.setter
    def momentum(self, value):
        if value is not None:
            if (isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real)
                    or not 0.0 <= float(value) <= 1.0):
                raise ValueError(f"{type(self).__name__}: momentum must be a float in "
                                 f"[0, 1] or None (cumulative average), got {value!r}")
            value = float(value)
        self.__dict__["_momentum"] = value

    def extra_repr(self):
        return (f"{self.num_features}, dialect={self.dialect.name!r}, eps={self.eps}, "
                f"momentum={self.momentum}, bias_grad={self.bias_grad!r}, "
                f"keep_x_norm={self.keep_x_norm}")

    def train(self, mode=True):
        """As ``nn.Module.train``; leaving training mode frees the ``x_norm`` buffer."""
        if not mode and self._x_norm_cache in _caches:
            _caches[self._x_norm_cache].drop()
        return super().train(mode)

    def reset_running_stats(self):
        """Darknet's initial rolling statistics: mean 0 and variance 0 (as ``calloc``
        leaves them; ``nn.BatchNorm2d`` sets the variance to 1), and a zero counter."""
        with torch.no_grad():
            self.running_mean.zero_()
            self.running_var.zero_()
            self.num_batches_tracked.zero_()

    def _check(self, input):
        """Validate the input and the module's own tensors; returns the contiguous input.
        Raises before anything is modified.  The usual case (plain float32 CPU tensors
        of the right shapes) is recognized in a few attribute reads; anything else
        goes through ``_check_each``, which names what is wrong."""
        c = self.num_features
        if (type(input) is Tensor and input.dtype is _F32 and input.is_cpu
                and input.layout is torch.strided and input.dim() in self._NDIMS
                and input.shape[1] == c and input.numel() > (c if self.training else 0)):
            params, buffers = self._parameters, self._buffers
            for t in (params["weight"], params["bias"], buffers["running_mean"],
                      buffers["running_var"]):
                if (type(t) not in _PLAIN or t.dtype is not _F32 or not t.is_cpu
                        or t.shape != (c,) or not t.is_contiguous()):
                    break
            else:
                return input if input.is_contiguous() else input.contiguous()
        return self._check_each(input)

    def _check_each(self, input):
        routine = f"{type(self).__name__}.forward"
        if not isinstance(input, Tensor):
            raise TypeError(f"{routine}: input must be a torch.Tensor {self._LAYOUT}, got "
                            f"{type(input).__name__}")
        if input.layout != torch.strided:
            raise TypeError(f"{routine}: input has layout {input.layout}; pass a dense tensor "
                            "(input.to_dense())")
        if input.dtype != _F32:
            raise TypeError(f"{routine}: input has dtype {input.dtype}; Darknet's arithmetic is "
                            "float32: pass input.float()")
        if input.device.type != "cpu" or input.is_meta:
            raise ValueError(f"{routine}: input is on device {input.device}; darknet_bn runs on "
                             "the CPU: pass input.cpu() (and keep the module on the CPU)")
        if input.dim() not in self._NDIMS:
            raise ValueError(f"{routine}: input must be {self._LAYOUT}, got shape "
                             f"{tuple(input.shape)}")
        if input.shape[1] != self.num_features:
            raise ValueError(f"{routine}: input has {input.shape[1]} channels (dim 1), the module "
                             f"{self.num_features}; pass (N, {self.num_features}, ...) or "
                             "build the module with the input's channel count")
        if input.numel() == 0:
            raise ValueError(f"{routine}: input shape {tuple(input.shape)} has no elements; pass "
                             "at least one image")
        if self.training and input.numel() == self.num_features:
            raise ValueError(
                f"{routine}: training on shape {tuple(input.shape)} leaves one value per channel "
                "(batch*h*w = 1); Darknet's unbiased variance divides by batch*h*w - 1 = 0. "
                "Use a batch of at least 2 (or h*w >= 2), or call module.eval()")
        for name in ("weight", "bias", "running_mean", "running_var"):
            _require_float32_cpu(routine, f"module.{name}", getattr(self, name),
                                 "keep the module in float32 on the CPU "
                                 "(module.float().cpu())", (self.num_features,))
        return input.contiguous()

    def forward(self, input):
        if (not self.training and type(input) is Tensor and input.dtype is _F32 and _eager()
                and not (torch.is_grad_enabled() and (input.requires_grad
                                                      or self.weight.requires_grad
                                                      or self.bias.requires_grad))):
            return self._infer_now(self._check(input))
        if isinstance(input, torch.fx.Proxy):
            # torch.fx symbolic tracing (FX fusers, quantization): the ops are recorded
            # as calls; they check their arguments when the traced module runs.
            x = input
        else:
            if (isinstance(input, Tensor) and input.dtype in _AUTOCAST_DTYPES
                    and torch.is_autocast_enabled("cpu")):
                input = input.float()             # Darknet's float32 on the upcast input
            if torch.onnx.is_in_onnx_export():
                return self._onnx_form(input)
            if torch.jit.is_tracing():
                # The checks read sizes, which jit.trace turns into constants with a
                # TracerWarning each; they only validate, the recorded op computes.
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", torch.jit.TracerWarning)
                    x = self._check(input)
            else:
                x = self._check(input)
        code = self.dialect.code
        if not self.training:
            return batchnorm_infer(x, self.weight, self.bias, self.running_mean,
                                   self.running_var, code)
        y, _, _, rolling_mean, rolling_variance, _ = batchnorm_train(
            x, self.weight, self.bias, self.running_mean, self.running_var,
            self.num_batches_tracked, self.momentum, code, self.bias_grad == "sum",
            self._x_norm_cache)
        with torch.no_grad():
            self.running_mean.copy_(rolling_mean)
            self.running_var.copy_(rolling_variance)
            self.num_batches_tracked.add_(1)
        return y

    def _infer_now(self, x):
        """The eval forward where nothing records or differentiates it: the op's
        implementation called directly (``batchnorm_infer`` without the dispatcher
        and its repeated checks; same kernel, same bits).  The numpy views of the four
        per-channel tensors are kept between calls (``_views``) and reused while the
        tensors' data pointers stay the same: ``_check`` has just found them contiguous
        float32 of shape ``(C,)``, so the same pointer is the same memory (a kept view
        holds its tensor, which cannot be freed under it)."""
        params, buffers = self._parameters, self._buffers
        mean, variance = buffers["running_mean"], buffers["running_var"]
        weight, bias = params["weight"], params["bias"]
        pointers = (mean.data_ptr(), variance.data_ptr(), weight.data_ptr(), bias.data_ptr())
        cached = self.__dict__["_views"]
        if cached[0] != pointers:
            cached = self.__dict__["_views"] = (pointers, tuple(
                _buf(t) for t in (mean, variance, weight, bias)))
        views = cached[1]
        src = x.numpy().reshape(-1)
        out = fused.placed_empty(src.shape[0], fused.far_offset((_offset(x),)))
        _infer(x, out, views[0], views[1], views[2], views[3], self.dialect, src)
        return torch.from_numpy(out.reshape(tuple(x.shape)))

    def _onnx_form(self, input):
        """What ``torch.onnx.export`` records: the eval function as ONNX's
        ``BatchNormalization`` (``batchnorm_state_dict``'s form: AlexeyAB eps .00001f;
        pjreddie eps 0 and the variance ``(sqrt(v) + .000001f)**2`` in float64, rounded
        once to float32, computed on the buffers so that the exporter folds it)."""
        if self.training:
            _refuse_training_export(type(self).__name__)
        var, eps = self.dialect.torch_form(self.running_var, _sqrt64)
        if var.dtype != _F32:                     # a remapped variance: rounded once
            var = var.float()
        return torch.nn.functional.batch_norm(input, self.running_mean, var, self.weight,
                                              self.bias, False, 0.0, eps)

    # The dialect travels as its name in pickles (torch.save of the whole module, and
    # copy.deepcopy); a copy gets its own x_norm cache.
    def __getstate__(self):
        state = self.__dict__.copy()
        state["dialect"] = self.dialect.name
        state["_x_norm_cache"] = 0
        state["_views"] = _NO_VIEWS
        return state

    def __setstate__(self, state):
        state = dict(state)
        state["dialect"] = get_dialect(state["dialect"])
        state["_views"] = _NO_VIEWS
        super().__setstate__(state)
        self._x_norm_cache = _new_cache(self) if self.keep_x_norm else 0


class DarknetBatchNorm2d(_DarknetBatchNorm, nn.BatchNorm2d):
    """Darknet's batchnorm on ``(N, C, H, W)``: a ``[convolutional]`` layer's BN stage or
    a ``[batchnorm]`` section; an ``nn.BatchNorm2d``.  ``dialect``: ``"pjreddie"``,
    ``"alexeyab"`` or ``"hankai"``; ``momentum``: the rolling factor (the fork's by
    default, None for the cumulative average); ``eps``: the fork's, read-only; ``bias_grad``:
    ``"darknet"`` (the fork's backward) or ``"sum"``; ``keep_x_norm``: keep Darknet's
    ``x_norm`` between forward and backward (faster) or recompute it
    (``nn.BatchNorm2d``'s memory).  ``affine``, ``track_running_stats``, ``device`` and
    ``dtype`` only take their defaults (True, True, CPU, float32).  See the module doc."""

    _NDIMS = (4,)
    _LAYOUT = "(N, C, H, W)"


class DarknetBatchNorm1d(_DarknetBatchNorm, nn.BatchNorm1d):
    """Darknet's batchnorm on ``(N, C)`` (a ``[connected]`` layer's BN stage, h = w = 1)
    or ``(N, C, L)`` (spatial = L); an ``nn.BatchNorm1d``.  Arguments as
    DarknetBatchNorm2d."""

    _NDIMS = (2, 3)
    _LAYOUT = "(N, C) or (N, C, L)"


# --------------------------------------------------------------------------
# convert_batchnorm, from_darknet
# --------------------------------------------------------------------------
# nn.SyncBatchNorm takes any rank: converted for conv nets, the usual case.
_TORCH_BN = ((nn.BatchNorm2d, DarknetBatchNorm2d), (nn.SyncBatchNorm, DarknetBatchNorm2d),
             (nn.BatchNorm1d, DarknetBatchNorm1d))


def _target(module):
    for src, dst in _TORCH_BN:
        if isinstance(module, src):
            return dst
    return None


def _check_convertible(path, module):
    routine = "convert_batchnorm"
    where = f"module {path!r}" if path else "the module"
    if not (module.affine and module.track_running_stats):
        raise ValueError(f"{routine}: {where} ({module}) has affine={module.affine}, "
                         f"track_running_stats={module.track_running_stats}; Darknet's "
                         "batchnorm always has scales, biases and rolling statistics: build "
                         "it with affine=True, track_running_stats=True")
    for name in ("weight", "bias", "running_mean", "running_var"):
        t = getattr(module, name)
        if t is None:
            raise ValueError(f"{routine}: {where} has no {name}; Darknet's batchnorm always has "
                             "scales, biases and rolling statistics")
        _require_float32_cpu(routine, f"{where}.{name}", t, "Darknet's batchnorm runs in float32 "
                             "on the CPU: call model.float().cpu() first")


def convert_batchnorm(module, *, dialect, bias_grad="darknet", keep_x_norm=True):
    """Replace every ``nn.BatchNorm2d``/``nn.BatchNorm1d`` (subclasses included) and
    ``nn.SyncBatchNorm`` in ``module`` (recursively, the module itself included) by
    ``DarknetBatchNorm2d``/``DarknetBatchNorm1d``; returns the converted module, like
    ``nn.SyncBatchNorm.convert_sync_batchnorm``.  ``SyncBatchNorm`` has no fixed rank:
    it becomes ``DarknetBatchNorm2d`` (conv nets).  Any other batchnorm (``_BatchNorm``:
    ``BatchNorm3d``, uninitialized lazy modules) is left in place and named in one
    ``UserWarning``.

    The new modules take over the old ones' ``weight`` and ``bias`` Parameter objects
    (so an optimizer built before still holds them, ``requires_grad`` included),
    their ``running_mean``, ``running_var``, ``num_batches_tracked`` tensors and their
    train/eval mode.  The old ``eps`` and ``momentum`` are not carried over: the
    new modules have the fork's (eps placement and value; rolling factor .01 for
    pjreddie, .1 for AlexeyAB), since Darknet's arithmetic is the point.  Every
    batchnorm is checked before anything is replaced: ``ValueError`` for
    ``affine=False`` or ``track_running_stats=False``, ``TypeError`` for tensors that
    are not float32 on the CPU; ``TypeError`` if ``module`` is not an ``nn.Module``.
    ``bias_grad`` and ``keep_x_norm`` are passed to every new module.
    """
    routine = "convert_batchnorm"
    if not isinstance(module, nn.Module):
        raise TypeError(f"{routine}: module must be a torch.nn.Module, got {type(module).__name__}")
    get_dialect(dialect, routine)
    if bias_grad not in BIAS_GRADS:
        raise ValueError(f"{routine}: bias_grad must be one of {BIAS_GRADS}, got {bias_grad!r}")
    if not isinstance(keep_x_norm, (bool, np.bool_)):
        raise TypeError(f"{routine}: keep_x_norm must be True or False, got {keep_x_norm!r}")
    left = []
    for path, m in module.named_modules():
        if _target(m) is not None:
            _check_convertible(path, m)
        elif isinstance(m, nn.modules.batchnorm._BatchNorm):
            left.append(f"{path or '<top>'!r} ({type(m).__name__})")
    out = _convert(module, dialect, bias_grad, keep_x_norm)
    if left:
        warnings.warn(f"{routine}: left in place (no Darknet counterpart; only BatchNorm1d/2d, "
                      f"their subclasses and SyncBatchNorm are converted): {', '.join(left)}",
                      UserWarning, stacklevel=2)
    return out


def _convert(module, dialect, bias_grad, keep_x_norm):
    out = module
    cls = _target(module)
    if cls is not None:
        out = cls(module.num_features, dialect=dialect, bias_grad=bias_grad,
                  keep_x_norm=keep_x_norm)
        out.weight = module.weight
        out.bias = module.bias
        out.running_mean = module.running_mean
        out.running_var = module.running_var
        out.num_batches_tracked = module.num_batches_tracked
        out.train(module.training)
        if hasattr(module, "qconfig"):
            out.qconfig = module.qconfig
    for name, child in module.named_children():
        out.add_module(name, _convert(child, dialect, bias_grad, keep_x_norm))
    return out


def module_from_record(record, *, dialect=None):
    """The Darknet module (1d for ``[connected]``, else 2d) holding a ``BatchNormRecord``'s
    stored floats (biases zero where the file has none), in eval mode."""
    check_record("module_from_record", record)
    dialect = get_dialect(record.dialect if dialect is None else dialect,
                          "module_from_record")
    cls = DarknetBatchNorm1d if record.section == "connected" else DarknetBatchNorm2d
    module = cls(record.channels, dialect=dialect)
    with torch.no_grad():
        for name, param in (("scales", module.weight), ("biases", module.bias),
                            ("rolling_mean", module.running_mean),
                            ("rolling_variance", module.running_var)):
            arr = getattr(record, name)
            if arr is not None:
                if arr.shape != (record.channels,):
                    raise ValueError(f"module_from_record: layer {record.index} {name} has "
                                     f"shape {arr.shape}, expected ({record.channels},)")
                param.copy_(torch.from_numpy(np.ascontiguousarray(arr, np.float32)))
    return module.eval()


def from_darknet(cfg, weights, *, dialect):
    """``{cfg layer index: module}`` for every batchnorm-carrying layer of a Darknet
    model (``[convolutional]`` with ``batch_normalize=1`` and ``[batchnorm]`` ->
    ``DarknetBatchNorm2d``, ``[connected]`` -> ``DarknetBatchNorm1d``), in eval mode,
    holding the ``.weights`` file's floats bit for bit.  ``dialect`` (required: a
    weights file does not say which fork wrote it) picks the file layout and the
    arithmetic.  Errors are ``read_weights``'.
    """
    dialect = get_dialect(dialect, "from_darknet")
    weights = read_weights(cfg, weights, dialect=dialect)
    return {rec.index: module_from_record(rec, dialect=dialect) for rec in weights.layers}
