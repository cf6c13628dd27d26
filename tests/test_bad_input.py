"""Bad input at every public entry point: a clean error that names the routine, the
argument and the problem, with nothing modified; or, for odd but valid input, the
naive C transcription's bits (tests/naive.py).

The routine cases come from one declarative table: every argument of every routine
in tests/_routines.py times every kind of value in ``ARRAY_KINDS``, ``DIM_KINDS``,
``ALPHA_KINDS`` and ``DIALECT_KINDS``, each kind stating the exception it deserves
(None: accepted) and a word its message must contain.  The layer's cases follow
the same pattern (``LAYER_CASES``), and its buffers are shown to be out of
reach: views handed out, copies taken in, dimensions read-only.
"""
import copy
import dataclasses
import fractions
import inspect
import pickle
import re
import zlib

import numpy as np
import pytest

import naive
from _routines import DIMS, ROUTINES, Routine, call, random_values
from _state import (assert_layer_unchanged, assert_layers_equal, assert_unchanged, fill_layer,
                    layer_state, same_bits, snapshot)
from darknet_bn import backward_batchnorm_layer, blas, forward_batchnorm_layer, utils
from darknet_bn.batchnorm_layer import DIM_FIELDS, FIELDS, PATHS, BatchNormLayer
from darknet_bn.dialects import DIALECTS, get_dialect

SUM_ARRAY = Routine("sum_array", utils.sum_array, naive.sum_array, ("a", "N"), ())
ALL = ROUTINES + [SUM_ARRAY]
BY_NAME = {r.name: r for r in ALL}
KERNELS = sorted(PATHS)


def param_names(routine):
    """The port's own parameter names (conv routines say n/size, not filters/spatial)."""
    return dict(zip(routine.args, inspect.signature(routine.port).parameters))


def arrays_of(routine):
    return [a for a in routine.args if a not in DIMS]


def valid_values(routine, rng):
    """Valid arguments, every buffer of exactly the length the routine needs."""
    if routine is SUM_ARRAY:
        return {"a": rng.standard_normal(5).astype(np.float32), "N": 5}
    v = random_values(routine, rng, 2, 3, 4, N=5, INCX=2, INCY=1)
    for name, inc in (("X", "INCX"), ("Y", "INCY")):
        if name in v:
            v[name] = v[name][:(v["N"] - 1) * v[inc] + 1].copy()
    return v


# --------------------------------------------------------------------------
# the table: kind -> (make the value, outcome); an outcome is (exception, word in
# the message), (None, "") for an accepted value, or {role: outcome} when it
# depends on the argument's role (see ``roles``)
# --------------------------------------------------------------------------
def _misaligned(a):
    raw = np.zeros(a.nbytes + 1, np.uint8)
    out = raw[1:].view(np.float32)
    out[:] = a
    return out


def _readonly(a):
    a = a.copy()
    a.flags.writeable = False
    return a


