"""The pieces of ``make bench``'s target table (a smoke test: no time is asserted).

The exact reference kernel must write the layer's inference bits (the bench
compares them on every run; here on small odd shapes, every fork, including
NaN/Inf/+-0 inputs, a zero and a negative rolling variance); the
yolov4-tiny-shaped model must have Darknet's shapes; the table must say, per
row, its target and whether it is met.
"""
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/ is a package there

from benchmarks import exact_reference, targets  # noqa: E402
from benchmarks._common import make_layer, round_robin  # noqa: E402

SEED = 20261205


@pytest.mark.parametrize("dialect", ["pjreddie", "alexeyab", "hankai"])
@pytest.mark.parametrize("shape", [(2, 5, 3, 7), (3, 17, 4, 4), (4, 9, 1, 1)],
                         ids=lambda s: "x".join(map(str, s)))
def test_exact_reference_writes_the_layers_bits(shape, dialect):
    layer, x, _ = make_layer(shape, dialect, "fused", seed=SEED)
    x = x.copy()
    x[:3] = [np.nan, np.inf, -0.0]
    layer.rolling_variance[0] = 0.0
    layer.rolling_variance[1] = -0.25
    assert exact_reference.bits_match(layer, x), f"seed {SEED}"


def test_bit_check_detects_a_changed_output(monkeypatch):
    """A reference one float32 ulp off in one channel's bias is reported as different."""
    layer, x, _ = make_layer((2, 5, 3, 7), "alexeyab", "fused", seed=SEED)
    honest = exact_reference.reference_for

    def nudged(layer, x):
        saved = layer.biases[2]
        layer.biases[2] = np.nextafter(saved, np.float32(np.inf))
        try:
            return honest(layer, x)
        finally:
            layer.biases[2] = saved
    assert exact_reference.bits_match(layer, x)
    monkeypatch.setattr(exact_reference, "reference_for", nudged)
    assert not exact_reference.bits_match(layer, x)


def test_torch_rows_hold_the_float_division_forks_to_pytorch(monkeypatch):
    """The torch group: a train step and an inference row per benchmark shape, target
    1.0x PyTorch, for the forks whose normalize_cpu divides in float (hankai) only."""
    torch = pytest.importorskip("torch")
    monkeypatch.setattr(targets, "SHAPES", ((2, 3, 4, 4), (8, 5, 1, 1)))
    threads = torch.get_num_threads()                 # the rows set torch's thread count
    try:
        rows = targets.torch_rows(1, rounds=1, inner=1)
    finally:
        torch.set_num_threads(threads)
    assert [(r["dialect"], tuple(r["shape"]), r["what"].split(" /")[0]) for r in rows] == [
        ("hankai", (2, 3, 4, 4), "BatchNormLayer train step"),
        ("hankai", (2, 3, 4, 4), "BatchNormLayer inference"),
        ("hankai", (8, 5, 1, 1), "BatchNormLayer train step"),
        ("hankai", (8, 5, 1, 1), "BatchNormLayer inference")]
    assert all(r["target"] == 1.0 and r["stat"] == "min" and r["group"] == "torch"
               for r in rows)


def test_cfg_model_has_darknets_shapes():
    torch = pytest.importorskip("torch")
    from benchmarks import cfg_model
    model, (c, h, w) = cfg_model.build(targets.CFG, targets.CFG_FORK)
    assert (c, h, w) == (3, 416, 416)
    bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert len(bns) == 19
    with torch.no_grad():
        heads = model.eval()(torch.zeros(1, c, h, w), check=True)
    assert [tuple(t.shape) for t in heads] == [(1, 255, 13, 13), (1, 255, 26, 26)]


def test_report_states_target_and_verdict():
    calls = {"a": 0, "b": 0}

    def a():
        calls["a"] += 1

    def b():
        calls["b"] += 1
    ta, tb = round_robin({"a": a, "b": b}, rounds=5, inner=2).values()
    assert len(ta) == len(tb) == 5 and calls == {"a": 12, "b": 12}
    rows = [targets.row("fc", "x / y", (2, 3, 1, 1), "pjreddie", [2.0] * 5, [1.0] * 5, 1.0,
                        "median"),
            targets.row("layer", "u / v", (2, 3, 4, 4), "alexeyab", [1.0] * 5, [1.0] * 5, 1.05,
                        "min")]
    text = targets.report(rows, 2, "load average 0.00 0.00 0.00", "load average 0 0 0")
    assert "| 2.00x (min 2.00x, median 2.00x) | median of 5 | <= 1.00x | NOT MET |" in text
    assert "| 1.00x (min 1.00x, median 1.00x) | min of 5 | <= 1.05x | met |" in text
    assert "1 of 2 target rows met" in text and "load average" in text


