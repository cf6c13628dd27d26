"""darknet_bn.darknet.weights: .weights files written by both forks, round trips, bad files."""
import filecmp
import inspect
import io
import json
import re
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import darknet_bn.darknet as D
from darknet_bn import get_dialect
from darknet_bn.darknet import parser as _parser
from darknet_bn.darknet import weights as _weights
from darknet_bn.darknet import (BatchNormRecord, DarknetWeights, WeightsFormatError,
                                WeightsHeader, make_batchnorm_layer_from_record,
                                make_batchnorm_layers, parse_cfg, read_weights, write_weights)

CFG_DIR = Path(__file__).resolve().parent.parent / "data" / "golden" / "cfg"
FORKS = ("pjreddie", "alexeyab")
OFFSET_KEYS = {"biases": "bias_offset", "scales": "scales_offset",
               "rolling_mean": "rolling_mean_offset",
               "rolling_variance": "rolling_variance_offset"}


def _bits(a):
    return np.ascontiguousarray(a, dtype=np.float32).view(np.int32)


def _zoo(fork):
    return CFG_DIR / fork / "bn-zoo.cfg", CFG_DIR / fork / "bn-zoo.weights"


@pytest.mark.parametrize("fork", FORKS)
def test_bn_zoo_values_at_darknets_offsets(fork):
    """Every record equals the floats at the offsets Darknet recorded, bit for bit."""
    cfg, path = _zoo(fork)
    ref = json.loads((CFG_DIR / fork / "bn-zoo.layers.json").read_text())
    raw = np.fromfile(path, dtype="<f4", offset=20)
    w = read_weights(cfg, path, dialect=fork)
    want = [l for l in ref["layers"] if l["bn_channels"]]
    assert [r.index for r in w.layers] == [l["index"] for l in want]
    checked = 0
    for layer in want:
        rec = w.layer(layer["index"])
        assert rec.channels == layer["bn_channels"] and rec.section == layer["section"]
        for name, key in OFFSET_KEYS.items():
            off, arr = layer[key], getattr(rec, name)
            if off < 0:
                assert arr is None            # pjreddie [batchnorm]: no stored biases
                continue
            assert arr.dtype == np.float32 and arr.flags.writeable
            assert np.array_equal(_bits(arr), _bits(raw[off:off + rec.channels]))
            checked += 1
    assert checked == (22 if fork == "pjreddie" else 24)


def test_headers_as_written_by_each_fork():
    pj = read_weights(*_zoo("pjreddie"), dialect="pjreddie").header
    ab = read_weights(*_zoo("alexeyab"), dialect="alexeyab").header
    assert (pj.major, pj.minor, pj.revision, pj.seen) == (0, 2, 0, 123456789)
    assert (ab.major, ab.minor, ab.revision, ab.seen) == (0, 2, 5, 0)


@pytest.mark.parametrize("fork", FORKS)
def test_round_trip_is_byte_exact(fork, tmp_path):
    cfg, path = _zoo(fork)
    w = read_weights(cfg, path, dialect=fork)
    out = write_weights(cfg, tmp_path / "copy.weights", w)
    assert Path(out).read_bytes() == path.read_bytes()


@pytest.mark.parametrize("fork", FORKS)
def test_edited_values_land_at_their_offsets_only(fork, tmp_path):
    cfg, path = _zoo(fork)
    w = read_weights(cfg, path, dialect=fork)
    rec = w.layer(9)                                   # a standalone [batchnorm]
    rec.rolling_variance[:] = np.float32(-0.0)
    rec.scales[3] = np.float32(np.nan)
    out = tmp_path / "edited.weights"
    write_weights(cfg, out, w)
    again = read_weights(cfg, out, dialect=fork)
    for a, b in zip(w.layers, again.layers):
        for name, arr in a.arrays().items():
            assert np.array_equal(_bits(arr), _bits(getattr(b, name)))
    old, new = np.fromfile(path, "<u1"), np.fromfile(out, "<u1")
    changed = np.flatnonzero(old != new)
    lo = 20 + 4 * rec.spec.scales_offset
    assert changed.min() >= lo and changed.max() < 20 + 4 * (rec.spec.rolling_variance_offset
                                                               + rec.channels)


def _random_records(net, rng, dialect):
    recs = []
    for spec in net.bn_layers:
        n = spec.bn_channels
        arrays = {name: rng.standard_normal(n).astype(np.float32) for name in spec.bn_blocks}
        arrays["rolling_variance"] = np.abs(arrays["rolling_variance"])
        recs.append(BatchNormRecord(spec.index, spec.section, n, arrays.get("biases"),
                                    arrays["scales"], arrays["rolling_mean"],
                                    arrays["rolling_variance"], dialect, spec))
    return recs


