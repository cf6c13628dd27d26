"""darknet_bn.darknet.fix (``darknet-bn fix``) on models made by real tools.

yolov3-tiny (pjreddie) and yolov4-tiny (AlexeyAB) with synthesized weights (seeds
printed), converted as PyTorch YOLO ports convert them with a mistake ``check``
names: pjreddie with PyTorch's eps 1e-5 inside the root, AlexeyAB with Keras' eps
1e-3; exported by torch.onnx (both exporters, folded and not), rewritten by onnxslim,
float16 initializers, ``Mul``/``Add`` batchnorms.  The repaired file passes ``check``,
runs in onnxruntime, and its output moves to the Darknet-exact reference: the same
network with ``DarknetBatchNorm2d`` in eval (``convert_batchnorm``), float32.

The end-to-end bound: the repaired model is a float32 computation of the same
function, so its distance from a float64 computation of Darknet's function is of the
size of the float32 reference's own distance from it (``e_ref``): within ``4 e_ref``
(measured: about 1x).  The unrepaired model is more than ``10 e_ref`` away.
"""
import copy
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")

import _check_models as models                                    # noqa: E402
import _misread_loaders as loaders                                # noqa: E402
from darknet_bn.cli import main                                   # noqa: E402
from darknet_bn.darknet import check_model                        # noqa: E402
from darknet_bn.darknet.fix import FixError, fix_file, fix_model  # noqa: E402
from darknet_bn.dialects import get_dialect                       # noqa: E402
from darknet_bn.torch import convert_batchnorm                    # noqa: E402

#: The mistake each fork's conversion makes: the eps of its BatchNorm2d on the stored
#: variance (pjreddie: PyTorch's default inside the root; AlexeyAB: Keras' 1e-3).
MISTAKE_EPS = {"pjreddie": 1e-5, "alexeyab": 1e-3}
SEEDS = {"alexeyab": 51, "pjreddie": 52}
SIZE = 64
#: The repaired model's end-to-end error, in units of the float32 reference's own.
BOUND = 4.0


class Case:
    def __init__(self, fork, tmp):
        self.fork = fork
        self.cfg, self.weights, self.net = models.network_with_weights(fork, tmp, SEEDS[fork])
        self.model, _ = models.build(self.cfg, self.weights, fork, eps=MISTAKE_EPS[fork])
        self.tmp = tmp
        rng = np.random.default_rng(7)
        print("end-to-end input: seed 7")
        self.x = rng.normal(0, 1, (1, 3, SIZE, SIZE)).astype(np.float32)
        raw, _ = models.build(self.cfg, self.weights, fork)
        darknet = convert_batchnorm(copy.deepcopy(raw), dialect=fork).eval()
        self.ref32 = self.run_torch(darknet)
        self.ref64 = self.run_torch(self.float64_reference(raw), torch.float64)
        self.e_ref = self.error(self.ref32)
        print(f"{fork}: float32 Darknet reference vs float64: {self.e_ref:.3g}")

    def float64_reference(self, raw):
        """Darknet's function in float64: BatchNorm2d with torch_form's variance and eps."""
        dialect = get_dialect(self.fork)
        model = copy.deepcopy(raw).double()
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                var, eps = dialect.torch_form(m.running_var.double(), torch.sqrt)
                m.running_var.copy_(var)
                m.eps = eps
        return model.eval()

    def run_torch(self, model, dtype=torch.float32):
        with torch.no_grad():
            out = model(torch.from_numpy(self.x).to(dtype))
        outs = out if isinstance(out, (list, tuple)) else [out]
        return np.concatenate([o.double().numpy().reshape(-1) for o in outs])

    def run_onnx(self, proto):
        ort = pytest.importorskip("onnxruntime")
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        session = ort.InferenceSession(proto.SerializeToString(), opts,
                                       providers=["CPUExecutionProvider"])
        name = session.get_inputs()[0].name
        outs = session.run(None, {name: self.x})
        return np.concatenate([np.asarray(o, np.float64).reshape(-1) for o in outs])

    def error(self, y):
        return float(np.max(np.abs(y - self.ref64)) / np.max(np.abs(self.ref64)))

    def fix(self, proto, name):
        src, out = self.tmp / f"{name}.onnx", self.tmp / f"{name}-fixed.onnx"
        onnx.save(proto, src)
        report = fix_file(self.cfg, self.weights, src, out, dialect=self.fork)
        return report, onnx.load(out)


