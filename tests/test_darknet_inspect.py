"""``darknet-bn inspect``: the BN layer table, value statistics and suspicious counts."""
import json
import re
from pathlib import Path

import numpy as np
import pytest

from darknet_bn.cli import main
from darknet_bn.darknet import read_weights, write_weights
from darknet_bn.inspect_cmd import suspicious_counts

CFG_DIR = Path(__file__).resolve().parent.parent / "data" / "golden" / "cfg"


def _rows(out):
    return [l for l in out.splitlines() if l[:5].strip().isdigit()]


def test_cfg_only(capsys):
    assert main(["inspect", str(CFG_DIR / "alexeyab" / "yolov4-tiny.cfg"),
                 "--dialect", "alexeyab"]) == 0
    out = capsys.readouterr().out
    ref = json.loads((CFG_DIR / "alexeyab" / "yolov4-tiny.layers.json").read_text())
    bn = [l for l in ref["layers"] if l["bn_channels"]]
    rows = [r.split() for r in _rows(out)]
    assert [int(r[0]) for r in rows] == [l["index"] for l in bn]
    assert [(int(r[3]), r[4:9]) for r in rows] == [
        (l["bn_channels"], [str(l["out_c"]), "x", str(l["out_h"]), "x", str(l["out_w"])])
        for l in bn]
    assert rows[0][:3] == ["0", "convolutional", "34"]
    assert (f"{len(bn)} of {len(ref['layers'])} layers carry batchnorm" in out
            and f"{ref['file_bytes']} bytes" in out)
    assert "min/mean/max" not in out


def test_with_weights_and_suspicious_values(tmp_path, capsys):
    cfg, path = CFG_DIR / "pjreddie" / "bn-zoo.cfg", CFG_DIR / "pjreddie" / "bn-zoo.weights"
    w = read_weights(cfg, path, dialect="pjreddie")
    w.layer(3).rolling_variance[:3] = [-1.0, 0.0, 0.0]
    w.layer(9).scales[0] = np.inf
    bad = tmp_path / "bad.weights"
    write_weights(cfg, bad, w)
    assert suspicious_counts(w.layer(3)) == (1, 2, 0)
    assert suspicious_counts(w.layer(9)) == (0, 0, 1)
    assert main(["inspect", str(cfg), str(bad), "--dialect", "pjreddie"]) == 0
    out = capsys.readouterr().out
    rows = {r.split()[0]: r.split() for r in _rows(out)}
    assert sorted(rows, key=int) == ["0", "1", "3", "7", "9", "11"]
    assert rows["3"][-3:] == ["1", "2", "0"] and rows["9"][-3:] == ["0", "0", "1"]
    assert rows["0"][-3:] == ["0", "0", "0"]
    assert "seen 123456789" in out
    assert "1 negative and 2 zero rolling variances, 1 non-finite values" in out


def test_hankai_reads_alexeyabs_cfg(capsys):
    cfg = str(CFG_DIR / "alexeyab" / "yolov4-tiny.cfg")
    assert main(["inspect", cfg, "--dialect", "hankai"]) == 0
    hankai = capsys.readouterr().out
    assert main(["inspect", cfg, "--dialect", "alexeyab"]) == 0
    assert _rows(hankai) == _rows(capsys.readouterr().out) and _rows(hankai)


@pytest.mark.parametrize("args,pattern", [
    (["pjreddie/bn-zoo.cfg", "alexeyab/bn-zoo.weights"], "oversized.*--dialect alexeyab"),
    (["alexeyab/yolov4-tiny.cfg"], r"yolov4-tiny\.cfg:60: \[route\] option groups="),
    (["alexeyab/bn-zoo.cfg", "alexeyab/bn-zoo.weights", "--dialect", "hankai"],
     r"bn-zoo\.cfg:16: \[batchnorm\]: dialect 'hankai' has no standalone batchnorm layer.*"
     r"pass --dialect pjreddie or --dialect alexeyab"),
])
def test_bad_input_exit_status_2(capsys, args, pattern):
    words = [str(CFG_DIR / a) if a.endswith((".cfg", ".weights")) else a for a in args]
    if "--dialect" not in words:
        words += ["--dialect", "pjreddie"]
    assert main(["inspect", *words]) == 2
    err = capsys.readouterr().err
    assert err.startswith("darknet-bn inspect: ") and err.count("\n") == 1
    assert re.search(pattern, err)


@pytest.mark.parametrize("cfg,weights,exc_text", [
    ("missing.cfg", None, r"CFG '.*missing\.cfg' does not exist$"),
    (".", None, r"CFG '.*' is a directory; pass a Darknet \.cfg file$"),
    (str(CFG_DIR / "pjreddie" / "bn-zoo.cfg"), "missing.weights",
     r"WEIGHTS '.*missing\.weights' does not exist$"),
    (str(CFG_DIR / "pjreddie" / "bn-zoo.cfg"), ".", r"WEIGHTS '.*' is a directory"),
])
def test_unreadable_files_exit_status_2(tmp_path, capsys, cfg, weights, exc_text):
    def where(name):
        return name if Path(name).is_absolute() else str(tmp_path / name)

    args = ["inspect", where(cfg)] + ([where(weights)] if weights else []) + \
        ["--dialect", "pjreddie"]
    assert main(args) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith("darknet-bn inspect: ") and captured.err.count("\n") == 1
    assert re.search(exc_text, captured.err.strip())
