"""Bad input at every public entry point: a clean error that names the argument, and
nothing modified; or, when the input is acceptable, the right bits.

The oracle below (``problems``) restates the input rules of docs/reliability.md
independently of darknet_bn._validate: for any arguments it says which are
wrong and which exception they deserve.  Two suites use it:

- a table of single corruptions (every argument of every routine times every kind
  of bad value: dtypes, lengths, ndim, strides, alignment, read-only, aliasing,
  lists, None, bad counts and strides, bad scalars and dialects), and
- hypothesis properties that throw random dtypes, lengths, layouts and dimensions
  at every routine, and random bad arguments and corrupted state at the layer.

A rejected call must raise TypeError/ValueError naming a wrong argument and leave
every array bit-identical; an accepted call must match the naive C transcription
(tests/naive.py) bit for bit.  Layer calls are checked against a twin layer.
"""
import copy
import dataclasses
import fractions
import inspect
import numbers
import os
import pickle
import re
import zlib

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

import naive
from _routines import DIMS, ROUTINES, Routine, call, random_values
from _state import (FIELD_KINDS, IN_PLACE, PRIMED_LAYERS, PRIMED_OPS, assert_layer_unchanged,
                    assert_layers_equal, assert_unchanged, fill_layer, layer_state, primed_cases,
                    run_primed_cases_in_child, snapshot)
from darknet_bn import blas, utils
from darknet_bn.batchnorm_layer import PATHS, BatchNormLayer
from darknet_bn.dialects import DIALECTS

INDEX_MAX = 2**63 - 1
COUNTS = ("N",)                         # may be 0
SUM_ARRAY = Routine("sum_array", utils.sum_array, naive.sum_array, ("a", "N"), ())
ALL = ROUTINES + [SUM_ARRAY]
BY_NAME = {r.name: r for r in ALL}
#: DARKNET_BN_EXAMPLES=1500 for a deeper hunt (60 keeps the suite fast).
SETTINGS = settings(max_examples=int(os.environ.get("DARKNET_BN_EXAMPLES", 60)), deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])


def param_names(routine):
    """The port's own parameter names (conv routines say n/size, not filters/spatial)."""
    names = list(inspect.signature(routine.port).parameters)
    return dict(zip(routine.args, names))


def arrays_of(routine):
    return [a for a in routine.args if a not in DIMS]


# --------------------------------------------------------------------------
# the oracle: the input rules, restated
# --------------------------------------------------------------------------
def _int_problem(value, minimum):
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
        return TypeError
    if not minimum <= int(value) <= INDEX_MAX:
        return ValueError
    return None


def _too_big_for_float(value):
    """A real number no float can hold (a huge int or Fraction): float() overflows."""
    try:
        float(value)
        return False
    except OverflowError:
        return True


def required_lengths(routine, v):
    """Each array's required length (and whether longer is fine), or None if the
    dimensions themselves are wrong."""
    if routine is SUM_ARRAY:
        return {"a": (int(v["N"]), True)}
    if routine.strided:
        n = int(v["N"])
        need = lambda inc: (n - 1) * int(inc) + 1 if n > 0 else 0
        out = {"X": (need(v["INCX"]), True)}
        if "Y" in routine.args:
            out["Y"] = (need(v["INCY"]), True)
        return out
    b, f, s = int(v["batch"]), int(v["filters"]), int(v["spatial"])
    return {a: ((b * f * s) if a in ("x", "delta", "output", "x_norm") else f, False)
            for a in arrays_of(routine)}


