"""The one decorator every kernel uses, and the registry ``warmup()`` compiles.

Options, for every faithful kernel:
- ``parallel=True``: ``prange`` over channels (filters); inside a channel the loop
  order is the C's, so every reduction keeps Darknet's summation order.
- ``fastmath=False``: fast-math reorders sums and contracts a*b+c into FMAs,
  which changes the bits.
- ``error_model="numpy"``: float division by zero gives inf/nan as in C instead of
  raising ZeroDivisionError inside the kernel (Darknet propagates inf/nan).
- ``cache=True``: compiled code is cached on disk (see ``darknet_bn.warmup``).
- ``nogil=True``: separate layers can run from several Python threads.

Each kernel is declared with its explicit float32 signatures.  They are compiled
lazily (on first call, or all at once by ``warmup()``) rather than at import, so
``import darknet_bn`` stays cheap even with a cold cache.
"""
from numba import njit

KERNEL_OPTIONS = dict(parallel=True, cache=True, fastmath=False, error_model="numpy", nogil=True)

#: (dispatcher, signatures) for every registered kernel, in definition order.
KERNELS = []

# Signature building blocks: flat float32 buffers, C ints, C floats.
BUF = "float32[::1]"
INT = "int64"
FLT = "float32"


def kernel(*signatures, **overrides):
    """Decorate a kernel with KERNEL_OPTIONS (``overrides`` win) and register it."""
    def wrap(fn):
        dispatcher = njit(**{**KERNEL_OPTIONS, **overrides})(fn)
        KERNELS.append((dispatcher, signatures))
        return dispatcher
    return wrap


def sig(*args):
    return "void(" + ", ".join(args) + ")"


def warmup():
    """Compile (or load from the cache) every kernel for its float32 signatures.

    Returns the number of signatures compiled.  Call it once at start-up to move
    Numba's compilation out of the first real call.
    """
    n = 0
    for dispatcher, signatures in KERNELS:
        for s in signatures:
            dispatcher.compile(s)
            n += 1
    return n