ACCEPTED = (None, "")
ARRAY_KINDS = {
    "float64": (lambda a: a.astype(np.float64), (TypeError, "float32")),
    "float16": (lambda a: a.astype(np.float16), (TypeError, "float32")),
    "int32": (lambda a: a.astype(np.int32), (TypeError, "float32")),
    "bool": (lambda a: a.astype(bool), (TypeError, "float32")),
    "complex64": (lambda a: a.astype(np.complex64), (TypeError, "float32")),
    "object": (lambda a: a.astype(object), (TypeError, "float32")),
    "big-endian": (lambda a: a.astype(">f4"), (TypeError, "native byte order")),
    "list": (lambda a: a.tolist(), (TypeError, "numpy.ndarray")),
    "tuple": (lambda a: tuple(a.tolist()), (TypeError, "numpy.ndarray")),
    "None": (lambda a: None, (TypeError, "numpy.ndarray")),
    "scalar": (lambda a: 1.0, (TypeError, "numpy.ndarray")),
    "masked": (lambda a: np.ma.masked_array(a, mask=np.zeros(a.size, bool)),
               (TypeError, "masked")),
    "short": (lambda a: a[:-1].copy(), (ValueError, "elements")),
    "long": (lambda a: np.append(a, np.float32(7)),
             {"strided": ACCEPTED, "exact": (ValueError, "elements")}),
    "2-D row": (lambda a: a.reshape(1, -1), (ValueError, "1-D")),
    "2-D column": (lambda a: a.reshape(-1, 1), (ValueError, "1-D")),
    "0-D": (lambda a: np.array(a[0], np.float32), (ValueError, "1-D")),
    "stride 2": (lambda a: np.repeat(a, 2)[::2], (ValueError, "contiguous")),
    "reversed": (lambda a: a[::-1], (ValueError, "contiguous")),
    "misaligned": (_misaligned, (ValueError, "contiguous")),
    "read-only": (_readonly, {"written": (ValueError, "read-only"), "read": ACCEPTED}),
}
DIM_KINDS = {
    "zero": (lambda d: 0, {"count": ACCEPTED, "size": (ValueError, ">= 1")}),
    "negative": (lambda d: -1, (ValueError, ">=")),
    "float": (float, (TypeError, "integer")),
    "str": (str, (TypeError, "integer")),
    "None": (lambda d: None, (TypeError, "integer")),
    "bool": (lambda d: True, (TypeError, "integer")),
    "2**63": (lambda d: 2**63, (ValueError, "64-bit")),
    "2**70": (lambda d: 2**70, (ValueError, "64-bit")),
    "plus one": (lambda d: d + 1, (ValueError, "elements")),
    "np.int32": (np.int32, ACCEPTED),
    "np.uint64": (np.uint64, ACCEPTED),
}
ALPHA_KINDS = {
    "str": (lambda a: "0.5", (TypeError, "real number")),
    "None": (lambda a: None, (TypeError, "real number")),
    "complex": (lambda a: 0.5 + 0j, (TypeError, "real number")),
    "0-D array": (lambda a: np.array(0.5), (TypeError, "real number")),
    "list": (lambda a: [0.5], (TypeError, "real number")),
    "bool": (lambda a: True, (TypeError, "real number")),
    "10**400": (lambda a: 10**400, (ValueError, "too large")),
    "-10**400": (lambda a: -10**400, (ValueError, "too large")),
    "Fraction 10**400": (lambda a: fractions.Fraction(10**400, 3), (ValueError, "too large")),
    "nan": (lambda a: float("nan"), ACCEPTED),
    "-inf": (lambda a: float("-inf"), ACCEPTED),
    "np.float64": (lambda a: np.float64(0.3), ACCEPTED),
    "int": (lambda a: 2, ACCEPTED),
    "10**39": (lambda a: 10**39, ACCEPTED),          # inf in float32, as the C's conversion
}
DIALECT_KINDS = {
    "unknown": (lambda d: "darknet", (ValueError, "unknown dialect")),
    "int": (lambda d: 0, (TypeError, "string")),
    "None": (lambda d: None, (TypeError, "string")),
    "custom Dialect": (lambda d: dataclasses.replace(DIALECTS["alexeyab"], code=7),
                       (ValueError, "built-in")),
    "upper case": (lambda d: "AlexeyAB", ACCEPTED),
    "Dialect": (lambda d: DIALECTS["alexeyab"], ACCEPTED),
    "equal Dialect": (lambda d: dataclasses.replace(DIALECTS["alexeyab"]), ACCEPTED),
}
KIND_TABLES = {"array": ARRAY_KINDS, "dim": DIM_KINDS, "alpha": ALPHA_KINDS,
               "dialect": DIALECT_KINDS}


def roles(routine, arg):
    return {"written" if arg in routine.writes else "read",
            "strided" if routine.strided else "exact",
            "count" if arg == "N" else "size"}


def expected(routine, what, arg, kind):
    outcome = KIND_TABLES[what][kind][1] if what != "alias" else (ValueError, "shares memory")
    if isinstance(outcome, dict):
        (outcome,) = [o for role, o in outcome.items() if role in roles(routine, arg)]
    return outcome


def table_cases():
    cases = []
    for r in ALL:
        args = {"array": arrays_of(r), "dim": [d for d in r.args if d in DIMS and d != "ALPHA"],
                "alpha": [d for d in r.args if d == "ALPHA"],
                "dialect": ["dialect"] if r.forked else []}
        for what, names in args.items():
            cases += [pytest.param(r.name, what, a, k, id=f"{r.name}-{a}-{k}")
                      for a in names for k in KIND_TABLES[what]]
        cases += [pytest.param(r.name, "alias", (w, a), "overlap", id=f"{r.name}-{w}-{a}-alias")
                  for w in r.writes for a in arrays_of(r) if a != w]
    return cases