def problems(routine, v, dialect):
    """[(exception type, names that the message may name)] for arguments ``v``."""
    out = []
    pn = param_names(routine) if routine is not SUM_ARRAY else {"a": "a", "N": "n"}
    dims_ok = True
    for d in routine.args:
        if d not in DIMS or d == "ALPHA":
            continue
        exc = _int_problem(v[d], 0 if d in COUNTS else 1)
        if exc:
            out.append((exc, {pn[d]}))
            dims_ok = False
    if "ALPHA" in routine.args:
        a = v["ALPHA"]
        if isinstance(a, (bool, np.bool_)) or not isinstance(a, numbers.Real):
            out.append((TypeError, {"ALPHA"}))
        elif _too_big_for_float(a):
            out.append((ValueError, {"ALPHA"}))
    if routine.forked:
        if not isinstance(dialect, str):
            out.append((TypeError, {"dialect"}))
        elif dialect.lower() not in DIALECTS:
            out.append((ValueError, {"dialect"}))
    need = required_lengths(routine, v) if dims_ok else {}
    good_arrays = []
    for a in arrays_of(routine):
        arr, name = v[a], pn[a]
        if not isinstance(arr, np.ndarray) or isinstance(arr, np.ma.MaskedArray) \
                or arr.dtype != np.dtype(np.float32):
            out.append((TypeError, {name}))
        elif arr.ndim != 1 or not arr.flags.c_contiguous or not arr.flags.aligned:
            out.append((ValueError, {name}))
        elif a in routine.writes and not arr.flags.writeable:
            out.append((ValueError, {name}))
        elif a in need and ((arr.size < need[a][0]) if need[a][1] else (arr.size != need[a][0])):
            dim_names = {pn[d] for d in routine.args if d in DIMS and d != "ALPHA"}
            out.append((ValueError, {name} | dim_names | {"INCX", "INCY"}))
        else:
            good_arrays.append(a)
    if dims_ok and routine.name == "variance_cpu" and int(v["batch"]) * int(v["spatial"]) < 2:
        out.append((ValueError, {"batch", "spatial"}))
    for w in routine.writes:
        for a in good_arrays:
            if a != w and w in good_arrays and np.may_share_memory(v[w], v[a]):
                out.append((ValueError, {pn[w], pn[a]}))
    return out


def canonical(routine, v, dialect):
    """The same call with plain Python/float32 values, for the naive reference."""
    c = {}
    for k, x in v.items():
        if isinstance(x, np.ndarray):
            c[k] = np.array(x, dtype=np.float32, copy=True)
        elif k == "ALPHA":
            with np.errstate(over="ignore"):        # 10**39: inf, as the C's conversion
                c[k] = np.float32(x)
        elif k in DIMS:
            c[k] = int(x)
        else:
            c[k] = x
    return c, (dialect.lower() if isinstance(dialect, str) else dialect)


def run_port(routine, v, dialect):
    args = [v[a] for a in routine.args]
    if routine.forked:
        return routine.port(*args, dialect=dialect)
    return routine.port(*args)


def check_call(routine, v, dialect, label=""):
    """The property: clean rejection with nothing modified, or naive's bits."""
    expected = problems(routine, v, dialect)
    before = snapshot(v)
    if expected:
        types = tuple({e for e, _ in expected})
        with pytest.raises(types) as info:
            run_port(routine, v, dialect)
        msg = str(info.value)
        names = set().union(*(n for _, n in expected))
        assert routine.name in msg, f"{label}: message does not name the routine: {msg}"
        assert any(re.search(rf"\b{re.escape(n)}\b", msg) for n in names), \
            f"{label}: message names none of {sorted(names)}: {msg}"
        assert_unchanged(v, before, f"{label} (rejected: {msg})")
        return "rejected"
    ref, ref_dialect = canonical(routine, v, dialect)
    got = run_port(routine, v, dialect)
    with np.errstate(all="ignore"):
        want = (routine.naive(ref["a"], ref["N"]) if routine is SUM_ARRAY
                else call(routine, routine.naive, ref, ref_dialect))
    if routine is SUM_ARRAY:
        assert np.float32(got).view(np.int32) == np.float32(want).view(np.int32), label
    for a in arrays_of(routine):
        assert np.array_equal(np.asarray(v[a], np.float32).view(np.int32),
                              ref[a].view(np.int32)), f"{label}: {a} differs from naive"
    return "accepted"


def valid_values(routine, rng, batch=2, filters=3, spatial=4, N=5, INCX=2, INCY=1):
    if routine is SUM_ARRAY:
        return {"a": rng.standard_normal(N + 1).astype(np.float32), "N": N}
    return random_values(routine, rng, batch, filters, spatial, N=N, INCX=INCX, INCY=INCY)


# --------------------------------------------------------------------------
# single corruptions: one table, every argument of every routine
# --------------------------------------------------------------------------
def _misaligned(a):
    raw = np.zeros(a.nbytes + 1, np.uint8)
    out = raw[1:].view(np.float32) if a.size else raw[1:1].view(np.float32)
    out[:] = a
    return out


def _readonly(a):
    a = a.copy()
    a.flags.writeable = False
    return a


