"""darknet_bn.darknet.parser: every layer of every cfg against Darknet's own parse."""
import json
from pathlib import Path

import pytest

from darknet_bn.darknet import CfgError, UnsupportedCfgError, parse_cfg, read_cfg

CFG_DIR = Path(__file__).resolve().parent.parent / "data" / "golden" / "cfg"
CASES = sorted((p.parent.name, p.name[:-len(".layers.json")])
               for p in CFG_DIR.glob("*/*.layers.json"))
#: Every field Darknet recorded for each layer (struct fields and weights offsets).
FIELDS = ("section", "index", "batch_normalize", "filters", "c", "h", "w", "out_c", "out_h",
          "out_w", "size", "stride", "groups", "inputs", "outputs", "nweights", "bn_channels",
          "bias_offset", "scales_offset", "rolling_mean_offset", "rolling_variance_offset")


def test_fixture_set_is_complete():
    assert len(CASES) == 19
    assert {fork for fork, _ in CASES} == {"pjreddie", "alexeyab"}


@pytest.mark.parametrize("fork,name", CASES, ids=[f"{f}-{n}" for f, n in CASES])
def test_every_layer_matches_darknets_parse(fork, name):
    ref = json.loads((CFG_DIR / fork / f"{name}.layers.json").read_text())
    net = parse_cfg(CFG_DIR / fork / f"{name}.cfg", dialect=fork)
    assert len(net.layers) == len(ref["layers"])
    mismatches = [(spec.index, key, getattr(spec, key), want[key])
                  for spec, want in zip(net.layers, ref["layers"]) for key in FIELDS
                  if getattr(spec, key) != want[key]]
    assert mismatches == []
    assert net.float_count == ref["float_count"]
    assert net.file_bytes() == ref["file_bytes"]


def _cfg(tmp_path, body, name="t.cfg"):
    path = tmp_path / name
    path.write_text("[net]\nwidth=16\nheight=16\nchannels=3\n" + body)
    return path


CONV = "[convolutional]\nbatch_normalize=1\nfilters=4\nsize=3\nstride=1\npad=1\n"


def test_aliases_whitespace_and_comments(tmp_path):
    net = parse_cfg(_cfg(tmp_path, "# comment\n; other\n[conv]\n filters = 4 \nsize=3\n"
                                   "pad=1\nbatch_normalize=1\n\n[max]\nsize=2\nstride=2\n"))
    assert [l.section for l in net.layers] == ["convolutional", "maxpool"]
    assert net.layers[1].output_shape == (4, 8, 8)
    assert net.layers[0].line == 7


def test_unknown_section_names_file_and_line(tmp_path):
    path = _cfg(tmp_path, CONV + "\n[convolutonal]\nfilters=2\n")
    with pytest.raises(CfgError, match=r"t\.cfg:12: unknown section \[convolutonal\]"):
        parse_cfg(path)


def test_section_of_the_other_fork_says_which_dialect(tmp_path):
    path = _cfg(tmp_path, CONV + "[local_avgpool]\nsize=2\nstride=2\n")
    with pytest.raises(CfgError, match="dialect='alexeyab'"):
        parse_cfg(path, dialect="pjreddie")
    assert parse_cfg(path, dialect="alexeyab").layers[1].output_shape == (4, 8, 8)


def test_known_but_unmodelled_section_is_refused(tmp_path):
    with pytest.raises(UnsupportedCfgError, match=r":5: \[lstm\] is a recurrent layer"):
        parse_cfg(_cfg(tmp_path, "[lstm]\noutput=4\n"))


@pytest.mark.parametrize("body,pattern", [
    ("[convolutional]\nfilters=four\n", r":6: \[convolutional\] filters='four' is not an integer"),
    ("[convolutional]\nfilters=0\n", r":6: .*filters=0 must be >= 1"),
    ("[convolutional]\nfilters=4\nsize=32\n", r"output would be 4x-15x-15"),
    ("[convolutional]\nfilters=4\ngroups=2\n", r"groups=2 does not divide the 3 input"),
    ("[route]\nlayers=-1\n", r"layers= refers to layer -1 \(= -1\)"),
    (CONV + "[route]\nlayers=-1,-4\n", r"refers to layer -4"),
    (CONV + "[maxpool]\nsize=2\nstride=2\n[route]\nlayers=-1,-2\n",
     "width and height of the input layers are different"),
    (CONV + "[yolo]\nclasses=1\nmask=0\nnum=1\n", r"set filters=6 there"),
    ("[convolutional]\nfilters\n", r":6: could not parse 'filters'"),
    ("[convolutional]\nfilters=4\nfilters=5\n", r":7: .*repeated \(first on line 6\)"),
    ("[convolutional]\nfilters=4\nstride_x=2\n", r"stride_x= is AlexeyAB-only"),
    (CONV + CONV + "[route]\nlayers=-1\ngroups=2\n", r"groups= is AlexeyAB-only"),
    (CONV + "dontloadscales=1\n", r"dontloadscales=1 is not supported"),
    ("[softmax]\n[convolutional]\nfilters=2\n", "must output image"),
    ("[net]\n", r"a second \[net\] section"),
])
def test_bad_cfg_values(tmp_path, body, pattern):
    with pytest.raises(CfgError, match=pattern):
        parse_cfg(_cfg(tmp_path, body))


