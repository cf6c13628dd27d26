import os
import sys
from pathlib import Path

from hypothesis import settings

# tests/ helpers (naive.py, _routines.py, _compare.py) import each other by name.
sys.path.insert(0, str(Path(__file__).resolve().parent))

# Hypothesis draws the same examples on every run ("derandomize"): a failure shows
# up again on the next run, and the falsifying example (with its seed) is printed.
# DARKNET_BN_HYPOTHESIS=explore draws fresh random examples for a deeper hunt.
settings.register_profile("deterministic", derandomize=True, database=None)
settings.register_profile("explore")
settings.load_profile(os.environ.get("DARKNET_BN_HYPOTHESIS", "deterministic"))
