"""darknet_bn.darknet.export: PyTorch BatchNorm state_dicts reproducing Darknet's inference.

PyTorch's eval kernel computes ``x*alpha + beta`` (``alpha = w/sqrt(var+eps)``,
``beta = b - mean*alpha``) in float32; Darknet computes ``(x-mean)/sqrt(...)`` in
float64, rounds, then ``*scale + bias`` in float32.  The two agree to a few
roundings of the terms involved, not bit for bit.  Standard error analysis
(each float32 operation has relative error <= u = 2**-24): torch's path has
about 4 roundings on ``|x*alpha|`` and ``|mean*alpha|`` (var+eps, sqrt,
reciprocal, product with w, then the fold and the final multiply-add) and 2 on
``|b|``; Darknet's about 3 on ``|s*(x-m)/d|`` and 1 on ``|b|``.  So
``|torch - darknet| <= 8u (|x*alpha| + |mean*alpha| + |b|)``.  Measured worst
(torch 2.13.0, same generator as this test, seed 11): 4.22u pjreddie and 3.99u
AlexeyAB on this test's batch-4 sample; 5.43u and 4.59u on the batch-32 sample
of the table in docs/darknet-files.md.  Elementwise ulp distance is not bounded
(when the output cancels to near zero, a 1e-8 absolute difference is thousands
of ulp), so the ulp figures are reported, not asserted.
"""
import math
from pathlib import Path

import numpy as np
import pytest

from darknet_bn import get_dialect
from darknet_bn.darknet import (batchnorm_state_dict, export_state_dicts,
                                make_batchnorm_layer_from_record, read_weights)
from darknet_bn.golden import ulp_diff

CFG_DIR = Path(__file__).resolve().parent.parent / "data" / "golden" / "cfg"
U = 2.0 ** -24
BOUND = 8.0


def _pjreddie_running_var(v):
    """The documented mapping, transcribed element by element with Python floats
    (C doubles): ``d = sqrt(v) + (double).000001f``, ``running_var = (float)(d*d)``,
    so that ``sqrt(running_var)`` is pjreddie's denominator."""
    eps = float(np.float32(0.000001))
    out = []
    for x in v.tolist():
        d = math.sqrt(x) + eps if x >= 0 or math.isinf(x) else math.nan
        out.append(np.float32(d * d))
    return np.array(out, dtype=np.float32)


def _weights(fork):
    return read_weights(CFG_DIR / fork / "bn-zoo.cfg", CFG_DIR / fork / "bn-zoo.weights",
                        dialect=fork)


@pytest.mark.parametrize("fork", ["pjreddie", "alexeyab"])
def test_state_dict_mapping(fork):
    w = _weights(fork)
    dicts = export_state_dicts(w)
    assert sorted(dicts) == [r.index for r in w.layers]
    for rec in w.layers:
        state, eps = dicts[rec.index]
        assert eps == get_dialect(fork).torch_eps == (1e-5 if fork == "alexeyab" else 0.0)
        assert set(state) == {"weight", "bias", "running_mean", "running_var",
                              "num_batches_tracked"}
        assert np.array_equal(state["weight"], rec.scales)
        assert np.array_equal(state["running_mean"], rec.rolling_mean)
        if rec.biases is None:
            assert not state["bias"].any()
        else:
            assert np.array_equal(state["bias"], rec.biases)
        want = (rec.rolling_variance if fork == "alexeyab"
                else _pjreddie_running_var(rec.rolling_variance))
        assert state["running_var"].dtype == np.float32
        assert np.array_equal(state["running_var"].view(np.int32), want.view(np.int32))


def test_pjreddie_running_var_edge_values():
    """Bits of the mapping on values the bn-zoo file lacks: zeros of both signs,
    denormals, tiny, huge (FLT_MAX must round back down, not to inf) and inf."""
    rec = _weights("pjreddie").layer(0)
    f32 = np.finfo(np.float32)
    rec.rolling_variance[:] = np.array([0.0, -0.0, f32.smallest_subnormal, f32.tiny, 1e-12,
                                        1.0, f32.max, np.inf], dtype=np.float32)
    state, _ = batchnorm_state_dict(rec)
    want = _pjreddie_running_var(rec.rolling_variance)
    assert np.array_equal(state["running_var"].view(np.int32), want.view(np.int32))
    assert want[6] == f32.max and np.isinf(want[7])


