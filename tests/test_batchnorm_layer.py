"""darknet_bn.batchnorm_layer: backward_scale_cpu and BatchNormLayer.

The layer is checked, on every execution path in ``PATHS``, against
- Darknet's recorded four-step sequences (darknet_bn/data/layer): every buffer after
  every forward and backward, bit for bit;
- the naive transcription of every fork's batchnorm_layer.c (tests/naive.py) on
  random shapes and input regimes, including update steps (hank-ai's fork: the
  convolutional stage only, its one batchnorm on the CPU).
"""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import naive
from _compare import assert_bits
from _routines import FORKS, REGIMES, _regime, routine_tests
from darknet_bn import batchnorm_layer, get_dialect
from darknet_bn.batchnorm_layer import FIELDS, PATHS, BatchNormLayer
from darknet_bn.golden import layer_cases, replay_layer_case

KERNELS = sorted(PATHS)
TYPES = ("batchnorm", "convolutional")
#: (fork, layer type) for every layer each fork has on the CPU.
LAYERS = [(fork, t) for fork in FORKS for t in TYPES if t in get_dialect(fork).layer_types]


# ---------------------------------------------------------------- backward_scale_cpu
test_routine_golden, test_routine_matches_naive = routine_tests(batchnorm_layer)


# ---------------------------------------------------------------- golden layer cases
@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("case", layer_cases(), ids=lambda c: c.name)
def test_layer_golden(case, kernel):
    """All buffers after each forward and backward of train, train, train, inference."""
    checks = replay_layer_case(case, kernel=kernel)
    assert len(checks) >= 4 * 2 * 13
    assert_bits([(c.label, c.actual, c.expected) for c in checks], context=f"{case.name} [{kernel}]")


def _naive_replay(case, fork):
    """``case`` through the naive layer of ``fork``: (label, naive, Darknet) per buffer."""
    z = case.arrays()
    ref = naive.Layer(case.batch, case.w, case.h, case.c, fork, case.layer)
    for name in FIELDS:
        if f"init_{name}" in z:
            getattr(ref, name)[:] = z[f"init_{name}"]
    net_delta = np.zeros(case.batch * case.c * case.h * case.w, np.float32)
    pairs = []
    for t, mode in enumerate(case.steps):
        train = mode == "train"
        with np.errstate(all="ignore"):
            naive.forward_batchnorm_layer(ref, z[f"step{t}_input"], train)
        pairs += [(f"step{t}_fwd_{f}", getattr(ref, f).copy(), z[f"step{t}_fwd_{f}"])
                  for f in FIELDS if f"step{t}_fwd_{f}" in z]
        with np.errstate(all="ignore"):
            naive.backward_batchnorm_layer(ref, z[f"step{t}_delta_in"], train, net_delta)
        pairs += [(f"step{t}_bwd_{f}", getattr(ref, f).copy(), z[f"step{t}_bwd_{f}"])
                  for f in FIELDS if f"step{t}_bwd_{f}" in z]
        if f"step{t}_bwd_net_delta" in z:
            pairs.append((f"step{t}_bwd_net_delta", net_delta.copy(),
                          z[f"step{t}_bwd_net_delta"]))
    return pairs


@pytest.mark.parametrize("case", layer_cases(), ids=lambda c: c.name)
def test_naive_model_reproduces_the_recorded_cases(case):
    """The independent model the layer is tested against below is Darknet's arithmetic:
    it gives every recorded buffer of every fork's cases bit for bit."""
    pairs = _naive_replay(case, case.fork)
    assert len(pairs) >= 4 * 2 * 13
    assert_bits(pairs, context=f"naive {case.name}")


@pytest.mark.parametrize("case", [c for c in layer_cases() if c.fork == "hankai"],
                         ids=lambda c: c.name)
def test_hankai_cases_are_not_alexeyabs_arithmetic(case):
    """The C++ fork's cases tell its float overloads apart: AlexeyAB's C rules (the same
    source lines) miss some of their buffers."""
    pairs = _naive_replay(case, "alexeyab")
    differ = [label for label, a, e in pairs if not np.array_equal(a.view(np.int32),
                                                                   e.view(np.int32))]
    print(f"{case.name}: {len(differ)} of {len(pairs)} buffers differ under AlexeyAB's rules")
    assert differ


