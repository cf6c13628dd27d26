"""darknet_bn.darknet.check: converted models built here (ONNX graphs, torch modules and
state_dicts), exact and with each known converter mistake, against Darknet's inference.

The Darknet side is ``bn-zoo`` of each fork: [convolutional] with batchnorm (3x),
[batchnorm] (2x, one right after a conv with batchnorm), a conv without batchnorm,
[connected] with and without batchnorm.
"""
from pathlib import Path

import numpy as np
import pytest

from darknet_bn.cli import main
from darknet_bn.darknet import (batchnorm_state_dict, check_model, fold_batchnorm, parse_cfg,
                                read_weights)
from darknet_bn.darknet.check import TOLERANCE, CheckError

torch = pytest.importorskip("torch")

CFG_DIR = Path(__file__).resolve().parent.parent / "data" / "golden" / "cfg"
FORKS = ("pjreddie", "alexeyab")
F32 = np.float32
BN_LAYERS = [0, 1, 3, 7, 9, 11]          # bn-zoo's layers with batchnorm
CONV_BN = [0, 3, 7]


def _files(fork):
    return CFG_DIR / fork / "bn-zoo.cfg", CFG_DIR / fork / "bn-zoo.weights"


def _darknet(fork):
    """``(net, {index: record}, {index: (weights, biases)} of every conv/connected)``."""
    cfg, path = _files(fork)
    net = parse_cfg(cfg, dialect=fork)
    raw = np.fromfile(path, dtype="<f4", offset=20)
    records = {r.index: r for r in read_weights(net, path, layer_weights=True).layers}
    layers = {}
    for spec in net.layers:
        if spec.section in ("convolutional", "connected"):
            n = dict(spec.blocks)
            layers[spec.index] = (raw[spec.offsets["weights"]:][:n["weights"]].copy(),
                                  raw[spec.offsets["biases"]:][:n["biases"]].copy())
    return net, records, layers


# --------------------------------------------------------------------------
# converter mistakes, applied to Darknet's raw values as a converter would
# --------------------------------------------------------------------------
def _bn_params(record, fork, mistake=None):
    """``(weight, bias, running_mean, running_var, eps)`` a converter stores."""
    if mistake is None:                       # darknet_bn's exact export
        sd, eps = batchnorm_state_dict(record, dialect=fork)
        return sd["weight"], sd["bias"], sd["running_mean"], sd["running_var"], eps
    s, m, v = record.scales.copy(), record.rolling_mean.copy(), record.rolling_variance.copy()
    b = record.biases.copy() if record.biases is not None else np.zeros_like(s)
    eps = 1e-5                                # what PyTorch-based converters use
    if mistake == "eps":
        eps = 1e-3                            # Keras' default
    elif mistake == "swap_mean_var":
        m, v = v, m
    elif mistake == "swap_scale_bias":
        s, b = b, s
    elif mistake == "std":
        v = np.sqrt(v)
    elif mistake == "biased":
        v = (v * F32(7 / 8)).astype(F32)      # population variance of 8 samples
    elif mistake == "other_fork":
        pass                                  # raw values, eps 1e-5 inside: AlexeyAB's form
    elif mistake != "double_fold":
        raise AssertionError(mistake)
    return s, b, m, v, eps


def _conv_module(spec, weights, biases, bias):
    if spec.section == "connected":
        mod = torch.nn.Linear(spec.inputs, spec.outputs, bias=bias)
        mod.weight.data = torch.from_numpy(weights.reshape(spec.outputs, spec.inputs).copy())
    else:
        mod = torch.nn.Conv2d(spec.c, spec.filters, spec.size, groups=spec.groups, bias=bias)
        mod.weight.data = torch.from_numpy(weights.reshape(mod.weight.shape).copy())
    if bias:
        mod.bias.data = torch.from_numpy(biases.copy())
    return mod


