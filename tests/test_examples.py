"""examples/darknet_round_trip.py: .cfg/.weights -> PyTorch -> one step -> .weights -> check."""
import filecmp
import importlib.util
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("onnxscript")

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "darknet_round_trip.py"
DATA = Path(__file__).resolve().parent.parent / "data" / "golden" / "cfg"


def load_example():
    spec = importlib.util.spec_from_file_location("darknet_round_trip", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("fork", ["alexeyab", "pjreddie"])
def test_round_trip_example(fork, tmp_path, capfd):
    status = load_example().main(["--dialect", fork, "--out", str(tmp_path)])
    out = capfd.readouterr().out
    assert "untouched.weights: byte-identical" in out
    assert filecmp.cmp(DATA / fork / "bn-zoo.weights", tmp_path / "untouched.weights",
                       shallow=False)
    # the step changed the weights, and the header was copied from the input
    tuned = (tmp_path / "tuned.weights").read_bytes()
    original = (DATA / fork / "bn-zoo.weights").read_bytes()
    assert len(tuned) == len(original) and tuned != original
    assert tuned[:20] == original[:20]          # version 0.2: three int32 and a 64-bit seen
    assert "6 of 6 layers within the tolerance" in out, out
    assert status == 0