#: The biggest cfgs (yolov4: 258 MB of weights), synthesized in tmp_path.
BIG = [("alexeyab", "yolov4"), ("pjreddie", "yolov3"), ("pjreddie", "densenet201"),
       ("alexeyab", "yolov4-tiny-3l"), ("alexeyab", "yolov4-csp"), ("pjreddie", "yolov2"),
       ("pjreddie", "darknet53")]


@pytest.mark.parametrize("fork,name", BIG, ids=[f"{f}-{n}" for f, n in BIG])
def test_synthesized_big_weights(fork, name, tmp_path):
    cfg = CFG_DIR / fork / f"{name}.cfg"
    ref = json.loads((CFG_DIR / fork / f"{name}.layers.json").read_text())
    net = parse_cfg(cfg, dialect=fork)
    rng = np.random.default_rng(7)
    synth = DarknetWeights(None, fork, WeightsHeader(0, 2, 5, 64000), net,
                           _random_records(net, rng, fork))
    path = tmp_path / "synth.weights"
    write_weights(net, path, synth, fill=0.25)
    assert path.stat().st_size == ref["file_bytes"]
    back = read_weights(net, path, dialect=fork)
    assert back.header == synth.header
    assert len(back.layers) == sum(1 for l in ref["layers"] if l["bn_channels"])
    for a, b in zip(synth.layers, back.layers):
        assert a.index == b.index
        for nm, arr in a.arrays().items():
            assert np.array_equal(_bits(arr), _bits(getattr(b, nm)))
    # the other floats are the fill value: spot-check one conv weights block
    spec = next(s for s in net.layers if s.section == "convolutional")
    with open(path, "rb") as f:
        f.seek(20 + 4 * spec.offsets["weights"])
        assert np.all(np.frombuffer(f.read(4 * spec.nweights), "<f4") == np.float32(0.25))
    copy = tmp_path / "copy.weights"                  # round trip: base = the file read
    write_weights(net, copy, back)
    assert filecmp.cmp(path, copy, shallow=False)


def test_old_header_with_32bit_seen(tmp_path):
    cfg, path = _zoo("pjreddie")
    w = read_weights(cfg, path, dialect="pjreddie")
    w.header = WeightsHeader(0, 1, 0, 4242)
    out = tmp_path / "v01.weights"
    write_weights(cfg, out, w)
    assert out.stat().st_size == path.stat().st_size - 4
    back = read_weights(cfg, out, dialect="pjreddie")
    assert back.header == WeightsHeader(0, 1, 0, 4242)
    assert np.array_equal(_bits(back.layer(0).scales), _bits(w.layer(0).scales))


def _write_bytes(tmp_path, data):
    p = tmp_path / "bad.weights"
    p.write_bytes(data)
    return p


def test_truncated_file_names_layer_and_block(tmp_path):
    cfg, path = _zoo("pjreddie")
    data = path.read_bytes()
    bad = _write_bytes(tmp_path, data[:20 + 4 * 260 + 2])    # inside layer 1's scales..
    with pytest.raises(WeightsFormatError, match=r"truncated: 1062 bytes but the cfg implies "
                       r"39604 .*layer 1 \[batchnorm\] \(cfg line 16\), block 'rolling_mean', "
                       r"mid-float") as e:
        read_weights(cfg, bad, dialect="pjreddie")
    assert e.value.path == str(bad) and e.value.offset == 1062


def test_oversized_file_and_wrong_dialect_hint(tmp_path):
    cfg, path = _zoo("pjreddie")
    bad = _write_bytes(tmp_path, path.read_bytes() + b"\0" * 8)
    with pytest.raises(WeightsFormatError, match="oversized: .* 8 extra bytes"):
        read_weights(cfg, bad, dialect="pjreddie")
    with pytest.raises(WeightsFormatError, match="matches dialect='alexeyab'"):
        read_weights(cfg, _zoo("alexeyab")[1], dialect="pjreddie")


@pytest.mark.parametrize("header", [(0, 3, 0), (1, 0, 0), (1001, 2, 0), (-1, 2, 0)])
def test_header_from_the_future_is_refused(tmp_path, header):
    cfg, path = _zoo("pjreddie")
    data = np.array(header, "<i4").tobytes() + path.read_bytes()[12:]
    with pytest.raises(WeightsFormatError, match=r"byte offset 0\): header says version "):
        read_weights(cfg, _write_bytes(tmp_path, data), dialect="pjreddie")


def test_too_short_for_a_header(tmp_path):
    with pytest.raises(WeightsFormatError, match="too short for the 12-byte version header"):
        read_weights(_zoo("pjreddie")[0], _write_bytes(tmp_path, b"\0" * 7))
    with pytest.raises(WeightsFormatError, match="inside the header's 'seen'"):
        read_weights(_zoo("pjreddie")[0],
                     _write_bytes(tmp_path, np.array([0, 2, 0, 1], "<i4").tobytes()))