def _bn_module(spec, params):
    s, b, m, v, eps = params
    cls = torch.nn.BatchNorm1d if spec.section == "connected" else torch.nn.BatchNorm2d
    mod = cls(len(s), eps=eps)
    mod.load_state_dict({"weight": torch.from_numpy(np.array(s, F32)),
                         "bias": torch.from_numpy(np.array(b, F32)),
                         "running_mean": torch.from_numpy(np.array(m, F32)),
                         "running_var": torch.from_numpy(np.array(v, F32)),
                         "num_batches_tracked": torch.tensor(0)})
    return mod.eval()


def build_torch(fork, *, mistake=None, at=(), fold=False, bn_only=False):
    """A ``torch.nn.Sequential`` for bn-zoo: the conv/connected layers with their
    Darknet weights and a BatchNorm where Darknet has batchnorm; ``mistake`` applied
    at the cfg layers ``at``; ``fold``: the conv layers folded the AlexeyAB way
    (``"raw"``: the BN dropped, Darknet's raw weights kept)."""
    net, records, layers = _darknet(fork)
    mods = torch.nn.Sequential()
    for spec in net.layers:
        if spec.section not in ("convolutional", "connected", "batchnorm"):
            continue
        rec = records.get(spec.index)
        here = mistake if spec.index in at else None
        if spec.section != "batchnorm" and not bn_only:
            w, b = layers[spec.index]
            if rec is not None and spec.section == "convolutional" and fold:
                if fold != "raw":
                    w, b = fold_batchnorm(w, b, rec.scales, rec.rolling_mean,
                                          rec.rolling_variance, dialect=fold)
                mods.add_module(f"conv{spec.index}", _conv_module(spec, w, b, True))
                continue
            if here == "double_fold":
                w, _ = fold_batchnorm(w, b, rec.scales, rec.rolling_mean,
                                      rec.rolling_variance, dialect="alexeyab")
            mods.add_module(f"conv{spec.index}", _conv_module(spec, w, b, rec is None))
        if rec is not None:
            mods.add_module(f"bn{spec.index}", _bn_module(spec, _bn_params(rec, fork, here)))
    return mods


def _flagged(report):
    return [r.index for r in report.layers if not r.ok]


# --------------------------------------------------------------------------
# torch modules: exact forms pass, each mistake is flagged where it is and named
# --------------------------------------------------------------------------
@pytest.mark.parametrize("fork", FORKS)
@pytest.mark.parametrize("bn_only", [False, True], ids=["with-convs", "bn-only"])
def test_exact_torch_export_passes(fork, bn_only):
    cfg, path = _files(fork)
    report = check_model(build_torch(fork, bn_only=bn_only), cfg, path, dialect=fork)
    assert report.ok and [r.index for r in report.layers] == BN_LAYERS
    assert all(r.ok and r.diagnosis == "" and r.form == "batchnorm" for r in report.layers)
    assert max(r.max_rel_error for r in report.layers) <= TOLERANCE
    refs = {r.index: r.reference for r in report.layers}
    if fork == "alexeyab":
        assert all(("fuse_conv_batchnorm" in refs[i]) == (i in CONV_BN) for i in BN_LAYERS)
    else:
        assert all("(sqrt(var) + 1e-06)" in refs[i] for i in BN_LAYERS)


MISTAKES = [
    ("eps", "eps"), ("swap_mean_var", "swap"), ("swap_scale_bias", "swap"),
    ("std", "standard deviation"), ("biased", "biased"),
    ("double_fold", "folded weights where raw ones were expected"),
]


