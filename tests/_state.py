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
    return FIELDS + (("net_delta",) if getattr(layer, "net_delta", None) is not None else ())


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
#: (batch, c, h, w, dialect, layer_type): four different layers, one per thread.
WORKLOADS = [(4, 8, 6, 6, "pjreddie", "batchnorm"), (2, 16, 5, 7, "alexeyab", "convolutional"),
             (8, 3, 4, 4, "alexeyab", "batchnorm"), (3, 5, 9, 2, "pjreddie", "convolutional")]


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
        out.append(layer.forward(rng.standard_normal(n).astype(np.float32), train).copy())
        out.append(layer.backward(rng.standard_normal(n).astype(np.float32), train).copy())
        layer.update(0.01, 0.9, 0.0005)
    out += [np.asarray(getattr(layer, name)) for name in layer_names(layer)]
    return np.concatenate(out)


# --------------------------------------------------------------------------
# a used layer corrupted afterwards, run in a child process
# --------------------------------------------------------------------------
# The layer remembers what it validated (darknet_bn._validate.state_unchanged), so
# these cases first use the layer (every operation), then corrupt it: a buffer
# mutated in place (the same object: reshaped, re-typed, resized, made read-only)
# or a field reassigned.  A regression here means a kernel running on a wrong
# buffer, which can kill the process (heap corruption, segfault), so the cases
# run in a child; a crash fails the case it happened in.

#: (layer_type, dialect, (batch, w, h, c)): a standalone layer with a plane, and a
#: convolutional stage with h = w = 1 (the fused path's row kernels).
PRIMED_LAYERS = {"batchnorm": ("batchnorm", "pjreddie", (2, 3, 2, 3)),
                 "conv-1x1": ("convolutional", "alexeyab", (4, 1, 1, 5))}
PRIMED_OPS = ("forward", "forward-infer", "backward", "update")


def _set_strides_0(a):
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        a.strides = (0,)                 # deprecated in NumPy 2.4; may go away


#: In-place mutations of a buffer: name -> (mutate(array), exception the call must raise).
IN_PLACE = {
    "2-D shape": (lambda a: setattr(a, "shape", (1, a.size)), ValueError),
    "4-D shape": (lambda a: setattr(a, "shape", (1, 1, a.size, 1)), ValueError),
    "int32 dtype": (lambda a: setattr(a, "dtype", np.int32), TypeError),
    "uint8 dtype": (lambda a: setattr(a, "dtype", np.uint8), TypeError),
    "float16 dtype": (lambda a: setattr(a, "dtype", np.float16), TypeError),
    "big-endian dtype": (lambda a: setattr(a, "dtype", np.dtype(">f4")), TypeError),
    "resize shorter": (lambda a: a.resize(a.size - 1, refcheck=False), ValueError),
    "resize longer": (lambda a: a.resize(a.size + 1, refcheck=False), ValueError),
    "resize empty": (lambda a: a.resize(0, refcheck=False), ValueError),
    "read-only": (lambda a: setattr(a.flags, "writeable", False), ValueError),
    "stride 0": (_set_strides_0, ValueError),
}


def _custom_dialect(layer):
    import dataclasses
    return dataclasses.replace(layer.dialect, code=7)


#: Reassigned fields: name -> (field, new value from the layer, exception, name in message).
FIELD_KINDS = {
    "dialect str": ("dialect", lambda l: l.dialect.name, TypeError, "layer.dialect"),
    "dialect custom": ("dialect", _custom_dialect, ValueError, "layer.dialect"),
    "dialect None": ("dialect", lambda l: None, TypeError, "layer.dialect"),
    "kernel gpu": ("kernel", lambda l: "gpu", ValueError, "layer.kernel"),
    "kernel list": ("kernel", lambda l: [l.kernel], ValueError, "layer.kernel"),
    "type conv": ("type", lambda l: "conv", ValueError, "layer.type"),
    "batch float": ("batch", lambda l: float(l.batch), TypeError, "layer.batch"),
    "batch bool": ("batch", lambda l: True, TypeError, "layer.batch"),
    "batch str": ("batch", lambda l: str(l.batch), TypeError, "layer.batch"),
    "batch +1": ("batch", lambda l: l.batch + 1, ValueError, "layer.output"),
    "batch 0": ("batch", lambda l: 0, ValueError, "layer.batch"),
    "batch 2**70": ("batch", lambda l: 2**70, ValueError, "layer.batch"),
    "c np.float64": ("c", lambda l: np.float64(l.c), TypeError, "layer.c"),
    "out_c +1": ("out_c", lambda l: l.out_c + 1, ValueError, "out_c"),
    "outputs str": ("outputs", lambda l: str(l.outputs), TypeError, "layer.outputs"),
    "out_h None": ("out_h", lambda l: None, TypeError, "layer.out_h"),
    "mean deleted": ("mean", None, TypeError, "layer.mean"),
    "scales list": ("scales", lambda l: l.scales.tolist(), TypeError, "layer.scales"),
}


