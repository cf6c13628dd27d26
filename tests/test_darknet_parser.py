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


#: AlexeyAB's cfgs without a [batchnorm] section: hank-ai's parser reads them as AlexeyAB's.
HANKAI_CASES = [name for fork, name in CASES if fork == "alexeyab"
                and "[batchnorm]" not in (CFG_DIR / fork / f"{name}.cfg").read_text()]


@pytest.mark.parametrize("name", HANKAI_CASES)
def test_hankai_reads_alexeyabs_cfgs_as_alexeyab(name):
    """hank-ai's fork keeps AlexeyAB's parser rules (shapes, .weights layout)."""
    ref = json.loads((CFG_DIR / "alexeyab" / f"{name}.layers.json").read_text())
    net = parse_cfg(CFG_DIR / "alexeyab" / f"{name}.cfg", dialect="hankai")
    assert net.dialect.name == "hankai"
    mismatches = [(spec.index, key, getattr(spec, key), want[key])
                  for spec, want in zip(net.layers, ref["layers"]) for key in FIELDS
                  if getattr(spec, key) != want[key]]
    assert len(net.layers) == len(ref["layers"]) and mismatches == []
    assert net.file_bytes() == ref["file_bytes"]


def test_hankai_refuses_a_batchnorm_section_in_one_line():
    """hank-ai's Darknet has no [batchnorm] section: the error names the file and line,
    the reason, and the forks whose cfgs have one."""
    assert len(HANKAI_CASES) >= 5
    with pytest.raises(CfgError) as e:
        parse_cfg(CFG_DIR / "alexeyab" / "bn-zoo.cfg", dialect="hankai")
    text = str(e.value)
    assert "\n" not in text and "bn-zoo.cfg:16: [batchnorm]: dialect 'hankai' has no " \
        "standalone batchnorm layer on the CPU" in text
    assert "pass dialect='pjreddie' or dialect='alexeyab'" in text
    assert parse_cfg(CFG_DIR / "alexeyab" / "bn-zoo.cfg", dialect="alexeyab").layers


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
    ("[convolutional]\nfilters=3000000000\n", r":6: \[convolutional\] filters=3000000000 is "
     r"outside the C int range \(-2147483648 to 2147483647\)"),
    ("[convolutional]\nfilters=-2147483649\n", r":6: .*filters=-2147483649 is outside"),
    (CONV + "[route]\nlayers=-1,4294967295\n", r":12: .*layers=4294967295 is outside"),
    ("[convolutional]\nfilters=1_0\n", r":6: .*filters='1_0' is not an integer"),
    ("[convolutional]\nfilters=0x10\n", r"filters='0x10' is not an integer"),
    ("[convolutional]\nfilters=8000000\nsize=31\npad=1\n", r":5: \[convolutional\] nweights "
     r"= 23064000000 does not fit the C int Darknet computes it in"),
    ("[convolutional]\nfilters=10000000\nsize=1\n", r"outputs = 2560000000 does not fit"),
    ("[connected]\noutput=3000000\n", r"the 'weights' block's float count = 2304000000 "
     r"does not fit"),
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


def test_c_int_limits_are_accepted(tmp_path):
    net = parse_cfg(_cfg(tmp_path, "[convolutional]\nfilters=+8388608\nsize=1\n"
                                   "stride=2147483647\n"))
    conv = net.layers[0]
    assert (conv.filters, conv.stride, conv.output_shape) == (8388608, 2147483647, (8388608, 1, 1))
    assert conv.nweights == 3 * 8388608
    bad = tmp_path / "net.cfg"
    bad.write_text("[net]\nwidth=65536\nheight=65536\nchannels=1\n[maxpool]\n")
    with pytest.raises(CfgError, match=r"net\.cfg:1: \[net\] width\*height\*channels = "
                       r"4294967296 is more than Darknet's C int holds"):
        parse_cfg(bad)


def test_utf8_byte_order_mark_is_skipped(tmp_path):
    plain = _cfg(tmp_path, CONV)
    bom = tmp_path / "bom.cfg"
    bom.write_bytes(b"\xef\xbb\xbf" + plain.read_bytes())
    a, b = parse_cfg(plain), parse_cfg(bom)
    assert [(l.line, l.output_shape, l.blocks) for l in a.layers] == [
        (l.line, l.output_shape, l.blocks) for l in b.layers] == [
        (5, (4, 16, 16), (("biases", 4), ("scales", 4), ("rolling_mean", 4),
                          ("rolling_variance", 4), ("weights", 108)))]
    assert read_cfg(bom)[0].type == "net"


def test_unreadable_cfg_names_the_cfg(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"cannot open the \.cfg file: No such file "
                       r"or directory: '.*missing\.cfg'") as e:
        parse_cfg(tmp_path / "missing.cfg")
    assert e.value.filename == str(tmp_path / "missing.cfg")
    with pytest.raises(IsADirectoryError, match=r"cannot open the \.cfg file"):
        read_cfg(tmp_path)


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
