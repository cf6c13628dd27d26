"""What bench.py, targets.py and profile_step.py share: shapes, data, the timed
implementations and the round-robin timer.  A leaf: it imports no other benchmark
module but ``cs231n``.

Dimensions: a shape is (N, C, H, W) = (batch, channels, height, width); the
layer's flat buffers hold N*C*H*W float32 values, index (b*C + c)*H*W + k.
Inputs are random (seeded) with a per-channel offset and scale, as a conv
output would be; ``delta`` is random.  Nothing here is a test: timings are
printed, never asserted.
"""
import os
import statistics
import time

import numpy as np

from darknet_bn import DIALECTS, BatchNormLayer, get_dialect

from . import cs231n

#: The forks, by name in the registry's order: the --dialect choices and the default sweep.
DIALECT_NAMES = tuple(DIALECTS)

#: The benchmark shapes: small conv, YOLO-like conv, large plane, FC-like.
SHAPES = ((16, 64, 28, 28), (4, 128, 104, 104), (4, 32, 416, 416), (256, 1024, 1, 1))

#: Darknet's own C (-Ofast), train step on (4, 128, 104, 104), measured once on this
#: machine by others; quoted, not re-measured here.
DARKNET_C_MS = {(4, 128, 104, 104): 45.0}


def parse_shape(text):
    parts = tuple(int(part) for part in text.lower().replace("x", ",").split(",") if part)
    if len(parts) != 4 or min(parts) < 1:
        raise ValueError(f"shape must be N,C,H,W (four positive ints), got {text!r}")
    return parts


def shape_str(shape):
    return "x".join(str(size) for size in shape)


def make_data(shape, seed=0):
    """(x, delta, scales, biases, rolling_mean, rolling_variance), float32."""
    n, c, h, w = shape
    rng = np.random.default_rng(seed)
    offset = rng.normal(0, 2, size=(1, c, 1, 1)).astype(np.float32)
    spread = rng.uniform(0.5, 3, size=(1, c, 1, 1)).astype(np.float32)
    x = (rng.standard_normal(shape, dtype=np.float32) * spread + offset).astype(np.float32)
    delta = rng.standard_normal(shape, dtype=np.float32)
    scales = rng.uniform(0.5, 1.5, size=c).astype(np.float32)
    biases = rng.normal(0, 0.1, size=c).astype(np.float32)
    rmean = offset.reshape(-1).copy()
    rvar = (spread.reshape(-1) ** 2).astype(np.float32)
    return x, delta, scales, biases, rmean, rvar


def make_layer(shape, dialect, kernel, layer_type=None, seed=0):
    """A BatchNormLayer with the seeded parameters; returns (layer, x_flat, delta_flat).
    ``layer_type`` None: the fork's first (``Dialect.layer_types``): the standalone
    ``[batchnorm]`` layer where the fork has one, else the convolutional stage."""
    n, c, h, w = shape
    x, delta, scales, biases, rmean, rvar = make_data(shape, seed)
    if layer_type is None:
        layer_type = get_dialect(dialect).layer_types[0]
    layer = BatchNormLayer(n, w, h, c, dialect=dialect, layer_type=layer_type, kernel=kernel)
    layer.scales[:] = scales
    layer.biases[:] = biases
    layer.rolling_mean[:] = rmean
    layer.rolling_variance[:] = rvar
    return layer, x.reshape(-1), delta.reshape(-1)


def threads():
    import numba
    return numba.get_num_threads()


def timed(fn):
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def load_average():
    return "load average %.2f %.2f %.2f" % os.getloadavg()


# --------------------------------------------------------------------------
# the round-robin timer
# --------------------------------------------------------------------------
def round_robin(fns, rounds, inner=1):
    """Times the callables ``{name: fn}`` side by side: two warm-up calls each
    (compilation, page faults, caches), then ``rounds`` rounds; round ``r`` starts at
    the ``r``-th callable (mod their number, so with two the order alternates) and runs
    each ``inner`` times, keeping its fastest.  Returns ``{name: [seconds per round]}``."""
    for fn in fns.values():
        fn()
        fn()
    names = list(fns)
    times = {name: [] for name in names}
    for r in range(rounds if names else 0):
        start = r % len(names)
        for name in names[start:] + names[:start]:
            times[name].append(min(timed(fns[name]) for _ in range(inner)))
    return times


def paired_ratio(a, b):
    """Median over rounds of a[i]/b[i]: both ran in round i, next to each other, so a
    slow phase of the shared machine slows both (steadier than a ratio of minima)."""
    if not a or not b:
        return None
    return statistics.median(x / y for x, y in zip(a, b))


