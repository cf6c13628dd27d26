"""``check`` on deployment formats, each judged at its own precision: TFLite (float32,
float16, full-integer and dynamic-range int8; files made by TensorFlow's converter,
``tests/data/tflite``), OpenVINO IR (made here by ``openvino.convert_model`` +
``save_model`` from the torch exports, FP16-compressed by default and FP32) and int8
ONNX (made here by ``onnxruntime.quantization``: QDQ and QOperator, per tensor and per
channel, dynamic).

Every fork (hank-ai's through the torch exports and the formats made from them): a
correct conversion passes in every form; the pjreddie eps mistake (eps
inside the root; Keras' default eps 1e-3 in the TFLite files) is named wherever it
exceeds the precision (variances are synthesized log-uniform in [1e-4, 4]); bad files
exit 2 with one line.
"""
import re
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")

import _check_models as models                                    # noqa: E402
from darknet_bn.cli import main                                   # noqa: E402
from darknet_bn.darknet import check_model                        # noqa: E402

HERE = Path(__file__).resolve().parent
TFLITE = HERE / "data" / "tflite"
CFG_DIR = HERE.parent / "data" / "golden" / "cfg"
EPS_INSIDE = ("eps: computes (x-mean)/sqrt(var + 1e-05), pjreddie computes "
              "(x-mean)/(sqrt(var) + 1e-06)")
EPS_KERAS = ("eps: computes (x-mean)/sqrt(var + 0.001), pjreddie computes "
             "(x-mean)/(sqrt(var) + 1e-06)")


def table(report):
    return "\n".join(report.format_table())


def assert_passes(report):
    assert report.ok, table(report)


def assert_eps_named(report, words, everywhere):
    """Every failing row's diagnosis is the eps mistake and nothing else; with
    ``everywhere`` every row fails (float32), else at least one does."""
    text = table(report)
    flagged = [r for r in report.layers if not r.ok]
    assert flagged, text
    if everywhere:
        assert len(flagged) == len(report.layers), text
    for r in flagged:
        assert r.diagnosis.startswith(words), (r.index, r.diagnosis)
        for other in ("weights differ", "subnormal", "overflow", "saturate",
                      "not a known converter mistake"):
            assert other not in r.diagnosis, (r.index, r.diagnosis)


# --------------------------------------------------------------------------
# TFLite: files made by TensorFlow's converter, read with the light parser
# --------------------------------------------------------------------------
TFLITE_CFG = TFLITE / "tflite-small.cfg"
TFLITE_PRECISIONS = {"float32": "float32", "float16": "float16", "int8": "int8",
                     "dynamic": "int8"}


def tflite_case(fork, variant, precision):
    pytest.importorskip("tflite", reason="the tflite extra (pip install '.[tflite]') reads "
                        "TFLite files")
    return (TFLITE / f"tflite-small-{fork}-{variant}-{precision}.tflite",
            TFLITE / f"tflite-small-{fork}.weights")


@pytest.mark.parametrize("precision", list(TFLITE_PRECISIONS))
@pytest.mark.parametrize("fork", ["alexeyab", "pjreddie"])
def test_tflite_exact_conversion_passes(fork, precision):
    model, weights = tflite_case(fork, "exact", precision)
    report = check_model(model, TFLITE_CFG, weights, dialect=fork)
    assert_passes(report)
    assert [r.index for r in report.layers] == [0, 1, 3, 4, 7], table(report)
    judged = {r.precision for r in report.layers}
    assert TFLITE_PRECISIONS[precision] in judged, table(report)
    if precision == "int8":                       # full integer: every layer
        assert judged == {"int8"}, table(report)
        assert "int8, per channel" in table(report)
        assert "activation quantization is not judged" in table(report)


@pytest.mark.parametrize("precision", list(TFLITE_PRECISIONS))
def test_tflite_keras_default_eps_is_named(precision):
    model, weights = tflite_case("pjreddie", "keraseps", precision)
    report = check_model(model, TFLITE_CFG, weights, dialect="pjreddie")
    assert_eps_named(report, EPS_KERAS, everywhere=precision == "float32")


def test_tflite_int8_blind_spots_are_stated():
    """The report says how large a change of a channel's multiplier int8 cannot see,
    and where the wrong fork's eps placement shows."""
    model, weights = tflite_case("alexeyab", "exact", "int8")
    text = " ".join(table(check_model(model, TFLITE_CFG, weights, dialect="alexeyab")).split())
    assert re.search(r"int8, per channel, int32 biases: each parameter is known to half its quantization "
                     r"step, so a mistake that changes a channel's folded weights by less "
                     r"than [0-9.]+% \(median over channels; up to [0-9.]+%\) is not seen: "
                     r"pjreddie's normalization \(x-mean\)/\(sqrt\(var\) \+ 1e-06\) shows "
                     r"only where var < [0-9.e-]+", text), text


