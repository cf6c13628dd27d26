"""benchmarks/bench.py's PyTorch-module entry runs (a smoke test: no time is asserted)."""
import json
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/ is a package there

from benchmarks import bench  # noqa: E402
from darknet_bn import DIALECTS  # noqa: E402


def test_bench_module_entry(tmp_path, capsys):
    out = tmp_path / "bench.json"
    bench.main(["--shape", "2,16,3,5", "--shape", "8,24,1,1", "--impl", "module",
                "--impl", "nn", "--repeat", "1", "--json", str(out)])
    text = capsys.readouterr().out
    assert "DarknetBatchNorm2d vs torch.nn.BatchNorm2d" in text
    rows = json.loads(out.read_text())
    # 2 shapes x every fork x 2 modes
    assert len(rows) == 2 * len(DIALECTS) * 2
    assert all({"module", "nn"} <= set(r["min_s"]) for r in rows)