@pytest.fixture(scope="module", params=["pjreddie", "alexeyab"])
def case(request, tmp_path_factory):
    return Case(request.param, tmp_path_factory.mktemp(request.param))


def assert_repaired(case, proto, name, *, end_to_end=True):
    before = check_model(proto, case.cfg, case.weights, dialect=case.fork)
    assert not before.ok
    report, fixed = case.fix(proto, name)
    assert report.ok and report.after.ok
    assert any(not layer.ok_before and layer.diagnosis for layer in report.layers)
    assert check_model(fixed, case.cfg, case.weights, dialect=case.fork).ok
    assert [n.op_type for n in fixed.graph.node] == [n.op_type for n in proto.graph.node]
    assert [t.data_type for t in fixed.graph.initializer] == \
        [t.data_type for t in proto.graph.initializer]
    e_before, e_after = case.error(case.run_onnx(proto)), case.error(case.run_onnx(fixed))
    print(f"{case.fork} {name}: end-to-end error before {e_before:.3g}, after {e_after:.3g} "
          f"(float32 reference {case.e_ref:.3g})")
    if end_to_end:
        assert e_after <= BOUND * case.e_ref
        assert not e_before <= 10 * case.e_ref          # NaN (a misread) counts as far
    else:
        assert e_after < e_before
    return report


@pytest.mark.parametrize("fold", [True, False], ids=["folded", "batchnorm-nodes"])
def test_torchscript_exporter(case, fold):
    assert_repaired(case, models.export(case.model, SIZE, fold=fold), f"ts-{fold}")


def test_dynamo_exporter(case):
    pytest.importorskip("onnxscript")
    assert_repaired(case, models.export(case.model, SIZE, dynamo=True), "dynamo")


def test_onnxslim(case):
    pytest.importorskip("onnxslim")
    proto = models.slim(models.export(case.model, SIZE, fold=False))
    assert_repaired(case, proto, "slim")


def test_float16_initializers_behind_casts(case):
    proto = models.to_float16_initializers(models.export(case.model, SIZE, fold=False))
    report = assert_repaired(case, proto, "f16", end_to_end=False)
    assert {r.precision for r in report.after.layers} == {"float16"}


@pytest.mark.parametrize("sub_div", [False, True], ids=["mul-add", "sub-div-sqrt"])
def test_batchnorm_as_elementwise_ops(case, sub_div):
    proto = models.batchnorm_as_mul_add(models.export(case.model, SIZE, fold=False),
                                        sub_div=sub_div)
    assert_repaired(case, proto, f"muladd-{sub_div}")


@pytest.mark.parametrize("fold", [True, False], ids=["folded", "batchnorm-nodes"])
def test_conv_weights_behind_transpose_and_bias_as_a_separate_add(case, fold):
    proto = models.conv_parameters_behind_ops(models.export(case.model, SIZE, fold=fold))
    assert_repaired(case, proto, f"behind-{fold}")


def test_state_dict_file(case, tmp_path):
    model, _ = models.build(case.cfg, case.weights, case.fork, style="models",
                            eps=MISTAKE_EPS[case.fork])
    src, out = tmp_path / "model.pt", tmp_path / "fixed.pt"
    torch.save(model.state_dict(), src)
    eps = MISTAKE_EPS[case.fork]
    assert not check_model(src, case.cfg, case.weights, dialect=case.fork, eps=eps).ok
    if eps > 1e-4:              # larger than the smallest variances: no variance fits
        with pytest.raises(FixError, match=r"with the model's eps 0.001 no variance"):
            fix_file(case.cfg, case.weights, src, out, dialect=case.fork, eps=eps)
        assert not out.exists()
        return
    report = fix_file(case.cfg, case.weights, src, out, dialect=case.fork, eps=eps)
    assert report.ok
    assert check_model(out, case.cfg, case.weights, dialect=case.fork, eps=eps).ok
    model.load_state_dict(torch.load(out, weights_only=True))
    e_after = case.error(case.run_torch(model.eval()))
    assert e_after <= BOUND * case.e_ref, (e_after, case.e_ref)