def case_values(name, what, arg, kind, seed):
    """Valid arguments for routine ``name`` with the one argument ``arg`` of ``kind``."""
    routine = BY_NAME[name]
    v, dialect = valid_values(routine, np.random.default_rng(seed)), "pjreddie"
    if what == "dialect":
        dialect = DIALECT_KINDS[kind][0](dialect)
    elif what == "alias":                     # the written buffer overlaps another argument
        w, a = arg
        big = np.concatenate([v[a], v[w]])
        v[a], v[w] = big[:v[a].size], big[v[a].size - 1:v[a].size - 1 + v[w].size]
    else:
        v[arg] = KIND_TABLES[what][kind][0](v[arg])
    return routine, v, dialect


def run_port(routine, v, dialect):
    args = [v[a] for a in routine.args]
    return routine.port(*args, dialect=dialect) if routine.forked else routine.port(*args)


def assert_matches_naive(routine, v, dialect, context):
    """An accepted call: the port's bits equal naive's on plain (int, float32) values."""
    ref = {k: (np.array(x, np.float32) if isinstance(x, np.ndarray) else
               int(x) if k in DIMS and k != "ALPHA" else x) for k, x in v.items()}
    if "ALPHA" in ref:
        with np.errstate(over="ignore"):
            ref["ALPHA"] = np.float32(ref["ALPHA"])
    got = run_port(routine, v, dialect)
    with np.errstate(all="ignore"):
        if routine is SUM_ARRAY:
            want = routine.naive(ref["a"], ref["N"])
            assert same_bits(np.float32(got), np.float32(want)), context
        else:
            call(routine, routine.naive, ref, get_dialect(dialect).name)
    bad = [a for a in arrays_of(routine) if not same_bits(np.asarray(v[a], np.float32), ref[a])]
    assert not bad, f"{context}: differs from naive in {bad}"


@pytest.mark.parametrize("name,what,arg,kind", table_cases())
def test_routine_argument(name, what, arg, kind):
    seed = zlib.crc32(f"{name} {arg} {kind}".encode())
    routine, v, dialect = case_values(name, what, arg, kind, seed)
    context = f"{name} {arg} {kind} (seed {seed})"
    exc, word = expected(routine, what, arg, kind)
    if exc is None:
        assert_matches_naive(routine, v, dialect, context)
        return
    before = snapshot(v)
    with pytest.raises(exc) as info:
        run_port(routine, v, dialect)
    msg, names = str(info.value), ({arg} if what != "alias" else set(arg))
    pn = {**param_names(routine), "dialect": "dialect"}
    assert msg.startswith(routine.name), f"{context}: message does not name the routine: {msg}"
    assert all(re.search(rf"\b{re.escape(pn[n])}\b", msg) for n in names), \
        f"{context}: message does not name {sorted(names)}: {msg}"
    assert word in msg, f"{context}: message lacks {word!r}: {msg}"
    assert_unchanged(v, before, f"{context} (rejected: {msg})")


def test_table_is_mostly_rejections():
    """The table is not vacuous: most cases must be rejections."""
    outcomes = [expected(BY_NAME[p.values[0]], *p.values[1:])[0] for p in table_cases()]
    rejected = sum(e is not None for e in outcomes)
    assert rejected > 4 * (len(outcomes) - rejected), (rejected, len(outcomes))


def test_variance_needs_two_values_per_channel():
    routine = BY_NAME["variance_cpu"]
    v = random_values(routine, np.random.default_rng(1), 1, 3, 1)
    before = snapshot(v)
    with pytest.raises(ValueError, match=r"variance_cpu: batch\*spatial = 1 leaves one value"):
        run_port(routine, v, "pjreddie")
    assert_unchanged(v, before, "variance_cpu batch*spatial = 1")


