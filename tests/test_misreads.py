"""Misread diagnoses: models filled by loaders with the field's reading bugs
(``_misread_loaders``), as live modules, state_dicts and ONNX exports, for both forks.

Each case asserts the exit status of ``darknet-bn check`` (1), the failing layers, the
finding's name and words (the shift, the order, the swapped vectors) and its fix; a
correct load passes with no finding, and a random perturbation (not a misread) is
failed without a misread finding.
"""
import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnx")

import _ports  # noqa: E402
from _check_models import batchnorm_as_mul_add, export  # noqa: E402
from _misread_loaders import (GAMMA_BETA_SWAPPED, MEAN_VAR_SWAPPED,  # noqa: E402
                              build_model, load_weights, permute_registration, synthesize)
from darknet_bn.cli import main  # noqa: E402
from darknet_bn.darknet import check_model  # noqa: E402

CFG_DIR = Path(__file__).resolve().parent.parent / "data" / "golden" / "cfg"
FORKS = ("pjreddie", "alexeyab")
SEED = 41
HEADER_WORDS = ("shifted by one float (4 bytes)", "major*10 + minor >= 2 and major < 1000")
HEADER_FIX = "seen as uint64 if major*10 + minor >= 2 and major < 1000, else as uint32"


def _cfg(fork, name="bn-zoo"):
    return CFG_DIR / fork / f"{name}.cfg"


def _bn_layers(fork):
    """bn-zoo's layers with batchnorm, and those whose four batchnorm vectors the loader
    reads in its own order (pjreddie's [batchnorm] stores no biases: nothing to swap)."""
    swapped = [0, 3, 7] if fork == "pjreddie" else [0, 1, 3, 7, 9]
    return [0, 1, 3, 7, 9, 11], swapped


def _loaded(tmp_path, fork, *, cfg_name="bn-zoo", minor=2, first=None, before=None,
            **bug):
    """``(model, net, cfg, weights)``: a synthesized file of version 0.``minor`` loaded by
    the port's loader with ``bug``; pjreddie models hold darknet_bn's exact pjreddie
    form (eps 0, remapped running_var), so a correct load passes for both forks."""
    cfg = _cfg(fork, cfg_name)
    path = tmp_path / f"{cfg_name}-{fork}-{minor}.weights"
    if not path.exists():
        synthesize(cfg, fork, path, SEED, minor=minor)
    model, net = build_model(cfg, fork)
    if first is not None:
        permute_registration(model, first, before)
    bug.setdefault("header_ints", 5 if minor >= 2 else 4)
    load_weights(model, net, path, remap_eps=1e-6 if fork == "pjreddie" else None, **bug)
    return model, net, cfg, path


def _forms(model, net, fork):
    """``[(form, converted, eps)]``: the live module, its state_dict, its ONNX exports
    (torchscript exporter with its default constant folding, which folds every
    batchnorm into its conv, and without folding: BatchNormalization nodes)."""
    eps = 0.0 if fork == "pjreddie" else 1e-5
    return [("module", model, None),
            ("state_dict", {k: v.clone() for k, v in model.state_dict().items()}, eps),
            ("onnx folded", export(model, net.w), None),
            ("onnx BN nodes", export(model, net.w, fold=False), None)]


def _check_all(model, net, cfg, path, fork):
    for form, converted, eps in _forms(model, net, fork):
        yield form, check_model(converted, cfg, path, dialect=fork, eps=eps)


def _failing(report):
    return [r.index for r in report.layers if not r.ok]


def _assert_finding(report, form, name, layers, words, fix):
    text = report.format_table()
    assert [f.name for f in report.findings] == [name], (form, "\n".join(text))
    finding = report.findings[0]
    assert finding.layers == layers, (form, finding.layers)
    for w in words:
        assert w in finding.diagnosis, (form, w, finding.diagnosis)
    assert fix in finding.fix, (form, finding.fix)
    for r in report.layers:
        if r.index in layers:
            assert r.misreads == [finding.id] and "misread" in r.diagnosis, (form, r)
            assert "fix: see M1" in r.diagnosis
    summary = " ".join(line.strip() for line in text)
    assert f"{finding.id} " in summary and "misread: M1" in summary


# --------------------------------------------------------------------------
# header size
# --------------------------------------------------------------------------
@pytest.mark.parametrize("fork", FORKS)
def test_16_byte_header_on_a_version_2_file(tmp_path, fork):
    model, net, cfg, path = _loaded(tmp_path, fork, minor=2, header_ints=4)
    layers, _ = _bn_layers(fork)
    for form, report in _check_all(model, net, cfg, path, fork):
        assert not report.ok and _failing(report) == layers, form
        _assert_finding(report, form, "header_16_on_v2", layers,
                        HEADER_WORDS + ("16-byte", "20 bytes (version 0.2"), HEADER_FIX)