def test_live_module_in_place(case):
    model = copy.deepcopy(case.model)
    e_before = case.error(case.run_torch(model))
    report = fix_model(model, case.cfg, case.weights, dialect=case.fork)
    assert report.ok
    e_after = case.error(case.run_torch(model))
    print(f"{case.fork} live module: before {e_before:.3g}, after {e_after:.3g}")
    assert e_after <= BOUND * case.e_ref and e_before > 10 * case.e_ref
    bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert {m.eps for m in bns} == {get_dialect(case.fork).torch_eps}


def test_swapped_blocks_are_rewritten_from_the_weights(case):
    """gamma and beta swapped by the loader (tensorflow-yolo-v3 #38)."""
    model, net = loaders.build_model(case.cfg, case.fork)
    loaders.load_weights(model, net, case.weights, bn_order=loaders.GAMMA_BETA_SWAPPED)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.eps = get_dialect(case.fork).torch_eps
    assert_repaired(case, models.export(model.eval(), SIZE, fold=False), "swapped")


def test_header_shift_misread_is_rewritten(case):
    """A loader skipping 16 bytes of a 20-byte header: every float one off."""
    model, net = loaders.build_model(case.cfg, case.fork)
    loaders.load_weights(model, net, case.weights, header_ints=4)
    assert_repaired(case, models.export(model.eval(), SIZE, fold=True), "shifted")


# --------------------------------------------------------------------------
# the command line
# --------------------------------------------------------------------------
def test_cli_dry_run_writes_nothing_then_fix_exits_0(case, capsys):
    src = case.tmp / "cli.onnx"
    onnx.save(models.export(case.model, SIZE, fold=False), src)
    out = case.tmp / "cli-fixed.onnx"
    args = ["fix", str(case.cfg), str(case.weights), str(src), str(out), "--dialect", case.fork]
    assert main(args + ["--dry-run"]) == 0
    assert not out.exists()
    text = capsys.readouterr().out
    assert "FAIL eps: computes" in text and "largest change" in text
    assert main(args) == 0 and out.exists()
    assert main(["check", str(case.cfg), str(case.weights), str(out), "--dialect",
                 case.fork]) == 0


def _one_line_exit_2(argv, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("darknet-bn fix:") and "\n" not in err, err
    return err


def test_bad_input_exits_2_with_one_line(case, capsys, tmp_path):
    src = tmp_path / "m.onnx"
    onnx.save(models.export(case.model, SIZE, fold=False), src)
    base = [str(case.cfg), str(case.weights)]
    err = _one_line_exit_2(["fix", *base, str(src), str(src), "--dialect", case.fork], capsys)
    assert "overwrite an input" in err
    err = _one_line_exit_2(["fix", *base, str(src), str(case.weights), "--dialect",
                            case.fork], capsys)
    _one_line_exit_2(["fix", *base, str(src), str(tmp_path / "no" / "x.onnx"),
                      "--dialect", case.fork], capsys)
    other = tmp_path / "other.onnx"          # a model of another cfg: nothing pairs
    from onnx import TensorProto, helper
    w = onnx.numpy_helper.from_array(np.ones((5, 7, 3, 3), np.float32), "w")
    graph = helper.make_graph([helper.make_node("Conv", ["x", "w"], ["y"], name="c")], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, None)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              [w])
    onnx.save(helper.make_model(graph), other)
    _one_line_exit_2(["fix", *base, str(other), str(tmp_path / "o.onnx"), "--dialect",
                      case.fork], capsys)
    assert not (tmp_path / "o.onnx").exists()


def test_unwritable_out_exits_2(case, capsys, tmp_path):
    """A read-only directory (or, as root, which writes anywhere else, /proc): exit 2,
    one line, nothing left."""
    import os
    src = tmp_path / "m.onnx"
    onnx.save(models.export(case.model, SIZE, fold=False), src)
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    target = Path("/proc") if os.geteuid() == 0 else locked
    try:
        err = _one_line_exit_2(["fix", str(case.cfg), str(case.weights), str(src),
                                str(target / "x.onnx"), "--dialect", case.fork], capsys)
        assert "x.onnx" in err or str(target) in err
    finally:
        locked.chmod(0o700)
    assert not (target / "x.onnx").exists()