def test_zero_count_is_a_noop():
    """N = 0 (Darknet and BLAS): nothing written, even with empty buffers."""
    for name in ("axpy_cpu", "scal_cpu", "copy_cpu"):
        routine = BY_NAME[name]
        v = random_values(routine, np.random.default_rng(2), 2, 3, 4, N=0)
        before = snapshot(v)
        run_port(routine, v, "pjreddie")
        assert_unchanged(v, before, name)


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
    # hank-ai's fork has no standalone [batchnorm] layer (the default layer_type)
    (dict(dialect="hankai"), ValueError, "layer_type"),
    (dict(dialect="hankai", layer_type="batchnorm"), ValueError, "layer_type"),
]


@pytest.mark.parametrize("kwargs,exc,name", CTOR_BAD, ids=[str(k) for k, _, _ in CTOR_BAD])
def test_constructor_rejects(kwargs, exc, name):
    args = {**dict(batch=2, w=3, h=3, c=4), **kwargs}
    with pytest.raises(exc, match=rf"\b{name}\b"):
        BatchNormLayer(args.pop("batch"), args.pop("w"), args.pop("h"), args.pop("c"), **args)


def test_constructor_accepts_a_dialect_equal_to_a_builtin_one():
    twin = dataclasses.replace(DIALECTS["alexeyab"])
    assert BatchNormLayer(2, 3, 3, 4, dialect=twin).dialect is DIALECTS["alexeyab"]


def make_layer(seed, layer_type="batchnorm", kernel="blas", dialect="pjreddie",
               batch=2, c=3, h=2, w=2):
    return fill_layer(BatchNormLayer(batch, w, h, c, dialect=dialect, layer_type=layer_type,
                                     kernel=kernel), np.random.default_rng(seed))


N = 2 * 3 * 2 * 2                             # make_layer's batch*c*h*w
SHAPE = (2, 3, 2, 2)


def _tensor(seed=0):
    return np.random.default_rng(seed).standard_normal(N).astype(np.float32)


def _window(buf, k):
    """N floats of memory from element ``k`` of ``buf`` on (past its end too: the
    layer must reject it before reading anything)."""
    return np.lib.stride_tricks.as_strided(buf[k:], (N,), (4,))


#: Tensor arguments (input, delta, net_delta): kind -> (make(layer), exception, word).
TENSOR_KINDS = {
    "float64": (lambda l: _tensor().astype(np.float64), TypeError, "float32"),
    "int32": (lambda l: _tensor().astype(np.int32), TypeError, "float32"),
    "big-endian": (lambda l: _tensor().astype(">f4"), TypeError, "native byte order"),
    "list": (lambda l: _tensor().tolist(), TypeError, "numpy.ndarray"),
    "masked": (lambda l: np.ma.masked_array(_tensor()), TypeError, "masked"),
    "short": (lambda l: _tensor()[:-1].copy(), ValueError, "elements"),
    "long": (lambda l: np.append(_tensor(), np.float32(1)), ValueError, "elements"),
    "2-D": (lambda l: _tensor().reshape(2, -1), ValueError, "1-D"),
    "4-D wrong shape": (lambda l: np.zeros((2, 3, 2, 3), np.float32), ValueError, "shape"),
    "4-D non-contiguous": (lambda l: np.zeros(SHAPE + (2,), np.float32)[..., 0], ValueError,
                           "C-contiguous"),
    "stride 2": (lambda l: np.repeat(_tensor(), 2)[::2], ValueError, "contiguous"),
    "misaligned": (lambda l: _misaligned(_tensor()), ValueError, "contiguous"),
    "layer.x": (lambda l: l.x, ValueError, "layer.x"),
    "inside layer.output": (lambda l: _window(l.output, 1), ValueError, "layer.output"),
}
TRAIN_KINDS = {
    "missing": ({}, "train=True or train=False"),
    "None": ({"train": None}, "train=True or train=False"),
    "2": ({"train": 2}, "True/False"),
    "'yes'": ({"train": "yes"}, "True/False"),
    "1.0": ({"train": 1.0}, "True/False"),
}
SCALAR_KINDS = {
    "str": ("0.1", TypeError, "real number"), "None": (None, TypeError, "real number"),
    "complex": (1j, TypeError, "real number"), "0-D array": (np.array(0.1), TypeError,
                                                             "real number"),
    "10**400": (10**400, ValueError, "too large"),
    "Fraction": (fractions.Fraction(10**400, 7), ValueError, "too large"),
}