ARRAY_KINDS = {
    "float64": lambda a: a.astype(np.float64),
    "float16": lambda a: a.astype(np.float16),
    "int32": lambda a: a.astype(np.int32),
    "int64": lambda a: a.astype(np.int64),
    "bool": lambda a: a.astype(bool),
    "complex64": lambda a: a.astype(np.complex64),
    "object": lambda a: a.astype(object),
    "big-endian": lambda a: a.astype(">f4"),
    "list": lambda a: a.tolist(),
    "tuple": lambda a: tuple(a.tolist()),
    "None": lambda a: None,
    "scalar": lambda a: 1.0,
    "masked": lambda a: np.ma.masked_array(a, mask=np.zeros(a.size, bool)),
    "short": lambda a: a[:-1].copy(),
    "long": lambda a: np.append(a, np.float32(7)),
    "2-D row": lambda a: a.reshape(1, -1),
    "2-D column": lambda a: a.reshape(-1, 1),
    "0-D": lambda a: np.array(a[0] if a.size else 0, np.float32),
    "stride 2": lambda a: np.repeat(a, 2)[::2],
    "reversed": lambda a: a[::-1],
    "misaligned": _misaligned,
    "read-only": _readonly,
}
DIM_KINDS = {
    "zero": lambda d: 0, "negative": lambda d: -1, "float": lambda d: float(d),
    "str": lambda d: str(d), "None": lambda d: None, "bool": lambda d: True,
    "2**63": lambda d: 2**63, "2**70": lambda d: 2**70, "np.int32": lambda d: np.int32(d),
    "np.uint64": lambda d: np.uint64(d), "plus one": lambda d: d + 1,
    "minus one": lambda d: d - 1,
}
ALPHA_KINDS = {
    "str": "0.5", "None": None, "complex": 0.5 + 0j, "0-D array": np.array(0.5),
    "list": [0.5], "bool": True, "nan": float("nan"), "inf": float("-inf"),
    "np.float64": np.float64(0.3), "int": 2, "10**400": 10**400, "-10**400": -10**400,
    "Fraction 10**400": fractions.Fraction(10**400, 3), "10**39": 10**39,
}
DIALECT_KINDS = {"unknown": "darknet", "int": 0, "None": None, "upper": "AlexeyAB"}


def _alias_cases(routine):
    """Written buffer overlapping each other array argument (may_share_memory)."""
    out = []
    for w in routine.writes:
        for a in arrays_of(routine):
            if a != w:
                out.append((w, a))
    return out


def single_cases():
    cases = []
    for r in ALL:
        for a in arrays_of(r):
            cases += [pytest.param(r.name, "array", a, k, id=f"{r.name}-{a}-{k}")
                      for k in ARRAY_KINDS]
        for d in r.args:
            if d in DIMS and d != "ALPHA":
                cases += [pytest.param(r.name, "dim", d, k, id=f"{r.name}-{d}-{k}")
                          for k in DIM_KINDS]
        if "ALPHA" in r.args:
            cases += [pytest.param(r.name, "alpha", "ALPHA", k, id=f"{r.name}-ALPHA-{k}")
                      for k in ALPHA_KINDS]
        if r.forked:
            cases += [pytest.param(r.name, "dialect", "dialect", k, id=f"{r.name}-dialect-{k}")
                      for k in DIALECT_KINDS]
        cases += [pytest.param(r.name, "alias", (w, a), "overlap", id=f"{r.name}-alias-{w}-{a}")
                  for w, a in _alias_cases(r)]
    return cases


def corrupted(name, what, arg, kind):
    """Valid arguments for routine ``name`` with one argument made bad (or odd)."""
    routine = BY_NAME[name]
    rng = np.random.default_rng(zlib.crc32(f"{name} {arg} {kind}".encode()))
    v, dialect = valid_values(routine, rng), "pjreddie"
    if what == "array":
        v[arg] = ARRAY_KINDS[kind](v[arg])
    elif what == "dim":
        v[arg] = DIM_KINDS[kind](v[arg])
    elif what == "alpha":
        v[arg] = ALPHA_KINDS[kind]
    elif what == "dialect":
        dialect = DIALECT_KINDS[kind]
    else:                               # the written buffer overlaps another argument
        w, a = arg
        big = np.concatenate([v[a], v[w]])
        v[a], v[w] = big[:v[a].size], big[v[a].size - 1:v[a].size - 1 + v[w].size]
    return routine, v, dialect


@pytest.mark.parametrize("name,what,arg,kind", single_cases())
def test_single_corruption(name, what, arg, kind):
    routine, v, dialect = corrupted(name, what, arg, kind)
    check_call(routine, v, dialect, f"{name} {arg} {kind}")