def test_write_refuses_inconsistent_records(tmp_path):
    cfg, path = _zoo("pjreddie")
    out = tmp_path / "out.weights"
    w = read_weights(cfg, path, dialect="pjreddie")
    w.layer(1).biases = np.zeros(8, np.float32)        # pjreddie [batchnorm] stores none
    with pytest.raises(ValueError, match=r"layer 1 \[batchnorm\]: dialect 'pjreddie' stores "
                       "no biases"):
        write_weights(cfg, out, w)
    w = read_weights(cfg, path, dialect="pjreddie")
    w.layer(3).scales = w.layer(3).scales.astype(np.float64)
    with pytest.raises(TypeError, match="scales must be a float32 numpy array"):
        write_weights(cfg, out, w)
    w = read_weights(cfg, path, dialect="pjreddie")
    w.layer(3).rolling_mean = w.layer(3).rolling_mean[:4]
    with pytest.raises(ValueError, match=r"has shape \(4,\), the cfg needs \(16,\)"):
        write_weights(cfg, out, w)
    w = read_weights(cfg, path, dialect="pjreddie")
    del w.layers[0]
    with pytest.raises(ValueError, match=r"missing \[0\]"):
        write_weights(cfg, out, w)
    w = read_weights(cfg, path, dialect="pjreddie")
    w.path = None
    with pytest.raises(ValueError, match="need a source: pass base="):
        write_weights(cfg, out, w)
    with pytest.raises(WeightsFormatError, match="oversized"):
        write_weights(cfg, out, w, base=_zoo("alexeyab")[1])
    assert not out.exists()                            # nothing partial was left behind
    assert not list(tmp_path.glob(".darknet-weights-*"))


@pytest.mark.parametrize("fork", FORKS)
def test_layers_from_records_run_darknets_inference(fork):
    """The layer holds the stored floats and normalizes with the rolling statistics:
    Darknet's expression evaluated with C's float32/float64 rules, bit for bit."""
    w = read_weights(*_zoo(fork), dialect=fork)
    layers = make_batchnorm_layers(w, batch=2)
    rng = np.random.default_rng(3)
    for rec in w.layers:
        layer = layers[rec.index]
        assert layer.type == ("batchnorm" if rec.section == "batchnorm" else "convolutional")
        assert (layer.c, layer.h, layer.w) == rec.spec.output_shape
        assert layer.dialect.name == fork
        x = rng.standard_normal((2, layer.c, layer.h, layer.w)).astype(np.float32)
        y = layer.forward(x.copy(), train=False).reshape(x.shape)
        m, v = rec.rolling_mean[:, None, None], rec.rolling_variance[:, None, None]
        if fork == "alexeyab":       # (x - mean)/sqrt(var + .00001f)
            den = np.sqrt((v + np.float32(1e-5)).astype(np.float64))
        else:                        # (x - mean)/(sqrt(var) + .000001f)
            den = np.sqrt(v.astype(np.float64)) + np.float64(np.float32(1e-6))
        xn = ((x - m).astype(np.float64) / den).astype(np.float32)
        bias = rec.biases if rec.biases is not None else np.zeros(rec.channels, np.float32)
        want = xn * rec.scales[:, None, None] + bias[:, None, None]
        assert np.array_equal(_bits(y), _bits(want))


def test_hankai_weights_are_alexeyabs_layout_and_run_its_cxx_inference(tmp_path):
    """hank-ai writes AlexeyAB's layout (header 0.2.5); its layers normalize with
    ``sqrtf`` and a float division: NumPy's float32 expression, bit for bit."""
    seed = 8
    cfg = CFG_DIR / "alexeyab" / "yolov4-tiny.cfg"
    net = parse_cfg(cfg, dialect="hankai")
    rng = np.random.default_rng(seed)
    synth = DarknetWeights(None, "hankai", WeightsHeader(0, 2, 5, 0), net,
                           _random_records(net, rng, "hankai"))
    path = tmp_path / "hankai.weights"
    write_weights(net, path, synth, fill=0.5)
    ref = json.loads((CFG_DIR / "alexeyab" / "yolov4-tiny.layers.json").read_text())
    assert path.stat().st_size == ref["file_bytes"]
    w, ab = (read_weights(cfg, path, dialect=d) for d in ("hankai", "alexeyab"))
    assert w.dialect is get_dialect("hankai") and w.header == ab.header == synth.header
    assert [r.index for r in w.layers] == [r.index for r in ab.layers]
    layers = make_batchnorm_layers(w, batch=2)
    eps = np.float32(1e-5)
    for rec in w.layers:
        layer = layers[rec.index]
        assert layer.type == "convolutional" and layer.dialect.name == "hankai"
        for name, arr in rec.arrays().items():
            assert np.array_equal(_bits(arr), _bits(ab.layer(rec.index).arrays()[name]))
        x = rng.standard_normal((2, layer.c, layer.h, layer.w)).astype(np.float32)
        y = layer.forward(x.copy(), train=False).reshape(x.shape)
        m, v = rec.rolling_mean[:, None, None], rec.rolling_variance[:, None, None]
        with np.errstate(invalid="ignore"):
            xn = (x - m) / np.sqrt(v + eps)              # all float32: sqrtss, divss
        want = xn * rec.scales[:, None, None] + rec.biases[:, None, None]
        assert np.array_equal(_bits(y), _bits(want)), f"layer {rec.index}, seed {seed}"


