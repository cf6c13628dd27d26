"""``check --dialect hankai`` on ONNX files built as hank-ai's own exporter
(``darknet_onnx_export``) builds them.

hank-ai's inference folds batchnorm into the convs (``fuse_conv_batchnorm``, AlexeyAB's
formula), so that is ``check``'s reference.  Its exporter writes either that fold
(the default) or ``Conv`` without bias + ``BatchNormalization`` with epsilon 1e-5 and
the stored blocks (``-dontfuse``), in float32 or float16 (``-fp16``: the parameters
truncated to float16 by its ``convert_to_fp16``, the graph's tensors float16).  The
forms are built here from a torch export of the cfg's network
(``_check_models``), rewritten as that exporter writes them.  A small cfg that all
three forks parse (convs, maxpool, route, upsample) with synthesized weights (seed
printed), and yolov4-tiny.
"""
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")

import _check_models as models                                    # noqa: E402
from darknet_bn.cli import main                                   # noqa: E402
from darknet_bn.darknet import check_model                        # noqa: E402
from darknet_bn.darknet.check import TOLERANCE                    # noqa: E402

CFG_DIR = Path(__file__).resolve().parent.parent / "data" / "golden" / "cfg"
SIDE = 32
SEED = 43
FOLDED = "folded conv (fuse_conv_batchnorm)"
SMALL_CFG = models.cfg_text(
    SIDE, models.conv(16, 3), ("maxpool", {"size": 2, "stride": 2}), models.conv(32, 3),
    models.conv(16, 1), ("route", {"layers": "-1,-3"}), models.conv(24, 3),
    ("upsample", {"stride": 2}), models.conv(8, 1, batch_normalize=0))


class Net:
    """A cfg, hank-ai weights synthesized for it, and its -dontfuse ONNX export."""

    def __init__(self, cfg, tmp, seed):
        self.cfg = cfg
        self.weights = tmp / "hankai.weights"
        net = models.synthesize_weights(cfg, "hankai", self.weights, seed)
        self.bn_layers = [s.index for s in net.bn_layers]
        model, _ = models.build(cfg, self.weights, "hankai")
        self.dontfuse = models.export(model, SIDE, fold=False)

    def check(self, proto, dialect="hankai"):
        return check_model(proto, self.cfg, self.weights, dialect=dialect)


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("hankai")
    cfg = tmp / "small.cfg"
    cfg.write_text(SMALL_CFG)
    return Net(cfg, tmp, SEED)


def assert_passes(net, report, form, precision):
    text = "\n".join(report.format_table())
    assert report.ok, text
    assert [r.index for r in report.layers] == net.bn_layers, text
    assert all(r.form == form and r.reference == FOLDED and r.precision == precision
               for r in report.layers), text


def _batchnorm_nodes(proto):
    return [n for n in proto.graph.node if n.op_type == "BatchNormalization"]


def test_dontfuse_form_passes(small):
    """Conv without bias + BatchNormalization(eps 1e-5), the stored blocks: hank-ai's
    -dontfuse export is its inference up to float32 rounding."""
    nodes = _batchnorm_nodes(small.dontfuse)
    assert len(nodes) == len(small.bn_layers)
    assert all(np.float32(next(a.f for a in n.attribute if a.name == "epsilon"))
               == np.float32(1e-5) for n in nodes)
    report = small.check(small.dontfuse)
    assert_passes(small, report, "batchnorm", "float32")
    assert max(r.max_rel_error for r in report.layers) <= TOLERANCE


def test_fused_form_passes_bit_for_bit_parameters(small):
    """The default export: each conv folded by fuse_conv_batchnorm, no batchnorm node."""
    fused = models.fused_like_darknet(small.dontfuse, "hankai")
    assert not _batchnorm_nodes(fused)
    assert_passes(small, small.check(fused), "folded", "float32")


@pytest.mark.parametrize("form", ["folded", "batchnorm"])
def test_fp16_forms_pass(small, form):
    """-fp16: the parameters truncated to float16 (not rounded), judged at float16."""
    proto = (models.fused_like_darknet(small.dontfuse, "hankai") if form == "folded"
             else small.dontfuse)
    half = models.float16_like_darknet(proto)
    assert any(t.data_type == onnx.TensorProto.FLOAT16 for t in half.graph.initializer)
    assert_passes(small, small.check(half), form, "float16")