# ---------------------------------------------------------------- layer vs naive
def _run_sequence(kernel, fork, layer_type, batch, c, h, w, regime, seed, steps):
    """Drive the port and the naive layer through ``steps`` and compare all buffers
    after every phase.  A step is "train", "inference" or "update"."""
    rng = np.random.default_rng(seed)
    port = BatchNormLayer(batch, w, h, c, dialect=fork, layer_type=layer_type, kernel=kernel)
    ref = naive.Layer(batch, w, h, c, fork, layer_type)
    for name in ("scales", "biases", "rolling_mean", "rolling_variance", "scale_updates",
                 "bias_updates"):
        init = rng.standard_normal(c).astype(np.float32)
        if name in ("scales", "rolling_variance"):
            init = np.abs(init) + np.float32(0.5)
        getattr(port, name)[:] = init
        getattr(ref, name)[:] = init
    n = batch * c * h * w
    ref_net_delta = np.zeros(n, np.float32)
    for t, step in enumerate(steps):
        if step == "update":
            applied = port.update(0.1, 0.9, 0.0005, batch)
            naive.update_batchnorm_layer(ref, batch, 0.1, 0.9, 0.0005)
            assert applied == (not (fork == "pjreddie" and layer_type == "batchnorm"))
            pairs = [(f"{t}:update:{f}", getattr(port, f), getattr(ref, f)) for f in FIELDS]
        else:
            train = step == "train"
            x = _regime(rng, regime, n).astype(np.float32)
            dy = rng.standard_normal(n).astype(np.float32)
            port.forward(x, train=train)
            with np.errstate(all="ignore"):
                naive.forward_batchnorm_layer(ref, x, train)
            pairs = [(f"{t}:{step}:fwd:{f}", getattr(port, f), getattr(ref, f)) for f in FIELDS
                     if f != "delta"]
            grad = port.backward(dy, train=train)
            with np.errstate(all="ignore"):
                naive.backward_batchnorm_layer(ref, dy, train, ref_net_delta)
            pairs += [(f"{t}:{step}:bwd:{f}", getattr(port, f), getattr(ref, f)) for f in FIELDS]
            pairs.append((f"{t}:{step}:bwd:returned_grad", grad,
                          ref_net_delta if layer_type == "batchnorm" else ref.delta))
        assert_bits(pairs, context=f"{fork} {layer_type} {batch}x{c}x{h}x{w} {regime} [{kernel}]")