def _layer_cases():
    """(id, layer_type, op, kwargs(layer), exception, word, argument named)."""
    cases = []
    for lt in ("batchnorm", "convolutional"):
        for kind, (make, exc, word) in TENSOR_KINDS.items():
            cases.append((f"{lt}-forward-input-{kind}", lt, "forward",
                          lambda l, make=make: {"input": make(l), "train": True}, exc, word,
                          "input"))
            cases.append((f"{lt}-backward-delta-{kind}", lt, "backward",
                          lambda l, make=make: {"delta": make(l), "train": True}, exc, word,
                          "delta"))
        for kind, (kwargs, word) in TRAIN_KINDS.items():
            for op, arg in (("forward", "input"), ("backward", "delta")):
                cases.append((f"{lt}-{op}-train-{kind}", lt, op,
                              lambda l, kwargs=kwargs, arg=arg: {arg: _tensor(), **kwargs},
                              TypeError, word, "train"))
        for arg in ("learning_rate", "momentum", "decay"):
            for kind, (value, exc, word) in SCALAR_KINDS.items():
                cases.append((f"{lt}-update-{arg}-{kind}", lt, "update",
                              lambda l, arg=arg, value=value: {
                                  "learning_rate": 0.1, "momentum": 0.9, "decay": 0.0,
                                  arg: value}, exc, word, arg))
        for kind, value, exc, word in [("0", 0, ValueError, ">= 1"),
                                       ("2.0", 2.0, TypeError, "integer")]:
            cases.append((f"{lt}-update-batch-{kind}", lt, "update",
                          lambda l, value=value: {"learning_rate": 0.1, "momentum": 0.9,
                                                  "decay": 0.0, "batch": value},
                          exc, word, "batch"))
    for kind, make, exc, word in [
            ("read-only", lambda l: _readonly(_tensor()), ValueError, "read-only"),
            ("short", lambda l: _tensor()[:-1].copy(), ValueError, "elements"),
            ("float64", lambda l: _tensor().astype(np.float64), TypeError, "float32"),
            ("layer.x_norm", lambda l: l.x_norm, ValueError, "layer.x_norm"),
            ("inside layer.net_delta", lambda l: _window(l.net_delta, 1), ValueError,
             "layer.net_delta")]:
        cases.append((f"batchnorm-backward-net_delta-{kind}", "batchnorm", "backward",
                      lambda l, make=make: {"delta": _tensor(1), "train": True,
                                            "net_delta": make(l)}, exc, word, "net_delta"))
    big = lambda: np.zeros(2 * N, np.float32)
    cases += [
        ("batchnorm-backward-net_delta-aliases-delta", "batchnorm", "backward",
         lambda l, b=big(): {"delta": b[:N], "net_delta": b[N - 1:2 * N - 1], "train": True},
         ValueError, "shares memory", "net_delta"),
        ("convolutional-backward-net_delta", "convolutional", "backward",
         lambda l: {"delta": _tensor(), "net_delta": _tensor(1), "train": True},
         ValueError, "only for", "net_delta"),
        ("batchnorm-forward-input-None", "batchnorm", "forward",
         lambda l: {"input": None, "train": True}, ValueError, "needs its input", "input"),
    ]
    return cases


LAYER_CASES = _layer_cases()


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("case", LAYER_CASES, ids=[c[0] for c in LAYER_CASES])
def test_layer_argument(case, kernel):
    name, layer_type, op, kwargs, exc, word, arg = case
    layer = make_layer(5, layer_type, kernel)
    kwargs = kwargs(layer)
    before = layer_state(layer)
    with pytest.raises(exc) as info:
        getattr(layer, op)(**kwargs)
    msg = str(info.value)
    assert msg.startswith(f"BatchNormLayer.{op}"), msg
    assert re.search(rf"\b{arg}\b", msg) and word in msg, f"{name}: {msg}"
    assert_layer_unchanged(layer, before, f"{name} ({msg})")