@pytest.mark.parametrize("fork", FORKS)
@pytest.mark.parametrize("mistake,words", MISTAKES, ids=[m for m, _ in MISTAKES])
def test_each_mistake_is_flagged_on_its_layer_and_diagnosed(fork, mistake, words):
    at = (3, 11) if mistake != "double_fold" else (3, 7)
    cfg, path = _files(fork)
    report = check_model(build_torch(fork, mistake=mistake, at=at), cfg, path, dialect=fork)
    flagged = _flagged(report)
    if fork == "pjreddie" and mistake != "eps":
        # the converter's eps 1e-5 inside the root is itself a pjreddie mistake
        assert set(at) <= set(flagged)
    else:
        assert flagged == list(at), report.format_table()
    for r in report.layers:
        if r.index in at:
            assert words in r.diagnosis and "fix:" in r.diagnosis, (r.index, r.diagnosis)
            assert r.max_rel_error > TOLERANCE
    assert not report.ok


def test_pjreddie_converter_defaults_are_the_wrong_fork():
    """eps 1e-5 inside the root with the stored variance (PyTorch's BatchNorm2d
    defaults) is AlexeyAB's inference, not pjreddie's."""
    cfg, path = _files("pjreddie")
    report = check_model(build_torch("pjreddie", mistake="other_fork", at=BN_LAYERS), cfg,
                         path, dialect="pjreddie")
    assert _flagged(report) == BN_LAYERS
    for r in report.layers:
        assert "eps" in r.diagnosis and "wrong fork" in r.diagnosis, r.diagnosis
    # the same model is AlexeyAB's exact form
    assert check_model(build_torch("alexeyab"), *_files("alexeyab"), dialect="alexeyab").ok


def test_folded_alexeyab_model_passes_and_raw_weights_are_flagged():
    cfg, path = _files("alexeyab")
    report = check_model(build_torch("alexeyab", fold="alexeyab"), cfg, path,
                         dialect="alexeyab")
    assert report.ok, report.format_table()
    assert [r.form for r in report.layers if r.index in CONV_BN] == ["folded"] * 3
    raw = check_model(build_torch("alexeyab", fold="raw"), cfg, path, dialect="alexeyab")
    assert _flagged(raw) == CONV_BN
    assert all("raw weights where folded ones were expected" in r.diagnosis
               for r in raw.layers if not r.ok)


def test_pjreddie_denormalize_is_not_pjreddies_inference():
    """``darknet denormalize`` folds with sqrt(var + .00001): not what pjreddie's own
    unfolded inference computes; check says so."""
    cfg, path = _files("pjreddie")
    report = check_model(build_torch("pjreddie", fold="pjreddie"), cfg, path,
                         dialect="pjreddie")
    assert _flagged(report) == CONV_BN
    for r in report.layers:
        if not r.ok:
            assert "eps: computes (x-mean)/sqrt(var + 1e-05)" in r.diagnosis


def test_live_module_is_run_and_left_as_it_was():
    cfg, path = _files("alexeyab")
    model = build_torch("alexeyab").train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    assert check_model(model, cfg, path, dialect="alexeyab").ok
    assert model.training
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_a_custom_batchnorm_subclass_is_run_as_it_computes():
    """A _BatchNorm subclass with its own forward: check runs it, so a module that
    computes pjreddie's formula itself passes with the raw statistics."""
    class PjreddieBatchNorm2d(torch.nn.BatchNorm2d):
        def forward(self, x):
            shape = (1, -1, 1, 1)
            d = (self.running_var.double().sqrt() + float(F32(1e-6))).view(shape)
            y = (x.double() - self.running_mean.double().view(shape)) / d
            return (y.float() * self.weight.view(shape) + self.bias.view(shape))

    cfg, path = _files("pjreddie")
    _, records, _ = _darknet("pjreddie")
    mods = torch.nn.Sequential()
    for i in BN_LAYERS:
        rec = records[i]
        m = PjreddieBatchNorm2d(rec.channels, eps=0.0)
        m.running_mean.copy_(torch.from_numpy(rec.rolling_mean))
        m.running_var.copy_(torch.from_numpy(rec.rolling_variance))
        m.weight.data.copy_(torch.from_numpy(rec.scales))
        if rec.biases is not None:
            m.bias.data.copy_(torch.from_numpy(rec.biases))
        mods.add_module(f"bn{i}", m.eval())
    assert check_model(mods, cfg, path, dialect="pjreddie").ok