def test_module_rows_hold_the_large_shape_to_its_floor(monkeypatch):
    """The module group: the small shape against nn.BatchNorm2d (<= 2.0x), the large one
    against a fresh output + the exact reference kernel (<= 1.10x), every fork."""
    torch = pytest.importorskip("torch")
    monkeypatch.setattr(targets, "MODULE_ROWS", (((1, 4, 3, 3), 2.0, "nn"),
                                                 ((2, 8, 5, 5), 1.10, "floor")))
    threads = torch.get_num_threads()
    try:
        rows = targets.module_rows(1, rounds=1, inner=1)
    finally:
        torch.set_num_threads(threads)
    assert [(r["dialect"], tuple(r["shape"]), r["target"]) for r in rows] == [
        (d, s, t) for s, t in (((1, 4, 3, 3), 2.0), ((2, 8, 5, 5), 1.10))
        for d in ("pjreddie", "alexeyab", "hankai")]
    for r in rows:
        floor = r["target"] == 1.10
        assert ("fresh output + exact reference kernel" in r["what"]) == floor
        assert ("nn.BatchNorm2d eval" in r["note"]) == floor
    text = targets.report(rows, 1, "", "")
    assert text.count("<= 1.10x") == 3 and text.count("<= 2.00x") == 3


def test_floor_call_writes_the_modules_bits(monkeypatch):
    """The floor the module is held to computes what the module computes (same kernel,
    same bits), so the ratio compares equal work."""
    torch = pytest.importorskip("torch")
    from darknet_bn import fused
    from darknet_bn.torch import DarknetBatchNorm2d
    from benchmarks._common import make_data
    shape = (2, 8, 5, 5)
    x, _, scales, biases, rmean, rvar = make_data(shape)
    module = DarknetBatchNorm2d(8, dialect="alexeyab").eval()
    with torch.no_grad():
        for t, v in ((module.weight, scales), (module.bias, biases),
                     (module.running_mean, rmean), (module.running_var, rvar)):
            t.copy_(torch.from_numpy(v))
        y = module(torch.from_numpy(x)).numpy().reshape(-1)
    captured = {}
    real = fused.placed_empty

    def keep(n, offset):
        captured["out"] = real(n, offset)
        return captured["out"]
    run = targets.module_floor_call(shape, "alexeyab")
    monkeypatch.setattr(fused, "placed_empty", keep)
    run()
    assert np.array_equal(captured["out"].view(np.int32), y.view(np.int32))


def test_fc_rows_report_the_division_share(monkeypatch):
    torch = pytest.importorskip("torch")
    monkeypatch.setattr(targets, "FC_ROWS", (((8, 16, 1, 1), 1.0),))
    threads = torch.get_num_threads()
    try:
        rows = targets.fc_rows(1, "alone", rounds=1, inner=1)
    finally:
        torch.set_num_threads(threads)
    assert [r["dialect"] for r in rows] == ["pjreddie", "alexeyab", "hankai"]
    assert all("open; division's share: two exact division passes" in r["note"]
               and r["target"] == 1.0 for r in rows)


def test_offset_sweep_rows_have_min_median_max_and_the_rerun_rule(monkeypatch):
    """The offset sweep's table: one row per impl, mode, fork; min <= median <= max over
    the offsets; a row over the limit is re-timed three times and the median counts."""
    from benchmarks import offsets
    monkeypatch.setattr(offsets, "SHORT_OFFSETS", (0, 64, 2048, 4032))
    monkeypatch.setattr(offsets, "CALLS", {"small": 2, "large": 2})
    monkeypatch.setattr(offsets, "LIMIT", 0.5)          # every row takes the rerun path
    import importlib.util
    torch_present = importlib.util.find_spec("torch") is not None
    rows = offsets.measure([(2, 8, 3, 3)], ["alexeyab", "hankai"], 1, fast=True,
                           progress=None)
    impls = ("layer", "module") if torch_present else ("layer",)
    assert [(r["dialect"], r["mode"], r["impl"]) for r in rows] == [
        (d, m, i) for d in ("alexeyab", "hankai") for m in ("train", "infer") for i in impls]
    for r in rows:
        assert r["offsets"] == 4 and r["min_ms"] <= r["median_ms"] <= r["max_ms"]
        assert len(r["rerun_ratios"]) == 3
        assert r["ratio"] == sorted(r["rerun_ratios"])[1]
    text = offsets.report(rows, 1, "", "")
    assert text.count("| 2x8x3x3 |") == len(rows)


@pytest.mark.parametrize("offset", [0, 16, 64, 2048, 4032])
def test_offset_sweep_places_the_input_where_it_says(offset):
    from benchmarks import offsets
    values = np.arange(3000, dtype=np.float32).reshape(3, 1000)
    placer = offsets.Placed(values)
    a = placer.at(offset)
    assert offsets.page_offset(a) == offset and np.array_equal(a, values)
    b = placer.at((offset + 1024) % 4096)          # the same allocation, rewritten
    assert offsets.page_offset(b) == (offset + 1024) % 4096 and np.array_equal(b, values)
    assert np.shares_memory(a, placer.raw) and np.shares_memory(b, placer.raw)