@pytest.mark.parametrize("fork", FORKS)
def test_20_byte_header_on_a_version_1_file(tmp_path, fork):
    model, net, cfg, path = _loaded(tmp_path, fork, minor=1, header_ints=5)
    layers, _ = _bn_layers(fork)
    for form, report in _check_all(model, net, cfg, path, fork):
        assert not report.ok and _failing(report) == layers, form
        _assert_finding(report, form, "header_20_on_v1", layers,
                        HEADER_WORDS + ("20-byte", "16 bytes (version 0.1",
                                        "past the end of the file"), HEADER_FIX)


@pytest.mark.parametrize("fork", FORKS)
@pytest.mark.parametrize("minor", [1, 2])
def test_correct_loads_pass_with_no_finding(tmp_path, fork, minor):
    model, net, cfg, path = _loaded(tmp_path, fork, minor=minor)
    for form, report in _check_all(model, net, cfg, path, fork):
        assert report.ok and report.findings == [], (form, str(report))
        assert all("misread" not in r.diagnosis for r in report.layers)


# --------------------------------------------------------------------------
# block order within a layer, blocks read more
# --------------------------------------------------------------------------
@pytest.mark.parametrize("fork", FORKS)
def test_gamma_beta_swapped(tmp_path, fork):
    model, net, cfg, path = _loaded(tmp_path, fork, bn_order=GAMMA_BETA_SWAPPED)
    _, swapped = _bn_layers(fork)
    for form, report in _check_all(model, net, cfg, path, fork):
        assert not report.ok and _failing(report) == swapped, form
        _assert_finding(report, form, "swapped_scale_bias", swapped,
                        ("the biases block (beta) went into the scale (gamma)",),
                        "biases (beta), scales (gamma), rolling_mean, rolling_variance")


@pytest.mark.parametrize("fork", FORKS)
def test_bias_read_for_a_batchnorm_conv(tmp_path, fork):
    model, net, cfg, path = _loaded(tmp_path, fork, bias_with_bn=True)
    layers, _ = _bn_layers(fork)
    for form, report in _check_all(model, net, cfg, path, fork):
        assert not report.ok and _failing(report) == layers, form
        _assert_finding(report, form, "extra_conv_bias", layers,
                        ("a bias read for a conv that has batchnorm", "layers 0, 3, 7",
                         "8, 16, 12 floats"),
                        "with batch_normalize=1 stores no conv bias")


#: (case, loader bug, failing layers, finding, words of its diagnosis, words of its fix);
#: layer 7 is a 1x1 conv (no kernel layout), layer 4 the conv without batchnorm, and the
#: loader reads [connected] in Darknet's order
BLOCK_CASES = [
    ("mean_var_swapped", dict(bn_order=MEAN_VAR_SWAPPED), [0, 1, 3, 7, 9],
     "swapped_mean_variance", ("rolling_mean went into the running variance",),
     "biases, scales, rolling_mean, rolling_variance"),
    ("conv_bias_not_read", dict(skip_conv_bias=True), [7, 9, 11], "missing_block",
     ("the loader skipped layer 4's biases (16 floats)", "shifted back by 16 floats"),
     "read every block Darknet stores"),
    ("kernel_transposed", dict(kernel="transposed"), [0, 3], "kernel_transposed",
     ("the loader transposed each kernel",), "do not transpose"),
    ("kernel_flipped", dict(kernel="flipped"), [0, 3], "kernel_flipped",
     ("the loader flipped each kernel",), "do not flip"),
]


@pytest.mark.parametrize("fork", FORKS)
@pytest.mark.parametrize("case,bug,layers,name,words,fix", BLOCK_CASES,
                         ids=[c[0] for c in BLOCK_CASES])
def test_block_order_missing_block_and_kernel_layout(tmp_path, fork, case, bug, layers, name,
                                                     words, fix):
    model, net, cfg, path = _loaded(tmp_path, fork, **bug)
    for form, report in _check_all(model, net, cfg, path, fork):
        assert not report.ok and _failing(report) == layers, (form, str(report))
        _assert_finding(report, form, name, layers, words, fix)


