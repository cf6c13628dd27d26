"""darknet_bn.torch.save_darknet_weights / load_darknet_weights and ``darknet-bn
to-weights``: Darknet .weights -> PyTorch models laid out as PyTorch YOLO
implementations lay them out -> .weights, byte for byte, both forks."""
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import _check_models as models                                     # noqa: E402
from darknet_bn.cli import main                                    # noqa: E402
from darknet_bn.darknet import check_model, parse_cfg              # noqa: E402
from darknet_bn.torch import (convert_batchnorm, load_darknet_weights,  # noqa: E402
                              save_darknet_weights)

CFG_DIR = Path(__file__).resolve().parent.parent / "data" / "golden" / "cfg"
FORKS = ("pjreddie", "alexeyab")
NETWORKS = {"alexeyab": "yolov4-tiny", "pjreddie": "yolov3-tiny"}
#: A yolo cfg each fork reads (hank-ai's fork ships AlexeyAB's cfgs).
YOLO_CFGS = {"pjreddie": CFG_DIR / "pjreddie" / "yolov3-tiny.cfg",
             "alexeyab": CFG_DIR / "alexeyab" / "yolov4-tiny.cfg",
             "hankai": CFG_DIR / "alexeyab" / "yolov4-tiny.cfg"}


def _empty_model(cfg, fork, style="module_list"):
    return models.CfgNet(parse_cfg(cfg, dialect=fork), style).eval()


def _zoo(fork):
    return CFG_DIR / fork / "bn-zoo.cfg", CFG_DIR / fork / "bn-zoo.weights"


# --------------------------------------------------------------------------
# round trips
# --------------------------------------------------------------------------
@pytest.mark.parametrize("fork", FORKS)
@pytest.mark.parametrize("style", ["module_list", "models"])
def test_shipped_file_round_trip_is_byte_identical(fork, style, tmp_path):
    """bn-zoo ([convolutional], [batchnorm], [connected] with and without batchnorm;
    pjreddie's file has seen 123456789) -> nn.BatchNorm2d/1d model -> .weights, and
    again after convert_batchnorm."""
    cfg, weights = _zoo(fork)
    model = load_darknet_weights(_empty_model(cfg, fork, style), cfg, weights, dialect=fork)
    out = tmp_path / "torch.weights"
    assert save_darknet_weights(model, cfg, out, dialect=fork, header_from=weights) == str(out)
    assert out.read_bytes() == weights.read_bytes()
    converted = convert_batchnorm(model, dialect=fork)
    assert not any(type(m) is torch.nn.BatchNorm2d for m in converted.modules())
    out2 = tmp_path / "darknet.weights"
    save_darknet_weights(converted, cfg, out2, dialect=fork, header_from=weights)
    assert out2.read_bytes() == weights.read_bytes()


@pytest.mark.parametrize("fork", sorted(YOLO_CFGS))
def test_synthesized_file_round_trip_with_defaults(fork, tmp_path):
    """A synthesized yolo file with the fork's header (revision 0 for pjreddie, 5 for
    AlexeyAB and hank-ai) and seen 0: the defaults give the same bytes, from the module
    and from its state_dict through the command line."""
    cfg = YOLO_CFGS[fork]
    weights = tmp_path / "in.weights"
    models.synthesize_weights(cfg, fork, weights, 11)
    model = load_darknet_weights(_empty_model(cfg, fork), cfg, weights, dialect=fork)
    out = tmp_path / "out.weights"
    save_darknet_weights(model, cfg, out, dialect=fork)
    assert out.read_bytes() == weights.read_bytes()
    state = tmp_path / "model.pt"
    torch.save(model.state_dict(), state)
    cli_out = tmp_path / "cli.weights"
    assert main(["to-weights", str(cfg), str(state), str(cli_out), "--dialect", fork]) == 0
    assert cli_out.read_bytes() == weights.read_bytes()
    assert check_model(model, cfg, out, dialect=fork).ok == (fork != "pjreddie")
    darknet = convert_batchnorm(model, dialect=fork)
    back = tmp_path / "module.weights"
    save_darknet_weights(darknet, cfg, back, dialect=fork)
    assert back.read_bytes() == weights.read_bytes()


