"""The "fused" path against the "blas" path (the one-to-one composition), bit for bit.

The golden-fixture and naive-reference tests in test_batchnorm_layer.py already
run on every path in ``PATHS``; these add random, larger and odd shapes (batch=1,
c=1, h=w=1, channel counts that are not a multiple of the fused kernels' 8-lane
groups), both dialects and layer types, train and inference, multi-step
sequences with ``update``, special values, and the argument variants
(input/delta None, explicit net_delta), for every fork and each layer type it has
(hank-ai's: the convolutional stage only).  Every buffer of the layer is compared
bitwise (-0.0 != +0.0; NaNs must sit in the same places, their sign and payload
are not promised: docs/reliability.md) after every forward, backward and update.
"""
import numba
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from _routines import FORKS
from _state import same_bits_any_nan
from darknet_bn import BatchNormLayer, get_dialect
from darknet_bn import _jit, batchnorm_layer, fused
from darknet_bn.batchnorm_layer import FIELDS, PATHS
from darknet_bn.golden import bits_equal, ulp_diff

DIALECTS = FORKS
LAYER_TYPES = ("batchnorm", "convolutional")
#: (dialect, layer type) for every layer each fork has on the CPU.
LAYERS = [(d, t) for d in DIALECTS for t in LAYER_TYPES if t in get_dialect(d).layer_types]

# (batch, c, h, w): batch=1, c=1, h=w=1 with batch>=2, odd sizes, c below / at /
# above / between multiples of the vec8 groups (8 and 16 channels), planes with
# and without a remainder after the 8-position blocks (h*w % 8) and shorter than
# one block (h*w < 8), an FC-like shape and a larger one.
SHAPES = [
    (1, 3, 5, 7), (4, 1, 3, 3), (2, 5, 1, 1), (3, 13, 7, 5), (2, 17, 4, 4),
    (5, 8, 2, 3), (1, 9, 1, 2), (64, 40, 1, 1), (2, 24, 33, 31), (7, 3, 1, 1),
    (2, 40, 9, 9), (3, 35, 5, 5), (2, 32, 4, 4), (4, 19, 2, 3),
    (9, 600, 1, 1), (1, 300, 1, 1),     # spatial == 1 kernels: several row blocks
    (3, 1100, 1, 1),                    # inference wider than INFER_ROW_FILTERS: by blocks
]
assert 300 < 600 <= fused.INFER_ROW_FILTERS < 1100
#: Shapes whose channels split into every kind of fused group: 16-channel vec8
#: pairs, single vec8 groups, leftover channels one by one, and backward pairs.
GROUP_SHAPES = [(2, 40, 9, 9), (3, 35, 5, 5), (4, 19, 2, 3), (2, 16, 8, 8)]

#: Step sequences: (mode, update after backward?)
SEQUENCES = {
    "train-update-infer": [("train", True), ("train", False), ("infer", False),
                           ("train", True)],
    "infer-first": [("infer", False), ("train", True), ("infer", True)],
}


def _random_state(layer, rng):
    """Random parameters and accumulators, shared by both layers of a pair."""
    c = layer.c
    return {
        "scales": rng.uniform(-2, 2, c).astype(np.float32),
        "biases": rng.normal(0, 1, c).astype(np.float32),
        "rolling_mean": rng.normal(0, 1, c).astype(np.float32),
        "rolling_variance": rng.uniform(0.01, 4, c).astype(np.float32),
        "scale_updates": rng.normal(0, 1, c).astype(np.float32),
        "bias_updates": rng.normal(0, 1, c).astype(np.float32),
    }


def _inputs(shape, rng, kind):
    n = int(np.prod(shape))
    b, c, h, w = shape
    x = rng.standard_normal(n).astype(np.float32)
    x = x.reshape(b, c, h * w) * rng.uniform(0.1, 5, (1, c, 1)).astype(np.float32)
    x = (x + rng.normal(0, 3, (1, c, 1)).astype(np.float32)).astype(np.float32).reshape(-1)
    if kind == "huge":
        x *= np.float32(1e18)
    elif kind == "tiny":
        x *= np.float32(1e-30)
    elif kind == "constant_channel":
        x.reshape(b, c, h * w)[:, 0, :] = np.float32(1.5)
    elif kind == "special":
        flat = x.reshape(b, c, h * w)
        flat[0, 0, 0] = np.nan
        if c > 1:
            flat[-1, 1, -1] = np.inf
        if c > 2:
            flat[0, 2, 0] = -0.0
    d = rng.standard_normal(n).astype(np.float32)
    if kind == "special" and c > 3:
        d.reshape(b, c, h * w)[0, 3, 0] = -np.inf
    return x, d