def test_fp16_conversion_truncates_like_darknet():
    """darknet_float16 is convert_to_fp16: truncation, flush to zero, overflow to inf."""
    values = np.array([1.0, 1.0 + 2 ** -11 + 2 ** -12, -3.14159, 65504.0, 65536.0,
                       2.0 ** -14, 2.0 ** -15, -0.0, 1e-30], np.float32)
    want = np.array([1.0, 1.0, -3.140625, 65504.0, np.inf, 2.0 ** -14, 0.0, -0.0, 0.0],
                    np.float16)
    got = models.darknet_float16(values)
    assert np.array_equal(got.view(np.uint16), want.view(np.uint16))
    assert models.darknet_float16(np.float32([1.0 + 2 ** -11 + 2 ** -12]))[0] != \
        np.float16(1.0 + 2 ** -11 + 2 ** -12)                      # numpy rounds up


def test_the_other_forks_reading_of_the_same_files(small):
    """The same export checked as the other forks' inference: AlexeyAB computes the
    same (its fold, same formula); pjreddie does not fold and adds 1e-6 outside the
    root, so its report names the forks whose normalization this is."""
    fused = models.fused_like_darknet(small.dontfuse, "hankai")
    assert_passes(small, small.check(fused, "alexeyab"), "folded", "float32")
    report = small.check(small.dontfuse, "pjreddie")
    assert not report.ok
    for r in report.layers:
        assert ("(that is alexeyab and hankai's normalization: wrong fork? "
                "dialect='alexeyab')") in r.diagnosis, r.diagnosis


def test_a_pjreddie_export_checked_as_hankai_names_pjreddie(small, tmp_path):
    """darknet_bn's exact pjreddie export (eps 0, running_var (sqrt(v) + 1e-6)^2) is
    not hank-ai's inference: the diagnosis names pjreddie."""
    model, _ = models.build(small.cfg, small.weights, "hankai", remap_eps=1e-6)
    report = small.check(models.export(model, SIDE, fold=False))
    flagged = [r for r in report.layers if not r.ok]
    assert flagged and not report.ok
    for r in flagged:
        assert "(that is pjreddie's normalization: wrong fork? dialect='pjreddie')" in \
            r.diagnosis, r.diagnosis


def test_cli_exit_codes(small, tmp_path, capsys):
    """On the command line: exit 0 as hank-ai, 1 as pjreddie with the hint in the
    command line's words."""
    dontfuse, fused = tmp_path / "dontfuse.onnx", tmp_path / "fused.onnx"
    onnx.save(small.dontfuse, dontfuse)
    onnx.save(models.fused_like_darknet(small.dontfuse, "hankai"), fused)
    for model in (dontfuse, fused):
        args = ["check", str(small.cfg), str(small.weights), str(model)]
        assert main(args + ["--dialect", "hankai"]) == 0
        assert "hankai" in capsys.readouterr().out
    assert main(["check", str(small.cfg), str(small.weights), str(dontfuse), "--dialect",
                 "pjreddie"]) == 1
    out = " ".join(capsys.readouterr().out.split())      # the table wraps its notes
    assert "(that is alexeyab and hankai's normalization: wrong fork? --dialect alexeyab)" \
        in out, out


def test_yolov4_tiny_as_hankai_exports_it(tmp_path):
    """A real network of the fork (its cfg is AlexeyAB's): every form passes."""
    net = Net(CFG_DIR / "alexeyab" / "yolov4-tiny.cfg", tmp_path, SEED + 1)
    assert len(net.bn_layers) == 19
    fused = models.fused_like_darknet(net.dontfuse, "hankai")
    assert_passes(net, net.check(net.dontfuse), "batchnorm", "float32")
    assert_passes(net, net.check(fused), "folded", "float32")
    assert_passes(net, net.check(models.float16_like_darknet(fused)), "folded", "float16")
