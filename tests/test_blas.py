"""darknet_bn.blas against Darknet's recorded outputs and the naive C transcription."""
import numpy as np
import pytest

from _routines import BY_NAME, FORKS, check_naive, random_values, routine_tests, routines_of
from darknet_bn import blas

ROUTINES = routines_of(blas)
EDGE_SHAPES = [(1, 1, 2), (2, 1, 1), (1, 3, 7), (5, 1, 1), (3, 7, 13), (2, 33, 1), (1, 1, 1)]


test_golden, test_matches_naive = routine_tests(blas)


# variance_cpu with one value per channel (batch*spatial == 1) is rejected instead:
# test_variance_one_value_per_channel_is_rejected.
EDGE_CASES = [(routine, shape) for routine in ROUTINES if not routine.strided
              for shape in EDGE_SHAPES
              if not (routine.name == "variance_cpu" and shape[0] * shape[2] < 2)]


@pytest.mark.parametrize("dialect", FORKS)
@pytest.mark.parametrize("routine, shape", EDGE_CASES,
                         ids=[f"{r.name}-{s}" for r, s in EDGE_CASES])
def test_edge_shapes_match_naive(routine, dialect, shape):
    batch, filters, spatial = shape
    values = random_values(routine, np.random.default_rng(7), batch, filters, spatial)
    check_naive(routine, values, dialect)


def test_variance_one_value_per_channel_is_rejected():
    x, mean, var = (np.ones(3, np.float32) for _ in range(3))
    with pytest.raises(ValueError, match="one value per channel"):
        blas.variance_cpu(x, mean, 1, 3, 1, var)
    assert np.array_equal(var, np.ones(3, np.float32))


def test_rolling_constants_are_c_float_literals():
    """scal_cpu(.99) passes a double literal to a float parameter: one rounding."""
    from darknet_bn.dialects import DIALECTS
    assert DIALECTS["pjreddie"].rolling_keep.dtype == np.float32
    assert DIALECTS["pjreddie"].rolling_keep == np.float32(0.99)
    assert DIALECTS["alexeyab"].rolling_new == np.float32(0.1)


def test_dialects_differ_in_normalize():
    """The two forks' normalize_cpu must give different bits on generic data (guards
    against a dialect flag that is silently ignored)."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal(64).astype(np.float32)
    mean = np.zeros(4, np.float32)
    var = np.full(4, 0.5, np.float32)
    a, b = x.copy(), x.copy()
    blas.normalize_cpu(a, mean, var, 2, 4, 8, dialect="pjreddie")
    blas.normalize_cpu(b, mean, var, 2, 4, 8, dialect="alexeyab")
    assert not np.array_equal(a.view(np.int32), b.view(np.int32))


def test_a_dialect_pickles_and_copies_as_the_builtin_object():
    import copy
    import pickle

    from darknet_bn.dialects import DIALECTS
    for d in DIALECTS.values():
        assert pickle.loads(pickle.dumps(d)) is d
        assert copy.deepcopy(d) is d and copy.copy(d) is d


#: The routines whose bits differ between the C forks and the C++ one (hankai): a float
#: root (normalize_cpu, mean_delta_cpu, normalize_delta_cpu) or powf (variance_delta_cpu).
CXX_ROUTINES = ("normalize_cpu", "mean_delta_cpu", "variance_delta_cpu", "normalize_delta_cpu")


@pytest.mark.parametrize("name", CXX_ROUTINES)
def test_hankai_differs_from_alexeyab(name):
    """hankai's float overloads change these routines' bits on generic data, in most
    channels (guards against a float_overloads flag that is silently ignored)."""
    seed = 11
    routine = BY_NAME[name]
    values = random_values(routine, np.random.default_rng(seed), 2, 256, 9)
    outs = {}
    for dialect in ("alexeyab", "hankai"):
        v = {k: (a.copy() if isinstance(a, np.ndarray) else a) for k, a in values.items()}
        routine.port(*[v[a] for a in routine.args], dialect=dialect)
        outs[dialect] = v[routine.writes[0]]
    differ = outs["alexeyab"].view(np.int32) != outs["hankai"].view(np.int32)
    print(f"{name}: {differ.sum()} of {differ.size} values differ (seed {seed})")
    assert differ.sum() >= differ.size // 20, f"seed {seed}"


def test_mean_and_variance_delta_default_to_the_c_forks():
    """mean_delta_cpu / variance_delta_cpu keep their behaviour without dialect=: the
    double sqrt and pow of pjreddie and alexeyab (identical in both)."""
    seed = 12
    for name in ("mean_delta_cpu", "variance_delta_cpu"):
        routine = BY_NAME[name]
        values = random_values(routine, np.random.default_rng(seed), 3, 40, 5)
        runs = []
        for kwargs in ({}, {"dialect": "pjreddie"}, {"dialect": "alexeyab"}):
            v = {k: (a.copy() if isinstance(a, np.ndarray) else a) for k, a in values.items()}
            routine.port(*[v[a] for a in routine.args], **kwargs)
            runs.append(v[routine.writes[0]].view(np.int32))
        assert all(np.array_equal(runs[0], r) for r in runs[1:]), f"{name}, seed {seed}"