def _pair(shape, dialect, layer_type, rng):
    b, c, h, w = shape
    layers = [BatchNormLayer(b, w, h, c, dialect=dialect, layer_type=layer_type, kernel=k)
              for k in ("blas", "fused")]
    for name, v in _random_state(layers[0], rng).items():
        for l in layers:
            getattr(l, name)[:] = v
    return layers


def _assert_same(blas, fused_l, where, extra=()):
    """Bitwise, with NaNs in the same places (a NaN's sign and payload follow the
    compiler's operand order, which C does not fix: docs/reliability.md)."""
    bad = []
    for name in FIELDS:
        a, e = getattr(fused_l, name), getattr(blas, name)
        if not same_bits_any_nan(a, e):
            bad.append(f"{name} {ulp_diff(a, e)}")
    for name, a, e in extra:
        if not same_bits_any_nan(a, e):
            bad.append(f"{name} {ulp_diff(a, e)}")
    assert not bad, f"{where}: fused differs from blas in (buffer (n differing, max ulp)): {bad}"


def _run_sequence(shape, dialect, layer_type, sequence, kind, seed, variant="plain"):
    rng = np.random.default_rng(seed)
    blas, fl = _pair(shape, dialect, layer_type, rng)
    trainable = shape[0] * shape[2] * shape[3] >= 2
    for t, (mode, do_update) in enumerate(sequence):
        train = mode == "train"
        if train and not trainable:
            continue
        x, d = _inputs(shape, rng, kind)
        where = f"{shape} {dialect} {layer_type} {kind} seed={seed} step{t} {mode}"
        if variant == "in_place" and layer_type == "convolutional":
            for l in (blas, fl):          # the conv output already sits in l.output
                l.output[:] = x
                l.forward(None, train=train)
        else:
            for l in (blas, fl):
                l.forward(x.reshape(shape) if variant == "4d" else x, train=train)
        _assert_same(blas, fl, where + " forward")
        if variant == "in_place":
            for l in (blas, fl):          # backward(None): delta already in l.delta
                l.delta[:] = d
            grads = [l.backward(None, train=train) for l in (blas, fl)]
        elif variant == "net_delta" and layer_type == "batchnorm":
            outs = [np.full(d.size, np.float32(7.0)) for _ in range(2)]
            grads = [l.backward(d, train=train, net_delta=o) for l, o in zip((blas, fl), outs)]
            assert grads[0] is outs[0] and grads[1] is outs[1]
        else:
            grads = [l.backward(d, train=train) for l in (blas, fl)]
        _assert_same(blas, fl, where + " backward", [("returned gradient", *grads[::-1])])
        if layer_type == "batchnorm":
            _assert_same(blas, fl, where + " backward", [("net_delta", fl.net_delta,
                                                         blas.net_delta)])
        if do_update:
            r = [l.update(0.01, 0.9, 0.0005, batch=shape[0] * 2) for l in (blas, fl)]
            assert r[0] == r[1]
            _assert_same(blas, fl, where + " update")


# --------------------------------------------------------------------------
@pytest.mark.parametrize("dialect, layer_type", LAYERS)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_fused_matches_blas_random(shape, dialect, layer_type):
    for seed, seq in enumerate(SEQUENCES.values()):
        _run_sequence(shape, dialect, layer_type, seq, "normal", seed=seed)


@pytest.mark.parametrize("kind", ["huge", "tiny", "constant_channel", "special"])
@pytest.mark.parametrize("dialect, layer_type", LAYERS)
def test_fused_matches_blas_special_values(kind, dialect, layer_type):
    for shape in [(3, 13, 7, 5), (2, 9, 4, 4), (16, 4, 1, 1), (4, 270, 1, 1)]:
        _run_sequence(shape, dialect, layer_type, SEQUENCES["train-update-infer"], kind, seed=3)


@pytest.mark.parametrize("variant", ["in_place", "net_delta", "4d"])
@pytest.mark.parametrize("dialect, layer_type", LAYERS)
def test_fused_matches_blas_argument_variants(variant, dialect, layer_type):
    _run_sequence((3, 11, 5, 6), dialect, layer_type, SEQUENCES["train-update-infer"],
                  "normal", seed=5, variant=variant)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(batch=st.integers(1, 6), c=st.integers(1, 20), h=st.integers(1, 9),
       w=st.integers(1, 9), layer=st.sampled_from(LAYERS), seed=st.integers(0, 2**32 - 1))
