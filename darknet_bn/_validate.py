"""Input checks shared by every public entry point.

Numba does not check bounds: a buffer one element short is read or written past
its end silently.  Every public wrapper therefore validates all of its arguments
*before* any kernel runs, so a rejected call modifies nothing.  Each error names
the argument and says how to fix it.
"""
import functools
import numbers
import operator

import numpy as np

#: Largest dimension, count or stride a kernel takes: they are int64 there (C's
#: ``int`` would overflow past 2**31 - 1; see tests/test_index_width.py).
INDEX_MAX = 2**63 - 1


def check_dim(routine, name, value, *, minimum=1):
    """An integer dimension or count >= ``minimum``; returns it as a Python int."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
        raise TypeError(
            f"{routine}: {name} must be an integer, got {type(value).__name__} "
            f"{value!r}; pass int({name})"
        )
    value = int(value)
    if value < minimum:
        raise ValueError(f"{routine}: {name} must be >= {minimum}, got {value}")
    if value > INDEX_MAX:
        raise ValueError(f"{routine}: {name} = {value} does not fit the kernels' 64-bit "
                         f"indices; it must be <= {INDEX_MAX}")
    return value


def check_scalar(routine, name, value):
    """A real number that C would pass as ``float``; returns it as np.float32."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise TypeError(
            f"{routine}: {name} must be a real number, got {type(value).__name__} {value!r}"
        )
    try:
        with np.errstate(over="ignore"):
            return np.float32(value)
    except OverflowError:
        # An integer (or Fraction) beyond float64's range; C could not pass it either.
        text = repr(value)
        text = text if len(text) <= 40 else f"{text[:20]}...({len(text)} digits)"
        raise ValueError(
            f"{routine}: {name} = {text} is too large to convert to a float; "
            f"pass a value within float32's range (|{name}| <= 3.4e38)"
        ) from None


def check_buffer(routine, name, arr, length, *, writable=False, at_least=False, what=""):
    """A flat, C-contiguous, aligned float32 ndarray of exactly ``length`` elements.

    ``at_least=True`` accepts longer buffers (strided BLAS-1 routines, where the
    C touches only ``(N-1)*INC + 1`` elements).  ``what`` explains ``length``.
    """
    if not isinstance(arr, np.ndarray):
        raise TypeError(
            f"{routine}: {name} must be a numpy.ndarray of float32, got "
            f"{type(arr).__name__}; convert with np.ascontiguousarray({name}, dtype=np.float32)"
        )
    if isinstance(arr, np.ma.MaskedArray):
        raise TypeError(
            f"{routine}: {name} is a masked array; the kernels would ignore its mask. "
            f"Pass {name}.filled(value) or np.ascontiguousarray({name}.data)"
        )
    if arr.dtype != np.float32:
        raise TypeError(
            f"{routine}: {name} must have dtype float32 (native byte order), got {arr.dtype}; "
            f"convert with np.ascontiguousarray({name}, dtype=np.float32) "
            "(and copy the result back if the routine writes it)"
        )
    if arr.ndim != 1:
        raise ValueError(
            f"{routine}: {name} must be a flat 1-D batch-major buffer, got shape {arr.shape}; "
            f"pass {name}.reshape(-1) of a C-contiguous array"
        )
    if not arr.flags.c_contiguous or not arr.flags.aligned:
        raise ValueError(
            f"{routine}: {name} is not contiguous (strides {arr.strides}); "
            f"pass np.ascontiguousarray({name})"
        )
    if writable and not arr.flags.writeable:
        raise ValueError(
            f"{routine}: {name} is read-only but {routine} writes into it in place; "
            f"pass a writable copy ({name}.copy())"
        )
    n = arr.shape[0]
    if (n < length) if at_least else (n != length):
        need = f"at least {length}" if at_least else f"exactly {length}"
        raise ValueError(
            f"{routine}: {name} has {n} elements but needs {need}"
            + (f" ({what})" if what else "")
            + "; pass a buffer of that size"
        )
    return arr


def check_no_overlap(routine, written, *read):
    """Reject a written buffer that shares memory with another argument.

    The C loops run in sequence, so aliasing has one defined result there; the
    port runs channels in parallel, where aliasing would make the result depend
    on thread timing.  ``written`` and ``read`` are ``(name, array)`` pairs.
    """
    wname, warr = written
    for rname, rarr in read:
        if np.may_share_memory(warr, rarr):
            raise ValueError(
                f"{routine}: {wname} shares memory with {rname}; the port writes {wname} "
                "in parallel, so pass separate buffers (e.g. "
                f"{rname}.copy())"
            )


def check_state(routine, owner, names, lengths):
    """Re-validate an object's own buffers before its kernels run.

    ``names``: attribute names of ``owner``'s buffers; ``lengths``: the element
    count each must have for the kernels (computed from ``owner``'s current
    dimensions).  Each must be a flat, contiguous, aligned, writable float32
    array of that length, and no two may share memory; otherwise a kernel would
    read or write out of bounds (Numba does not check) or race with itself.
    The result is remembered on ``owner``: while the same array objects are in
    place with the same lengths, only their writability is re-checked.
    """
    arrays = _getter(names)(owner)
    seen = owner.__dict__.get("_checked_state")
    if (seen is not None and seen[0] == lengths
            and all(a is b and a.flags.writeable for a, b in zip(arrays, seen[1]))):
        return
    for name, arr, n in zip(names, arrays, lengths):
        check_buffer(routine, f"layer.{name}", arr, n, writable=True,
                     what="the layer's size; keep each buffer's size, dtype and identity "
                          "(write into it with [:] = ...)")
    spans = sorted((a.__array_interface__["data"][0], a.nbytes, name)
                   for name, a in zip(names, arrays) if a.nbytes)
    for (start, size, name), (next_start, _, next_name) in zip(spans, spans[1:]):
        if start + size > next_start:
            raise ValueError(
                f"{routine}: layer.{name} and layer.{next_name} share memory; every layer "
                f"buffer needs its own (assign a copy: layer.{next_name} = "
                f"layer.{next_name}.copy())")
    owner._checked_state = (lengths, arrays)   # the objects, not ids: ids can be reused


@functools.lru_cache(maxsize=None)
def _getter(names):
    return operator.attrgetter(*names)
