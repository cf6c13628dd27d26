import sys
from pathlib import Path

# tests/ helpers (naive.py, _routines.py, _compare.py) import each other by name.
sys.path.insert(0, str(Path(__file__).resolve().parent))