def test_fused_matches_blas_hypothesis(batch, c, h, w, layer, seed):
    dialect, layer_type = layer
    _run_sequence((batch, c, h, w), dialect, layer_type, SEQUENCES["train-update-infer"],
                  "normal", seed)


@pytest.mark.parametrize("forward_group, backward_group", [(16, 8), (8, 2), (16, 2), (8, 8)])
@pytest.mark.parametrize("shape", GROUP_SHAPES)
@pytest.mark.parametrize("dialect", DIALECTS)
def test_fused_group_choices_match_blas(shape, dialect, forward_group, backward_group,
                                        monkeypatch):
    """Every channel grouping gives the blas path's bits, whatever fused.groups would pick
    for this machine's thread count."""
    monkeypatch.setattr(fused, "groups", lambda filters: (forward_group, backward_group))
    _run_sequence(shape, dialect, get_dialect(dialect).layer_types[0],
                  SEQUENCES["train-update-infer"], "normal",
                  seed=sum(shape) + forward_group + backward_group)


def test_groups_keep_every_thread_busy():
    threads = numba.get_num_threads()
    assert fused.groups(16 * threads) == (16, 8)
    assert fused.groups(16 * threads - 1)[0] == 8
    assert fused.groups(8 * threads - 1)[1] == 2


def test_large_shape_matches_blas():
    """A YOLO-like plane size with several 8-channel groups plus a remainder."""
    _run_sequence((2, 19, 52, 52), "alexeyab", "batchnorm",
                  [("train", True), ("infer", False)], "normal", seed=11)
    _run_sequence((2, 19, 52, 52), "pjreddie", "convolutional",
                  [("train", True), ("infer", False)], "normal", seed=12)
    _run_sequence((2, 19, 52, 52), "hankai", "convolutional",
                  [("train", True), ("infer", False)], "normal", seed=13)


# --------------------------------------------------------------------------
def test_fused_is_registered_and_default():
    assert PATHS["fused"] == (batchnorm_layer._forward_fused, batchnorm_layer._backward_fused)
    assert batchnorm_layer.DEFAULT_KERNEL == "fused"
    assert BatchNormLayer(2, 3, 3, 4).kernel == "fused"
    assert BatchNormLayer(2, 3, 3, 4, kernel="blas").kernel == "blas"


def test_fused_kernels_are_registered_for_warmup():
    """Every fused kernel goes through _jit.kernel, so warmup() compiles it (cache=True)."""
    registered = {d for d, _ in _jit.KERNELS}
    for k in (fused._forward_train, fused._forward_infer, fused._backward,
              fused._forward_train_rows, fused._forward_infer_rows, fused._backward_rows):
        assert k in registered
        assert type(k._cache).__name__ != "NullCache"          # cache=True
        assert not k.targetoptions.get("fastmath")
        assert k.targetoptions.get("parallel") == _jit.KERNEL_OPTIONS["parallel"]


def test_fused_writes_only_the_layer_buffers():
    """No output is allocated per call: forward returns a view of l.output, backward
    one of l.net_delta; the input and delta arrays are left untouched."""
    rng = np.random.default_rng(0)
    l = BatchNormLayer(3, 4, 5, 10, kernel="fused")
    x, d = _inputs((3, 10, 5, 4), rng, "normal")
    x0, d0 = x.copy(), d.copy()
    out = l.forward(x, train=True)
    assert np.shares_memory(out, l.output) and out.size == l.output.size
    grad = l.backward(d, train=True)
    assert np.shares_memory(grad, l.net_delta) and grad.size == l.net_delta.size
    assert bits_equal(x, x0) and bits_equal(d, d0)


def test_spatial_one_workspace_is_allocated_once():
    """The spatial == 1 kernels keep their scratch in the layer's Workspace: one
    allocation, reused."""
    rng = np.random.default_rng(2)
    l = BatchNormLayer(8, 1, 1, 300, kernel="fused")
    x, d = _inputs((8, 300, 1, 1), rng, "normal")
    l.forward(x, train=True)
    l.backward(d, train=True)
    ws = l._s.workspace
    acc, acc64 = ws.acc, ws.acc64
    assert acc.shape == (600,) and acc64.shape == (900,)
    l.forward(x, train=True)
    l.backward(d, train=True)
    l.forward(x, train=False)
    assert l._s.workspace is ws and ws.acc is acc and ws.acc64 is acc64