def test_a_constant_computed_by_an_op_that_cannot_be_inverted_is_refused(case, tmp_path):
    """A conv weight computed by ``Mul`` of two constants: exit 1 naming it, no OUT."""
    from onnx import helper, numpy_helper
    proto = models.export(case.model, SIZE, fold=True)
    conv = next(n for n in proto.graph.node if n.op_type == "Conv")
    name = conv.input[1]
    half = numpy_helper.from_array(np.asarray(0.5, np.float32), "half")
    proto.graph.initializer.append(half)
    proto.graph.node.insert(0, helper.make_node("Mul", [name, "half"], [name + "_h"],
                                                name="scale_w"))
    conv.input[1] = name + "_h"
    src, out = tmp_path / "m.onnx", tmp_path / "o.onnx"
    onnx.save(proto, src)
    with pytest.raises(FixError, match="Mul node 'scale_w'"):
        fix_file(case.cfg, case.weights, src, out, dialect=case.fork)
    assert not out.exists()
    argv = ["fix", str(case.cfg), str(case.weights), str(src), str(out), "--dialect", case.fork]
    assert main(argv) == 1 and not out.exists()


# --------------------------------------------------------------------------
# OpenVINO IR, made by openvino from the exports
# --------------------------------------------------------------------------
@pytest.mark.parametrize("compress", [False, True], ids=["FP32", "FP16"])
def test_openvino_ir(case, compress, tmp_path):
    ov = pytest.importorskip("openvino", reason="the openvino extra (pip install "
                             "'.[openvino]') reads OpenVINO IR")
    src = tmp_path / "m.onnx"
    onnx.save(models.export(case.model, SIZE, fold=False), src)
    xml, out = tmp_path / "m.xml", tmp_path / "fixed.xml"
    ov.save_model(ov.convert_model(str(src)), str(xml), compress_to_fp16=compress)
    assert not check_model(xml, case.cfg, case.weights, dialect=case.fork).ok
    xml_before = xml.read_bytes()
    report = fix_file(case.cfg, case.weights, xml, out, dialect=case.fork)
    assert report.ok and out.read_bytes() == xml_before
    assert (tmp_path / "fixed.bin").stat().st_size == (tmp_path / "m.bin").stat().st_size
    assert check_model(out, case.cfg, case.weights, dialect=case.fork).ok

    def run(path):
        compiled = ov.Core().compile_model(str(path), "CPU",
                                           {"INFERENCE_PRECISION_HINT": "f32"})
        result = compiled(case.x)
        return np.concatenate([np.asarray(result[o], np.float64).reshape(-1)
                               for o in compiled.outputs])
    e_before, e_after = case.error(run(xml)), case.error(run(out))
    print(f"{case.fork} IR {'FP16' if compress else 'FP32'}: end-to-end error before "
          f"{e_before:.3g}, after {e_after:.3g} (float32 reference {case.e_ref:.3g})")
    if compress:
        assert e_after < e_before
    else:
        assert e_after <= BOUND * case.e_ref and not e_before <= 10 * case.e_ref
    argv = ["fix", str(case.cfg), str(case.weights), str(xml), str(tmp_path / "m.bin"),
            "--dialect", case.fork]
    assert main(argv) == 2


# --------------------------------------------------------------------------
# TFLite: the committed fixtures made by TensorFlow's converter
# --------------------------------------------------------------------------
TFLITE = Path(__file__).resolve().parent / "data" / "tflite"


def run_tflite(path, x):
    litert = pytest.importorskip("ai_edge_litert.interpreter",
                                 reason="the TFLite interpreter (pip install ai-edge-litert, "
                                 "in the test extra) runs the repaired file")
    interpreter = litert.Interpreter(model_path=str(path), num_threads=1)
    interpreter.allocate_tensors()
    interpreter.set_tensor(interpreter.get_input_details()[0]["index"], x)
    interpreter.invoke()
    return interpreter.get_tensor(interpreter.get_output_details()[0]["index"]).astype(
        np.float64).reshape(-1)


