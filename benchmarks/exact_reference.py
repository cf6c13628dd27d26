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
outputs bitwise on every run (``bits_match``).  The per-channel pass is the
package's own (``fused.infer_channel``: the fork's denominator and division),
written once.
"""
import numpy as np
from numba import njit, prange

from darknet_bn.fused import infer_channel


@njit(parallel=True, fastmath=False, error_model="numpy", nogil=True, cache=True)
def exact_infer(src, output, x, rolling_mean, rolling_variance, scales, biases,
                batch, filters, spatial, dialect, write_x):
    for f in prange(filters):
        infer_channel(src, output, x, rolling_mean, rolling_variance, scales, biases, batch,
                      filters, spatial, f, dialect, write_x)


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
