"""Darknet's recorded outputs and bitwise comparison.

The fixtures are outputs of Darknet's own C (see ``data/golden/README.md``).  The
layer cases ship inside the package (``darknet_bn/data/layer``: ``darknet-bn demo``
replays them); the single-routine cases and the Darknet files (``routines/``,
``cfg/``, ``fold/``) stay in a checkout's ``data/golden``.  ``$DARKNET_BN_DATA``
points both at another directory holding ``layer/`` and ``routines/``.

This module loads them, replays a layer case through ``BatchNormLayer``, and
compares float32 results *bitwise*: -0.0 and +0.0 differ, and a NaN must have the
same payload.  Differences are reported in units in the last place (ulp).
"""
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .batchnorm_layer import FIELDS, BatchNormLayer

ENV_VAR = "DARKNET_BN_DATA"
#: The recorded layer cases, installed with the package.
PACKAGE_DATA = Path(__file__).resolve().parent / "data"
#: routines/, cfg/ and fold/: in a checkout only (the tests read them).
CHECKOUT_DATA = Path(__file__).resolve().parent.parent / "data" / "golden"


class FixturesNotFound(FileNotFoundError):
    """A fixture directory is missing; the message says where to get it."""


def _override():
    env = os.environ.get(ENV_VAR)
    return Path(env) if env else None


def layer_dir():
    """``$DARKNET_BN_DATA/layer`` or the package's ``darknet_bn/data/layer``."""
    root = _override()
    where = root / "layer" if root else PACKAGE_DATA / "layer"
    if not (where / "manifest.json").is_file():
        fix = (f"unset {ENV_VAR} or point it at a directory holding layer/" if root else
               f"reinstall darknet_bn (its wheel ships them) or set {ENV_VAR} to a "
               "directory holding layer/")
        raise FixturesNotFound(f"Darknet's recorded layer cases not found in {where}; {fix}")
    return where


def data_dir():
    """``$DARKNET_BN_DATA`` or the checkout's ``data/golden`` (routines/, cfg/, fold/)."""
    root = _override() or CHECKOUT_DATA
    if not (root / "routines" / "manifest.json").is_file():
        raise FixturesNotFound(
            f"golden fixtures not found in {root}; routines/, cfg/ and fold/ come with a "
            f"darknet_bn checkout (data/golden): run from one or set {ENV_VAR} to a "
            "directory holding routines/")
    return root


# --------------------------------------------------------------------------
# bitwise comparison
# --------------------------------------------------------------------------
def _ordered(a):
    """float32 bit patterns mapped to int64 so that adjacent floats differ by 1
    (+0.0 -> 0, -0.0 -> -1, the smallest negative subnormal -> -2, ...)."""
    i = np.ascontiguousarray(a, dtype=np.float32).view(np.int32).astype(np.int64)
    return np.where(i < 0, np.int64(-2**31 - 1) - i, i)


def bits_equal(actual, expected):
    """True when the two float32 arrays are identical bit for bit (and in shape)."""
    a = np.ascontiguousarray(actual, dtype=np.float32)
    b = np.ascontiguousarray(expected, dtype=np.float32)
    return a.shape == b.shape and bool(np.array_equal(a.view(np.int32), b.view(np.int32)))


def ulp_diff(actual, expected):
    """``(number of elements whose bits differ, max distance in ulp)``.

    Distance is measured on the ordered integer line of float32 values, so
    +0.0 vs -0.0 is 1 ulp and a NaN against a number is a large distance.
    """
    a, b = np.asarray(actual, np.float32).ravel(), np.asarray(expected, np.float32).ravel()
    if a.shape != b.shape:
        raise ValueError(f"shapes differ: {a.shape} vs {b.shape}")
    differ = a.view(np.int32) != b.view(np.int32)
    if not differ.any():
        return 0, 0
    return int(differ.sum()), int(np.abs(_ordered(a) - _ordered(b)).max())


# --------------------------------------------------------------------------
# layer cases
# --------------------------------------------------------------------------
@dataclass(frozen=True)
class LayerCase:
    file: str
    fork: str
    layer: str
    batch: int
    c: int
    h: int
    w: int
    input_kind: str
    steps: tuple

    @property
    def name(self):
        return Path(self.file).stem

    def arrays(self, root=None):
        """The case's arrays; ``root`` is a directory holding ``layer/`` (default:
        ``layer_dir()``)."""
        with np.load(_layer_root(root) / self.file) as z:
            return {k: z[k] for k in z.files}


def _layer_root(root):
    return Path(root) / "layer" if root else layer_dir()


def layer_cases(root=None):
    """The recorded layer cases (``layer/manifest.json`` under ``root``, default
    ``layer_dir()``)."""
    manifest = json.loads((_layer_root(root) / "manifest.json").read_text())
    return [LayerCase(**{**c, "steps": tuple(c["steps"])}) for c in manifest["cases"]]


def routine_cases(root=None):
    """The single-routine cases: manifest entries plus their arrays (loaded lazily)."""
    root = Path(root or data_dir())
    return json.loads((root / "routines" / "manifest.json").read_text())["routines"]


def load_routine_arrays(entry, root=None):
    with np.load(Path(root or data_dir()) / "routines" / entry["file"]) as z:
        return {k: z[k] for k in z.files}


@dataclass
class Check:
    """One buffer after one phase of one step: what the port gave and what Darknet gave."""
    step: int
    phase: str          # "fwd" or "bwd"
    buffer: str
    actual: np.ndarray
    expected: np.ndarray

    @property
    def label(self):
        return f"step{self.step}_{self.phase}_{self.buffer}"


def replay_layer_case(case, *, kernel=None, root=None):
    """Run ``case`` through a fresh ``BatchNormLayer`` and return one ``Check`` per
    buffer per phase per step (the buffers are copied at each checkpoint)."""
    z = case.arrays(root)
    layer = BatchNormLayer(case.batch, case.w, case.h, case.c, dialect=case.fork,
                           layer_type=case.layer, kernel=kernel)
    for name in FIELDS:
        key = f"init_{name}"
        if key in z:
            getattr(layer, name)[:] = z[key]
    checks = []
    for t, mode in enumerate(case.steps):
        train = mode == "train"
        layer.forward(z[f"step{t}_input"], train=train)
        for name in FIELDS:
            key = f"step{t}_fwd_{name}"
            if key in z:
                checks.append(Check(t, "fwd", name, getattr(layer, name).copy(), z[key]))
        grad = layer.backward(z[f"step{t}_delta_in"], train=train)
        for name in FIELDS:
            key = f"step{t}_bwd_{name}"
            if key in z:
                checks.append(Check(t, "bwd", name, getattr(layer, name).copy(), z[key]))
        if f"step{t}_bwd_net_delta" in z:
            checks.append(Check(t, "bwd", "net_delta", grad.copy(), z[f"step{t}_bwd_net_delta"]))
    return checks
