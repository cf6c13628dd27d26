"""darknet_bn.darknet.check on the forms real tools leave models in.

yolov4-tiny (AlexeyAB, and hank-ai's fork, which ships the same cfg) and yolov3-tiny
(pjreddie) with synthesized weights (every float random, seeds printed), built as
PyTorch YOLO implementations build them (``module_list.N.conv_N`` / ``batch_norm_N``,
``models.N.conv1``), converted as they convert (Darknet's blocks as stored,
``nn.BatchNorm2d`` eps 1e-5): AlexeyAB's (and hank-ai's) inference, so a correct
AlexeyAB or hank-ai conversion and a wrong pjreddie one (eps 1e-5 inside the root
where pjreddie adds 1e-6 outside it).  Then exported by both
torch.onnx exporters and rewritten as deployment pipelines rewrite graphs.
"""
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")

import _check_models as models                                    # noqa: E402
from darknet_bn.cli import main                                   # noqa: E402
from darknet_bn.darknet import check_model                        # noqa: E402
from darknet_bn.darknet.check import PairingError                 # noqa: E402

CFG_DIR = Path(__file__).resolve().parent.parent / "data" / "golden" / "cfg"
SIZE = 64                                  # input side for the exports (strides up to 32)
SEEDS = {"alexeyab": 41, "pjreddie": 42, "hankai": 44}


class Case:
    """One fork's network: cfg, synthesized weights, the converted PyTorch model."""

    def __init__(self, fork, tmp):
        self.fork = fork
        self.cfg, self.weights, self.net = models.network_with_weights(fork, tmp, SEEDS[fork])
        self.model, _ = models.build(self.cfg, self.weights, fork)
        self.bn_layers = [s.index for s in self.net.bn_layers]
        self._exports = {}

    def export(self, **kwargs):
        key = tuple(sorted(kwargs.items()))
        if key not in self._exports:
            self._exports[key] = models.export(self.model, SIZE, **kwargs)
        return self._exports[key]

    def check(self, converted, **kwargs):
        return check_model(converted, self.cfg, self.weights, dialect=self.fork, **kwargs)


@pytest.fixture(scope="module", params=["alexeyab", "pjreddie", "hankai"])
def case(request, tmp_path_factory):
    return Case(request.param, tmp_path_factory.mktemp(request.param))


def assert_verdict(case, report):
    """AlexeyAB and hank-ai: the correct conversion passes.  pjreddie: every batchnorm layer fails
    with the eps diagnosis (float32), or (float16) the layers where the eps mistake
    exceeds float16 rounding fail with the eps diagnosis and nothing else."""
    text = "\n".join(report.format_table())
    rows = [r for r in report.layers]
    assert [r.index for r in rows] == case.bn_layers, text
    if case.fork != "pjreddie":
        assert report.ok, text
        return
    assert not report.ok
    flagged = [r for r in rows if not r.ok]
    if all(r.precision == "float32" for r in rows):
        assert len(flagged) == len(rows), text
    else:
        assert flagged, text
    for r in flagged:
        assert r.diagnosis.startswith("eps: computes (x-mean)/sqrt(var + 1e-05), pjreddie "
                                      "computes (x-mean)/(sqrt(var) + 1e-06)"), r.diagnosis
        assert "weights differ" not in r.diagnosis and "subnormal" not in r.diagnosis


# --------------------------------------------------------------------------
# every form, every fork
# --------------------------------------------------------------------------
def test_live_module(case):
    assert_verdict(case, case.check(case.model))


def test_live_module_half_and_bfloat16(case):
    import copy
    for dtype, precision in ((torch.float16, "float16"), (torch.bfloat16, "bfloat16")):
        twin = copy.deepcopy(case.model).to(dtype)
        report = case.check(twin)
        assert {r.precision for r in report.layers} == {precision}
        assert_verdict(case, report)