def test_changed_model_goes_back_to_darknet_and_checks(tmp_path):
    """AlexeyAB yolov4-tiny with every parameter and statistic changed (as training
    changes them), then .weights: the file holds the new values and check passes the
    model against it."""
    cfg = CFG_DIR / "alexeyab" / "yolov4-tiny.cfg"
    weights = tmp_path / "in.weights"
    models.synthesize_weights(cfg, "alexeyab", weights, 12)
    model = load_darknet_weights(_empty_model(cfg, "alexeyab"), cfg, weights,
                                 dialect="alexeyab")
    generator = torch.Generator().manual_seed(0)
    print("torch seed 0")
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if t.is_floating_point():
                t.add_(0.01 * torch.randn(t.shape, generator=generator))
                if name.endswith("running_var"):
                    t.abs_()
    out = tmp_path / "tuned.weights"
    save_darknet_weights(model, cfg, out, dialect="alexeyab", seen=128)
    assert out.read_bytes() != weights.read_bytes()
    assert np.frombuffer(out.read_bytes()[12:20], "<u8")[0] == 128
    assert check_model(model, cfg, out, dialect="alexeyab").ok
    again = load_darknet_weights(_empty_model(cfg, "alexeyab"), cfg, out, dialect="alexeyab")
    for a, b in zip(model.state_dict().values(), again.state_dict().values()):
        if a.is_floating_point():
            assert torch.equal(a, b)


# --------------------------------------------------------------------------
# headers
# --------------------------------------------------------------------------
@pytest.mark.parametrize("fork,revision", [("pjreddie", 0), ("alexeyab", 5)])
def test_default_header_is_the_forks(fork, revision, tmp_path):
    cfg, weights = _zoo(fork)
    model = load_darknet_weights(_empty_model(cfg, fork), cfg, weights, dialect=fork)
    out = tmp_path / "o.weights"
    save_darknet_weights(model, cfg, out, dialect=fork, seen=2 ** 40 + 3)
    raw = out.read_bytes()
    assert list(np.frombuffer(raw[:12], "<i4")) == [0, 2, revision]
    assert int(np.frombuffer(raw[12:20], "<u8")[0]) == 2 ** 40 + 3
    assert raw[20:] == weights.read_bytes()[20:]


@pytest.mark.parametrize("fork", FORKS)
def test_header_from_a_pre_0_2_file_keeps_its_32_bit_seen(fork, tmp_path):
    cfg, weights = _zoo(fork)
    old = tmp_path / "old.weights"
    body = weights.read_bytes()[20:]
    old.write_bytes(np.array([0, 1, 7], "<i4").tobytes() + np.array([4242], "<u4").tobytes()
                    + body)
    model = load_darknet_weights(_empty_model(cfg, fork), cfg, old, dialect=fork)
    out = tmp_path / "o.weights"
    save_darknet_weights(model, cfg, out, dialect=fork, header_from=old)
    assert out.read_bytes() == old.read_bytes()


# --------------------------------------------------------------------------
# what the model cannot supply: an error naming the layer, nothing written
# --------------------------------------------------------------------------
def _assert_refused(call, out, *words):
    with pytest.raises(ValueError) as exc:
        call()
    for w in words:
        assert w in str(exc.value), str(exc.value)
    assert not out.exists()


@pytest.mark.parametrize("fork", FORKS)
def test_nonzero_conv_bias_beside_batchnorm(fork, tmp_path):
    cfg, weights = _zoo(fork)
    net = parse_cfg(cfg, dialect=fork)
    model = models.CfgNet(net)
    conv, bn = model.modules_of(3)
    model.module_list[3].conv_3 = torch.nn.Conv2d(conv.in_channels, conv.out_channels,
                                                  conv.kernel_size, padding=conv.padding)
    load_darknet_weights(model, cfg, weights, dialect=fork)       # zeroes that bias
    assert torch.count_nonzero(model.module_list[3].conv_3.bias) == 0
    out = tmp_path / "o.weights"
    save_darknet_weights(model, cfg, out, dialect=fork, header_from=weights)
    assert out.read_bytes() == weights.read_bytes()
    out.unlink()
    with torch.no_grad():
        model.module_list[3].conv_3.bias.fill_(0.5)
    _assert_refused(lambda: save_darknet_weights(model, cfg, out, dialect=fork),
                    out, "layer 3 [convolutional]", "nonzero bias beside its batchnorm")


def test_bias_on_a_pjreddie_batchnorm_section(tmp_path):
    cfg, weights = _zoo("pjreddie")
    model = load_darknet_weights(_empty_model(cfg, "pjreddie"), cfg, weights,
                                 dialect="pjreddie")
    _, bn = model.modules_of(1)
    with torch.no_grad():
        bn.bias.fill_(0.25)
    out = tmp_path / "o.weights"
    _assert_refused(lambda: save_darknet_weights(model, cfg, out, dialect="pjreddie"),
                    out, "layer 1 [batchnorm]", "stores no biases")


LOCAL_CFG = models.cfg_text(8, models.conv(4, 3), ("local", dict(filters=2, size=3, stride=1,
                                                                   pad=1, activation="leaky")))
