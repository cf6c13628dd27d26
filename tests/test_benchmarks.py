"""benchmarks/: the scripts behind ``make bench`` and ``make profile`` still run.

Smoke tests on tiny shapes with one repetition: they assert that every table
is produced, never a time (benchmarks are not timed tests).  They catch a
script left behind by a change in ``darknet_bn.fused`` (which the profile
builds its per-pass kernels from) or in the layer API.
"""
import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/ is a package there

from benchmarks import bench, fork_child, profile_step  # noqa: E402


def test_bench_runs_every_implementation(tmp_path, capsys):
    out = tmp_path / "bench.json"
    bench.main(["--shape", "2,16,3,5", "--repeat", "1", "--json", str(out)])
    text = capsys.readouterr().out
    assert "fused" in text and "blas" in text and "memcpy" in text
    rows = json.loads(out.read_text())
    assert {(r["dialect"], r["mode"]) for r in rows} == {
        (d, m) for d in ("pjreddie", "alexeyab", "hankai") for m in ("train", "infer")}
    for r in rows:
        assert {"fused", "blas", "numpy", "memcpy"} <= set(r["min_s"])


@pytest.mark.slow          # its forked child compiles the serial builds of the kernels
def test_fork_child_prints_parent_and_child(tmp_path, capsys):
    pytest.importorskip("torch")
    out = tmp_path / "fork.json"
    assert fork_child.main(["--shape", "1,8,3,3", "--rounds", "1", "--repeat", "1",
                            "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "forked child:" in text and "layer train step 1x8x3x3" in text
    rows = json.loads(out.read_text())
    assert set(rows["parent_us"]) == set(rows["child_us"]) == {
        f"{what} 1x8x3x3" for what in ("module eval", "layer infer", "layer train step")}
    assert fork_child.main(["--shape", "1,8,3,3", "--rounds", "1", "--repeat", "1",
                            "--parent-only", "--json", str(out)]) == 0
    assert "child_us" not in json.loads(out.read_text())


@pytest.mark.slow
@pytest.mark.parametrize("shape", ["2,40,3,5", "8,24,1,1"])
def test_profile_prints_every_table(shape, capsys):
    profile_step.main(["--shape", shape, "--repeat", "1"])
    text = capsys.readouterr().out
    assert "blas path: Darknet's routines" in text and "fused path: kernels" in text
    if shape.endswith(",1,1"):
        assert "row kernels" in text
    else:
        assert "each pass alone" in text and "vec8 lanes" in text