# --------------------------------------------------------------------------
# state_dict files and the command line
# --------------------------------------------------------------------------
def _save(model, tmp_path, name="model.pt"):
    path = tmp_path / name
    torch.save(model.state_dict(), path)
    return path


@pytest.mark.parametrize("fork", FORKS)
def test_state_dict_exit_codes(fork, tmp_path, capsys):
    cfg, path = _files(fork)
    eps = "0" if fork == "pjreddie" else "1e-5"
    good = _save(build_torch(fork), tmp_path, "good.pt")
    assert main(["check", str(cfg), str(path), str(good), "--dialect", fork, "--eps", eps]) == 0
    out = capsys.readouterr().out
    assert "6 of 6 layers within" in out and "FAIL" not in out
    bad = _save(build_torch(fork, mistake="swap_scale_bias", at=(9,)), tmp_path, "bad.pt")
    assert main(["check", str(cfg), str(path), str(bad), "--dialect", fork,
                 "--eps", "1e-5"]) == 1
    out = capsys.readouterr().out
    row = [l for l in out.splitlines() if l.lstrip().startswith("9 ")][0]
    note = row.split()[-1]                     # the diagnosis, said once under the table
    assert "FAIL" in row and note.startswith("[")
    assert "swap" in out[out.index(f"\n{note} "):]
    report = check_model(bad, cfg, path, dialect=fork, eps=1e-5)
    assert 9 in _flagged(report)


def test_state_dict_without_eps_and_wrong_eps(tmp_path):
    cfg, path = _files("alexeyab")
    sd = _save(build_torch("alexeyab"), tmp_path)
    with pytest.raises(CheckError, match=r"stores no eps.*eps=1e-05"):
        check_model(sd, cfg, path, dialect="alexeyab")
    report = check_model(sd, cfg, path, dialect="alexeyab", eps=1e-3)
    assert _flagged(report) == BN_LAYERS and all("eps" in r.diagnosis for r in report.layers)


# --------------------------------------------------------------------------
# ONNX graphs exported by torch.onnx from PyTorch models of the cfg's graph
# --------------------------------------------------------------------------
def build_onnx(fork, path, *, fold=False, eps=None, swap_at=()):
    """bn-zoo as torch.onnx exports it (dynamo=False) from a PyTorch model of the cfg's
    graph: BatchNormalization nodes with darknet_bn's exact export, or (``fold``) folded
    into the convs by the exporter from the raw values with eps 1e-5 (AlexeyAB's form);
    ``eps``: raw values with that eps; ``swap_at``: mean and variance swapped there."""
    pytest.importorskip("onnx")
    import onnx
    from _check_models import CfgNet, export
    net, records, layers = _darknet(fork)
    model = CfgNet(net)
    with torch.no_grad():
        for spec in net.layers:
            i, rec = spec.index, records.get(spec.index)
            conv, bn = model.modules_of(i)
            if conv is not None:
                w, b = layers[i]
                conv.weight.copy_(torch.from_numpy(w.reshape(conv.weight.shape)))
                if conv.bias is not None:
                    conv.bias.copy_(torch.from_numpy(b))
            if bn is not None:
                mistake = ("swap_mean_var" if i in swap_at else
                           "other_fork" if (eps is not None or fold) else None)
                s, b, m, v, e = _bn_params(rec, fork, mistake)
                for t, value in ((bn.weight, s), (bn.bias, b), (bn.running_mean, m),
                                 (bn.running_var, v)):
                    t.copy_(torch.from_numpy(np.asarray(value, F32)))
                bn.eps = eps if eps is not None else e
    onnx.save(export(model, 32, fold=fold), path)
    return path