def test_pjreddie_zero_and_negative_variance():
    rec = _weights("pjreddie").layer(0)
    rec.rolling_variance[:2] = [0.0, -1.0]
    state, _ = batchnorm_state_dict(rec)
    assert state["running_var"][0] == np.float32(np.float64(np.float32(1e-6)) ** 2)
    assert np.isnan(state["running_var"][1])          # C's sqrt(-1) is NaN as well


@pytest.mark.parametrize("fork", ["pjreddie", "alexeyab"])
def test_torch_eval_matches_port_inference(fork):
    torch = pytest.importorskip("torch")
    from darknet_bn.darknet import to_torch_batchnorm

    rng = np.random.default_rng(11)
    worst, total, identical = 0.0, 0, 0
    for rec in _weights(fork).layers:
        layer = make_batchnorm_layer_from_record(rec, batch=4)
        x = (rng.standard_normal((4, layer.c, layer.h, layer.w)) * 3 + 0.5).astype(np.float32)
        ours = layer.forward(x.copy(), train=False).reshape(x.shape).astype(np.float64)
        module = to_torch_batchnorm(rec)
        assert not module.training
        xt = torch.from_numpy(x.reshape(4, layer.c) if rec.section == "connected" else x)
        with torch.no_grad():
            theirs = module(xt).numpy().reshape(x.shape)
        st = {k: v.numpy().astype(np.float64) for k, v in module.state_dict().items()
              if k != "num_batches_tracked"}
        alpha = st["weight"] / np.sqrt(st["running_var"] + module.eps)
        shape = (1, -1, 1, 1)
        scale = (np.abs(x * alpha.reshape(shape))
                 + np.abs(st["running_mean"] * alpha).reshape(shape)
                 + np.abs(st["bias"]).reshape(shape))
        err = np.abs(theirs.astype(np.float64) - ours) / (U * scale)
        worst = max(worst, float(err.max()))
        n_diff, _ = ulp_diff(theirs, ours.astype(np.float32))
        total += x.size
        identical += x.size - n_diff
    assert total > 0 and worst <= BOUND, (
        f"torch differs by {worst:.2f} u of the terms' magnitude "
        f"({identical}/{total} outputs bit-identical)")


def test_hankai_exports_alexeyabs_form():
    """hank-ai's state_dict is AlexeyAB's (eps 1e-5, the variance as stored), and torch's
    eval is within the same bound of its C++ inference."""
    torch = pytest.importorskip("torch")
    from darknet_bn.darknet import to_torch_batchnorm

    assert get_dialect("hankai").torch_eps == get_dialect("alexeyab").torch_eps == 1e-5
    rng = np.random.default_rng(12)
    worst = 0.0
    for rec in _weights("alexeyab").layers:
        if rec.section == "batchnorm":               # hank-ai has no [batchnorm] layer
            continue
        ours, eps = batchnorm_state_dict(rec, dialect="hankai")
        theirs, ab_eps = batchnorm_state_dict(rec, dialect="alexeyab")
        assert eps == ab_eps and all(np.array_equal(ours[k], theirs[k]) for k in ours)
        layer = make_batchnorm_layer_from_record(rec, batch=2, dialect="hankai")
        assert layer.dialect.name == "hankai"
        x = (rng.standard_normal((2, layer.c, layer.h, layer.w)) * 3).astype(np.float32)
        y = layer.forward(x.copy(), train=False).reshape(x.shape).astype(np.float64)
        module = to_torch_batchnorm(rec, dialect="hankai")
        xt = torch.from_numpy(x.reshape(2, layer.c) if rec.section == "connected" else x)
        with torch.no_grad():
            t = module(xt).numpy().reshape(x.shape).astype(np.float64)
        alpha = (rec.scales / np.sqrt(rec.rolling_variance.astype(np.float64) + 1e-5)
                 ).reshape(1, -1, 1, 1)
        scale = (np.abs(x * alpha) + np.abs(rec.rolling_mean.reshape(1, -1, 1, 1) * alpha)
                 + np.abs(rec.biases).reshape(1, -1, 1, 1))
        worst = max(worst, float((np.abs(t - y) / (U * scale)).max()))
    assert worst <= BOUND, worst
