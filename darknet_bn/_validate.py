"""Input checks shared by every public entry point.

Numba does not check bounds: a buffer one element short is read or written past
its end silently.  Every public wrapper therefore validates all of its arguments
*before* any kernel runs, so a rejected call modifies nothing.  Each error names
the argument and says how to fix it.
"""
import bisect
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


#: What the fast path of ``check_state`` compares for each buffer (by equality).
#: For a 1-D array, shape + dtype + flags (C_CONTIGUOUS, ALIGNED, WRITEABLE, ...;
#: a flags object compares its snapshot) determine everything a kernel relies
#: on: the length, the element type, the stride (1-D and C-contiguous: one item)
#: and writability.  The data pointer is implied: an existing array's buffer only
#: moves when its size changes (``resize``) or to a fresh buffer of its own shape
#: (``__setstate__``).  NumPy 1.x also lets ``a.data = buffer`` point it anywhere
#: (deprecated there, removed in 2.0); that changes ``a.base``, which is then
#: compared by identity too.
_KEY_ATTRS = ("shape", "dtype", "flags")
_BASE_ASSIGNABLE = int(np.__version__.split(".")[0]) < 2


class _Checked(tuple):
    """``check_state``'s record on its owner.  It holds buffer addresses, so a copy
    or unpickled owner does not inherit it (it gets an empty one: checked afresh)."""
    __slots__ = ()

    def __reduce__(self):
        return _Checked, ()

    def __deepcopy__(self, memo):
        return _Checked()


def state_unchanged(owner):
    """True when everything ``check_state`` validated on ``owner`` is still in place.

    The cheap path of every call (about 0.25 us per buffer): the recorded fields
    and buffers must be the same objects (identity: ``2.0 == 2`` must not pass),
    and each buffer must still have the same shape, dtype and flags (a buffer
    reshaped, re-typed, resized or made read-only *in place* is the same object).
    Anything else, including a missing attribute, returns False: the caller then
    validates everything again.
    """
    seen = owner.__dict__.get("_checked_state")
    if not seen:
        return False
    objects_of, objects, keys_of, keys, _ = seen
    try:
        return all(map(operator.is_, objects_of(owner), objects)) and keys_of(owner) == keys
    except AttributeError:
        return False


def check_state(routine, owner, names, lengths, fields=()):
    """Re-validate an object's own buffers before its kernels run.

    ``names``: attribute names of ``owner``'s buffers; ``lengths``: the element
    count each must have for the kernels (computed from ``owner``'s current
    dimensions).  Each must be a flat, contiguous, aligned, writable float32
    array of that length, and no two may share memory; otherwise a kernel would
    read or write out of bounds (Numba does not check) or race with itself.
    ``fields``: the names of the (already validated) non-buffer attributes the
    lengths and paths depend on.  The result is recorded on ``owner`` for
    ``state_unchanged`` and ``overlapping_buffer``: the fields and buffers
    (the objects, not ids: ids can be reused), each buffer's shape, dtype and
    flags, and the buffers' address ranges.
    """
    arrays = [getattr(owner, name, None) for name in names]
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
    bases = tuple(f"{name}.base" for name in names) if _BASE_ASSIGNABLE else ()
    objects_of = _getter(tuple(fields) + tuple(names) + bases)
    keys_of = _getter(tuple(f"{name}.{attr}" for name in names for attr in _KEY_ATTRS))
    owner._checked_state = _Checked((objects_of, objects_of(owner), keys_of, keys_of(owner),
                                     ([s[0] for s in spans], spans)))


def overlapping_buffer(owner, arr):
    """The name of ``owner``'s buffer that ``arr`` shares memory with, or None.

    ``arr``: a validated flat, contiguous array.  Call right after
    ``check_state``/``state_unchanged``: this uses their record of the buffers'
    address ranges (disjoint and sorted, so one bisection finds the only
    candidate).  Returns ``(name, same_start)``; ``same_start`` tells whether
    ``arr`` starts exactly where that buffer does.
    """
    start, nbytes = arr.__array_interface__["data"][0], arr.nbytes
    starts, spans = owner.__dict__["_checked_state"][4]
    i = bisect.bisect_left(starts, start + nbytes) - 1   # last buffer starting before our end
    if nbytes and i >= 0 and spans[i][0] + spans[i][1] > start:
        return spans[i][2], spans[i][0] == start
    return None


@functools.lru_cache(maxsize=None)
def _getter(names):
    return operator.attrgetter(*names)