def test_state_dict_file_models_layout(case, tmp_path):
    model, _ = models.build(case.cfg, case.weights, case.fork, style="models")
    assert "models.0.conv1.weight" in model.state_dict()
    path = tmp_path / "model.pt"
    torch.save(model.state_dict(), path)
    assert_verdict(case, case.check(path, eps=1e-5))


@pytest.mark.parametrize("fold", [True, False], ids=["folded", "batchnorm-nodes"])
def test_torchscript_exporter(case, fold):
    report = case.check(case.export(fold=fold))
    assert {r.form for r in report.layers} == {"folded" if fold else "batchnorm"}
    assert_verdict(case, report)


def test_dynamo_exporter(case):
    pytest.importorskip("onnxscript")
    assert_verdict(case, case.check(case.export(dynamo=True)))


def test_onnxslim(case):
    pytest.importorskip("onnxslim")
    assert_verdict(case, case.check(models.slim(case.export(fold=False))))


def test_onnxsim(case):
    pytest.importorskip("onnxsim")
    assert_verdict(case, case.check(models.simplify(case.export(fold=False))))


@pytest.mark.parametrize("seed", [1, 2])
def test_nodes_in_a_random_topological_order(case, seed):
    assert_verdict(case, case.check(models.reorder(case.export(fold=False), seed)))


@pytest.mark.parametrize("precision", ["float16", "bfloat16"])
def test_reduced_precision_initializers_behind_casts(case, precision):
    report = case.check(models.to_float16_initializers(case.export(fold=False), precision))
    assert {r.precision for r in report.layers} == {precision}
    assert_verdict(case, report)


def test_exported_in_half_precision(case):
    report = case.check(case.export(half=True))
    assert {r.precision for r in report.layers} == {"float16"}
    assert_verdict(case, report)


@pytest.mark.parametrize("sub_div", [False, True], ids=["mul-add", "sub-div-sqrt"])
def test_batchnorm_as_elementwise_ops(case, sub_div):
    report = case.check(models.batchnorm_as_mul_add(case.export(fold=False), sub_div=sub_div))
    assert all(("Mul" in r.model_name or "mul" in r.model_name) for r in report.layers)
    assert_verdict(case, report)


@pytest.mark.parametrize("fold", [True, False], ids=["folded", "batchnorm-nodes"])
def test_conv_weights_behind_transpose_and_bias_as_a_separate_add(case, fold):
    report = case.check(models.conv_parameters_behind_ops(case.export(fold=fold)))
    assert {r.form for r in report.layers} == {"folded" if fold else "batchnorm"}
    assert_verdict(case, report)


def test_extra_post_processing_conv_is_listed(case, tmp_path):
    head = case.net.layers[-2].out_c                   # the last head conv's channels
    proto = models.with_extra_conv(case.export(), head)
    report = case.check(proto)
    assert_verdict(case, report)
    assert [(x.name, x.in_data_path) for x in report.extra] == [("post_conv", False)]
    path = tmp_path / "m.onnx"
    onnx.save(proto, path)
    status = main(["check", str(case.cfg), str(case.weights), str(path), "--dialect",
                   case.fork])
    assert status == (0 if case.fork != "pjreddie" else 1)


def test_exact_pjreddie_conversion_passes(tmp_path):
    """pjreddie's exact export (eps 0, running_var = (sqrt(var) + 1e-6)^2) passes, as a
    module and folded into the convs by the exporter."""
    case = Case("pjreddie", tmp_path)
    model, _ = models.build(case.cfg, case.weights, "pjreddie", remap_eps=1e-6)
    for converted in (model, models.export(model, SIZE)):
        report = case.check(converted)
        assert report.ok, "\n".join(report.format_table())