@pytest.mark.parametrize("op", ["forward", "backward"])
def test_train_is_a_required_keyword(op):
    """A call without train, or with train passed positionally, says how to pass it;
    forward_batchnorm_layer/backward_batchnorm_layer too."""
    layer = make_layer(6, "convolutional")
    before = layer_state(layer)
    method = getattr(layer, op)
    function = forward_batchnorm_layer if op == "forward" else backward_batchnorm_layer
    for call_ in (lambda: method(_tensor()), lambda: method(_tensor(), True),
                  lambda: method(None, False), lambda: method(),
                  lambda: function(layer, _tensor()), lambda: function(layer, _tensor(), 1)):
        with pytest.raises(TypeError, match=r"pass train=True or train=False as a keyword"):
            call_()
    assert_layer_unchanged(layer, before, op)


@pytest.mark.parametrize("op", ["forward", "backward"])
def test_training_with_one_value_per_channel_is_rejected(op):
    layer = make_layer(7, "convolutional", batch=1, h=1, w=1)
    before = layer_state(layer)
    arg = {"forward": "input", "backward": "delta"}[op]
    with pytest.raises(ValueError, match=r"batch\*h\*w = 1 leaves one value per channel"):
        getattr(layer, op)(**{arg: np.ones(3, np.float32), "train": True})
    assert_layer_unchanged(layer, before, op)


#: Accepted odd arguments: (name, kwargs(layer), kwargs for the twin (canonical form)).
ACCEPTED_CALLS = [
    ("forward 4-D", "forward", lambda l: {"input": _tensor().reshape(SHAPE), "train": True},
     lambda l: {"input": _tensor(), "train": True}),
    ("forward read-only", "forward", lambda l: {"input": _readonly(_tensor()), "train": True},
     lambda l: {"input": _tensor(), "train": True}),
    ("forward train=1", "forward", lambda l: {"input": _tensor(), "train": 1},
     lambda l: {"input": _tensor(), "train": True}),
    ("forward np.bool_", "forward", lambda l: {"input": _tensor(), "train": np.bool_(False)},
     lambda l: {"input": _tensor(), "train": False}),
    ("forward own output", "forward", lambda l: {"input": l.output, "train": True},
     lambda l: {"input": None, "train": True}),
    ("backward own delta", "backward", lambda l: {"delta": l.delta, "train": True},
     lambda l: {"delta": None, "train": True}),
    ("backward 4-D", "backward", lambda l: {"delta": _tensor().reshape(SHAPE), "train": 0},
     lambda l: {"delta": _tensor(), "train": False}),
    ("update np.int64 batch", "update", lambda l: {"learning_rate": np.float64(0.1),
                                                   "momentum": 0.9, "decay": 0,
                                                   "batch": np.int64(8)},
     lambda l: {"learning_rate": 0.1, "momentum": 0.9, "decay": 0.0, "batch": 8}),
]


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("name,op,kwargs,canonical", ACCEPTED_CALLS,
                         ids=[c[0] for c in ACCEPTED_CALLS])
def test_layer_accepts_odd_arguments(name, op, kwargs, canonical, kernel):
    """Each gives the same bits as its canonical form on a twin layer."""
    layer = make_layer(8, "convolutional", kernel, "alexeyab")
    twin = copy.deepcopy(layer)
    got = getattr(layer, op)(**kwargs(layer))
    want = getattr(twin, op)(**canonical(twin))
    assert_layers_equal(layer, twin, name)
    assert same_bits(got, want), name


# --------------------------------------------------------------------------
# the layer's state is out of reach: views out, copies in, read-only dimensions
# --------------------------------------------------------------------------
def _run(layer):
    """forward, backward, update and an inference forward: every kernel's result."""
    out = [layer.forward(_tensor(2), train=True).copy(),
           layer.backward(_tensor(3), train=True).copy()]
    layer.update(0.1, 0.9, 0.0005)
    out.append(layer.forward(_tensor(4), train=False).copy())
    return out


def _set_strides_0(a):
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        a.strides = (0,)                 # deprecated in NumPy 2.4