def test_comparison_detects_a_one_ulp_difference():
    """The checks above can fail: flipping one bit of one buffer is reported."""
    rng = np.random.default_rng(1)
    blas, fl = _pair((2, 5, 3, 3), "pjreddie", "batchnorm", rng)
    x, d = _inputs((2, 5, 3, 3), rng, "normal")
    for l in (blas, fl):
        l.forward(x, train=True)
    fl.x_norm.view(np.int32)[7] ^= 1
    with pytest.raises(AssertionError, match="x_norm"):
        _assert_same(blas, fl, "flipped")


# --------------------------------------------------------------------------
# Divisions must stay divisions.  x/d and x*(1/d) differ in float64 often, but
# after the rounding to float32 only when the quotient lies next to a float32
# rounding midpoint (about 1 in 2**31 pairs), so random data never shows it.
# These (variance, value) pairs were found by an exhaustive search over
# value in [1, 2) for 1024 consecutive float32 variances from 1.7
# (benchmarks are not involved; the search is a one-off):
#   _SQRT_VAR_EPS:  d = sqrt((double)(var + .00001f))    alexeyab normalize_cpu,
#                                                        pjreddie normalize_delta_cpu
#   _SQRT_VAR_PLUS: d = sqrt((double)var) + .000001f     pjreddie normalize_cpu
_SQRT_VAR_EPS = [(1.7000879, 1.4177583), (1.7001108, 1.1917822), (1.700112, 1.0598032),
                 (1.7001169, 1.5324178)]
_SQRT_VAR_PLUS = [(1.7000682, 1.576723), (1.7001048, 1.1116211), (1.7001151, 1.1514766)]


def _denominator(var, kind):
    var = np.float32(var)
    if kind == "sqrt_var_eps":
        return np.sqrt(np.float64(var + np.float32(0.00001)))
    return np.sqrt(np.float64(var)) + np.float64(np.float32(0.000001))


def _hard_quotients(pairs, kind):
    """(variances, values, Darknet's float32 quotients); checks the pairs are hard."""
    var = np.array([v for v, _ in pairs], np.float32)
    val = np.array([a for _, a in pairs], np.float32)
    d = np.array([_denominator(v, kind) for v in var])
    exact = (val.astype(np.float64) / d).astype(np.float32)
    reciprocal = (val.astype(np.float64) * (1.0 / d)).astype(np.float32)
    assert np.all(exact != reciprocal), "test data no longer separates x/d from x*(1/d)"
    return var, val, exact


@pytest.mark.parametrize("dialect,kind", [("alexeyab", "sqrt_var_eps"),
                                          ("pjreddie", "sqrt_var_plus")])
def test_normalize_divides_exactly_on_hard_quotients(dialect, kind):
    pairs = _SQRT_VAR_EPS if kind == "sqrt_var_eps" else _SQRT_VAR_PLUS
    var, val, exact = _hard_quotients(pairs, kind)
    c = len(pairs)
    outs = {}
    for k in ("blas", "fused"):
        l = BatchNormLayer(2, 3, 1, c, dialect=dialect, kernel=k)
        l.rolling_variance[:] = var                 # scales 1, biases 0, rolling_mean 0
        x = np.zeros((2, c, 1, 3), np.float32)
        x[1, :, 0, 2] = val
        outs[k] = l.forward(x, train=False).reshape(2, c, 3)[1, :, 2].copy()
    assert bits_equal(outs["blas"], exact)
    assert bits_equal(outs["fused"], exact)


def test_normalize_delta_divides_exactly_on_hard_quotients():
    """pjreddie inference-mode backward: x == mean and delta = (a, -a) per plane make
    every other term of normalize_delta_cpu zero, leaving delta*1./sqrt(var+.00001f)."""
    var, val, exact = _hard_quotients(_SQRT_VAR_EPS, "sqrt_var_eps")
    c = len(val)
    grads = {}
    for k in ("blas", "fused"):
        l = BatchNormLayer(1, 2, 1, c, dialect="pjreddie", layer_type="convolutional", kernel=k)
        l.rolling_variance[:] = var                 # the stats a pjreddie train=0 backward uses
        l.forward(np.zeros(2 * c, np.float32), train=False)     # x = input = rolling_mean = 0
        delta = np.stack([val, -val], axis=1).reshape(-1)
        grads[k] = l.backward(delta, train=False).reshape(c, 2)[:, 0].copy()
    assert bits_equal(grads["blas"], exact)
    assert bits_equal(grads["fused"], exact)