# --------------------------------------------------------------------------
# kernels, modules, pairing
# --------------------------------------------------------------------------
def test_every_weight_counts_a_transposed_or_flipped_kernel_fails(tmp_path):
    case = Case("alexeyab", tmp_path)
    conv0, _ = case.model.modules_of(0)
    conv1, _ = case.model.modules_of(1)
    with torch.no_grad():
        conv0.weight.copy_(conv0.weight.transpose(2, 3).clone())
        conv1.weight.copy_(torch.flip(conv1.weight, (2, 3)))
    report = case.check(case.model)
    assert [r.index for r in report.layers if not r.ok] == [0, 1]
    assert "kernel is transposed" in report.layers[0].diagnosis
    assert "kernel is flipped" in report.layers[1].diagnosis


def test_sync_batchnorm_and_custom_batchnorm1d_subclass(tmp_path):
    case = Case("alexeyab", tmp_path)
    model = case.model
    _, bn = model.modules_of(0)
    sync = torch.nn.SyncBatchNorm(bn.num_features, eps=bn.eps)
    sync.load_state_dict(bn.state_dict())
    model.module_list[0].batch_norm_0 = sync.eval()
    assert case.check(model).ok

    class Shaped1d(torch.nn.BatchNorm1d):               # runs: needs (N, C, L)
        def forward(self, x):
            assert x.dim() == 3, x.shape
            return super().forward(x)

    from darknet_bn.darknet import parse_cfg
    zoo_cfg = CFG_DIR / "alexeyab" / "bn-zoo.cfg"
    zoo_weights = CFG_DIR / "alexeyab" / "bn-zoo.weights"
    zoo, net = models.build(zoo_cfg, zoo_weights, "alexeyab")
    _, bn = zoo.modules_of(11)
    custom = Shaped1d(bn.num_features, eps=bn.eps)
    custom.load_state_dict(bn.state_dict())
    zoo.module_list[11].batch_norm_11 = custom.eval()
    assert parse_cfg(zoo_cfg, dialect="alexeyab").layers[11].section == "connected"
    assert check_model(zoo, zoo_cfg, zoo_weights, dialect="alexeyab").ok


def test_a_darknet_style_subclass_is_read_before_the_generic_branch(tmp_path):
    """A darknet_bn batchnorm module is an nn.BatchNorm2d subclass too: its fork's
    formula (not its eps attribute) decides."""
    dtorch = pytest.importorskip("darknet_bn.torch")
    case = Case("pjreddie", tmp_path)
    model, _ = models.build(case.cfg, case.weights, "pjreddie")
    for spec in case.net.bn_layers:
        _, bn = model.modules_of(spec.index)
        twin = dtorch.DarknetBatchNorm2d(bn.num_features, dialect="pjreddie")
        with torch.no_grad():
            for k in ("weight", "bias", "running_mean", "running_var"):
                getattr(twin, k).copy_(getattr(bn, k))
        setattr(model.module_list[spec.index], f"batch_norm_{spec.index}", twin.eval())
    assert case.check(model).ok


AMBIGUOUS_CFG = models.cfg_text(16, models.conv(8, 3), models.conv(8, 1),
                                ("route", {"layers": -2}), models.conv(8, 1),
                                ("shortcut", {"from": -3, "activation": "linear"}),
                                models.conv(4, 1))


@pytest.mark.parametrize("fork", ["alexeyab", "pjreddie"])
def test_a_shape_ambiguous_pair_is_chosen_by_values_or_refused_when_strict(fork, tmp_path,
                                                                            capsys):
    """Layers 1 and 3 are same-shaped 1x1 convs on layer 0's output, added by a
    shortcut: the graph cannot tell them apart."""
    cfg = tmp_path / "twins.cfg"
    cfg.write_text(AMBIGUOUS_CFG)
    weights = tmp_path / "twins.weights"
    models.synthesize_weights(cfg, fork, weights, 5)
    model, _ = models.build(cfg, weights, fork, remap_eps=1e-6 if fork == "pjreddie" else None)
    proto = models.export(model, 16, fold=False)
    report = check_model(proto, cfg, weights, dialect=fork)
    assert report.ok, "\n".join(report.format_table())
    chosen = {r.index: r.choice for r in report.layers}
    assert chosen[1].startswith("chosen by values among") and "conv_3" in chosen[1]
    assert "conv_1" in report.layers[1].model_name and "conv_3" in report.layers[2].model_name
    with pytest.raises(PairingError, match=r"layer 1 \[convolutional\].*ambiguous.*conv_1"):
        check_model(proto, cfg, weights, dialect=fork, strict=True)
    path = tmp_path / "twins.onnx"
    onnx.save(proto, path)
    assert main(["check", str(cfg), str(weights), str(path), "--dialect", fork,
                 "--strict"]) == 2
    err = capsys.readouterr().err
    assert "ambiguous" in err and err.count("\n") == 1


