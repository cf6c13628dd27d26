"""Darknet's ``src/utils.c``: ``sum_array``, the plane sum used by ``backward_bias``."""
import numpy as np

from ._jit import helper
from ._validate import check_buffer, check_dim


@helper
def sum_array_at(a, start, n):
    """``sum_array(a + start, n)`` inside a kernel (unchecked): float32 sum from +0.0f, in
    index order."""
    total = np.float32(0.0)
    for i in range(n):
        total += a[start + i]
    return total


def sum_array(a, n):
    """``sum_array`` (utils.c): ``float sum = 0; for i < n: sum += a[i]``."""
    n = check_dim("sum_array", "n", n, minimum=0)
    check_buffer("sum_array", "a", a, n, at_least=True, what="n")
    return np.float32(sum_array_at(a, 0, n))     # Numba returns a Python float: exact
