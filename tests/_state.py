"""Bitwise snapshots of buffers and layers, shared by the reliability tests.

One place that copies a layer's (or a call's) arrays and asserts, bit for bit,
that nothing changed after a rejected call, or that two runs gave the same bits.
"""
import numpy as np

from darknet_bn.batchnorm_layer import FIELDS, BatchNormLayer


def same_bits(a, b):
    """True when two arrays have the same dtype, shape and bytes (float32: bitwise,
    so -0.0 != +0.0 and NaN payloads count); object arrays compare by identity."""
    a, b = np.asarray(a), np.asarray(b)
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    if a.dtype == object:
        return all(x is y for x, y in zip(a.ravel(), b.ravel()))
    return np.ascontiguousarray(a).tobytes() == np.ascontiguousarray(b).tobytes()


def same_bits_any_nan(a, b):
    """Bitwise, except that any NaN equals any NaN (C leaves a NaN's sign and payload to
    the compiler's operand order; see docs/reliability.md)."""
    a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
    if a.shape != b.shape:
        return False
    nan_a, nan_b = np.isnan(a), np.isnan(b)
    return bool(np.array_equal(nan_a, nan_b)
                and np.array_equal(a[~nan_a].view(np.int32), b[~nan_b].view(np.int32)))


def snapshot(values):
    """Copies of every ndarray in ``values`` (a dict name -> value)."""
    return {k: v.copy() for k, v in values.items() if isinstance(v, np.ndarray)}


def assert_unchanged(values, before, context=""):
    """Every array snapshotted in ``before`` still has exactly the same bits."""
    changed = [k for k, old in before.items() if not same_bits(values[k], old)]
    assert not changed, f"{context}: modified by a call that must not modify them: {changed}"


def layer_names(layer):
    return FIELDS + (("net_delta",) if layer.net_delta is not None else ())


def layer_state(layer):
    """A copy of every buffer of a BatchNormLayer (including its net_delta)."""
    return {name: np.array(getattr(layer, name), copy=True) for name in layer_names(layer)}


def assert_layer_unchanged(layer, before, context=""):
    """The layer's buffers are bit-identical to ``before`` (from ``layer_state``)."""
    assert_unchanged({name: getattr(layer, name) for name in before}, before, context)


def assert_layers_equal(a, b, context=""):
    """Two layers hold the same bits in every buffer."""
    diff = [name for name in layer_names(a) if not same_bits(getattr(a, name), getattr(b, name))]
    assert not diff, f"{context}: buffers differ in bits: {diff}"


def fill_layer(layer, rng):
    """Non-trivial random state in every buffer (variances positive)."""
    for name in layer_names(layer):
        buf = getattr(layer, name)
        buf[:] = rng.standard_normal(buf.size).astype(np.float32)
    for name in ("variance", "rolling_variance"):
        getattr(layer, name)[:] = np.abs(getattr(layer, name)) + np.float32(0.5)
    return layer


# --------------------------------------------------------------------------
# a deterministic workload (threads, subprocesses)
# --------------------------------------------------------------------------
#: (batch, c, h, w, dialect, layer_type): five different layers, one per thread.
WORKLOADS = [(4, 8, 6, 6, "pjreddie", "batchnorm"), (2, 16, 5, 7, "alexeyab", "convolutional"),
             (8, 3, 4, 4, "alexeyab", "batchnorm"), (3, 5, 9, 2, "pjreddie", "convolutional"),
             (2, 9, 7, 3, "hankai", "convolutional")]


def training_run(index, kernel="blas", steps=40):
    """Train/infer a fresh layer ``WORKLOADS[index]`` for ``steps`` steps; returns every
    output and gradient it produced, and its final buffers, concatenated (float32)."""
    batch, c, h, w, dialect, layer_type = WORKLOADS[index]
    rng = np.random.default_rng(1000 + index)
    layer = fill_layer(BatchNormLayer(batch, w, h, c, dialect=dialect, layer_type=layer_type,
                                      kernel=kernel), rng)
    n = batch * c * h * w
    out = []
    for step in range(steps):
        train = step % 4 != 3
        out.append(layer.forward(rng.standard_normal(n).astype(np.float32), train=train).copy())
        out.append(layer.backward(rng.standard_normal(n).astype(np.float32), train=train).copy())
        layer.update(0.01, 0.9, 0.0005)
    out += [np.asarray(getattr(layer, name)) for name in layer_names(layer)]
    return np.concatenate(out)