SHORTCUT_CFG = models.cfg_text(8, models.conv(4, 3), models.conv(4, 1), (
    "shortcut", {"from": -2, "weights_type": "per_feature", "activation": "linear"}))


@pytest.mark.parametrize("text,fork,words", [
    (LOCAL_CFG, "pjreddie", ("layer 1 [local]",)),
    (SHORTCUT_CFG, "alexeyab", ("layer 2 [shortcut]", "weighted [shortcut]")),
], ids=["local", "weighted-shortcut"])
def test_layers_without_a_pytorch_counterpart(text, fork, words, tmp_path):
    cfg = tmp_path / "net.cfg"
    cfg.write_text(text)
    net = parse_cfg(cfg, dialect=fork)
    model = models.CfgNet(net)
    out = tmp_path / "o.weights"
    _assert_refused(lambda: save_darknet_weights(model, cfg, out, dialect=fork), out, *words)
    weights = tmp_path / "in.weights"
    models.synthesize_weights(cfg, fork, weights, 3)
    with pytest.raises(ValueError, match=words[0].replace("[", r"\[").replace("]", r"\]")):
        load_darknet_weights(model, cfg, weights, dialect=fork)


def test_a_model_that_does_not_pair(tmp_path):
    cfg, weights = _zoo("alexeyab")
    other = _empty_model(CFG_DIR / "alexeyab" / "yolov4-tiny.cfg", "alexeyab")
    out = tmp_path / "o.weights"
    _assert_refused(lambda: save_darknet_weights(other, cfg, out, dialect="alexeyab"), out,
                    "save_darknet_weights", "cannot pair")
    with pytest.raises(ValueError, match="load_darknet_weights: cannot pair"):
        load_darknet_weights(other, cfg, weights, dialect="alexeyab")
    extra = _empty_model(cfg, "alexeyab")
    extra.post = torch.nn.Conv2d(4, 4, 1)
    _assert_refused(lambda: save_darknet_weights(extra, cfg, out, dialect="alexeyab"), out,
                    "model units not in the cfg", "'post'")


def test_argument_errors(tmp_path):
    cfg, weights = _zoo("alexeyab")
    model = _empty_model(cfg, "alexeyab")
    out = tmp_path / "o.weights"
    with pytest.raises(TypeError, match="model must be a torch.nn.Module or a state_dict"):
        save_darknet_weights([1], cfg, out, dialect="alexeyab")
    with pytest.raises(ValueError, match="pass seen= or header_from=, not both"):
        save_darknet_weights(model, cfg, out, dialect="alexeyab", seen=3, header_from=weights)
    with pytest.raises(ValueError, match="refuses to overwrite an input"):
        save_darknet_weights(model, cfg, weights, dialect="alexeyab", header_from=weights)
    with pytest.raises(TypeError, match="dialect"):
        save_darknet_weights(model, cfg, out, dialect=None)
    assert not out.exists()


# --------------------------------------------------------------------------
# the command line
# --------------------------------------------------------------------------
def test_to_weights_command(tmp_path, capsys):
    cfg, weights = _zoo("pjreddie")
    model = load_darknet_weights(_empty_model(cfg, "pjreddie"), cfg, weights,
                                 dialect="pjreddie")
    state = tmp_path / "model.pt"
    torch.save(model.state_dict(), state)
    out = tmp_path / "o.weights"
    assert main(["to-weights", str(cfg), str(state), str(out), "--dialect", "pjreddie",
                 "--header-from", str(weights)]) == 0
    assert out.read_bytes() == weights.read_bytes()
    capsys.readouterr()
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a zip" * 10)
    listed = tmp_path / "list.pt"
    torch.save([1, 2], listed)
    cases = [
        ([str(cfg), str(state), str(state)], "refuses to overwrite an input"),
        ([str(cfg), str(garbage), str(tmp_path / "x.weights")], "not a PyTorch file"),
        ([str(cfg), str(listed), str(tmp_path / "x.weights")], "not a state_dict"),
        ([str(CFG_DIR / "pjreddie" / "yolov3-tiny.cfg"), str(state),
          str(tmp_path / "x.weights")], "cannot pair"),
    ]
    for args, words in cases:
        assert main(["to-weights", *args, "--dialect", "pjreddie"]) == 2
        err = capsys.readouterr().err
        assert err.startswith("darknet-bn to-weights: ") and words in err, err
        assert err.count("\n") == 1 and "Traceback" not in err
    assert not (tmp_path / "x.weights").exists()
    with pytest.raises(SystemExit):
        main(["to-weights", str(cfg), str(state), str(out), "--dialect", "pjreddie",
              "--seen", "1", "--header-from", str(weights)])
