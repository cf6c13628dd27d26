"""The exact reference kernel for ``BatchNormLayer`` inference, beside memcpy.

``exact_infer`` is the least work Darknet's inference forward can do and keep its
bits: one pass over the plane views of every channel (``prange`` over channels),
each element read once, its float difference from the rolling mean divided by the
channel's denominator as the fork divides (Darknet's ``normalize_cpu``: converted to
double, divided, converted back to float; hank-ai's C++ build: a float division),
scaled, biased and written; pjreddie also writes the input to ``x``.  No argument
checks, no dispatch through a layer, nothing else.

It is a reference, not a true floor: on shapes that do not fit the cache, memory
bandwidth decides.  ``targets.py`` runs it next to the layer and compares the two
outputs bitwise on every run (``bits_match``).  The arithmetic is the package's own
(``c_arith.normalize_by``, ``dialects.normalize_denominator`` and
``dialects.normalize_quotient``), written once.
"""
import numpy as np
from numba import njit, prange

from darknet_bn.c_arith import DOUBLE_QUOTIENT, FLOAT_QUOTIENT, normalize_by
from darknet_bn.dialects import normalize_denominator, normalize_quotient


@njit(inline="always", fastmath=False, error_model="numpy", nogil=True, cache=True)
def channel(src, output, x, mean, denom, scale, bias, batch, filters, spatial, f, write_x,
            how):
    """Channel f's planes, ``how`` a constant (``c_arith.normalize_by``)."""
    for j in range(batch):
        base = (j * filters + f) * spatial
        sv = src[base:base + spatial]
        ov = output[base:base + spatial]
        if write_x:
            xv = x[base:base + spatial]
            for k in range(spatial):
                v = sv[k]
                xv[k] = v
                ov[k] = normalize_by(v, mean, denom, how) * scale + bias
        else:
            for k in range(spatial):
                ov[k] = normalize_by(sv[k], mean, denom, how) * scale + bias


@njit(parallel=True, fastmath=False, error_model="numpy", nogil=True, cache=True)
def exact_infer(src, output, x, rolling_mean, rolling_variance, scales, biases,
                batch, filters, spatial, dialect, write_x):
    for f in prange(filters):
        denom = normalize_denominator(rolling_variance[f], dialect)
        if normalize_quotient(dialect) == FLOAT_QUOTIENT:
            channel(src, output, x, rolling_mean[f], denom, scales[f], biases[f], batch,
                    filters, spatial, f, write_x, FLOAT_QUOTIENT)
        else:
            channel(src, output, x, rolling_mean[f], denom, scales[f], biases[f], batch,
                    filters, spatial, f, write_x, DOUBLE_QUOTIENT)


def reference_for(layer, x):
    """A no-argument callable running ``exact_infer`` on ``layer``'s parameters and the
    flat input ``x``, into buffers of its own; returns ``(run, output, x_copy)``."""
    dialect = layer.dialect
    output = np.empty_like(x)
    x_copy = np.empty_like(x)
    args = (x, output, x_copy, layer.rolling_mean.copy(), layer.rolling_variance.copy(),
            layer.scales.copy(), layer.biases.copy(), layer.batch, layer.out_c,
            layer.out_h * layer.out_w, dialect.code, int(dialect.copy_x_in_inference))

    def run():
        exact_infer(*args)
    return run, output, x_copy


def bits_match(layer, x):
    """Whether the layer's inference forward and ``exact_infer`` write the same bits
    (``output``, and ``x`` where the fork writes it) for input ``x``."""
    run, output, x_copy = reference_for(layer, x)
    run()
    got = layer.forward(x, train=False)
    same = np.array_equal(got.view(np.int32), output.view(np.int32))
    if layer.dialect.copy_x_in_inference:
        same = same and np.array_equal(layer.x.view(np.int32), x_copy.view(np.int32))
    return same