def test_layer_from_record_with_other_size():
    w = read_weights(*_zoo("alexeyab"), dialect="alexeyab")
    layer = make_batchnorm_layer_from_record(w.layer(0), batch=3, h=5, w=7)
    assert (layer.batch, layer.c, layer.h, layer.w) == (3, 8, 5, 7)
    assert np.array_equal(_bits(layer.biases), _bits(w.layer(0).biases))


@st.composite
def _small_cfgs(draw):
    """Random nets of the three BN-carrying sections (and a maxpool), as cfg text."""
    body = ["[net]", "width=8", "height=8", f"channels={draw(st.integers(1, 4))}"]
    flat = False
    for _ in range(draw(st.integers(1, 5))):
        kind = draw(st.sampled_from(["convolutional", "batchnorm", "connected", "maxpool"]))
        if flat and kind != "connected":
            kind = "connected"
        body.append(f"[{kind}]")
        bn = draw(st.integers(0, 1))
        if kind == "convolutional":
            body += [f"filters={draw(st.integers(1, 5))}", f"size={draw(st.sampled_from([1, 3]))}",
                     "pad=1", f"batch_normalize={bn}"]
        elif kind == "connected":
            body += [f"output={draw(st.integers(1, 6))}", f"batch_normalize={bn}"]
            flat = True
        elif kind == "maxpool":
            body += ["size=2", "stride=1"]
    return "\n".join(body) + "\n"


@settings(max_examples=30, deadline=None)
@given(text=_small_cfgs(), fork=st.sampled_from(FORKS), seed=st.integers(0, 2**32 - 1))
def test_random_nets_round_trip(tmp_path_factory, text, fork, seed):
    tmp = tmp_path_factory.mktemp("rt")
    cfg = tmp / "net.cfg"
    cfg.write_text(text)
    net = parse_cfg(cfg, dialect=fork)
    rng = np.random.default_rng(seed)
    synth = DarknetWeights(None, fork, WeightsHeader(0, 2, 0, seed), net,
                           _random_records(net, rng, fork))
    path = tmp / "net.weights"
    write_weights(cfg, path, synth, fill=-1.5)
    assert path.stat().st_size == 20 + 4 * sum(s.float_count for s in net.layers)
    back = read_weights(cfg, path, dialect=fork)
    assert back.header == synth.header and len(back.layers) == len(synth.layers)
    for a, b in zip(synth.layers, back.layers):
        for name, arr in a.arrays().items():
            assert np.array_equal(_bits(arr), _bits(getattr(b, name)))
        assert (b.biases is None) == (fork == "pjreddie" and b.section == "batchnorm")
    copy = tmp / "copy.weights"
    write_weights(cfg, copy, back)
    assert copy.read_bytes() == path.read_bytes()


def test_rewrite_in_place(tmp_path):
    cfg, path = _zoo("alexeyab")
    target = tmp_path / "model.weights"
    target.write_bytes(path.read_bytes())
    w = read_weights(cfg, target, dialect="alexeyab")
    w.layer(0).scales[:] = np.float32(7)
    write_weights(cfg, target, w)                      # base is the file being replaced
    old, new = np.fromfile(path, "<u1"), np.fromfile(target, "<u1")
    changed = np.flatnonzero(old != new)
    assert old.size == new.size
    assert changed.min() >= 20 + 4 * 8 and changed.max() < 20 + 4 * 16    # layer 0's scales
    assert [p.name for p in tmp_path.iterdir()] == ["model.weights"]