@pytest.mark.parametrize("fork", FORKS)
def test_onnx_exact_unfolded_passes(fork, tmp_path):
    cfg, path = _files(fork)
    model = build_onnx(fork, tmp_path / "m.onnx")
    report = check_model(model, cfg, path, dialect=fork)
    assert report.ok and [r.index for r in report.layers] == BN_LAYERS
    names = [r.model_name for r in report.layers]
    assert "conv_0" in names[0] and "batch_norm_0" in names[0] and "batch_norm_1" in names[1]
    assert [r.form for r in report.layers] == ["batchnorm"] * 6


def test_onnx_folded_alexeyab_passes_and_the_other_fork_does_not(tmp_path):
    cfg, path = _files("alexeyab")
    model = build_onnx("alexeyab", tmp_path / "m.onnx", fold=True)
    report = check_model(model, cfg, path, dialect="alexeyab")
    assert report.ok, report.format_table()
    assert [r.form for r in report.layers] == ["folded", "batchnorm", "folded", "folded",
                                               "batchnorm", "batchnorm"]


@pytest.mark.parametrize("fork", FORKS)
def test_onnx_keras_eps_is_flagged_everywhere(fork, tmp_path, capsys):
    cfg, path = _files(fork)
    model = build_onnx(fork, tmp_path / "m.onnx", eps=1e-3)
    report = check_model(model, cfg, path, dialect=fork)
    assert _flagged(report) == BN_LAYERS
    assert all("eps: computes (x-mean)/sqrt(var + 0.001)" in r.diagnosis
               for r in report.layers)
    assert main(["check", str(cfg), str(path), str(model), "--dialect", fork]) == 1


def test_onnx_swapped_mean_and_variance(tmp_path):
    cfg, path = _files("alexeyab")
    model = build_onnx("alexeyab", tmp_path / "m.onnx", swap_at=(7,))
    report = check_model(model, cfg, path, dialect="alexeyab")
    assert _flagged(report) == [7]
    assert "swap: rolling_mean and rolling_variance" in report.layers[3].diagnosis
    assert "batch_norm_7" in report.layers[3].model_name


def test_a_real_eps_mistake_exceeds_the_tolerance_and_rounding_does_not():
    """The tolerance separates: darknet_bn's exports (rounding only) stay below it;
    eps 1e-5 inside instead of pjreddie's 1e-6 outside, at variance ~1, is far above."""
    cfg, path = _files("pjreddie")
    exact = check_model(build_torch("pjreddie"), cfg, path, dialect="pjreddie")
    wrong = check_model(build_torch("pjreddie", mistake="other_fork", at=BN_LAYERS), cfg,
                        path, dialect="pjreddie")
    assert max(r.max_rel_error for r in exact.layers) < TOLERANCE / 1.4
    assert min(r.max_rel_error for r in wrong.layers) > 2 * TOLERANCE


# --------------------------------------------------------------------------
# bad input: exit 2, one line
# --------------------------------------------------------------------------
def test_bad_inputs_exit_2(tmp_path, capsys):
    cfg, path = _files("pjreddie")
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"\x08\x07not a model" * 10)
    text = tmp_path / "model.txt"
    text.write_text("hello")
    notsd = tmp_path / "list.pt"
    torch.save([1, 2, 3], notsd)
    other = _save(build_torch("alexeyab"), tmp_path, "other.pt")     # AlexeyAB's bn-zoo
    yolo = CFG_DIR / "pjreddie" / "yolov2-tiny.cfg"
    cases = [
        ([str(tmp_path / "missing.onnx")], "does not exist"),
        ([str(garbage)], "not a readable ONNX model"),
        ([str(text)], "unknown model format"),
        ([str(notsd), "--eps", "0"], "not a state_dict"),
        ([str(_save(build_torch("pjreddie"), tmp_path))], "stores no eps"),
        ([str(build_onnx("pjreddie", tmp_path / "m.onnx")), "--eps", "0"],
         "stores its own eps"),
    ]
    for extra, words in cases:
        assert main(["check", str(cfg), str(path), *extra, "--dialect", "pjreddie"]) == 2
        err = capsys.readouterr().err
        assert err.startswith("darknet-bn check: ") and words in err, err
        assert err.count("\n") == 1 and "Traceback" not in err
    # a model of another network: an impossible pairing
    yolo_w = tmp_path / "yolo.weights"
    from darknet_bn.darknet import DarknetWeights, WeightsHeader, write_weights
    net = parse_cfg(yolo)
    write_weights(net, yolo_w, DarknetWeights(None, "pjreddie", WeightsHeader(), net, [
        _unit_record(s) for s in net.bn_layers]), fill=0.5)
    assert main(["check", str(yolo), str(yolo_w), str(other), "--eps", "1e-5",
                 "--dialect", "pjreddie"]) == 2
    err = capsys.readouterr().err
    assert "cannot pair" in err and "first mismatch: layer 0" in err, err