def test_table_rejects_most_cases():
    """The table is not vacuous: most single corruptions must be rejections."""
    outcomes = {"rejected": 0, "accepted": 0}
    for p in single_cases():
        routine, v, dialect = corrupted(*p.values)
        outcomes["rejected" if problems(routine, v, dialect) else "accepted"] += 1
    print(outcomes)
    assert outcomes["rejected"] > 4 * outcomes["accepted"], outcomes


def test_variance_needs_two_values_per_channel():
    routine = BY_NAME["variance_cpu"]
    v = valid_values(routine, np.random.default_rng(1), batch=1, spatial=1)
    assert check_call(routine, v, "pjreddie", "variance batch*spatial=1") == "rejected"


def test_zero_count_is_a_noop():
    """N = 0 (Darknet and BLAS): nothing written, even with empty buffers."""
    for name in ("axpy_cpu", "scal_cpu", "copy_cpu"):
        routine = BY_NAME[name]
        v = valid_values(routine, np.random.default_rng(2), N=0)
        before = snapshot(v)
        assert check_call(routine, v, "pjreddie", name) == "accepted"
        assert_unchanged(v, before, name)


# --------------------------------------------------------------------------
# hypothesis: random dtypes, lengths, layouts, dimensions at every routine
# --------------------------------------------------------------------------
DTYPES = [np.float32] * 6 + [np.float64, np.float16, np.int32, np.int64, bool, np.complex64,
                             object, ">f4"]
LAYOUTS = ["contiguous"] * 8 + ["stride 2", "stride 3", "reversed", "misaligned", "2-D",
                                 "0-D", "list", "None", "masked"]


def _random_array(draw, rng, length, positive=False):
    """Mostly (5 in 6) a good float32 buffer; otherwise random dtype, layout, length.
    ``positive``: a variance (the naive reference's math.sqrt needs >= 0)."""
    if draw(st.integers(0, 5)):
        arr = rng.standard_normal(length + draw(st.sampled_from([0, 0, 0, 1]))).astype(np.float32)
        arr = np.abs(arr) if positive else arr
        if draw(st.integers(0, 9)) == 0:
            arr.flags.writeable = False
        return arr
    length = max(0, length + draw(st.sampled_from([0, -1, 1, -2, 2])))
    dtype = draw(st.sampled_from(DTYPES))
    layout = draw(st.sampled_from(LAYOUTS))
    base = rng.standard_normal(max(length, 1) * 3).astype(np.float32)
    base = np.abs(base) if positive else base
    if layout in ("stride 2", "stride 3"):
        step = int(layout[-1])
        arr = base[:length * step:step].astype(dtype, copy=False) if dtype == np.float32 \
            else base.astype(dtype)[:length * step:step]
    elif layout == "reversed":
        arr = base[:length].astype(dtype)[::-1]
    elif layout == "misaligned":
        arr = _misaligned(base[:length]) if dtype == np.float32 else base[:length].astype(dtype)
    else:
        arr = base[:length].astype(dtype)
    if layout == "2-D":
        arr = arr.reshape(1, -1)
    elif layout == "0-D":
        arr = np.array(arr[0] if arr.size else 0, dtype)
    elif layout == "list":
        return arr.tolist()
    elif layout == "None":
        return None
    elif layout == "masked":
        arr = np.ma.masked_array(arr)
    if draw(st.integers(0, 9)) == 0:
        arr.flags.writeable = False
    return arr


DIM_VALUES = st.one_of(*[st.integers(1, 4)] * 5,
                       st.sampled_from([0, -1, 2.0, None, True, "2", np.int32(2), 2**63]))


@st.composite
def routine_calls(draw):
    routine = draw(st.sampled_from(ALL))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    v = {}
    for d in routine.args:
        if d == "ALPHA":
            v[d] = draw(st.one_of(*[st.floats(-4, 4, width=32)] * 5, st.sampled_from(
                [float("nan"), float("inf"), "1", None, 1j])))
        elif d in DIMS:
            v[d] = draw(st.one_of(*[st.integers(0, 6)] * 5, DIM_VALUES) if d in COUNTS
                        else DIM_VALUES)
    ok = {d: v[d] for d in v if d != "ALPHA" and _int_problem(v[d], 0) is None}
    lengths = {}
    if len(ok) == len([d for d in routine.args if d in DIMS and d != "ALPHA"]):
        lengths = {a: n for a, (n, _) in required_lengths(routine, v).items()
                   if 0 <= n <= 10_000}
    for a in arrays_of(routine):
        v[a] = _random_array(draw, rng, lengths.get(a, draw(st.integers(0, 30))),
                             positive=a == "variance")
    dialect = draw(st.sampled_from(["pjreddie", "alexeyab", "ALEXEYAB"] * 2 + ["bogus", None]))
    return routine, v, dialect