# --------------------------------------------------------------------------
# header ranges, dialect names, paths, huge cfgs
# --------------------------------------------------------------------------
@pytest.mark.parametrize("header,exc,pattern", [
    ((0, 2, 0, -1), ValueError, r"header\.seen=-1 is out of range for header version 0\.2, which "
                                r"stores seen as a uint64: 0 to 18446744073709551615"),
    ((0, 2, 0, 2 ** 64), ValueError, r"header\.seen=18446744073709551616 is out of range"),
    ((0, 1, 0, 2 ** 32), ValueError, r"header\.seen=4294967296 is out of range for header version "
                                     r"0\.1, which stores seen as a uint32: 0 to 4294967295; "
                                     r"use header version 0\.2"),
    ((0, 0, 0, -5), ValueError, r"header\.seen=-5 .* uint32"),
    ((0, 2, 2 ** 31, 0), ValueError, r"header\.revision=2147483648 is not a 32-bit int"),
    ((0, 3, 0, 0), ValueError, r"header version 0\.3 is not one Darknet writes"),
    ((0, 2, 0, 1.5), TypeError, r"header\.seen must be an int, got float"),
])
def test_write_refuses_header_out_of_range(tmp_path, header, exc, pattern):
    cfg, path = _zoo("pjreddie")
    w = read_weights(cfg, path, dialect="pjreddie")
    w.header = WeightsHeader(*header)
    out = tmp_path / "out.weights"
    with pytest.raises(exc, match=r"write_weights\(.*out\.weights\): " + pattern):
        write_weights(cfg, out, w)
    with pytest.raises(exc, match=r"WeightsHeader\.to_bytes: "):
        w.header.to_bytes()
    assert list(tmp_path.iterdir()) == []              # refused before creating anything


@pytest.mark.parametrize("header", [(0, 1, 7, 2 ** 32 - 1), (0, 2, -3, 2 ** 64 - 1),
                                    (0, 0, 2 ** 31 - 1, 0)])
def test_header_range_limits_round_trip(tmp_path, header):
    cfg, path = _zoo("pjreddie")
    w = read_weights(cfg, path, dialect="pjreddie")
    w.header = WeightsHeader(*header)
    out = tmp_path / "edge.weights"
    write_weights(cfg, out, w)
    assert read_weights(cfg, out, dialect="pjreddie").header == WeightsHeader(*header)


def test_dialect_name_in_any_case_with_a_network(tmp_path):
    cfg, path = _zoo("alexeyab")
    net = parse_cfg(cfg, dialect="alexeyab")
    w = read_weights(net, path, dialect="AlexeyAB")
    assert w.dialect is get_dialect("alexeyab") and len(w.layers) == 6
    out = tmp_path / "copy.weights"
    write_weights(net, out, w, dialect="ALEXEYAB")
    assert out.read_bytes() == path.read_bytes()
    with pytest.raises(ValueError, match=r"read_weights: the Network was parsed with dialect "
                       r"'alexeyab' but dialect='PJReddie' was passed"):
        read_weights(net, path, dialect="PJReddie")
    with pytest.raises(ValueError, match="unknown dialect"):
        read_weights(net, path, dialect="darknet")


def test_missing_paths_name_the_file_and_its_role(tmp_path):
    cfg, path = _zoo("pjreddie")
    with pytest.raises(FileNotFoundError, match=r"cannot open the \.weights file: No such "
                       r"file or directory: '.*nope\.weights'"):
        read_weights(cfg, tmp_path / "nope.weights")
    with pytest.raises(IsADirectoryError, match=r"cannot open the \.weights file: .*"
                       + tmp_path.name):
        read_weights(cfg, tmp_path)
    with pytest.raises(FileNotFoundError, match=r"cannot open the \.cfg file: .*nope\.cfg"):
        read_weights(tmp_path / "nope.cfg", path)
    with pytest.raises(IsADirectoryError, match=r"cannot open the \.cfg file"):
        parse_cfg(tmp_path)
    with pytest.raises(WeightsFormatError, match=r"null.*not a regular file"):
        read_weights(cfg, "/dev/null")
    w = read_weights(cfg, path)
    with pytest.raises(FileNotFoundError, match=r"cannot open the base \.weights file: .*nobase"):
        write_weights(cfg, tmp_path / "out.weights", w, base=tmp_path / "nobase")
    assert list(tmp_path.iterdir()) == []


def test_write_into_a_missing_directory_names_the_output(tmp_path):
    cfg, path = _zoo("pjreddie")
    w = read_weights(cfg, path)
    out = tmp_path / "nodir" / "out.weights"
    with pytest.raises(FileNotFoundError) as e:
        write_weights(cfg, out, w)
    msg = str(e.value)
    assert "write_weights: cannot create the output file in" in msg and str(out) in msg
    assert ".darknet-weights-" not in msg and e.value.filename == str(out)
    with pytest.raises(IsADirectoryError, match=r"output path is a directory"):
        write_weights(cfg, tmp_path, w)
    assert list(tmp_path.iterdir()) == []