def test_pjreddie_eps_mistake_alone_and_under_a_misread(tmp_path):
    """PyTorch's BatchNorm2d with pjreddie's blocks (eps 1e-5 inside the root: the usual
    pjreddie mistake) is the eps diagnosis and no misread; with a 16-byte header
    skipped as well, the finding covers the layers and each row names the eps mistake
    against the floats the loader took."""
    fork = "pjreddie"
    cfg = _cfg(fork)
    path = tmp_path / "zoo.weights"
    synthesize(cfg, fork, path, SEED)
    layers, _ = _bn_layers(fork)
    for header_ints in (5, 4):
        model, net = build_model(cfg, fork)
        load_weights(model, net, path, header_ints=header_ints)
        report = check_model(model, cfg, path, dialect=fork)
        assert _failing(report) == layers
        rows = [r for r in report.layers if r.index in layers]
        if header_ints == 5:
            assert report.findings == []
            assert all(r.diagnosis.startswith("eps: computes (x-mean)/sqrt(var + 1e-05)")
                       for r in rows)
        else:
            assert [f.name for f in report.findings] == ["header_16_on_v2"]
            assert all("; against the floats it took: eps: computes (x-mean)/sqrt(var + "
                       "1e-05)" in r.diagnosis for r in rows), [r.diagnosis for r in rows]


def test_header_and_swap_together_are_two_findings(tmp_path):
    fork = "pjreddie"
    model, net, cfg, path = _loaded(tmp_path, fork, minor=1, header_ints=5,
                                    bn_order=GAMMA_BETA_SWAPPED)
    report = check_model(model, cfg, path, dialect=fork)
    assert [f.name for f in report.findings] == ["header_20_on_v1", "swapped_scale_bias"]
    assert report.findings[1].layers == [0, 3, 7]
    rows = {r.index: r for r in report.layers}
    assert rows[0].misreads == ["M1", "M2"] and rows[1].misreads == ["M1"]


# --------------------------------------------------------------------------
# layers read in module registration order
# --------------------------------------------------------------------------
ORDER_CASES = [("pjreddie", "yolov3-tiny", 18, 14, [14, 18], "layer 18 before layers 14, 15"),
               ("alexeyab", "bn-zoo", 7, 3, [3, 7], "layer 7 before layers 3, 4")]


@pytest.mark.parametrize("fork,cfg_name,first,before,layers,words", ORDER_CASES,
                         ids=[c[0] for c in ORDER_CASES])
def test_blocks_read_in_registration_order(tmp_path, fork, cfg_name, first, before, layers,
                                           words):
    model, net, cfg, path = _loaded(tmp_path, fork, cfg_name=cfg_name, first=first,
                                    before=before, registration_order=True)
    names = [name for name, _ in model.module_list.named_children()]
    assert names.index(str(first)) < names.index(str(before))
    unpaired = []
    for form, converted, eps in _forms(model, net, fork):
        report = check_model(converted, cfg, path, dialect=fork, eps=eps)
        if form in ("module", "state_dict") and any(r.form == "missing"
                                                   for r in report.layers):
            unpaired.append(form)
            continue
        assert not report.ok and _failing(report) == layers, (form, str(report))
        _assert_finding(report, form, "module_order", layers,
                        ("blocks read in another order", words,
                         "the order a model registers its modules"),
                        "iterate over the cfg's layers")
    if unpaired:
        pytest.skip(f"{', '.join(unpaired)}: a module order that differs from the cfg's "
                    "is not paired yet (pairing by names and order)")


@pytest.mark.parametrize("fork", FORKS)
def test_hand_written_port_loaded_in_module_order(tmp_path, fork):
    """``_ports.Yolov3TinyPort`` registers cfg layer 18 (neck) before 14 (head); a loader
    walking ``model.modules()`` reads 18's blocks where 14's are."""
    net = _ports.port_net(fork)
    path = tmp_path / "yolov3-tiny.weights"
    synthesize(_ports.CFG, fork, path, SEED)
    port = _ports.fill_in_module_order(_ports.Yolov3TinyPort(), path, fork)
    eps = 0.0 if fork == "pjreddie" else 1e-5
    x = torch.zeros(1, 3, net.h, net.w)
    forms = [("module", port, None),
             ("state_dict", {k: v.clone() for k, v in port.state_dict().items()}, eps),
             ("onnx folded", _onnx(port, x), None)]
    for form, converted, form_eps in forms:
        report = check_model(converted, _ports.CFG, path, dialect=fork, eps=form_eps)
        assert not report.ok and _failing(report) == [14, 18], (form, str(report))
        _assert_finding(report, form, "module_order", [14, 18],
                        ("blocks read in another order", "layer 18 before layers 14, 15"),
                        "iterate over the cfg's layers")
    good = _ports.fill_darknet(_ports.Yolov3TinyPort(), net, path, fork)
    report = check_model(good, _ports.CFG, path, dialect=fork)
    assert report.ok and report.findings == []