@SETTINGS
@given(routine_calls())
def test_random_routine_calls(call_):
    routine, v, dialect = call_
    event(check_call(routine, v, dialect, f"{routine.name} {dialect}"))


# --------------------------------------------------------------------------
# the layer: constructor, forward, backward, update
# --------------------------------------------------------------------------
CTOR_BAD = [
    (dict(batch=0), ValueError, "batch"), (dict(batch=-2), ValueError, "batch"),
    (dict(w=0), ValueError, "w"), (dict(h=2.0), TypeError, "h"), (dict(c=0), ValueError, "c"),
    (dict(c="3"), TypeError, "c"), (dict(c=None), TypeError, "c"),
    (dict(batch=True), TypeError, "batch"), (dict(c=2**63), ValueError, "c"),
    (dict(batch=2**40, w=2**20, h=2**20, c=2**20), ValueError, "batch"),
    (dict(dialect="darknet"), ValueError, "dialect"), (dict(dialect=None), TypeError, "dialect"),
    (dict(dialect=1), TypeError, "dialect"), (dict(layer_type="conv"), ValueError, "layer_type"),
    (dict(layer_type=["batchnorm"]), ValueError, "layer_type"),
    (dict(kernel="gpu"), ValueError, "kernel"), (dict(kernel=["blas"]), ValueError, "kernel"),
    (dict(dialect=dataclasses.replace(DIALECTS["pjreddie"], code=7)), ValueError, "dialect"),
]


@pytest.mark.parametrize("kwargs,exc,name", CTOR_BAD, ids=[str(k) for k, _, _ in CTOR_BAD])
def test_constructor_rejects(kwargs, exc, name):
    args = {**dict(batch=2, w=3, h=3, c=4), **kwargs}
    with pytest.raises(exc, match=rf"\b{name}\b"):
        BatchNormLayer(args.pop("batch"), args.pop("w"), args.pop("h"), args.pop("c"), **args)


def make_layer(rng, batch, c, h, w, dialect, layer_type, kernel):
    return fill_layer(BatchNormLayer(batch, w, h, c, dialect=dialect, layer_type=layer_type,
                                     kernel=kernel), rng)


def _tensor_variants(layer, rng):
    n = layer.batch * layer.outputs
    good = rng.standard_normal(n).astype(np.float32)
    shape = (layer.batch, layer.c, layer.h, layer.w)
    strided_4d = np.zeros(shape + (2,), np.float32)[..., 0]
    return {
        "flat": (good, None), "4-D": (good.reshape(shape), None),
        "read-only": (_readonly(good), None),
        "float64": (good.astype(np.float64), TypeError),
        "int32": (good.astype(np.int32), TypeError),
        "list": (good.tolist(), TypeError), "big-endian": (good.astype(">f4"), TypeError),
        "masked": (np.ma.masked_array(good), TypeError),
        "short": (good[:-1].copy(), ValueError),
        "long": (np.append(good, np.float32(1)), ValueError),
        "4-D wrong shape": (np.zeros(shape[:3] + (layer.w + 1,), np.float32), ValueError),
        "4-D non-contiguous": (strided_4d, ValueError if n > 1 else None),
        "2-D": (good.reshape(layer.batch, -1), ValueError),
        "stride 2": (np.repeat(good, 2)[::2], ValueError if n > 1 else None),
        "misaligned": (_misaligned(good), ValueError),
        "own x": (layer.x, ValueError), "own x_norm": (layer.x_norm, ValueError),
    }


LAYER_OPS = ["forward", "backward", "update"]


