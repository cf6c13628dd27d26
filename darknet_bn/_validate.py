"""Input checks shared by every public entry point.

Numba does not check bounds: a buffer one element short is read or written past
its end silently.  Every public wrapper therefore validates all of its arguments
*before* any kernel runs, so a rejected call modifies nothing.  Each error names
the argument and says how to fix it.
"""
import contextlib
import contextvars
import numbers
import re

import numpy as np

#: Largest dimension, count or stride a kernel takes: they are int64 there (C's
#: ``int`` would overflow past 2**31 - 1; see tests/test_index_width.py).
INDEX_MAX = 2**63 - 1


#: Terminal control sequences (ANSI CSI: colours, bold) some libraries put in messages.
_ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]")


def error_text(error, n=200):
    """The first line of ``error``'s message without terminal escapes, cut to ``n``
    characters ("" if empty): what a one-line message quotes of an exception raised
    by another library."""
    text = _ANSI_ESCAPE.sub("", str(error)).strip()
    return text.splitlines()[0][:n] if text else ""


# --------------------------------------------------------------------------
# the words of a message: Python's (the API) or the command line's (darknet-bn)
# --------------------------------------------------------------------------
#: While a ``darknet-bn`` command runs: the command line's word for each Python
#: argument name (``command_line_words``); None for the Python API.
_CLI_WORDS = contextvars.ContextVar("darknet_bn_cli_words", default=None)


@contextlib.contextmanager
def command_line_words(words):
    """Inside the block, messages name arguments as the command line does: ``words``
    maps a Python argument name to its command-line word (``{"dialect": "--dialect",
    "out_path": "OUT"}``), and an API message drops its routine prefix (the command's
    error line names the command)."""
    token = _CLI_WORDS.set(dict(words))
    try:
        yield
    finally:
        _CLI_WORDS.reset(token)


def argument_name(name):
    """Argument ``name`` as the caller writes it: the Python name, or its command-line
    word inside ``command_line_words``."""
    words = _CLI_WORDS.get()
    return name if words is None else words.get(name, name)


def setting_text(name, value):
    """An argument with its value as the caller writes it: ``dialect='alexeyab'`` in
    Python, ``--dialect alexeyab`` on the command line."""
    words = _CLI_WORDS.get()
    if words is not None and name in words:
        return f"{words[name]} {value}"
    return f"{name}={value!r}"


def routine_prefix(routine):
    """``"routine: "``, which opens an API message; "" on the command line, whose
    error line already names the command."""
    return f"{routine}: " if _CLI_WORDS.get() is None else ""


def short_repr(value, n=40):
    """``value`` for a one-line message: ``repr`` (a string as is) cut to ``n``
    characters; an integer too long for ``repr`` is described by its size."""
    if isinstance(value, str):
        text = value
    else:
        try:
            text = repr(value)
        except ValueError:                     # an int with more digits than repr converts
            return f"a {value.bit_length()}-bit integer"
    return text if len(text) <= n else f"{text[:n - 3]}..."


#: Darknet's unbiased ``variance_cpu`` divides by ``batch*spatial - 1``.
MIN_VALUES_PER_CHANNEL = 2


def check_two_values_per_channel(routine, batch, spatial, *, spatial_name="spatial", fix=""):
    """At least ``MIN_VALUES_PER_CHANNEL`` values per channel (``batch*spatial``), as
    training needs.  ``fix`` is appended to the advice."""
    if batch * spatial < MIN_VALUES_PER_CHANNEL:
        raise ValueError(
            f"{routine}: batch*{spatial_name} = {batch * spatial} leaves one value per channel; "
            f"Darknet's unbiased variance divides by batch*{spatial_name} - 1 = 0. "
            f"Use batch >= 2 or a larger {spatial_name}{fix}")


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
        raise ValueError(
            f"{routine}: {name} = {short_repr(value)} is too large to convert to a float; "
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