#: What a user may do to an array obtained from the layer, in place.
IN_PLACE = {
    "2-D shape": lambda a: setattr(a, "shape", (1, a.size)),
    "int32 dtype": lambda a: setattr(a, "dtype", np.int32),
    "float16 dtype": lambda a: setattr(a, "dtype", np.float16),
    "big-endian dtype": lambda a: setattr(a, "dtype", np.dtype(">f4")),
    "read-only": lambda a: setattr(a.flags, "writeable", False),
    "stride 0": _set_strides_0,
    "resize": lambda a: pytest.raises(ValueError, a.resize, a.size + 1, refcheck=False),
}


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("layer_type", ["batchnorm", "convolutional"])
@pytest.mark.parametrize("kind", sorted(IN_PLACE))
def test_changing_a_buffer_obtained_from_the_layer_does_not_reach_it(kind, layer_type, kernel):
    """Reshaping, re-typing, freezing or resizing an array obtained from the layer
    (any buffer, or a returned output) changes that view only: the kernels give the
    bits of an untouched twin."""
    layer = make_layer(9, layer_type, kernel)
    twin = copy.deepcopy(layer)
    held = [getattr(layer, name) for name in FIELDS + ("net_delta",)
            if getattr(layer, name) is not None]
    held += [layer.forward(_tensor(1), train=True), layer.buffers()["scales"]]
    twin.forward(_tensor(1), train=True)
    for view in held:
        IN_PLACE[kind](view)
    assert_layers_equal(layer, twin, kind)
    for a, b in zip(_run(layer), _run(twin)):
        assert same_bits(a, b), kind
    assert_layers_equal(layer, twin, kind)


def test_values_written_in_place_reach_the_kernels():
    layer, twin = make_layer(10), make_layer(10)
    layer.scales[:] = 2
    layer.rolling_mean[...] = 0.5
    layer.buffers()["biases"][0] = 3
    twin.scales = np.full(3, 2, np.float32)
    twin.rolling_mean = np.full(3, 0.5, np.float32)
    twin.biases = np.array([3, *twin.biases[1:]], np.float32)
    assert_layers_equal(layer, twin)
    for a, b in zip(_run(layer), _run(twin)):
        assert same_bits(a, b)


def test_assigning_a_buffer_copies_it_in():
    layer = make_layer(11, "convolutional")
    w = np.arange(3, dtype=np.float32)
    x = _tensor(5).reshape(SHAPE)
    layer.scales = w
    layer.output = x
    w[:] = 9
    x[...] = 9
    assert list(layer.scales) == [0, 1, 2] and same_bits(layer.output, _tensor(5))
    layer.scales *= 2                        # read, multiply in place, assign back
    layer.x = layer.output                   # one buffer into another
    assert list(layer.scales) == [0, 2, 4] and same_bits(layer.x, layer.output)


#: Assignments of a wrong value to a buffer: (value(layer), exception, word).
BAD_ASSIGNMENTS = {
    "short": (lambda l, n: np.zeros(n - 1, np.float32), ValueError, "elements"),
    "float64": (lambda l, n: np.zeros(n), TypeError, "float32"),
    "list": (lambda l, n: [0.0] * n, TypeError, "numpy.ndarray"),
    "None": (lambda l, n: None, TypeError, "numpy.ndarray"),
    "2-D": (lambda l, n: np.zeros((1, n), np.float32), ValueError, "1-D"),
}


@pytest.mark.parametrize("name", ["scales", "rolling_variance", "output", "x_norm", "net_delta"])
@pytest.mark.parametrize("kind", sorted(BAD_ASSIGNMENTS))
def test_assigning_a_wrong_buffer_is_a_clear_error(kind, name):
    layer = make_layer(12)
    make, exc, word = BAD_ASSIGNMENTS[kind]
    before = layer_state(layer)
    with pytest.raises(exc, match=rf"BatchNormLayer\.{name}: {name}\b.*{word}"):
        setattr(layer, name, make(layer, getattr(layer, name).size))
    assert_layer_unchanged(layer, before, f"{name} = {kind}")


@pytest.mark.parametrize("name", DIM_FIELDS + ("dialect", "type"))
def test_dimensions_dialect_and_type_are_read_only(name):
    layer = make_layer(13)
    value, before = getattr(layer, name), layer_state(layer)
    for change in (lambda: setattr(layer, name, value), lambda: delattr(layer, name)):
        with pytest.raises(AttributeError, match=rf"BatchNormLayer\.{name} is fixed"):
            change()
    assert getattr(layer, name) == value
    assert_layer_unchanged(layer, before, name)