@st.composite
def layer_calls(draw):
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    dims = [draw(st.integers(1, 3)) for _ in range(4)]
    layer = make_layer(rng, *dims, draw(st.sampled_from(sorted(DIALECTS))),
                       draw(st.sampled_from(["batchnorm", "convolutional"])),
                       draw(st.sampled_from(sorted(PATHS))))
    op = draw(st.sampled_from(LAYER_OPS))
    train = draw(st.sampled_from([True, False, 1, 0, np.bool_(True)] * 3 + [2, "yes", None, 1.0]))
    kwargs, expect = {}, set()
    if train not in (True, False, 1, 0) or isinstance(train, float):
        expect.add((TypeError, "train"))
    elif train and layer.batch * layer.h * layer.w == 1 and op != "update":
        expect.add((ValueError, "batch"))
    variants = _tensor_variants(layer, rng)
    if op in ("forward", "backward"):
        arg = "input" if op == "forward" else "delta"
        kind = draw(st.sampled_from(["flat", "4-D", "read-only", "None"] * 5 + sorted(variants)))
        if kind == "None":
            kwargs[arg] = None
            if op == "forward" and layer.type == "batchnorm":
                expect.add((ValueError, "input"))
        else:
            kwargs[arg], exc = variants[kind]
            if exc:
                expect.add((exc, arg))
        kwargs["train"] = train
        if op == "backward" and draw(st.booleans()):
            kind = draw(st.sampled_from(["flat"] * 10 + sorted(variants)))
            nd, exc = _tensor_variants(layer, rng)[kind]     # fresh arrays: no accidental alias
            if kind == "read-only":
                exc = ValueError
            if kind == "4-D":
                exc = ValueError
            if layer.type != "batchnorm":
                exc = ValueError
            kwargs["net_delta"] = nd
            if exc:
                expect.add((exc, "net_delta"))
    else:
        expect.discard((TypeError, "train"))
        for name in ("learning_rate", "momentum", "decay"):
            kwargs[name] = draw(st.one_of(*[st.floats(-1, 1, width=32)] * 8, st.sampled_from(
                [float("nan"), "0.1", None, 1j, np.array(0.1), 10**400, -10**309])))
            if isinstance(kwargs[name], int):
                expect.add((ValueError, name))
            elif not isinstance(kwargs[name], float):
                expect.add((TypeError, name))
        kwargs["batch"] = draw(st.sampled_from([None, 4, np.int64(8)] * 3 + [0, -1, 2.0, 2**70]))
        if _int_problem(kwargs["batch"], 1) and kwargs["batch"] is not None:
            expect.add((_int_problem(kwargs["batch"], 1), "batch"))
    corrupt = draw(st.sampled_from([None] * 20
                                   + ["short", "float64", "read-only", "alias", "dims"]))
    return layer, op, kwargs, expect, corrupt, draw(st.sampled_from(
        ["mean", "scales", "output", "x_norm", "rolling_variance"]))


def _corrupt_state(layer, how, name):
    """A user assigning a wrong buffer or field (as Darknet's struct would allow)."""
    buf = getattr(layer, name)
    if how == "short":
        setattr(layer, name, buf[:-1].copy())
    elif how == "float64":
        setattr(layer, name, buf.astype(np.float64))
    elif how == "read-only":
        buf.flags.writeable = False
    elif how == "alias":
        other = "variance" if name != "variance" else "mean"
        big = np.concatenate([buf, getattr(layer, other)])
        setattr(layer, name, big[:buf.size])
        setattr(layer, other, big[buf.size - 1:buf.size - 1 + getattr(layer, other).size])
    elif how == "dims":
        layer.out_c += 1
    return {(ValueError if how != "float64" else TypeError, name if how != "dims" else "out_c")}


@SETTINGS
@given(layer_calls())
def test_random_layer_calls(case):
    layer, op, kwargs, expect, corrupt, state_name = case
    if corrupt and not (corrupt == "alias" and getattr(layer, state_name).size < 1):
        expect |= _corrupt_state(layer, corrupt, state_name)
    twin = copy.deepcopy(layer)
    before = layer_state(layer)
    # (a pjreddie [batchnorm] update is a no-op, but it still rejects a corrupted state)
    method = getattr(layer, op)
    if expect:
        with pytest.raises(tuple({e for e, _ in expect})) as info:
            method(**kwargs)
        msg = str(info.value)
        names = {n for _, n in expect}
        assert any(re.search(rf"\b{re.escape(n)}\b", msg) for n in names), \
            f"{op}: message names none of {sorted(names)}: {msg}"
        assert_layer_unchanged(layer, before, f"{op} rejected ({msg})")
        event("rejected")
        return
    event("accepted")
    result = method(**kwargs)
    # the twin gets the canonical form of the same arguments
    canon = {k: (np.array(v, np.float32).reshape(-1) if isinstance(v, np.ndarray) and k in
                 ("input", "delta") and not _is_own(layer, v) else v) for k, v in kwargs.items()}
    if "net_delta" in canon and canon["net_delta"] is not None:
        canon["net_delta"] = twin.net_delta * 0
    for k in ("input", "delta"):
        if k in canon and _is_own(layer, kwargs[k]):
            canon[k] = getattr(twin, _own_name(layer, kwargs[k]))
    twin_result = getattr(twin, op)(**canon)
    assert_layers_equal(layer, twin, f"{op} accepted")
    if isinstance(result, np.ndarray):
        assert np.array_equal(result.view(np.int32), twin_result.view(np.int32))


