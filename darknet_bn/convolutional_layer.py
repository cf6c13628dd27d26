"""Darknet's ``src/convolutional_layer.c``: the bias/scale routines the BN layer calls.

Dimensions: ``batch`` images, ``n`` channels, ``size`` elements per channel plane;
element ``(b, i, j)`` is at ``(b*n + i)*size + j`` (flat, batch-major, float32).
"""
from numba import prange

from ._jit import BUF, INT, kernel, sig
from ._validate import check_buffer, check_dim, check_no_overlap
from .utils import sum_array_at


@kernel(sig(BUF, BUF, INT, INT, INT))
def _scale_bias(output, scales, batch, n, size):
    for i in prange(n):
        s = scales[i]
        for b in range(batch):
            base = (b * n + i) * size
            for j in range(size):
                output[base + j] *= s


@kernel(sig(BUF, BUF, INT, INT, INT))
def _add_bias(output, biases, batch, n, size):
    for i in prange(n):
        s = biases[i]
        for b in range(batch):
            base = (b * n + i) * size
            for j in range(size):
                output[base + j] += s


@kernel(sig(BUF, BUF, INT, INT, INT))
def _backward_bias(bias_updates, delta, batch, n, size):
    for i in prange(n):
        acc = bias_updates[i]
        for b in range(batch):
            # bias_updates[i] += sum_array(delta + size*(i + b*n), size)
            acc += sum_array_at(delta, size * (i + b * n), size)
        bias_updates[i] = acc


def _dims(r, batch, n, size):
    return check_dim(r, "batch", batch), check_dim(r, "n", n), check_dim(r, "size", size)


def _planes(r, name, arr, batch, n, size, writable=False):
    return check_buffer(r, name, arr, batch * n * size, writable=writable,
                        what=f"batch*n*size = {batch}*{n}*{size}")


def _per_channel(r, name, arr, n, writable=False):
    return check_buffer(r, name, arr, n, writable=writable, what=f"one value per channel, n = {n}")


def _per_channel_op(r, output, name, vec, batch, n, size):
    """Validate scale_bias/add_bias arguments; returns the dimensions as ints."""
    batch, n, size = _dims(r, batch, n, size)
    _planes(r, "output", output, batch, n, size, writable=True)
    _per_channel(r, name, vec, n)
    check_no_overlap(r, ("output", output), (name, vec))
    return batch, n, size


def scale_bias(output, scales, batch, n, size):
    """``scale_bias`` (convolutional_layer.c): ``output[(b*n+i)*size+j] *= scales[i]``."""
    _scale_bias(output, scales, *_per_channel_op("scale_bias", output, "scales", scales,
                                                 batch, n, size))


def add_bias(output, biases, batch, n, size):
    """``add_bias`` (convolutional_layer.c): ``output[(b*n+i)*size+j] += biases[i]``."""
    _add_bias(output, biases, *_per_channel_op("add_bias", output, "biases", biases,
                                               batch, n, size))


def backward_bias(bias_updates, delta, batch, n, size):
    """``backward_bias`` (convolutional_layer.c): ``bias_updates[i] += sum_array(plane)``.

    Each (b, i) plane is summed first (``sum_array``, from +0.0f), and the plane
    sums are added to ``bias_updates[i]`` in batch order; this differs in the
    last bits from one long running sum.
    """
    routine = "backward_bias"
    batch, n, size = _dims(routine, batch, n, size)
    _per_channel(routine, "bias_updates", bias_updates, n, writable=True)
    _planes(routine, "delta", delta, batch, n, size)
    check_no_overlap(routine, ("bias_updates", bias_updates), ("delta", delta))
    _backward_bias(bias_updates, delta, batch, n, size)