@pytest.mark.parametrize("precision", ["float32", "float16"])
def test_tflite_keras_eps(precision, tmp_path):
    """pjreddie's blocks with Keras' eps 1e-3, converted by TensorFlow: repaired in its
    buffers.  End to end against TensorFlow's own conversion of the exact form
    (``exact``), in the same interpreter."""
    pytest.importorskip("tflite", reason="the tflite extra reads TFLite files")
    cfg, weights = TFLITE / "tflite-small.cfg", TFLITE / "tflite-small-pjreddie.weights"
    src = TFLITE / f"tflite-small-pjreddie-keraseps-{precision}.tflite"
    out = tmp_path / "fixed.tflite"
    assert not check_model(src, cfg, weights, dialect="pjreddie").ok
    report = fix_file(cfg, weights, src, out, dialect="pjreddie")
    assert report.ok and out.stat().st_size == src.stat().st_size
    assert check_model(out, cfg, weights, dialect="pjreddie").ok
    rng = np.random.default_rng(11)
    print("tflite input: seed 11")
    x = rng.normal(0, 1, (1, 16, 16, 3)).astype(np.float32)
    exact = run_tflite(TFLITE / f"tflite-small-pjreddie-exact-{precision}.tflite", x)
    scale = np.max(np.abs(exact))
    e_before = float(np.max(np.abs(run_tflite(src, x) - exact)) / scale)
    e_after = float(np.max(np.abs(run_tflite(out, x) - exact)) / scale)
    print(f"tflite {precision}: error against the exact conversion before {e_before:.3g}, "
          f"after {e_after:.3g}")
    limit = {"float32": 64 * 2.0 ** -24, "float16": 64 * 2.0 ** -11}[precision]
    assert e_after <= limit < e_before


@pytest.mark.parametrize("form", ["int8", "dynamic"])
def test_tflite_int8_that_does_not_fit_the_scales_is_refused_naming_channels(form, tmp_path,
                                                                            capsys):
    """Keras' eps 1e-3 makes the stored weights smaller than pjreddie's: requantized
    with the stored per-channel scales, Darknet's largest weights overflow int8."""
    pytest.importorskip("tflite", reason="the tflite extra reads TFLite files")
    cfg, weights = TFLITE / "tflite-small.cfg", TFLITE / "tflite-small-pjreddie.weights"
    src = TFLITE / f"tflite-small-pjreddie-keraseps-{form}.tflite"
    out = tmp_path / "fixed.tflite"
    assert main(["fix", str(cfg), str(weights), str(src), str(out), "--dialect",
                 "pjreddie"]) == 1
    err = capsys.readouterr().err.strip()
    assert "do not fit int8 with the stored scales in channels" in err and "\n" not in err
    assert not out.exists()


def test_tflite_int8_exact_form_requantizes_to_itself(tmp_path):
    pytest.importorskip("tflite", reason="the tflite extra reads TFLite files")
    cfg, weights = TFLITE / "tflite-small.cfg", TFLITE / "tflite-small-pjreddie.weights"
    src = TFLITE / "tflite-small-pjreddie-exact-int8.tflite"
    out = tmp_path / "fixed.tflite"
    report = fix_file(cfg, weights, src, out, dialect="pjreddie")
    assert report.ok
    changed = sum(out.read_bytes()[i] != b for i, b in enumerate(src.read_bytes()))
    print(f"exact int8 TFLite: {changed} bytes changed by requantization")
    assert changed <= 0.01 * src.stat().st_size


# --------------------------------------------------------------------------
# int8 ONNX from onnxruntime.quantization
# --------------------------------------------------------------------------
@pytest.mark.parametrize("form,per_channel", [("qdq", True), ("qdq", False),
                                              ("qoperator", True)])