@pytest.mark.parametrize("dialect", DIALECTS)
@pytest.mark.parametrize("shape", [(2, 40, 9, 9), (3, 35, 5, 5), (4, 19, 2, 3), (9, 600, 1, 1)])
def test_train_forward_without_x_copy_keeps_every_other_bit(shape, dialect):
    """save_x = 0 (darknet_bn.torch, which keeps the input itself) skips only the
    copy to ``x``: output, x_norm, statistics and rolling statistics are the bits of
    the save_x = 1 call, and ``x`` is not written."""
    seed = 20261201
    rng = np.random.default_rng(seed)
    batch, c, h, w = shape
    d = batchnorm_layer.get_dialect(dialect)
    n, sp = batch * c * h * w, h * w
    src = rng.standard_normal(n).astype(np.float32) * 3 + 1
    scales, biases = (rng.standard_normal(c).astype(np.float32) for _ in range(2))
    runs = []
    for save_x in (1, 0):
        out = {k: np.full(n, np.nan, np.float32) for k in ("output", "x", "x_norm")}
        out.update({k: np.full(c, 0.5, np.float32) for k in
                    ("mean", "variance", "rolling_mean", "rolling_variance")})
        fused.forward_train(src, out["output"], out["x"], out["x_norm"], out["mean"],
                            out["variance"], out["rolling_mean"], out["rolling_variance"],
                            scales, biases, batch, c, sp, d.rolling_keep, d.rolling_new, d,
                            fused.Workspace(), save_x)
        runs.append(out)
    with_x, without_x = runs
    assert bits_equal(with_x["x"], src), f"seed {seed}"
    assert np.isnan(without_x["x"]).all(), f"x written with save_x = 0 (seed {seed})"
    for k in ("output", "x_norm", "mean", "variance", "rolling_mean", "rolling_variance"):
        assert bits_equal(with_x[k], without_x[k]), f"{k} differs (seed {seed})"


def test_kernel_api_example_in_the_docs_gives_the_layers_bits():
    """docs/layer.md's kernel API example runs as written, and its output, x_norm and
    statistics are a BatchNormLayer's (convolutional, alexeyab) for the same input."""
    import re
    from pathlib import Path
    text = (Path(__file__).resolve().parent.parent / "docs" / "layer.md").read_text()
    section = text.split("## The kernel API", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    ns = {}
    exec(compile(code, "docs/layer.md", "exec"), ns)
    batch, filters, spatial = ns["batch"], ns["filters"], ns["spatial"]
    layer = BatchNormLayer(batch, spatial, 1, filters, dialect="alexeyab",
                           layer_type="convolutional")
    layer.forward(ns["x"].copy(), train=True)
    for name, theirs in (("output", ns["out"]), ("x_norm", ns["x_norm"]),
                         ("mean", ns["mean"]), ("variance", ns["var"]),
                         ("rolling_mean", ns["rm"]), ("rolling_variance", ns["rv"])):
        assert bits_equal(getattr(layer, name), theirs), name


@pytest.mark.parametrize("dialect", FORKS)
def test_read_only_arrays_compile_no_new_kernel(dialect):
    """A read-only input or delta (another Numba type) is copied into the layer's own
    buffer, which the kernels take in place: same bits as a writable array, and no
    second specialization of a fused kernel (each took about 25 s to compile)."""
    rng = np.random.default_rng(7)
    shape = (2, 5, 3, 4)
    x, d = _inputs(shape, rng, "normal")
    frozen_x, frozen_d = x.copy(), d.copy()
    frozen_x.flags.writeable = frozen_d.flags.writeable = False
    kernels = (fused._forward_train, fused._forward_infer, fused._backward)
    outs = []
    for xs, ds in ((x, d), (frozen_x, frozen_d)):
        l = BatchNormLayer(*shape, dialect=dialect, layer_type="convolutional")
        before = [len(k.signatures) for k in kernels]
        got = [l.forward(xs, train=True).copy(), l.backward(ds, train=True).copy(),
               l.forward(xs, train=False).copy()]
        assert [len(k.signatures) for k in kernels] == before or xs is x
        outs.append(got)
    for name, a, b in zip(("forward", "backward", "inference"), *outs):
        assert np.array_equal(a.view(np.int32), b.view(np.int32)), name
    assert not frozen_x.flags.writeable and np.array_equal(frozen_x, x)
