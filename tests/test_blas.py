"""darknet_bn.blas against Darknet's recorded outputs and the naive C transcription."""
import numpy as np
import pytest

from _routines import check_naive, random_values, routine_tests, routines_of
from darknet_bn import blas

ROUTINES = routines_of(blas)
EDGE_SHAPES = [(1, 1, 2), (2, 1, 1), (1, 3, 7), (5, 1, 1), (3, 7, 13), (2, 33, 1), (1, 1, 1)]


test_golden, test_matches_naive = routine_tests(blas)


@pytest.mark.parametrize("shape", EDGE_SHAPES, ids=str)
@pytest.mark.parametrize("dialect", ["pjreddie", "alexeyab"])
@pytest.mark.parametrize("routine", [r for r in ROUTINES if not r.strided], ids=lambda r: r.name)
def test_edge_shapes_match_naive(routine, dialect, shape):
    batch, filters, spatial = shape
    if routine.name == "variance_cpu" and batch * spatial < 2:
        pytest.skip("one value per channel: variance_cpu rejects it (test_variance_one_value_per_channel_is_rejected)")
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