def test_int8_onnx_requantized_with_the_stored_scales(form, per_channel, tmp_path):
    """An AlexeyAB conversion with eps 1e-7 (too small: every folded weight a little
    too large), quantized by onnxruntime: Darknet's weights are smaller, so they fit
    the stored scales; the repaired file passes and still runs."""
    fork = "alexeyab"
    cfg, weights, _ = models.network_with_weights(fork, tmp_path, SEEDS[fork])
    model, _ = models.build(cfg, weights, fork, eps=1e-7)
    src = tmp_path / "float.onnx"
    onnx.save(models.export(model, SIZE, fold=True), src)
    path = models.quantize(src, tmp_path / f"{form}-{per_channel}.onnx", form, per_channel)
    assert not check_model(path, cfg, weights, dialect=fork).ok
    out = tmp_path / "fixed.onnx"
    report = fix_file(cfg, weights, path, out, dialect=fork)
    assert report.ok
    before, after = onnx.load(path), onnx.load(out)
    assert [t.data_type for t in after.graph.initializer] == \
        [t.data_type for t in before.graph.initializer]
    scales = {t.name: t.raw_data for t in before.graph.initializer if "scale" in t.name}
    assert scales
    assert all(t.raw_data == scales[t.name] for t in after.graph.initializer
               if t.name in scales)                       # no scale changed
    ort = pytest.importorskip("onnxruntime")
    x = np.random.default_rng(9).normal(0, 1, (1, 3, SIZE, SIZE)).astype(np.float32)
    session = ort.InferenceSession(out.read_bytes(), providers=["CPUExecutionProvider"])
    outs = session.run(None, {session.get_inputs()[0].name: x})
    assert all(np.all(np.isfinite(o)) for o in outs)


# --------------------------------------------------------------------------
# misreads in torch forms: the port registering layer 18 before 14
# --------------------------------------------------------------------------
@pytest.mark.parametrize("fork", ["pjreddie", "alexeyab"])
def test_out_of_order_port_state_dict_and_live_module(fork, tmp_path):
    import _ports
    net = _ports.port_net(fork)
    weights = tmp_path / "yolov3-tiny.weights"
    loaders.synthesize(_ports.CFG, fork, weights, 61)
    port = _ports.fill_in_module_order(_ports.Yolov3TinyPort(), weights, fork)
    good = _ports.fill_darknet(_ports.Yolov3TinyPort(), net, weights, fork)
    eps = get_dialect(fork).torch_eps
    src, out = tmp_path / "port.pt", tmp_path / "fixed.pt"
    torch.save(port.state_dict(), src)
    before = check_model(src, _ports.CFG, weights, dialect=fork, eps=eps)
    assert [r.index for r in before.layers if not r.ok] == [14, 18]
    report = fix_file(_ports.CFG, weights, src, out, dialect=fork, eps=eps)
    assert report.ok
    rng = np.random.default_rng(3)
    print("port input: seed 3")
    x = torch.from_numpy(rng.normal(0, 1, (1, 3, net.h, net.w)).astype(np.float32))
    fixed = _ports.Yolov3TinyPort()
    fixed.load_state_dict(torch.load(out, weights_only=True))
    for m in fixed.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.eps = eps

    def flat(model):
        with torch.no_grad():
            y = model.eval()(x)
        ys = y if isinstance(y, (list, tuple)) else [y]
        return torch.cat([t.reshape(-1) for t in ys]).double().numpy()
    reference = flat(good)                  # fill_darknet: Darknet's blocks in cfg order
    assert np.array_equal(flat(fixed), reference)
    assert not np.array_equal(flat(port), reference)
    live = fix_model(port, _ports.CFG, weights, dialect=fork)
    assert live.ok and np.array_equal(flat(port), reference)


def test_hankai_batchnorm_nodes_and_folded(tmp_path):
    """hank-ai's inference is AlexeyAB's folded conv: the same repair, by its dialect."""
    cfg, weights, _ = models.network_with_weights("hankai", tmp_path, 54)
    model, _ = models.build(cfg, weights, "hankai", eps=1e-3)
    for fold in (False, True):
        src, out = tmp_path / f"m{fold}.onnx", tmp_path / f"f{fold}.onnx"
        onnx.save(models.export(model, SIZE, fold=fold), src)
        assert not check_model(src, cfg, weights, dialect="hankai").ok
        assert fix_file(cfg, weights, src, out, dialect="hankai").ok
        assert check_model(out, cfg, weights, dialect="hankai").ok