def test_buffers_cannot_be_deleted_and_conv_has_no_net_delta():
    layer = make_layer(14, "convolutional")
    with pytest.raises(AttributeError, match=r"scales cannot be deleted"):
        del layer.scales
    assert layer.net_delta is None
    with pytest.raises(ValueError, match=r"net_delta"):
        layer.net_delta = np.zeros(N, np.float32)


def test_kernel_may_be_switched_to_a_known_path_only():
    layer = make_layer(15)
    layer.kernel = "fused"
    for bad in ("gpu", None, ["blas"]):
        with pytest.raises(ValueError, match=r"BatchNormLayer\.kernel: unknown kernel"):
            layer.kernel = bad
    assert layer.kernel == "fused"


@pytest.mark.parametrize("kernel", KERNELS)
def test_copies_of_a_layer_are_independent(kernel):
    """deepcopy and pickle give a layer with the same bits and buffers of its own."""
    layer = make_layer(16, "batchnorm", kernel, "alexeyab")
    layer.forward(_tensor(), train=True)
    for twin in (copy.deepcopy(layer), pickle.loads(pickle.dumps(layer))):
        assert_layers_equal(twin, layer)
        assert repr(twin) == repr(layer)
        assert not any(np.shares_memory(getattr(twin, n), getattr(layer, n))
                       for n in FIELDS + ("net_delta",))
        with pytest.raises(ValueError, match=r"\binput\b.*layer\.x\b"):
            twin.forward(twin.x, train=True)         # its own buffer: aliasing
        twin.forward(_tensor(1), train=True)
    assert not same_bits(twin.output, layer.output)


@pytest.mark.parametrize("layer_type", ["batchnorm", "convolutional"])
def test_aliasing_input_is_caught_anywhere_in_the_layer(layer_type):
    """An input overlapping any buffer of the layer, from its start or from inside,
    is rejected, naming a buffer it overlaps (its own name for a tensor buffer); the target
    buffer itself (output for forward, delta for backward) is the in-place case."""
    layer = make_layer(17, layer_type)
    for name in FIELDS + (("net_delta",) if layer_type == "batchnorm" else ()):
        buf = getattr(layer, name)
        for k in (0, 1):
            own = rf"layer\.{name}\b" if buf.size == N else r"layer\.\w+"
            before = layer_state(layer)
            for op, arg, target in (("forward", "input", "output"),
                                    ("backward", "delta", "delta")):
                if (name, k) == (target, 0):
                    continue                             # the in-place case
                with pytest.raises(ValueError, match=rf"\b{arg}\b shares memory with {own}"):
                    getattr(layer, op)(**{arg: _window(buf, k), "train": True})
            assert_layer_unchanged(layer, before, name)


def test_backward_into_the_layers_own_net_delta_is_the_default():
    layer = make_layer(19)
    twin = copy.deepcopy(layer)
    got = layer.backward(_tensor(), train=True, net_delta=layer.net_delta)
    want = twin.backward(_tensor(), train=True)
    assert_layers_equal(layer, twin)
    assert same_bits(got, want)


def test_update_scalar_message_shows_a_huge_value_briefly():
    x, y = np.ones(3, np.float32), np.ones(3, np.float32)
    with pytest.raises(ValueError, match=r"axpy_cpu: ALPHA = 1000000.*\.\.\. is too large"):
        blas.axpy_cpu(3, 10**400, x, 1, y, 1)
    assert np.array_equal(y, np.ones(3, np.float32))


def test_pjreddie_standalone_update_is_a_noop_that_still_checks_its_arguments():
    layer = make_layer(18)
    before = layer_state(layer)
    assert layer.update(0.1, 0.9, 0.0) is False
    with pytest.raises(TypeError, match=r"learning_rate"):
        layer.update("0.1", 0.9, 0.0)
    assert_layer_unchanged(layer, before)


# --------------------------------------------------------------------------
# the command line
# --------------------------------------------------------------------------
@pytest.mark.parametrize("argv", [[], ["nope"], ["demo", "--bogus"], ["demo", "extra"],
                                  ["--kernel", "blas"], ["demo", "--quiet", "--kernel", "gpu"]])
def test_cli_argument_errors_are_usage_errors(argv, capsys):
    from darknet_bn.cli import main
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "usage:" in err and all(a in err for a in argv if a == "gpu")
