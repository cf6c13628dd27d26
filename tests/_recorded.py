"""What the shipped layer cases hold, counted from the files themselves (the manifest
and the arrays in each ``.npz``), not by the code under test."""
import json
import re
from pathlib import Path

import numpy as np

import darknet_bn

LAYER = Path(darknet_bn.__file__).resolve().parent / "data" / "layer"
#: A recorded buffer: ``step<t>_fwd_<buffer>`` or ``step<t>_bwd_<buffer>``.
RECORDED = re.compile(r"step\d+_(fwd|bwd)_\w+")


def manifest_cases():
    return json.loads((LAYER / "manifest.json").read_text())["cases"]


def recorded_buffers():
    """The number of buffers Darknet recorded over every case: what the demo compares."""
    total = 0
    for case in manifest_cases():
        with np.load(LAYER / case["file"]) as z:
            total += sum(1 for key in z.files if RECORDED.fullmatch(key))
    return total


def demo_summary():
    """The start of the demo's summary line when every buffer is bit-identical."""
    n = recorded_buffers()
    return f"{len(manifest_cases())} cases, {n}/{n} buffers bit-identical"
