"""Buffers of more than 2**31 elements: no index can overflow (Darknet's ``int`` would).

Darknet indexes with ``int``: ``index = j*filters*spatial + i*spatial + k`` and
``X[i*INCX]`` overflow past 2**31 - 1 (undefined behaviour; in practice a negative
index and a read before the buffer).  The port must not.  Three proofs, none of
which allocates 8 GB:

1. Types: every integer the kernels compute with (loop counters, products, flat
   indices, in every kernel and helper, after inlining) is typed 64-bit by
   Numba's type inference; the dimensions enter as int64 and the wrappers do
   the size arithmetic in Python integers, so nothing is narrowed on the way.
2. Execution: the strided BLAS-1 kernels and the plane sum run on a buffer of
   more than 2**32 elements that is only *reserved* (an anonymous MAP_NORESERVE
   mapping: untouched pages cost no memory), touching elements past 2**31 and
   2**32.  ``mean_cpu`` sweeps a whole 2**31 + 2 element buffer of zero pages
   (read-only, so only page tables are allocated) with one value past 2**31.
3. The wrappers' own size checks use Python integers: a product of dimensions
   past 2**64 is reported exactly, not wrapped.
"""
import mmap
import sys

import numba
import numpy as np
import pytest

import darknet_bn.fused  # noqa: F401  (registers its kernels too)
from darknet_bn import _jit, blas, utils

F32 = np.float32
MAP_NORESERVE = getattr(mmap, "MAP_NORESERVE", 0x4000 if sys.platform.startswith("linux") else 0)


# --------------------------------------------------------------------------
# 1. types
# --------------------------------------------------------------------------
def _all_jitted():
    out = [(d.py_func, sigs) for d, sigs in _jit.KERNELS]
    out.append((utils.sum_array_at.py_func, ("float32(float32[::1], int64, int64)",)))
    return out


def test_kernel_dimensions_are_int64():
    assert _jit.INT == "int64"
    for py_func, sigs in _all_jitted():
        for s in sigs:
            assert "int32" not in s and "intc" not in s, f"{py_func.__name__}: {s}"


@pytest.mark.slow
@pytest.mark.parametrize("py_func,sigs", _all_jitted(), ids=lambda v: getattr(v, "__name__", ""))
def test_every_integer_in_every_kernel_is_64_bit(py_func, sigs):
    """Numba's type inference of the kernel body (its inlined helpers included).

    Compiled afresh without the cache (a cached result carries no type map) and
    serially: typing happens before the parallel transform, which only moves the
    typed loop body into a gufunc, so the widths are those of the parallel build.
    """
    fresh = numba.njit(parallel=False, fastmath=False, error_model="numpy")(py_func)
    for s in sigs:
        fresh.compile(s)
    for cres in fresh.overloads.values():
        typemap = cres.fndesc.typemap
        ints = {k: t for k, t in typemap.items() if isinstance(t, numba.types.Integer)}
        assert ints, "no integer variables found: the check would be vacuous"
        narrow = {k: str(t) for k, t in ints.items() if t.bitwidth < 64}
        assert not narrow, f"{py_func.__name__}: integers narrower than 64 bits: {narrow}"


# --------------------------------------------------------------------------
# 2. execution past 2**31 and 2**32 elements, on reserved memory
# --------------------------------------------------------------------------
def reserved_float32(n):
    """A writable float32 array of ``n`` elements backed by reserved, not committed,
    memory; pages cost memory only once written."""
    if not MAP_NORESERVE or sys.maxsize < 2**40:
        pytest.skip("needs a 64-bit Linux (anonymous MAP_NORESERVE mappings)")
    try:
        mm = mmap.mmap(-1, n * 4, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | MAP_NORESERVE)
    except (OSError, OverflowError, ValueError) as exc:
        pytest.skip(f"cannot reserve {n * 4 / 2**30:.1f} GiB of address space: {exc}")
    arr = np.frombuffer(mm, dtype=F32)
    return arr, mm


BIG_INC = 2**31 + 3          # i*INC passes 2**31 at i = 1 and 2**32 at i = 2


def test_strided_blas1_past_2_to_the_32():
    n = 3
    X, mm = reserved_float32((n - 1) * BIG_INC + 1)
    try:
        assert X.size > 2**32
        X[[0, BIG_INC, 2 * BIG_INC]] = [1.0, 2.0, 3.0]
        Y = np.array([10.0, 20.0, 30.0], F32)
        blas.axpy_cpu(n, 0.5, X, BIG_INC, Y, 1)                 # reads X[2**31+3], X[2**32+6]
        assert Y.tolist() == [10.5, 21.0, 31.5]
        blas.scal_cpu(n, 4.0, X, BIG_INC)                       # writes them
        assert X[[0, BIG_INC, 2 * BIG_INC]].tolist() == [4.0, 8.0, 12.0]
        blas.copy_cpu(n, Y, 1, X, BIG_INC)
        assert X[[0, BIG_INC, 2 * BIG_INC]].tolist() == [10.5, 21.0, 31.5]
        assert X[1] == 0 and X[BIG_INC - 1] == 0 and X[BIG_INC + 1] == 0   # nothing else
        assert utils.sum_array_at(X, 2 * BIG_INC - 1, 2) == np.float32(31.5)  # start > 2**32
    finally:
        del X
        mm.close()


@pytest.mark.slow
def test_mean_cpu_sweeps_past_2_to_the_31():
    """Two channels of 2**30 + 1 elements: channel 1 ends at flat index 2**31 + 1."""
    spatial = 2**30 + 1
    x, mm = reserved_float32(2 * spatial)
    try:
        last = 2 * spatial - 1
        assert last > 2**31
        x[last] = 2.0**20
        x[spatial] = 1.0                    # first element of channel 1 (shares no page)
        mean = np.full(2, np.nan, F32)
        blas.mean_cpu(x, 1, 2, spatial, mean)
        scale = F32(1.0 / spatial)
        assert mean[0] == 0
        assert mean[1].view(np.int32) == (F32(2.0**20 + 1) * scale).view(np.int32)
    finally:
        del x
        mm.close()


# --------------------------------------------------------------------------
# 3. the wrappers' size arithmetic
# --------------------------------------------------------------------------
def test_size_products_are_exact_python_integers():
    with pytest.raises(ValueError, match=str(2**31 * 2**31 * 4)):
        blas.mean_cpu(np.zeros(4, F32), 2**31, 2**31, 4, np.zeros(2**31 % 7, F32))
    with pytest.raises(ValueError, match=str(2 * 2**62 + 1)):
        blas.scal_cpu(3, 1.0, np.zeros(4, F32), 2**62)