def test_huge_cfg_with_small_file_is_a_size_error(tmp_path):
    """A cfg whose every int fits a C int but whose file would be 40 GB: the size is
    checked before anything is read or allocated."""
    cfg = tmp_path / "huge.cfg"
    cfg.write_text("[net]\nwidth=1\nheight=1\nchannels=1\n"
                   "[convolutional]\nbatch_normalize=1\nfilters=2000000000\nsize=1\n")
    net = parse_cfg(cfg)
    assert net.float_count == 5 * 2_000_000_000 and net.file_bytes() == 40_000_000_020
    with pytest.raises(WeightsFormatError, match=r"truncated: 39604 bytes but the cfg implies "
                       r"40000000020 .*layer 0 \[convolutional\] \(cfg line 5\), block "
                       r"'biases'"):
        read_weights(cfg, _zoo("pjreddie")[1])


# --------------------------------------------------------------------------
# every public function x wrong-typed arguments
# --------------------------------------------------------------------------
def _baseline(name, tmp_path):
    """Valid keyword arguments for public function ``name`` (see test_baselines_are_valid)."""
    cfg, path = _zoo("pjreddie")
    w = read_weights(cfg, path)
    header = path.read_bytes()[:20]
    return {
        "parse_cfg": dict(path=cfg, dialect="pjreddie"),
        "read_cfg": dict(path=cfg),
        "read_weights": dict(cfg_path=cfg, weights_path=path, dialect="pjreddie",
                             layer_weights=True),
        "write_weights": dict(cfg_path=cfg, weights_path=tmp_path / "out.weights", weights=w,
                              dialect="pjreddie", base=path, fill=None),
        "read_header": dict(path=path, f=io.BytesIO(header)),
        "make_batchnorm_layer_from_record": dict(record=w.layer(0), batch=1, h=2, w=2,
                                                 dialect="pjreddie", kernel="blas"),
        "make_batchnorm_layers": dict(weights=w, batch=1, kernel="blas"),
        "batchnorm_state_dict": dict(record=w.layer(0), dialect="pjreddie"),
        "to_torch_batchnorm": dict(record=w.layer(0), dialect="pjreddie"),
        "export_state_dicts": dict(weights=w),
        "fold_batchnorm": dict(**_layer_arrays(), dialect="pjreddie", layer_type="connected"),
        "fuse_conv_batchnorm": dict(**_layer_arrays(), n=2, filter_size=3),
        "denormalize_convolutional_layer": dict(**_layer_arrays(), n=2, filter_size=3),
        "denormalize_connected_layer": dict(**_layer_arrays(), outputs=2, inputs=3),
        "fold_weights": dict(cfg_path=cfg, weights_path=path,
                             out_path=tmp_path / "folded.weights", dialect="pjreddie",
                             out_cfg_path=tmp_path / "folded.cfg"),
        "folded_cfg": dict(cfg_path=cfg, dialect="pjreddie"),
        "denormalize_net": dict(cfg_path=cfg, weights_path=path,
                                out_path=tmp_path / "folded.weights"),
        "check_model": dict(converted=_bn_state_dict_file(w, tmp_path), cfg=cfg, weights=path,
                            dialect="pjreddie", eps=0.0),
        "fix_file": dict(cfg=cfg, weights=path, converted=_bn_state_dict_file(w, tmp_path),
                         out=tmp_path / "fixed.pt", dialect="pjreddie", eps=0.0,
                         dry_run=False),
        "fix_model": dict(model=_bn_module(w), cfg=cfg, weights=path, dialect="pjreddie"),
    }[name]


def _bn_module(w):
    """A module holding one BatchNorm per BN layer of ``w`` (paired by order)."""
    torch = pytest.importorskip("torch")
    module = torch.nn.Module()
    for i, (sd, _) in enumerate(D.export_state_dicts(w).values()):
        bn = torch.nn.BatchNorm2d(len(sd["running_mean"]))
        bn.load_state_dict({k: torch.from_numpy(np.asarray(v)) for k, v in sd.items()},
                           strict=False)
        module.add_module(f"bn{i}", bn)
    return module


def _layer_arrays():
    """A 2-filter layer with 3 weights per filter (fresh arrays for each call)."""
    return dict(weights=np.linspace(-1, 1, 6, dtype=np.float32),
                biases=np.array([0.5, -0.5], np.float32), scales=np.ones(2, np.float32),
                rolling_mean=np.zeros(2, np.float32),
                rolling_variance=np.array([1.0, 4.0], np.float32))


def _bn_state_dict_file(w, tmp_path):
    """A torch state_dict with one exact BatchNorm per BN layer of ``w`` (outside
    ``tmp_path``'s listing: the bad-argument test checks nothing is created there)."""
    torch = pytest.importorskip("torch")
    path = tmp_path.parent / f"{tmp_path.name}-bn.pt"
    state = {}
    for i, (sd, _) in enumerate(D.export_state_dicts(w).values()):
        state.update({f"bn{i}.{k}": torch.from_numpy(np.asarray(v)) for k, v in sd.items()})
    torch.save(state, path)
    return path