def test_a_missing_batchnorm_layer_is_a_failing_row(tmp_path):
    """bn-zoo's [batchnorm] layer 1 removed from the graph: a failing row, the other
    layers still judged (and passing)."""
    cfg = CFG_DIR / "alexeyab" / "bn-zoo.cfg"
    weights = CFG_DIR / "alexeyab" / "bn-zoo.weights"
    model, _ = models.build(cfg, weights, "alexeyab")
    model.module_list[1] = torch.nn.Sequential()
    report = check_model(models.export(model, 32, fold=False), cfg, weights,
                         dialect="alexeyab")
    rows = {r.index: r for r in report.layers}
    assert not report.ok and not rows[1].ok and rows[1].form == "missing"
    assert "not found in the model" in rows[1].diagnosis
    assert all(r.ok for i, r in rows.items() if i != 1)


def test_json_report(case, tmp_path, capsys):
    import json
    path = tmp_path / "m.onnx"
    onnx.save(case.export(), path)
    status = main(["check", str(case.cfg), str(case.weights), str(path), "--dialect",
                   case.fork, "--json"])
    data = json.loads(capsys.readouterr().out)
    assert status == (0 if data["ok"] else 1) and data["dialect"] == case.fork
    assert [r["index"] for r in data["layers"]] == case.bn_layers
    assert data["precisions"] == ["float32"]
    assert {"max_rel_error", "diagnosis", "tolerance", "max_weight_error"} <= \
        set(data["layers"][0])


# --------------------------------------------------------------------------
# malformed files: exit 2, one line, no traceback
# --------------------------------------------------------------------------
def _graph(nodes, inits, inputs=("x",)):
    from onnx import TensorProto, helper
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info(i, TensorProto.FLOAT, None) for i in inputs],
        [helper.make_tensor_value_info(nodes[-1].output[0], TensorProto.FLOAT, None)], inits)
    return helper.make_model(graph)