def _own_name(layer, arr):
    for n in ("output", "delta", "net_delta"):
        if arr is not None and getattr(layer, n, None) is arr:
            return n
    return None


def _is_own(layer, arr):
    return _own_name(layer, arr) is not None


def test_forward_own_output_is_accepted():
    """Passing the layer's own output (a conv stage's in-place data) is not aliasing."""
    rng = np.random.default_rng(3)
    layer = make_layer(rng, 2, 3, 2, 2, "pjreddie", "convolutional", "blas")
    twin = copy.deepcopy(layer)
    layer.forward(layer.output)
    twin.forward(None)
    assert_layers_equal(layer, twin)


@pytest.mark.parametrize("how", ["short", "float64", "read-only", "alias", "dims", "list"])
@pytest.mark.parametrize("op", LAYER_OPS)
def test_corrupted_state_is_caught(how, op):
    """A user-assigned wrong buffer: a clean error instead of an out-of-bounds kernel."""
    rng = np.random.default_rng(4)
    layer = make_layer(rng, 2, 3, 2, 2, "alexeyab", "batchnorm", "blas")
    if how == "list":
        layer.scales = layer.scales.tolist()
        exc = TypeError
    else:
        (exc, _), = _corrupt_state(layer, how, "scales")
    before = layer_state(layer) if how != "list" else None
    args = {"forward": (rng.standard_normal(24).astype(np.float32),),
            "backward": (rng.standard_normal(24).astype(np.float32),),
            "update": (0.1, 0.9, 0.0)}[op]
    with pytest.raises(exc, match=r"scales|out_c|variance"):
        getattr(layer, op)(*args)
    if before is not None:
        assert_layer_unchanged(layer, before, f"{op} with {how} scales")


# --------------------------------------------------------------------------
# a layer corrupted after use (the cached state check must notice)
# --------------------------------------------------------------------------
@pytest.fixture(scope="module")
def primed_results():
    """Every primed case, run in child processes (a crash fails only its own case)."""
    return run_primed_cases_in_child(primed_cases(sorted(PATHS)))


def _primed_failures(results, kernel, op, kind):
    exc_name = (IN_PLACE[kind][1] if kind in IN_PLACE else FIELD_KINDS[kind][2]).__name__
    failures = []
    for case, got in results.items():
        k, lname, o, target, kd = case
        if (k, o, kd) != (kernel, op, kind):
            continue
        named = rf"layer\.{target}\b" if kind in IN_PLACE else re.escape(FIELD_KINDS[kind][3])
        if got["exc"] != exc_name or not re.search(named, got["msg"]) or got["changed"]:
            failures.append(f"{lname} {target}: raised {got['exc']} ({got['msg'][:300]}); "
                            f"modified {got['changed']}")
    return failures


@pytest.mark.parametrize("kernel", sorted(PATHS))
@pytest.mark.parametrize("op", PRIMED_OPS)
@pytest.mark.parametrize("kind", sorted(IN_PLACE))
def test_buffer_mutated_in_place_after_use(primed_results, kernel, op, kind):
    """Use a layer (the state check caches its result), then reshape, re-type, resize,
    restride or freeze one of its buffers in place (the same array object): every
    operation raises a clean error naming that buffer, and no buffer is modified.
    (Before the fix these reached the kernels: heap corruption, segfaults, silent
    int32 buffers.)  Every buffer of both PRIMED_LAYERS is tried."""
    assert not _primed_failures(primed_results, kernel, op, kind)


@pytest.mark.parametrize("kernel", sorted(PATHS))
@pytest.mark.parametrize("op", PRIMED_OPS)
@pytest.mark.parametrize("kind", sorted(FIELD_KINDS))
def test_field_reassigned_after_use(primed_results, kernel, op, kind):
    """Use a layer, then reassign a field (dialect, kernel, type, a dimension) or a
    buffer: a clean error naming it, raised before anything is written."""
    assert not _primed_failures(primed_results, kernel, op, kind)


def test_primed_cases_cover_everything(primed_results):
    assert len(primed_results) == len(primed_cases(sorted(PATHS)))
    assert set(PRIMED_LAYERS) == {c[1] for c in primed_results}