def test_structural_errors(tmp_path):
    bad = tmp_path / "bad.cfg"
    bad.write_text("width=3\n[net]\n")
    with pytest.raises(CfgError, match=r"bad\.cfg:1: option 'width=3' before the first"):
        read_cfg(bad)
    bad.write_text("[convolutional]\nfilters=2\n")
    with pytest.raises(CfgError, match=r"bad\.cfg:1: first section is \[convolutional\]"):
        parse_cfg(bad)
    bad.write_text("[net]\nbatch=1\n[convolutional]\n")
    with pytest.raises(CfgError, match="No input parameters supplied"):
        parse_cfg(bad)
    bad.write_bytes(b"\xff\xfe\x00")
    with pytest.raises(CfgError, match="not a text file"):
        read_cfg(bad)
    with pytest.raises(ValueError, match="unknown dialect"):
        parse_cfg(_cfg(tmp_path, CONV), dialect="darknet")


def test_alexeyab_options(tmp_path):
    body = (CONV + "[convolutional]\nfilters=6\nsize=3\nstride_x=2\nstride_y=1\npad=1\n"
            "[maxpool]\nmaxpool_depth=1\nout_channels=2\n"
            "[shortcut]\nfrom=-2,-3\nweights_type=per_channel\n"
            "[route]\nlayers=-4\ngroups=2\ngroup_id=1\n")
    with pytest.raises(CfgError):
        parse_cfg(_cfg(tmp_path, body), dialect="pjreddie")
    net = parse_cfg(_cfg(tmp_path, body.replace("[shortcut]\nfrom=-2,-3",
                                                "[shortcut]\nfrom=-2")), dialect="alexeyab")
    conv, mp, sc, route = net.layers[1:]
    assert (conv.out_c, conv.out_h, conv.out_w, conv.stride) == (6, 16, 8, 2)
    assert mp.output_shape == (2, 16, 8)
    assert sc.nweights == (1 + 1) * 2 and sc.blocks == (("weights", 4),)
    assert route.output_shape == (2, 16, 16) and route.outputs == 4 * 16 * 16 // 2


def test_sections_not_in_the_fixtures(tmp_path):
    """Layer types no golden cfg uses, against the make_*_layer formulas (cited in the
    parser's docstrings); these are not checked against a Darknet run."""
    body = ("[local]\nfilters=2\nsize=3\nstride=2\npad=1\n"          # (16-1)/2+1 = 8
            "[dropout]\nprobability=.5\n"
            "[activation]\nactivation=relu\n"
            "[reorg]\nstride=2\nreverse=1\n"                          # 2x8x8 -> 0 channels
            )
    with pytest.raises(CfgError, match=r"output would be 0x16x16"):
        parse_cfg(_cfg(tmp_path, body))
    body = body.replace("reverse=1", "reverse=0") + "[upsample]\nstride=-2\n[cost]\n"
    local, drop, act, reorg, up, cost = parse_cfg(_cfg(tmp_path, body)).layers
    assert local.output_shape == (2, 8, 8) and local.blocks == (
        ("biases", 128), ("weights", 3 * 3 * 3 * 2 * 64))
    assert (drop.c, drop.h, drop.w, drop.output_shape) == (0, 0, 0, (2, 8, 8))
    assert (act.c, act.h, act.w, act.output_shape) == (2, 8, 8, (2, 8, 8))
    assert reorg.output_shape == (8, 4, 4) and reorg.outputs == 128
    assert up.output_shape == (8, 2, 2) and up.stride == 2
    assert (cost.inputs, cost.outputs, cost.output_shape) == (32, 32, (0, 0, 0))
    extra = parse_cfg(_cfg(tmp_path, "[reorg]\nstride=2\nextra=5\n")).layers[0]
    assert extra.output_shape == (3 * 16 * 16 + 5, 0, 0) and extra.outputs == 773