def test_tflite_cli_exit_status(capsys):
    for variant, fork, status in (("exact", "alexeyab", 0), ("keraseps", "pjreddie", 1)):
        model, weights = tflite_case(fork, variant, "int8")
        assert main(["check", str(TFLITE_CFG), str(weights), str(model), "--dialect",
                     fork]) == status
        out = capsys.readouterr().out
        assert "int8" in out


# --------------------------------------------------------------------------
# torch exports of yolov4-tiny (AlexeyAB) and yolov3-tiny (pjreddie)
# --------------------------------------------------------------------------
SEEDS = {"alexeyab": 41, "pjreddie": 42, "hankai": 43}
#: The forks whose normalization is PyTorch's eps 1e-5 inside the root.
EPS_INSIDE_FORKS = ("alexeyab", "hankai")
SIZE = 64


class Export:
    """One fork's network as PyTorch YOLO ports build it (eps 1e-5: AlexeyAB's and
    hank-ai's exact form, pjreddie's eps mistake), exported by torch.onnx (batchnorm folded), and
    for pjreddie also darknet_bn's exact pjreddie form."""

    def __init__(self, fork, tmp):
        self.fork, self.tmp = fork, tmp
        self.cfg, self.weights, self.net = models.network_with_weights(fork, tmp, SEEDS[fork])
        model, _ = models.build(self.cfg, self.weights, fork)
        self.onnx = tmp / "model.onnx"
        onnx.save(models.export(model, SIZE), self.onnx)
        exact, _ = models.build(self.cfg, self.weights, fork, remap_eps=1e-6)
        self.exact_onnx = tmp / "exact.onnx"
        onnx.save(models.export(exact, SIZE), self.exact_onnx)
        self.bn_layers = [s.index for s in self.net.bn_layers]

    def check(self, path, **kwargs):
        return check_model(path, self.cfg, self.weights, dialect=self.fork, **kwargs)

    def assert_verdict(self, report, everywhere):
        assert [r.index for r in report.layers] == self.bn_layers, table(report)
        if self.fork in EPS_INSIDE_FORKS:
            assert_passes(report)
        else:
            assert_eps_named(report, EPS_INSIDE, everywhere)


_EXPORTS = {}


def export_of(fork, tmp_path_factory):
    """One ``Export`` per fork for the module (exports take seconds)."""
    if fork not in _EXPORTS:
        _EXPORTS[fork] = Export(fork, tmp_path_factory.mktemp(fork))
    return _EXPORTS[fork]


@pytest.fixture(scope="module", params=["alexeyab", "pjreddie", "hankai"])
def export(request, tmp_path_factory):
    return export_of(request.param, tmp_path_factory)


# --------------------------------------------------------------------------
# OpenVINO IR, made by openvino from the exports
# --------------------------------------------------------------------------
def openvino_ir(onnx_path, xml_path, compress):
    ov = pytest.importorskip("openvino", reason="the openvino extra (pip install "
                             "'.[openvino]') reads OpenVINO IR")
    ov.save_model(ov.convert_model(str(onnx_path)), str(xml_path), compress_to_fp16=compress)
    return xml_path


@pytest.mark.parametrize("compress", [True, False], ids=["fp16", "fp32"])
def test_openvino_ir(export, compress):
    xml = openvino_ir(export.onnx, export.tmp / f"ir-{compress}.xml", compress)
    report = export.check(xml)
    assert {r.precision for r in report.layers} == {"float16" if compress else "float32"}
    export.assert_verdict(report, everywhere=not compress)


def test_openvino_ir_exact_pjreddie_passes(tmp_path, tmp_path_factory):
    exp = export_of("pjreddie", tmp_path_factory)
    for compress in (True, False):
        xml = openvino_ir(exp.exact_onnx, tmp_path / f"exact-{compress}.xml", compress)
        assert_passes(exp.check(xml))


# --------------------------------------------------------------------------
# int8 ONNX, made by onnxruntime.quantization
# --------------------------------------------------------------------------


QUANTIZED_FORMS = [("qdq", True), ("qdq", False), ("qoperator", True), ("dynamic", False)]


@pytest.mark.parametrize("form,per_channel", QUANTIZED_FORMS,
                         ids=["qdq-per-channel", "qdq-per-tensor", "qoperator", "dynamic"])
