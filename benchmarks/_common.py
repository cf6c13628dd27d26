"""Shared set-up for benchmarks/bench.py and benchmarks/profile.py.

Dimensions: a shape is (N, C, H, W) = (batch, channels, height, width); the
layer's flat buffers hold N*C*H*W float32 values, index (b*C + c)*H*W + k.
Inputs are random (seeded) with a per-channel offset and scale, as a conv
output would be; ``delta`` is random.  Nothing here is a test: timings are
printed, never asserted.
"""
import time

import numpy as np

#: The benchmark shapes: small conv, YOLO-like conv, large plane, FC-like.
SHAPES = ((16, 64, 28, 28), (4, 128, 104, 104), (4, 32, 416, 416), (256, 1024, 1, 1))

#: Darknet's own C (-Ofast), train step on (4, 128, 104, 104), measured once on this
#: machine by others; quoted, not re-measured here.
DARKNET_C_MS = {(4, 128, 104, 104): 45.0}


def parse_shape(text):
    parts = tuple(int(p) for p in text.lower().replace("x", ",").split(",") if p)
    if len(parts) != 4 or min(parts) < 1:
        raise ValueError(f"shape must be N,C,H,W (four positive ints), got {text!r}")
    return parts


def shape_str(shape):
    return "x".join(str(s) for s in shape)


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


def make_layer(shape, dialect, kernel, layer_type="batchnorm", seed=0):
    """A BatchNormLayer with the seeded parameters; returns (layer, x_flat, delta_flat)."""
    from darknet_bn import BatchNormLayer
    n, c, h, w = shape
    x, delta, scales, biases, rmean, rvar = make_data(shape, seed)
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