SEQUENCE = ("train", "train", "update", "train", "inference", "update", "inference")
EDGE_SHAPES = [(1, 3, 2, 1), (2, 1, 1, 1), (3, 4, 1, 1), (1, 1, 3, 5), (2, 5, 3, 3),
               (3, 7, 5, 3), (4, 13, 9, 11)]


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("fork, layer_type", LAYERS)
@pytest.mark.parametrize("shape", EDGE_SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_layer_edge_shapes_match_naive(shape, fork, layer_type, kernel):
    _run_sequence(kernel, fork, layer_type, *shape, regime="normal", seed=sum(shape),
                  steps=SEQUENCE)


@pytest.mark.parametrize("kernel", KERNELS)
@settings(max_examples=25, deadline=None)
@given(batch=st.integers(1, 4), c=st.integers(1, 5), h=st.integers(1, 5), w=st.integers(1, 5),
       layer=st.sampled_from(LAYERS),
       regime=st.sampled_from(REGIMES), seed=st.integers(0, 2**32 - 1),
       steps=st.lists(st.sampled_from(("train", "inference", "update")), min_size=1, max_size=4))
def test_layer_random_matches_naive(kernel, batch, c, h, w, layer, regime, seed, steps):
    fork, layer_type = layer
    if batch * h * w < 2:
        steps = [s for s in steps if s != "train"]   # training rejected: tested below
    _run_sequence(kernel, fork, layer_type, batch, c, h, w, regime, seed, steps)


# ---------------------------------------------------------------- layer semantics
def test_fields_and_initial_values():
    l = BatchNormLayer(2, 5, 3, 4)
    assert (l.batch, l.w, l.h, l.c, l.outputs, l.inputs) == (2, 5, 3, 4, 60, 60)
    for name in FIELDS:
        buf = getattr(l, name)
        assert buf.dtype == np.float32 and buf.flags.c_contiguous
        assert buf.size == (120 if name in batchnorm_layer.TENSOR_FIELDS else 4)
        assert np.all(buf == (1 if name == "scales" else 0)), name
    assert l.buffers().keys() == set(FIELDS)


def test_hankai_has_no_standalone_layer():
    """hank-ai's Darknet has no [batchnorm] layer on the CPU: one ValueError naming the
    argument and the fix; its convolutional stage is built as asked."""
    with pytest.raises(ValueError) as e:
        BatchNormLayer(2, 3, 3, 4, dialect="hankai", layer_type="batchnorm")
    text = str(e.value)
    assert "\n" not in text and text.startswith("BatchNormLayer: layer_type='batchnorm'")
    assert "no standalone batchnorm layer on the CPU" in text
    assert text.endswith("pass layer_type='convolutional'")
    with pytest.raises(ValueError, match="layer_type='convolutional'"):
        BatchNormLayer(2, 3, 3, 4, dialect="hankai")          # the default is 'batchnorm'
    layer = BatchNormLayer(2, 3, 3, 4, dialect="HankAI", layer_type="convolutional")
    assert layer.dialect.name == "hankai" and layer.type == "convolutional"
    assert layer.has_update and layer.net_delta is None


def test_keyword_construction_and_repr():
    l = BatchNormLayer(batch=2, w=1, h=1, c=3, dialect="AlexeyAB", layer_type="convolutional")
    assert l.dialect.name == "alexeyab" and l.type == "convolutional"
    assert "alexeyab" in repr(l)


@pytest.mark.parametrize("kernel", KERNELS)
def test_accepts_nchw_arrays_and_in_place_conv(kernel):
    """A (batch,c,h,w) array is the same as its flat view; a conv stage may run on
    data already in ``output`` (input=None) and on ``delta`` in place."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 3, 4, 5)).astype(np.float32)
    dy = rng.standard_normal((2, 3, 4, 5)).astype(np.float32)
    a = BatchNormLayer(2, 5, 4, 3, layer_type="convolutional", kernel=kernel)
    b = BatchNormLayer(2, 5, 4, 3, layer_type="convolutional", kernel=kernel)
    a.forward(x, train=True)
    a.backward(dy, train=True)
    b.output[:] = x.ravel()
    b.forward(None, train=True)
    b.delta[:] = dy.ravel()
    b.backward(None, train=True)
    assert_bits([(f, getattr(a, f), getattr(b, f)) for f in FIELDS])


def test_net_delta_is_written_where_asked():
    rng = np.random.default_rng(4)
    l = BatchNormLayer(2, 3, 3, 2)
    x, dy = (rng.standard_normal(36).astype(np.float32) for _ in range(2))
    l.forward(x, train=True)
    out = np.full(36, np.nan, np.float32)
    got = l.backward(dy, train=True, net_delta=out)
    assert got is out and np.array_equal(out.view(np.int32), l.delta.view(np.int32))


def test_pjreddie_standalone_has_no_update():
    l = BatchNormLayer(2, 2, 2, 3)              # pjreddie [batchnorm]
    l.scale_updates[:] = 1
    before = {k: v.copy() for k, v in l.buffers().items()}
    assert l.has_update is False
    assert l.update(0.1, 0.9, 0.0005) is False
    assert_bits([(k, getattr(l, k), v) for k, v in before.items()])


def test_update_moves_parameters_in_darknet_sign():
    """delta is the negative gradient; update adds learning_rate/batch * updates."""
    l = BatchNormLayer(4, 1, 1, 2, dialect="alexeyab")
    l.scale_updates[:] = [8, -8]
    l.bias_updates[:] = [4, 0]
    assert l.update(0.5, 0.25, 0.0, batch=4) is True
    assert list(l.scales) == [2.0, 0.0] and list(l.biases) == [0.5, 0.0]
    assert list(l.scale_updates) == [2.0, -2.0] and list(l.bias_updates) == [1.0, 0.0]


@pytest.mark.parametrize("fork", FORKS)
def test_inference_forward_uses_rolling_statistics(fork):
    """With train=False the output is (x - rolling_mean)/denominator*scale + bias and
    batch statistics are left alone."""
    layer_type = get_dialect(fork).layer_types[0]
    # batch*h*w = 1 is fine in inference
    l = BatchNormLayer(1, 1, 1, 2, dialect=fork, layer_type=layer_type)
    l.rolling_mean[:] = [1, -1]
    l.rolling_variance[:] = [4, 0.25]
    l.scales[:] = [2, 3]
    l.biases[:] = [0.5, 0]
    out = l.forward(np.array([3, 0], np.float32), train=False)
    ref = naive.Layer(1, 1, 1, 2, fork, layer_type)
    for f in ("rolling_mean", "rolling_variance", "scales", "biases"):
        getattr(ref, f)[:] = getattr(l, f)
    naive.forward_batchnorm_layer(ref, np.array([3, 0], np.float32), False)
    assert_bits([("output", out, ref.output), ("mean", l.mean, np.zeros(2, np.float32))])
    assert abs(out[0] - (2 / 2 * 2 + 0.5)) < 1e-5     # (3-1)/sqrt(4)*2 + .5, sanity


def test_training_with_one_value_per_channel_is_rejected_without_side_effects():
    l = BatchNormLayer(1, 1, 1, 3)
    before = {k: v.copy() for k, v in l.buffers().items()}
    with pytest.raises(ValueError, match="one value per channel"):
        l.forward(np.ones(3, np.float32), train=True)
    assert_bits([(k, getattr(l, k), v) for k, v in before.items()])


@pytest.mark.parametrize("dims", [(256, 1, 1, 1024), (64, 1, 1, 4096), (2, 13, 13, 3),
                                  (1, 1, 1, 1)])
def test_buffers_start_at_distinct_page_offsets(dims):
    """Every buffer is 64-byte aligned, the buffers are disjoint, and no two begin at the
    same offset in a 4 KiB page, even when every size is a multiple of 4 KiB (c = 1024:
    packed end to end they would all share one offset, see ``batchnorm_layer._layout``)."""
    batch, w, h, c = dims
    layer = BatchNormLayer(batch, w, h, c, layer_type="batchnorm")
    names = FIELDS + ("net_delta",)
    views = [getattr(layer._s, name) for name in names]
    starts = [v.__array_interface__["data"][0] for v in views]
    assert all(a % 64 == 0 for a in starts)
    assert len({a % 4096 for a in starts}) == len(names)
    spans = sorted((a, a + v.nbytes) for a, v in zip(starts, views))
    assert all(end <= nxt for (_, end), (nxt, _) in zip(spans, spans[1:]))
    for name, v in zip(names, views):
        size = c if name in batchnorm_layer.CHANNEL_FIELDS else batch * c * h * w
        assert v.shape == (size,), name