# --------------------------------------------------------------------------
# implementations: each returns {"train": fn, "infer": fn} (a missing key = n/a)
# --------------------------------------------------------------------------
IMPLS = ("fused", "blas", "torch", "numpy", "memcpy", "module", "nn")


def darknet_impl(shape, dialect, kernel):
    """``BatchNormLayer`` with ``kernel`` ``"fused"`` or ``"blas"``."""
    layer, x, delta = make_layer(shape, dialect, kernel)

    def train():
        layer.forward(x, train=True)
        layer.backward(delta, train=True)

    def infer():
        layer.forward(x, train=False)
    return {"train": train, "infer": infer}


def torch_functional_impl(shape, dialect, nthreads):
    """``torch.nn.functional.batch_norm`` (+ autograd backward to x, weight, bias),
    momentum the fork's rolling factor; {} without torch."""
    try:
        import torch
        from torch.nn import functional
    except ImportError:
        return {}
    torch.set_num_threads(nthreads)
    x, delta, scales, biases, rmean, rvar = make_data(shape)
    xt = torch.from_numpy(x).requires_grad_()
    dt = torch.from_numpy(delta)
    weight = torch.from_numpy(scales).requires_grad_()
    bias = torch.from_numpy(biases).requires_grad_()
    rm, rv = torch.from_numpy(rmean.copy()), torch.from_numpy(rvar.copy())
    momentum = float(get_dialect(dialect).rolling_new)

    def train():
        xt.grad = weight.grad = bias.grad = None
        out = functional.batch_norm(xt, rm, rv, weight, bias, training=True,
                                    momentum=momentum, eps=1e-5)
        out.backward(dt)

    def infer():
        with torch.no_grad():
            functional.batch_norm(xt, rm, rv, weight, bias, training=False, eps=1e-5)
    return {"train": train, "infer": infer}


def numpy_impl(shape, dialect):
    """The CS231N NumPy batch norm (``cs231n``), momentum the fork's rolling factor."""
    x, delta, scales, biases, rmean, rvar = make_data(shape)
    momentum = get_dialect(dialect).rolling_keep

    def train():
        _, cache = cs231n.forward_train(x, scales, biases, rmean, rvar, momentum)
        cs231n.backward(delta, cache)

    def infer():
        cs231n.forward_infer(x, scales, biases, rmean, rvar)
    return {"train": train, "infer": infer}


def memcpy_impl(shape):
    """One ``np.copyto`` of the input tensor (one read, one write): the roofline."""
    src = make_data(shape)[0]
    dst = np.empty_like(src)

    def copy():
        np.copyto(dst, src)
    return {"train": copy, "infer": copy}


def torch_module_impl(shape, dialect, nthreads, darknet):
    """DarknetBatchNorm2d (``darknet``) or nn.BatchNorm2d (momentum the fork's rolling
    factor) as a module, autograd train step; {} without torch."""
    try:
        import torch
        from darknet_bn.torch import DarknetBatchNorm2d
    except ImportError:
        return {}
    torch.set_num_threads(nthreads)
    x, delta, scales, biases, rmean, rvar = make_data(shape)
    c = shape[1]
    if darknet:
        module = DarknetBatchNorm2d(c, dialect=dialect)
    else:
        module = torch.nn.BatchNorm2d(c, eps=1e-5,
                                      momentum=float(get_dialect(dialect).rolling_new))
    with torch.no_grad():
        for tensor, values in ((module.weight, scales), (module.bias, biases),
                               (module.running_mean, rmean), (module.running_var, rvar)):
            tensor.copy_(torch.from_numpy(values))
    xt = torch.from_numpy(x).requires_grad_()
    dt = torch.from_numpy(delta)

    def train():
        if not module.training:
            module.train()
        xt.grad = module.weight.grad = module.bias.grad = None
        module(xt).backward(dt)

    def infer():
        if module.training:                 # the mode once, not a train(False) per call
            module.eval()
        with torch.no_grad():
            module(xt)
    return {"train": train, "infer": infer}


def implementations(shape, dialect, nthreads, impls):
    """``{name: {"train": fn, "infer": fn}}`` for the names ``impls`` (of ``IMPLS``)."""
    makers = {"fused": lambda: darknet_impl(shape, dialect, "fused"),
              "blas": lambda: darknet_impl(shape, dialect, "blas"),
              "torch": lambda: torch_functional_impl(shape, dialect, nthreads),
              "numpy": lambda: numpy_impl(shape, dialect),
              "memcpy": lambda: memcpy_impl(shape),
              "module": lambda: torch_module_impl(shape, dialect, nthreads, True),
              "nn": lambda: torch_module_impl(shape, dialect, nthreads, False)}
    return {name: makers[name]() for name in impls}