def _unit_record(spec):
    from darknet_bn.darknet import BatchNormRecord
    n = spec.bn_channels
    return BatchNormRecord(spec.index, spec.section, n, np.zeros(n, F32), np.ones(n, F32),
                           np.zeros(n, F32), np.ones(n, F32), "pjreddie", spec)


def test_check_model_argument_errors():
    cfg, path = _files("pjreddie")
    with pytest.raises(TypeError, match=r"check_model: converted must be"):
        check_model(None, cfg, path, dialect="pjreddie")
    with pytest.raises(TypeError, match=r"dialect"):
        check_model(build_torch("pjreddie"), cfg, path)
    with pytest.raises(ValueError, match=r"eps must be finite and >= 0"):
        check_model(build_torch("pjreddie"), cfg, path, dialect="pjreddie", eps=-1)


# --------------------------------------------------------------------------
# a real network: yolov4-tiny (AlexeyAB) with synthesized weights
# --------------------------------------------------------------------------
def _synthesized_yolov4_tiny(tmp_path):
    """yolov4-tiny's cfg with random BN blocks and conv weights (seed 7), and a torch
    model of its convs with darknet_bn's exact BatchNorm export."""
    from darknet_bn.darknet import BatchNormRecord, DarknetWeights, WeightsHeader, write_weights
    cfg = CFG_DIR / "alexeyab" / "yolov4-tiny.cfg"
    net = parse_cfg(cfg, dialect="alexeyab")
    rng = np.random.default_rng(7)
    records = []
    for s in net.bn_layers:
        n = s.bn_channels
        records.append(BatchNormRecord(
            s.index, s.section, n, rng.normal(0, 1, n).astype(F32),
            rng.normal(1, .2, n).astype(F32), rng.normal(0, 1, n).astype(F32),
            rng.uniform(0.05, 4, n).astype(F32), "alexeyab", s,
            rng.normal(0, .1, dict(s.blocks)["weights"]).astype(F32)))
    path = tmp_path / "yolov4-tiny.weights"
    write_weights(net, path, DarknetWeights(None, "alexeyab", WeightsHeader(0, 2, 5, 0), net,
                                            records), fill=0.25)
    by_index = {r.index: r for r in records}
    mods = torch.nn.Sequential()
    for s in net.layers:
        if s.section != "convolutional":
            continue
        rec = by_index.get(s.index)
        w = rec.weights if rec is not None else np.full(dict(s.blocks)["weights"], 0.25, F32)
        mods.add_module(f"conv{s.index}", _conv_module(s, w, np.full(s.filters, 0.25, F32),
                                                       rec is None))
        if rec is not None:
            mods.add_module(f"bn{s.index}", _bn_module(s, _bn_params(rec, "alexeyab")))
    return cfg, path, mods