def primed_cases(kernels):
    """Every case: (kernel, layer, op, target, kind); ``target`` is the buffer for an
    IN_PLACE kind, the field for a FIELD_KINDS one."""
    cases = []
    for kernel in kernels:
        for lname, (layer_type, _, _) in PRIMED_LAYERS.items():
            names = FIELDS + (("net_delta",) if layer_type == "batchnorm" else ())
            for op in PRIMED_OPS:
                cases += [(kernel, lname, op, name, kind) for kind in IN_PLACE for name in names]
                cases += [(kernel, lname, op, FIELD_KINDS[kind][0], kind) for kind in FIELD_KINDS]
    return cases


def run_primed_case(kernel, lname, op, target, kind):
    """Use a layer, corrupt it, call ``op``: the exception (or None) and what changed."""
    import zlib
    layer_type, dialect, (batch, w, h, c) = PRIMED_LAYERS[lname]
    rng = np.random.default_rng(zlib.crc32(f"{kernel} {lname} {op} {target} {kind}".encode()))
    layer = fill_layer(BatchNormLayer(batch, w, h, c, dialect=dialect, layer_type=layer_type,
                                      kernel=kernel), rng)
    n = batch * c * h * w
    data = lambda: rng.standard_normal(n).astype(np.float32)
    layer.forward(data(), True)                     # use it: every operation
    layer.backward(data(), True)
    layer.update(0.01, 0.9, 0.0005)
    if kind in IN_PLACE:
        IN_PLACE[kind][0](getattr(layer, target))
    elif FIELD_KINDS[kind][1] is None:
        delattr(layer, target)
    else:
        setattr(layer, target, FIELD_KINDS[kind][1](layer))
    names = [name for name in layer_names(layer) if isinstance(getattr(layer, name, None),
                                                                np.ndarray)]
    before = {name: np.array(getattr(layer, name), copy=True) for name in names}
    call = {"forward": lambda: layer.forward(data(), True),
            "forward-infer": lambda: layer.forward(data(), False),
            "backward": lambda: layer.backward(data(), True),
            "update": lambda: layer.update(0.01, 0.9, 0.0005)}[op]
    try:
        call()
        exc, msg = None, ""
    except Exception as e:                          # noqa: BLE001 - reported to the parent
        exc, msg = type(e).__name__, str(e)
    changed = [name for name in names if not same_bits(getattr(layer, name), before[name])]
    return {"exc": exc, "msg": msg, "changed": changed}


def _child_main():
    """Run the cases given as JSON on stdin; one START and one RESULT line each."""
    import faulthandler
    import json
    import sys
    faulthandler.enable()
    for i, case in enumerate(json.load(sys.stdin)):
        print("START", i, flush=True)
        print("RESULT", i, json.dumps(run_primed_case(*case)), flush=True)


def run_primed_cases_in_child(cases, timeout=600):
    """{case: result} for ``cases``; a case during which the child died gets
    ``{"exc": "crash", "msg": <exit status and stderr tail>, "changed": []}``, and the
    remaining cases run in a fresh child."""
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    import darknet_bn
    here = Path(__file__).resolve().parent
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(here), str(Path(darknet_bn.__file__).resolve().parents[1]),
         os.environ.get("PYTHONPATH", "")])}
    results, todo = {}, list(cases)
    while todo:
        proc = subprocess.run([sys.executable, "-c", "import _state; _state._child_main()"],
                              input=json.dumps(todo), capture_output=True, text=True, env=env,
                              timeout=timeout)
        started = None
        for line in proc.stdout.splitlines():
            word, _, rest = line.partition(" ")
            if word == "START":
                started = int(rest)
            elif word == "RESULT":
                i, _, payload = rest.partition(" ")
                results[tuple(todo[int(i)])] = json.loads(payload)
        if proc.returncode == 0 and all(tuple(c) in results for c in todo):
            break
        if started is None or tuple(todo[started]) in results:   # died outside a case
            raise RuntimeError(f"child failed (exit {proc.returncode}): {proc.stderr[-3000:]}")
        results[tuple(todo[started])] = {
            "exc": "crash", "changed": [],
            "msg": f"exit status {proc.returncode}; stderr: {proc.stderr[-1500:]}"}
        todo = todo[started + 1:]
    return results