def _record(**changes):
    rec = read_weights(*_zoo("pjreddie")).layer(0)
    for k, v in changes.items():
        setattr(rec, k, v)
    return rec


def _weights_with(**changes):
    w = read_weights(*_zoo("pjreddie"))
    for k, v in changes.items():
        setattr(w, k, v)
    return w


_CFG = str(CFG_DIR / "pjreddie" / "bn-zoo.cfg")
_PATHS = [None, 5, 1.5, [_CFG], (_CFG,), {"path": _CFG}]
_RECORDS = [None, 5, "layer0", [lambda: _record()], lambda: _weights_with(),
            lambda: _record().arrays()]
_WEIGHTS = [None, 5, "x.weights", lambda: _weights_with().layers, lambda: _record()]
_DIALECTS = [5, ["pjreddie"], "darknet"]
_INTS = [None, "1", 1.5, [1], True]
_ARRAY_NAMES = ("weights", "biases", "scales", "rolling_mean", "rolling_variance")
_ARRAYS = [None, [1.0, 2.0], lambda: np.ones(6), lambda: np.ones(7, np.float32),
           lambda: np.ones((2, 3), np.float32)]

#: function -> parameter -> wrong values (a callable builds the value, so each case
#: gets a fresh object; a list [callable] is a list holding one).  Every parameter
#: of every public function has at least one (test_every_parameter_has_cases).
BAD_ARGUMENTS = {
    "parse_cfg": {"path": _PATHS + [b"\0x", ""], "dialect": _DIALECTS + [None]},
    "read_cfg": {"path": _PATHS + ["a\0b"]},
    "read_weights": {"cfg_path": _PATHS + [lambda: _weights_with()],
                     "weights_path": _PATHS + [lambda: _weights_with()],
                     "dialect": _DIALECTS, "layer_weights": [None, 1, "yes"]},
    "write_weights": {"cfg_path": _PATHS, "weights_path": _PATHS + [""],
                      "weights": _WEIGHTS, "dialect": _DIALECTS + [""],
                      "base": [5, [_CFG], 1.5],
                      "fill": ["0", [0.0], True, 1e39, 10**400, 10**5000]},
    "read_header": {"path": _PATHS, "f": [None, b"\0" * 20, 5, io.StringIO("x" * 20)]},
    "make_batchnorm_layer_from_record": {"record": _RECORDS, "batch": _INTS + [0],
                                         "h": ["2", 1.5, [2]], "w": ["2", 1.5, [2]],
                                         "dialect": _DIALECTS, "kernel": [5, "gpu"]},
    "make_batchnorm_layers": {"weights": _WEIGHTS, "batch": _INTS, "kernel": [5, "gpu"]},
    "batchnorm_state_dict": {"record": _RECORDS, "dialect": _DIALECTS},
    "to_torch_batchnorm": {"record": _RECORDS, "dialect": _DIALECTS},
    "export_state_dicts": {"weights": _WEIGHTS},
    "fold_batchnorm": {**{k: _ARRAYS for k in _ARRAY_NAMES}, "dialect": _DIALECTS,
                       "layer_type": [5, "batchnorm", None]},
    "fuse_conv_batchnorm": {**{k: _ARRAYS for k in _ARRAY_NAMES}, "n": _INTS + [0],
                            "filter_size": _INTS + [4]},
    "denormalize_convolutional_layer": {**{k: _ARRAYS for k in _ARRAY_NAMES},
                                        "n": _INTS + [3], "filter_size": _INTS + [0]},
    "denormalize_connected_layer": {**{k: _ARRAYS for k in _ARRAY_NAMES},
                                    "outputs": _INTS + [0], "inputs": _INTS + [2]},
    "fold_weights": {"cfg_path": _PATHS, "weights_path": _PATHS + [""],
                     "out_path": _PATHS + ["a\0b"], "dialect": _DIALECTS + [None],
                     "out_cfg_path": _PATHS[1:] + ["", "a\0b"]},
    "folded_cfg": {"cfg_path": _PATHS, "dialect": _DIALECTS + [None]},
    "denormalize_net": {"cfg_path": _PATHS, "weights_path": _PATHS,
                        "out_path": _PATHS + [""]},
    "check_model": {"converted": [None, 5, 1.5, [_CFG]], "cfg": _PATHS,
                    "weights": _PATHS + [""], "dialect": _DIALECTS,
                    "eps": ["1e-5", True, -1.0, float("nan"), [0.0]],
                    "strict": [1, "yes", None]},
    "fix_file": {"cfg": _PATHS, "weights": _PATHS + [""], "converted": [None, 5, [_CFG]],
                 "out": [None, 5, [_CFG]], "dialect": _DIALECTS,
                 "eps": ["1e-5", True, -1.0, float("nan")], "dry_run": [1, "yes", None]},
    "fix_model": {"model": [None, 5, "model.pt"], "cfg": _PATHS, "weights": _PATHS + [""],
                  "dialect": _DIALECTS},
}

