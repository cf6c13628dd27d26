"""darknet_bn.golden: the comparison primitives must see every bit."""
import numpy as np
import pytest

from _recorded import manifest_cases
from darknet_bn.golden import bits_equal, layer_cases, routine_cases, ulp_diff


def test_signed_zero_and_nan_payloads_differ():
    assert not bits_equal(np.float32([0.0]), np.float32([-0.0]))
    assert ulp_diff(np.float32([0.0]), np.float32([-0.0])) == (1, 1)
    nan_a = np.array([0x7FC00000], np.int32).view(np.float32)
    nan_b = np.array([0x7FC00001], np.int32).view(np.float32)
    assert bits_equal(nan_a, nan_a.copy()) and not bits_equal(nan_a, nan_b)


def test_ulp_distance_counts_adjacent_floats():
    a = np.float32([1.0, 1.0, -2.0])
    b = np.nextafter(a, np.float32(np.inf))
    assert ulp_diff(a, b) == (3, 1)
    assert ulp_diff(a, a) == (0, 0)
    c = np.float32([1.0]) + np.float32(2 ** -23) * 5          # 5 ulp above 1.0
    assert ulp_diff(np.float32([1.0]), c) == (1, 5)


def test_shape_mismatch_is_an_error():
    with pytest.raises(ValueError):
        ulp_diff(np.zeros(3, np.float32), np.zeros(4, np.float32))
    assert not bits_equal(np.zeros(3, np.float32), np.zeros(4, np.float32))


def test_fixtures_are_all_shipped():
    """The suite runs without ../shared: every fixture the manifests list is in data/,
    the layer cases of every fork."""
    cases = layer_cases()
    assert len(cases) == len(manifest_cases()) == 40
    assert {c.fork for c in cases} == {"pjreddie", "alexeyab", "hankai"}
    assert sum(c.fork == "hankai" for c in cases) == 8
    assert all(c.layer == "convolutional" for c in cases if c.fork == "hankai")
    assert len(routine_cases()) == 75