def _onnx(model, x):
    import io
    import warnings

    import onnx
    f = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model.eval(), (x,), f, dynamo=False)
    return onnx.load_from_string(f.getvalue())


# --------------------------------------------------------------------------
# not a misread
# --------------------------------------------------------------------------
@pytest.mark.parametrize("fork", FORKS)
def test_random_perturbation_is_not_a_misread(tmp_path, fork):
    model, net, cfg, path = _loaded(tmp_path, fork)
    rng = np.random.default_rng(SEED)
    print(f"perturbation: seed {SEED}")
    with torch.no_grad():
        conv3, bn3 = model.modules_of(3)
        bn3.weight.mul_(torch.from_numpy(rng.uniform(0.5, 1.5, bn3.weight.shape)
                                         .astype(np.float32)))
        conv7, _ = model.modules_of(7)
        conv7.weight.add_(torch.from_numpy(rng.normal(0, 0.05, conv7.weight.shape)
                                           .astype(np.float32)))
    for form, report in _check_all(model, net, cfg, path, fork):
        assert _failing(report) == [3, 7], (form, str(report))
        assert report.findings == [], (form, str(report))
        assert all(r.misreads == [] and "misread (" not in r.diagnosis
                   for r in report.layers), form


# --------------------------------------------------------------------------
# reduced precision
# --------------------------------------------------------------------------
def test_float16_module_is_searched_in_float16(tmp_path):
    fork = "alexeyab"
    model, net, cfg, path = _loaded(tmp_path, fork, header_ints=4)
    report = check_model(model.half(), cfg, path, dialect=fork)
    layers, _ = _bn_layers(fork)
    assert report.precisions == ["float16"]
    _assert_finding(report, "module.half()", "header_16_on_v2", layers, HEADER_WORDS,
                    HEADER_FIX)


def test_bfloat16_module_and_mul_add_batchnorm(tmp_path):
    """bfloat16 tensors are found in the stream rounded to bfloat16; a batchnorm written
    as Mul/Add of constants holds no Darknet block, the convs' weights find the reading
    and judging the layers against it confirms it."""
    fork = "alexeyab"
    model, net, cfg, path = _loaded(tmp_path, fork, header_ints=4)
    layers, _ = _bn_layers(fork)
    graph = batchnorm_as_mul_add(export(model, net.w, fold=False))
    # layer 11 ([connected] + BatchNorm1d) is left out there: batchnorm_as_mul_add writes
    # its constants as (1, C, 1, 1), which broadcast against the dense output (N, C)
    # into another tensor, so that graph computes no batchnorm and fails, rightly
    for form, converted, covered in (("bfloat16 module", model.to(torch.bfloat16), layers),
                                     ("Mul/Add batchnorm", graph, layers[:-1])):
        report = check_model(converted, cfg, path, dialect=fork)
        _assert_finding(report, form, "header_16_on_v2", covered, HEADER_WORDS, HEADER_FIX)


def test_folded_float16_is_judged_not_searched(tmp_path):
    """Folded float16 convs are not searched (rounding hides the filters' ratios), but
    the raw layers' float16 runs find the shift and judging the folded layers against
    the shifted reading confirms it for them; a layer that no reading explains says
    that the search was not possible for it."""
    fork = "alexeyab"
    model, net, cfg, path = _loaded(tmp_path, fork, header_ints=4)
    layers, _ = _bn_layers(fork)
    report = check_model(export(model, net.w, half=True), cfg, path, dialect=fork)
    assert report.precisions == ["float16"]
    _assert_finding(report, "onnx half", "header_16_on_v2", layers, HEADER_WORDS,
                    HEADER_FIX)
    good, net, cfg, path = _loaded(tmp_path, fork)
    with torch.no_grad():
        conv3, _ = good.modules_of(3)
        conv3.weight.mul_(1.5)
    report = check_model(export(good, net.w, half=True), cfg, path, dialect=fork)
    assert _failing(report) == [3] and report.findings == []
    row = report.layers[[r.index for r in report.layers].index(3)]
    assert ("misread search not possible for its folded weights: they are float16"
            in row.diagnosis)