def test_yolov4_tiny(tmp_path):
    cfg, path, mods = _synthesized_yolov4_tiny(tmp_path)
    report = check_model(mods, cfg, path, dialect="alexeyab")
    assert report.ok and len(report.layers) == 19
    assert all(r.reference == "folded conv (fuse_conv_batchnorm)" for r in report.layers)
    for name, m in mods.named_children():
        if name.startswith("bn"):
            m.eps = 1e-3
    report = check_model(mods, cfg, path, dialect="alexeyab")
    assert not any(r.ok for r in report.layers)
    assert all(r.diagnosis.startswith("eps: computes (x-mean)/sqrt(var + 0.001)")
               for r in report.layers)


def test_a_missing_last_layer_is_a_failing_row_found_fast(tmp_path):
    """The last batchnorm layer of yolov4-tiny missing from the model (its conv and
    batchnorm): every conv could be read as folded or unfolded; the alignment is found
    without trying all 2**19 readings, and the layer is a failing row."""
    import time
    cfg, path, mods = _synthesized_yolov4_tiny(tmp_path)
    last = max(int(name[2:]) for name, _ in mods.named_children() if name.startswith("bn"))
    delattr(mods, f"conv{last}")
    delattr(mods, f"bn{last}")
    start = time.perf_counter()
    report = check_model(mods, cfg, path, dialect="alexeyab")
    assert time.perf_counter() - start < 30
    missing = [r for r in report.layers if r.form == "missing"]
    assert not report.ok and [r.index for r in missing] == [last]
    assert "not found in the model" in missing[0].diagnosis
    assert all(r.ok for r in report.layers if r.form != "missing")


def test_in_memory_state_dict_and_onnx_model(tmp_path):
    onnx = pytest.importorskip("onnx")
    cfg, path = _files("alexeyab")
    state = build_torch("alexeyab", mistake="std", at=(0,)).state_dict()
    report = check_model(state, cfg, path, dialect="alexeyab", eps=1e-5)
    assert _flagged(report) == [0] and "standard deviation" in report.layers[0].diagnosis
    proto = onnx.load(build_onnx("alexeyab", tmp_path / "m.onnx", fold=True))
    assert check_model(proto, cfg, path, dialect="alexeyab").ok


def test_import_needs_neither_onnx_nor_torch():
    import subprocess
    import sys
    code = ("import sys, darknet_bn, darknet_bn.cli; darknet_bn.cli.build_parser(); "
            "print(sorted(m for m in ('torch', 'onnx') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=300, check=True).stdout
    assert out.strip() == "[]"


def test_an_unknown_mistake_names_the_blocks_that_differ():
    cfg, path = _files("alexeyab")
    model = build_torch("alexeyab")
    with torch.no_grad():
        model.bn7.weight.mul_(torch.linspace(0.5, 1.5, 12))
    report = check_model(model, cfg, path, dialect="alexeyab")
    assert _flagged(report) == [7]
    assert report.layers[3].diagnosis.startswith("not a known converter mistake")
    assert "differs from darknet_bn's exact export in weight)" in report.layers[3].diagnosis


@pytest.mark.parametrize("fork", FORKS)
def test_darknet_bn_torch_modules_are_checked(fork):
    """A model holding darknet_bn.torch modules (from_darknet: the file's values) passes
    for its own fork and is flagged for the other one."""
    from darknet_bn.torch import from_darknet
    cfg, path = _files(fork)
    mods = torch.nn.Sequential()
    for i, m in from_darknet(cfg, path, dialect=fork).items():
        mods.add_module(f"bn{i}", m)
    report = check_model(mods, cfg, path, dialect=fork)
    assert report.ok and [r.index for r in report.layers] == BN_LAYERS
    other = "pjreddie" if fork == "alexeyab" else "alexeyab"
    wrong = torch.nn.Sequential()
    for name, m in mods.named_children():
        twin = type(m)(m.num_features, dialect=other)
        twin.load_state_dict(m.state_dict())
        wrong.add_module(name, twin.eval())
    assert not check_model(wrong, cfg, path, dialect=fork).ok