@pytest.mark.parametrize("kernel", sorted(PATHS))
def test_copies_of_a_used_layer_are_checked_afresh(kernel):
    """The cached check records buffer addresses; a deepcopy or an unpickled layer
    does not inherit it: they work, and their own corruption is still caught."""
    rng = np.random.default_rng(9)
    layer = make_layer(rng, 2, 3, 2, 2, "alexeyab", "batchnorm", kernel)
    x = rng.standard_normal(24).astype(np.float32)
    layer.forward(x)
    for twin in (copy.deepcopy(layer), pickle.loads(pickle.dumps(layer))):
        assert_layers_equal(twin, layer)
        twin.forward(x + 1)
        with pytest.raises(ValueError, match=r"\binput\b.*layer\.x\b"):
            twin.forward(twin.x)             # its own buffer: aliasing, caught on the twin
        twin.mean.shape = (1, 3)
        before = layer_state(twin)
        with pytest.raises(ValueError, match=r"layer\.mean"):
            twin.forward(x)
        assert_layer_unchanged(twin, before)
    layer.forward(x + 1)                     # the original is untouched by its copies


def test_aliasing_input_is_caught_after_use():
    """The cached buffer addresses find an input overlapping any own buffer: the same
    start, an overlap of its start, its end, or an input starting inside a buffer."""
    rng = np.random.default_rng(10)
    layer = make_layer(rng, 2, 3, 2, 2, "pjreddie", "convolutional", "blas")
    layer.forward(rng.standard_normal(24).astype(np.float32))
    big, whole, out = (np.zeros(n, np.float32) for n in (72, 30, 25))
    layer.x_norm, layer.mean, layer.output = big[24:48], whole[:3], out[:24]
    layer.forward(layer.output)              # the output itself: in place, accepted
    layer.forward(big[:24])                  # just before x_norm: accepted
    layer.forward(big[48:])                  # just after it: accepted
    for name, arr in [("x", layer.x), ("x_norm", big[12:36]), ("x_norm", big[36:60]),
                      ("x_norm", big[24:48]), ("mean", whole[2:26]), ("output", out[1:])]:
        before = layer_state(layer)
        with pytest.raises(ValueError, match=rf"\binput\b.*layer\.{name}\b"):
            layer.forward(arr)
        assert_layer_unchanged(layer, before)


@pytest.mark.parametrize("value", [10**400, -10**400, fractions.Fraction(10**400, 7)])
@pytest.mark.parametrize("arg", ["learning_rate", "momentum", "decay"])
def test_update_scalar_too_large_for_a_float(value, arg):
    rng = np.random.default_rng(11)
    layer = make_layer(rng, 2, 3, 2, 2, "alexeyab", "convolutional", "blas")
    kwargs = {"learning_rate": 0.1, "momentum": 0.9, "decay": 0.0005, arg: value}
    before = layer_state(layer)
    with pytest.raises(ValueError, match=rf"BatchNormLayer\.update: {arg} = .*too large"):
        layer.update(**kwargs)
    assert_layer_unchanged(layer, before)


def test_axpy_alpha_too_large_for_a_float():
    x, y = np.ones(3, np.float32), np.ones(3, np.float32)
    with pytest.raises(ValueError, match=r"axpy_cpu: ALPHA = 1000.*digits.*too large"):
        blas.axpy_cpu(3, 10**400, x, 1, y, 1)
    assert np.array_equal(y, np.ones(3, np.float32))


def test_pjreddie_standalone_update_still_checks_the_state():
    """Its update is a no-op, but a broken layer is reported, not silently accepted."""
    rng = np.random.default_rng(12)
    layer = make_layer(rng, 2, 3, 2, 2, "pjreddie", "batchnorm", "blas")
    assert layer.update(0.1, 0.9, 0.0) is False
    layer.dialect = "pjreddie"
    with pytest.raises(TypeError, match=r"layer\.dialect"):
        layer.update(0.1, 0.9, 0.0)
    assert "pjreddie" in repr(layer)         # repr still works on a broken layer


# --------------------------------------------------------------------------
# the command line
# --------------------------------------------------------------------------
@pytest.mark.parametrize("argv", [[], ["nope"], ["demo", "--bogus"], ["demo", "extra"],
                                  ["--kernel", "blas"]])
def test_cli_argument_errors_are_usage_errors(argv, capsys):
    from darknet_bn.cli import main
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    assert "usage:" in capsys.readouterr().err


def test_cli_unknown_kernel_is_a_usage_error(capsys):
    from darknet_bn.cli import main
    with pytest.raises(SystemExit) as exc:
        main(["demo", "--quiet", "--kernel", "gpu"])
    assert exc.value.code == 2 and "gpu" in capsys.readouterr().err
