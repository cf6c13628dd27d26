"""darknet_bn.convolutional_layer (scale_bias, add_bias, backward_bias) and utils.sum_array."""
import numpy as np
import pytest

import naive
from _routines import routine_tests
from darknet_bn import convolutional_layer
from darknet_bn.utils import sum_array


test_golden, test_matches_naive = routine_tests(convolutional_layer)


def test_backward_bias_sums_planes_first():
    """backward_bias adds per-plane sums, which is not one long running sum: this
    input makes the two orders differ, so the test fails on the wrong order."""
    delta = np.array([1e8, 1.0, 1.0, 1.0, -1e8, 1.0, 1.0, 1.0], np.float32)  # batch 2, n 1, size 4
    port = np.zeros(1, np.float32)
    convolutional_layer.backward_bias(port, delta, 2, 1, 4)
    ref = np.zeros(1, np.float32)
    naive.backward_bias(ref, delta, 2, 1, 4)
    running = np.float32(0)
    for v in delta:
        running = np.float32(running + v)
    assert port.view(np.int32)[0] == ref.view(np.int32)[0]
    assert port[0] != running          # the plane-first order really matters here


@pytest.mark.parametrize("n", [0, 1, 7, 1000])
def test_sum_array_matches_naive(n):
    a = np.random.default_rng(n).standard_normal(n + 3).astype(np.float32)
    assert sum_array(a, n).view(np.int32) == naive.sum_array(a, n).view(np.int32)