# --------------------------------------------------------------------------
# the CLI: exit status, table, JSON
# --------------------------------------------------------------------------
@pytest.mark.parametrize("fork", FORKS)
def test_cli_names_the_header_finding(tmp_path, fork, capsys):
    model, net, cfg, path = _loaded(tmp_path, fork, minor=2, header_ints=4)
    onnx_path = tmp_path / "model.onnx"
    torch.onnx.export(model.eval(), (torch.zeros(1, 3, net.h, net.w),), str(onnx_path),
                      dynamo=False)
    sd_path = tmp_path / "model.pt"
    torch.save(model.state_dict(), sd_path)
    eps = "0" if fork == "pjreddie" else "1e-5"
    layers, _ = _bn_layers(fork)
    for args in ([str(onnx_path)], [str(sd_path), "--eps", eps]):
        code = main(["check", str(cfg), str(path), *args, "--dialect", fork])
        out = capsys.readouterr().out
        assert code == 1, out
        assert "misread: M1 (header_16_on_v2)" in out.replace("\n    ", " ")
        assert "M1 layers 0, 1, 3, 7, 9, 11: every block shifted by one float" in \
            out.replace("\n    ", " ")
        code = main(["check", str(cfg), str(path), *args, "--dialect", fork, "--json"])
        data = json.loads(capsys.readouterr().out)
        assert code == 1 and [f["name"] for f in data["findings"]] == ["header_16_on_v2"]
        assert data["findings"][0]["layers"] == layers
        assert HEADER_FIX in data["findings"][0]["fix"]
        assert all(row["misreads"] == ["M1"] for row in data["layers"])
    good, _, _, _ = _loaded(tmp_path, fork)
    torch.save(good.state_dict(), sd_path)
    assert main(["check", str(cfg), str(path), str(sd_path), "--eps", eps,
                 "--dialect", fork]) == 0
    out = capsys.readouterr().out
    assert "misread (" not in out and "M1" not in out


# --------------------------------------------------------------------------
# the search engine alone
# --------------------------------------------------------------------------
def _file_helds(tmp_path, fork="alexeyab"):
    """bn-zoo's blocks as a model holding Darknet's floats would: ``(net, header,
    stream, {(layer, role): Held})``."""
    from darknet_bn.darknet import misreads, read_weights
    cfg = _cfg(fork)
    path = tmp_path / "zoo.weights"
    net = synthesize(cfg, fork, path, SEED)
    header = read_weights(net, path).header
    raw = np.fromfile(path, dtype="<f4", offset=header.nbytes).astype(np.float64)
    helds = {}
    for spec in net.layers:
        for role, count in spec.blocks:
            values = raw[spec.offsets[role]:][:count]
            helds[spec.index, role] = misreads.Held(spec.index, role, values.copy())
    return net, header, misreads.Stream(path), helds


def test_engine_names_floats_from_another_place(tmp_path):
    from darknet_bn.darknet import misreads
    net, header, stream, helds = _file_helds(tmp_path)
    words = header.nbytes // 4
    at = words + net.layers[7].offsets["biases"]
    helds[3, "scales"].values = stream.floats[at:at + 16].astype(np.float64)
    fit = misreads.search(stream, net, header, list(helds.values()))
    findings = misreads.explain(fit)
    assert [f.name for f in findings] == ["other_place"] and findings[0].layers == [3]
    assert "its scales hold the floats at layer 7's biases" in findings[0].diagnosis
    assert all(r.causes == [] for r in fit.readings.values())


def test_engine_locates_nothing_on_weak_evidence(tmp_path):
    """Runs shorter than ``MIN_RUN``, runs of one repeated value and runs with more
    than ``MAX_MISSING`` of their values wrong locate nothing."""
    from darknet_bn.darknet import misreads
    net, header, stream, helds = _file_helds(tmp_path)
    words = header.nbytes // 4
    at = words + net.layers[3].offsets["weights"]
    short = misreads.Held(3, "biases", stream.floats[at:at + 7].astype(np.float64))
    flat = misreads.Held(3, "scales", np.full(16, float(stream.floats[at])))
    damaged = stream.floats[at:at + 100].astype(np.float64)
    damaged[::8] += 1.0                                 # 13 of 100 values wrong
    broken = misreads.Held(3, "weights", damaged)
    found = misreads.locate_exact(stream, [short, flat, broken])
    assert found == {}
    whole = misreads.Held(3, "weights", stream.floats[at:at + 100].astype(np.float64))
    assert [loc.offset for loc in misreads.locate_exact(stream, [whole])[id(whole)]] == [at]