#: Wrong-typed contents: (function, parameter, value, the name the message must give).
BAD_CONTENTS = [
    ("make_batchnorm_layer_from_record", "record", lambda: _record(scales=None),
     "record.scales"),
    ("make_batchnorm_layer_from_record", "record", lambda: _record(scales=[1.0] * 8),
     "record.scales"),
    ("make_batchnorm_layer_from_record", "record", lambda: _record(channels="8"),
     "record.channels"),
    ("make_batchnorm_layer_from_record", "record", lambda: _record(spec=5), "record.spec"),
    ("batchnorm_state_dict", "record", lambda: _record(rolling_variance=None),
     "record.rolling_variance"),
    ("batchnorm_state_dict", "record",
     lambda: _record(rolling_mean=np.zeros(8, "U1")), "record.rolling_mean"),
    ("batchnorm_state_dict", "record", lambda: _record(dialect=None), "record.dialect"),
    ("export_state_dicts", "weights", lambda: _weights_with(layers=None), "weights.layers"),
    ("make_batchnorm_layers", "weights", lambda: _weights_with(layers=[None]),
     "weights.layers[0]"),
    ("write_weights", "weights", lambda: _weights_with(header=(0, 2, 0, 0)), "weights.header"),
    ("write_weights", "weights", lambda: _weights_with(layers=[_record(biases=[0.0])]),
     "weights.layers[0].biases"),
]


def _public_functions():
    return {n for n in D.__all__ if inspect.isfunction(getattr(D, n))}


def _build(value):
    if callable(value):
        return value()
    if isinstance(value, list) and value and callable(value[0]):
        return [v() for v in value]
    return value


def _cases():
    for fname, params in BAD_ARGUMENTS.items():
        for param, values in params.items():
            for i, value in enumerate(values):
                yield pytest.param(fname, param, value, param, id=f"{fname}-{param}-{i}")
    for i, (fname, param, value, named) in enumerate(BAD_CONTENTS):
        yield pytest.param(fname, param, value, named, id=f"{fname}-{named}-{i}")


def test_every_parameter_has_cases():
    """The table covers every public function of darknet_bn.darknet and all its
    parameters: a new function or parameter must be added here."""
    assert set(BAD_ARGUMENTS) == _public_functions()
    for fname, params in BAD_ARGUMENTS.items():
        sig = inspect.signature(getattr(D, fname))
        assert set(params) == set(sig.parameters), fname


@pytest.mark.parametrize("fname", sorted(BAD_ARGUMENTS))
def test_baselines_are_valid(fname, tmp_path):
    """Each case changes one argument of a call that works."""
    if fname == "to_torch_batchnorm":
        pytest.importorskip("torch")
    result = getattr(D, fname)(**_baseline(fname, tmp_path))
    assert (result is None) == (fname in IN_PLACE)         # in place, like the C


#: Darknet's in-place routines: they return nothing, as in C.
IN_PLACE = {"fuse_conv_batchnorm", "denormalize_convolutional_layer",
            "denormalize_connected_layer"}


@pytest.mark.parametrize("fname,param,value,named", list(_cases()))
def test_wrong_typed_arguments_are_refused_by_name(fname, param, value, named, tmp_path,
                                                   monkeypatch):
    """TypeError/ValueError whose message names the argument, raised before any
    work: no cfg is read (read_cfg and parse_cfg are replaced by failures; a
    function that only reads them gets the real one back) and no file is created."""
    kwargs = _baseline(fname, tmp_path)
    kwargs[param] = _build(value)

    def no_work(*a, **k):
        raise AssertionError("work started before the arguments were checked")
    if fname not in ("read_cfg",):
        monkeypatch.setattr(_parser, "read_cfg", no_work)
    monkeypatch.setattr(_weights, "parse_cfg", no_work)
    before = sorted(tmp_path.iterdir())
    with pytest.raises((TypeError, ValueError)) as e:
        getattr(D, fname)(**kwargs)
    msg = str(e.value)
    assert re.search(rf"(?<![\w.]){re.escape(named)}(?![\w\[])", msg), msg
    assert fname in msg.split(":")[0] or fname in msg, msg       # says which function
    assert sorted(tmp_path.iterdir()) == before