def test_int8_onnx(export, form, per_channel):
    path = models.quantize(export.onnx, export.tmp / f"{form}-{per_channel}.onnx", form, per_channel)
    report = export.check(path)
    assert {r.precision for r in report.layers} == {"int8"}, table(report)
    words = "per channel" if per_channel else "per tensor"
    assert f"int8, {words}" in table(report)
    export.assert_verdict(report, everywhere=False)


def test_int8_onnx_exact_pjreddie_passes(tmp_path, tmp_path_factory):
    exp = export_of("pjreddie", tmp_path_factory)
    for form, per_channel in QUANTIZED_FORMS:
        path = models.quantize(exp.exact_onnx, tmp_path / f"{form}-{per_channel}.onnx", form,
                        per_channel)
        assert_passes(exp.check(path))


# --------------------------------------------------------------------------
# bad files: exit 2, one line, no traceback
# --------------------------------------------------------------------------
def run_check(cfg, weights, model, fork, capsys):
    status = main(["check", str(cfg), str(weights), str(model), "--dialect", fork])
    captured = capsys.readouterr()
    return status, captured.err


def assert_one_line(status, err, words):
    assert status == 2, err
    assert err.startswith("darknet-bn check: ") and words in err, err
    assert err.count("\n") == 1 and "Traceback" not in err, err


def _patched_operator(raw, builtin):
    """The file with its first operator code set to ``builtin``."""
    import tflite
    model = tflite.Model.GetRootAsModel(raw, 0)
    code = model.OperatorCodes(0)
    out = bytearray(raw)
    for field, fmt, size in ((4, "<b", 1), (10, "<i", 4)):     # deprecated, builtin code
        o = code._tab.Offset(field)
        if o:
            pos = code._tab.Pos + o
            out[pos:pos + size] = np.array([min(builtin, 127)] if size == 1 else [builtin],
                                           fmt[1:]).astype(fmt).tobytes()
    return bytes(out)