def _bad_files(tmp_path):
    from onnx import helper, numpy_helper
    w = numpy_helper.from_array(np.ones((16, 3, 3, 3), np.float32), "w")
    files = {}
    files["conv without weights"] = (_graph([helper.make_node("Conv", ["x"], ["y"],
                                                              name="c0")], []),
                                     "Conv node 'c0' has no weight input")
    short = onnx.TensorProto()
    short.CopyFrom(w)
    short.raw_data = short.raw_data[:100]
    files["initializer of the wrong size"] = (
        _graph([helper.make_node("Conv", ["x", "w"], ["y"], name="c0")], [short]),
        "cannot be read")
    files["weights not constant"] = (
        _graph([helper.make_node("Conv", ["x", "w"], ["y"], name="c0")], [], ("x", "w")),
        "not an initializer or a constant")
    bias = numpy_helper.from_array(np.ones(5, np.float32), "b")
    files["bias of the wrong size"] = (
        _graph([helper.make_node("Conv", ["x", "w", "b"], ["y"], name="c0")], [w, bias]),
        "bias of 5 values for 16 filters")
    wq = numpy_helper.from_array(np.ones((16, 3, 3, 3), np.int8), "wq")
    zero_scale = numpy_helper.from_array(np.zeros(16, np.float32), "s0")
    files["quantized weights with a zero scale"] = (
        _graph([helper.make_node("DequantizeLinear", ["wq", "s0"], ["w"], name="dq0", axis=0),
                helper.make_node("Conv", ["x", "w"], ["y"], name="c0")], [wq, zero_scale]),
        "quantization scales must be finite and nonzero")
    scale = numpy_helper.from_array(np.ones(1, np.float32), "s")
    zp = numpy_helper.from_array(np.zeros(1, np.int8), "z")
    files["quantized conv without constant weights"] = (
        _graph([helper.make_node("QLinearConv", ["x", "s", "z", "wx", "s", "z", "s", "z"],
                                 ["y"], name="qc0")], [scale, zp], ("x", "wx")),
        "QLinearConv node 'qc0': the weight ('wx') is not a constant")
    outside = onnx.TensorProto()
    outside.CopyFrom(w)
    outside.ClearField("raw_data")
    outside.data_location = onnx.TensorProto.EXTERNAL
    for k, v in (("location", "../secret.bin"), ("offset", "0"), ("length", "1728")):
        outside.external_data.add(key=k, value=v)
    files["external data outside"] = (
        _graph([helper.make_node("Conv", ["x", "w"], ["y"], name="c0")], [outside]),
        "outside the model's directory")
    paths = []
    for name, (proto, words) in files.items():
        path = tmp_path / (name.replace(" ", "_") + ".onnx")
        path.write_bytes(proto.SerializeToString())
        paths.append((name, path, words))
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(bytes(range(256)) * 8)
    paths.append(("garbage", garbage, "not a readable ONNX model"))
    return paths


def test_malformed_files_exit_2_with_one_line(tmp_path, capsys):
    cfg = CFG_DIR / "alexeyab" / "yolov4-tiny.cfg"
    weights = tmp_path / "y.weights"
    models.synthesize_weights(cfg, "alexeyab", weights, 3)
    (tmp_path.parent / "secret.bin").write_bytes(b"\0" * 1728)
    for name, path, words in _bad_files(tmp_path):
        status = main(["check", str(cfg), str(weights), str(path), "--dialect", "alexeyab"])
        err = capsys.readouterr().err
        assert status == 2, (name, err)
        assert err.startswith("darknet-bn check: ") and words in err, (name, err)
        assert err.count("\n") == 1 and "Traceback" not in err, (name, err)


def test_dialect_is_required_on_the_command_line(case, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["check", str(case.cfg), str(case.weights), "m.onnx"])
    assert exc.value.code == 2 and "--dialect" in capsys.readouterr().err


def test_float16_underflow_of_the_pjreddie_remap_is_named(tmp_path):
    """A variance of 1e-9: pjreddie's exact export stores (sqrt(var) + 1e-6)^2 ~ 1.1e-9
    with eps 0, which float16 cannot hold (it becomes 0): the row names the underflow."""
    cfg = tmp_path / "one.cfg"
    cfg.write_text(models.cfg_text(8, models.conv(4, 3)))
    weights = tmp_path / "one.weights"
    net = models.synthesize_weights(cfg, "pjreddie", weights, 9)
    raw = np.fromfile(weights, np.uint8)
    offset = 20 + 4 * net.layers[0].offsets["rolling_variance"] + 4 * 2    # channel 2
    raw[offset:offset + 4] = np.frombuffer(np.float32(1e-9).tobytes(), np.uint8)
    raw.tofile(weights)
    model, _ = models.build(cfg, weights, "pjreddie", remap_eps=1e-6)
    assert check_model(model, cfg, weights, dialect="pjreddie").ok
    report = check_model(model.half(), cfg, weights, dialect="pjreddie")
    row = report.layers[0]
    assert not row.ok and row.precision == "float16" and row.worst_channel == 2
    assert "running_var is 0 in float16 at channels [2] with eps 0" in row.diagnosis
