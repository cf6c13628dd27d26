"""darknet_bn.blas against Darknet's recorded outputs and the naive C transcription."""
import numpy as np
import pytest

from _routines import check_naive, random_values, routine_tests, routines_of
from darknet_bn import blas

ROUTINES = routines_of(blas)
EDGE_SHAPES = [(1, 1, 2), (2, 1, 1), (1, 3, 7), (5, 1, 1), (3, 7, 13), (2, 33, 1), (1, 1, 1)]


test_golden, test_matches_naive = routine_tests(blas)


# variance_cpu with one value per channel (batch*spatial == 1) is rejected instead:
# test_variance_one_value_per_channel_is_rejected.
EDGE_CASES = [(routine, shape) for routine in ROUTINES if not routine.strided
              for shape in EDGE_SHAPES
              if not (routine.name == "variance_cpu" and shape[0] * shape[2] < 2)]


@pytest.mark.parametrize("dialect", ["pjreddie", "alexeyab"])
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