def test_bad_tflite_files_exit_2(tmp_path, capsys):
    model, weights = tflite_case("alexeyab", "exact", "int8")
    raw = model.read_bytes()
    for n in (len(raw) // 3, len(raw) - 100):
        short = tmp_path / f"short{n}.tflite"
        short.write_bytes(raw[:n])
        assert_one_line(*run_check(TFLITE_CFG, weights, short, "alexeyab", capsys),
                        "truncated")
    unknown = tmp_path / "unknown.tflite"
    unknown.write_bytes(_patched_operator(raw, 67))                # TRANSPOSE_CONV
    assert_one_line(*run_check(TFLITE_CFG, weights, unknown, "alexeyab", capsys),
                    "TFLite operator TRANSPOSE_CONV (operator")


def test_bad_openvino_files_exit_2(tmp_path, tmp_path_factory, capsys):
    exp = export_of("alexeyab", tmp_path_factory)
    xml = openvino_ir(exp.onnx, tmp_path / "ir.xml", True)
    bin_ = xml.with_suffix(".bin")
    data = bin_.read_bytes()
    for name, content, words in (("short", data[:len(data) // 2], "not this model's .bin"),
                                 ("long", data + b"\0" * 8, "not this model's .bin")):
        other = tmp_path / f"{name}.xml"
        other.write_bytes(xml.read_bytes())
        other.with_suffix(".bin").write_bytes(content)
        assert_one_line(*run_check(exp.cfg, exp.weights, other, "alexeyab", capsys), words)
    lonely = tmp_path / "lonely.xml"
    lonely.write_bytes(xml.read_bytes())
    assert_one_line(*run_check(exp.cfg, exp.weights, lonely, "alexeyab", capsys),
                    "needs its .bin beside it")
    assert_one_line(*run_check(exp.cfg, exp.weights, bin_, "alexeyab", capsys),
                    "pass the .xml")


def test_an_openvino_op_the_reader_does_not_know_exits_2(tmp_path, capsys):
    """An ONNX ``LRN`` becomes OpenVINO's ``LRN``, which the reader does not know."""
    from onnx import TensorProto, helper, numpy_helper
    w = numpy_helper.from_array(np.ones((4, 3, 3, 3), np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
         helper.make_node("LRN", ["c"], ["y"], size=3)], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], [w])
    path = tmp_path / "lrn.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    xml = openvino_ir(path, tmp_path / "lrn.xml", True)
    cfg = tmp_path / "one.cfg"
    cfg.write_text(models.cfg_text(8, models.conv(4, 3)))
    weights = tmp_path / "one.weights"
    models.synthesize_weights(cfg, "alexeyab", weights, 9)
    assert_one_line(*run_check(cfg, weights, xml, "alexeyab", capsys), "OpenVINO op LRN")


def test_float16_saturation_and_flush_to_zero_are_named(tmp_path):
    """OpenVINO's FP16 compression holds a value beyond 65504 at 65504 and stores a value
    below 2**-24 as zero: channel 1 (scale 3e4, var 1e-2: a bias beyond 65504) and
    channel 3 (scale and bias 1e-9) fail with those names and no converter mistake."""
    cfg = tmp_path / "one.cfg"
    cfg.write_text(models.cfg_text(8, models.conv(4, 3)))
    weights = tmp_path / "one.weights"
    net = models.synthesize_weights(cfg, "alexeyab", weights, 9)
    raw = np.fromfile(weights, np.uint8)
    for block, channel, value in (("scales", 1, 3e4), ("rolling_variance", 1, 1e-2),
                                  ("scales", 3, 1e-9), ("biases", 3, 1e-9)):
        offset = 20 + 4 * net.layers[0].offsets[block] + 4 * channel
        raw[offset:offset + 4] = np.frombuffer(np.float32(value).tobytes(), np.uint8)
    raw.tofile(weights)
    model, _ = models.build(cfg, weights, "alexeyab")
    path = tmp_path / "m.onnx"
    onnx.save(models.export(model, 8), path)
    assert_passes(check_model(openvino_ir(path, tmp_path / "fp32.xml", False), cfg, weights,
                              dialect="alexeyab"))
    report = check_model(openvino_ir(path, tmp_path / "fp16.xml", True), cfg, weights,
                         dialect="alexeyab")
    row = report.layers[0]
    assert not row.ok and row.precision == "float16", table(report)
    assert "saturate in float16 (held at its largest value, 65504) at channels [1]" in \
        row.diagnosis, row.diagnosis
    assert "flushed to zero in float16 at channels [3]" in row.diagnosis, row.diagnosis
    assert "eps" not in row.diagnosis and "not a known" not in row.diagnosis, row.diagnosis


def test_int8_swapped_blocks_are_named(tmp_path, tmp_path_factory):
    """A converter that swaps scales and biases, quantized per channel: the swap is far
    beyond half a step and is named."""
    exp = export_of("alexeyab", tmp_path_factory)
    raw = np.fromfile(exp.weights, np.uint8)
    floats = raw[20:].view("<f4").copy()
    for spec in exp.net.bn_layers:
        n = spec.bn_channels
        s, b = spec.offsets["scales"], spec.offsets["biases"]
        floats[s:s + n], floats[b:b + n] = floats[b:b + n].copy(), floats[s:s + n].copy()
    swapped = tmp_path / "swapped.weights"
    swapped.write_bytes(raw[:20].tobytes() + floats.tobytes())
    model, _ = models.build(exp.cfg, swapped, "alexeyab")
    path = tmp_path / "swapped.onnx"
    onnx.save(models.export(model, SIZE), path)
    report = exp.check(models.quantize(path, tmp_path / "swapped-int8.onnx", "qdq"))
    assert not report.ok
    for r in report.layers:
        assert not r.ok and r.precision == "int8", table(report)
        # named as the converter's swap, or (the misread search judging the swapped
        # reading of the file at int8) as a loader that read gamma and beta swapped
        assert r.diagnosis.startswith(("swap: scales and biases are swapped",
                                       "misread (M1: swap: scales and biases")), r.diagnosis


@pytest.mark.parametrize("fork", ["alexeyab", "pjreddie"])
def test_openvino_ir_batchnorm_as_multiply_add(fork, tmp_path):
    """bn-zoo (Darknet's own files): a ``[batchnorm]`` after an activation and a
    ``[connected]`` batchnorm stay ``Multiply``/``Add`` in the IR.  The conversion holds
    eps 1e-5 inside the root: AlexeyAB's form passes; for pjreddie it fails in FP32 and,
    the recorded variances being large, stays below float16's rounding in FP16."""
    cfg, weights = (CFG_DIR / fork / f"bn-zoo.{ext}" for ext in ("cfg", "weights"))
    model, _ = models.build(cfg, weights, fork)
    path = tmp_path / "bn-zoo.onnx"
    onnx.save(models.export(model, 32), path)
    for compress in (True, False):
        report = check_model(openvino_ir(path, tmp_path / f"ir-{compress}.xml", compress),
                             cfg, weights, dialect=fork)
        standalone = [r for r in report.layers if r.section == "batchnorm"]
        assert len(standalone) == 2 and all("Multiply" in r.model_name for r in standalone)
        if fork == "alexeyab" or compress:
            assert_passes(report)
        else:
            assert_eps_named(report, EPS_INSIDE, everywhere=True)
