"""The decorators every kernel and helper uses, and the registry ``warmup()`` compiles.

Kernel options: ``parallel=True`` (``prange`` over channels; inside a channel
the C's loop order, so every reduction keeps Darknet's summation order),
``fastmath=False`` (fast-math reorders sums and contracts FMAs: other bits),
``error_model="numpy"`` (division by zero gives inf/nan as in C), ``cache=True``
and ``nogil=True`` (separate layers can run from several Python threads).
Kernels are declared with explicit float32 signatures and compiled lazily (on
first call, or all at once by ``warmup()``), so ``import darknet_bn`` stays cheap.

Threading layer (docs/reliability.md): Numba's own choice is kept (``_tbb``
only makes a pip-installed TBB loadable first).  ``tbb`` and ``omp`` are
threadsafe; ``workqueue`` aborts the process when two threads launch parallel
kernels at once, so when it is the layer Numba will use, the kernels are
compiled with ``parallel=False``: the same loops, serially, with the same bits.
Serial builds are cached under their own names (``<name>__serial``).

Cache (docs/reliability.md): Numba's locations (``NUMBA_CACHE_DIR``, the
package's ``__pycache__``, the user cache directory), then, for this package's
files only, a private per-user temp directory (0700, owned by the user).  If
nothing is writable the decorators compile without a disk cache and warn once
(``CacheFallbackWarning``) instead of failing at import.  A kernel's cache
stamp also covers the modules compiled into it (``KERNEL_IMPORTS``).  The cache
locators and the tbb version check are private Numba API: setup.cfg pins the
Numba minor version they were tested with, and
``tests/test_numba_cache.py::test_numba_internals_used_by_jit`` fails loudly if
they change.
"""
import hashlib
import importlib
import os
import stat
import tempfile
import warnings

import numba
from numba import config, njit
from numba.core import caching

from . import _tbb

#: Options for the small serial helpers kernels call (e.g. ``utils.sum_array_at``).
HELPER_OPTIONS = dict(cache=True, fastmath=False, error_model="numpy", nogil=True)

#: (dispatcher, signatures) for every registered kernel, in definition order.
KERNELS = []

# Signature building blocks: flat float32 buffers, C ints, C floats.
BUF = "float32[::1]"
INT = "int64"
FLT = "float32"

THREADSAFE_LAYERS = ("tbb", "omp")


class CacheFallbackWarning(UserWarning):
    """No writable Numba cache location: kernels are compiled in memory only."""


def _loadable(layer):
    """Whether Numba could load threading layer ``layer`` in this process."""
    try:
        if layer == "tbb":
            from numba.np.ufunc import parallel
            check = getattr(parallel, "_check_tbb_version_compatible", None)
            if check is not None:
                check()
        importlib.import_module("numba.np.ufunc." + {"tbb": "tbbpool", "omp": "omppool",
                                                     "workqueue": "workqueue"}[layer])
        return True
    except (ImportError, OSError):
        return False


def predicted_threading_layer():
    """The threading layer Numba uses (or will use, at the first parallel launch).

    Follows Numba's own rules: ``NUMBA_THREADING_LAYER`` if it names a layer or a
    purpose (``safe``/``threadsafe``/``forksafe``), else the first loadable
    layer of ``NUMBA_THREADING_LAYER_PRIORITY`` (default tbb, omp, workqueue).
    Returns ``"tbb"``, ``"omp"``, ``"workqueue"`` or ``None`` (nothing loadable:
    Numba will raise at the first parallel launch).
    """
    try:
        return numba.threading_layer()            # already started
    except ValueError:
        pass
    requested = str(config.THREADING_LAYER).lower()
    candidates = {
        "safe": ["tbb"],
        "threadsafe": ["tbb", "omp"],
        "forksafe": ["tbb", "workqueue"],
        "default": list(config.THREADING_LAYER_PRIORITY),
    }.get(requested, [requested])
    for layer in candidates:
        if layer in ("tbb", "omp", "workqueue") and _loadable(layer):
            return layer
    return None


#: The layer Numba will run parallel kernels on, decided once at import.
THREADING_LAYER = predicted_threading_layer()
#: False when that layer is not threadsafe: kernels are then compiled serially.
PARALLEL = THREADING_LAYER in THREADSAFE_LAYERS
KERNEL_OPTIONS = dict(HELPER_OPTIONS, parallel=PARALLEL)

#: True once a decorator had to compile without a disk cache.
CACHE_DISABLED = False

PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))


def private_temp_cache_dir():
    """``<tempdir>/darknet_bn-numba-cache-<uid>``, created 0700; None if unusable.

    A directory that exists but is not ours, not a directory, or writable by
    others is refused: cached code is loaded and run, so nobody else may write it.
    """
    uid = os.getuid() if hasattr(os, "getuid") else None
    name = f"darknet_bn-numba-cache-{'user' if uid is None else uid}"
    path = os.path.join(tempfile.gettempdir(), name)
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        pass
    except OSError:
        return None
    try:
        st = os.lstat(path)
    except OSError:
        return None
    if not stat.S_ISDIR(st.st_mode) or (uid is not None and st.st_uid != uid) \
            or st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        return None
    return path


class TempDirCacheLocator(caching._SourceFileBackedLocatorMixin, caching._CacheLocator):
    """Numba cache locator of last resort, for darknet_bn's own source files only."""

    def __init__(self, py_func, py_file):
        self._py_file = py_file
        self._lineno = py_func.__code__.co_firstlineno
        self._cache_path = os.path.join(self._root, self.get_suitable_cache_subpath(py_file))

    def get_cache_path(self):
        return self._cache_path

    @classmethod
    def from_function(cls, py_func, py_file):
        if not _in_package(py_file):
            return None
        cls._root = private_temp_cache_dir()
        if cls._root is None:
            return None
        return super().from_function(py_func, py_file)


def _in_package(py_file):
    here = os.path.dirname(os.path.abspath(py_file))
    return os.path.commonpath([here, PACKAGE_DIR]) == PACKAGE_DIR


_PACKAGE_STAMP = None


#: The modules compiled into kernels defined in other files: the helpers, intrinsics
#: and constants kernels call (``c_arith``, ``dialects``, ``_simd``, ``utils``) and this
#: one (the compile options).  ``tests/test_numba_cache.py`` derives the list from the
#: kernels' code and checks it is exactly this.
KERNEL_IMPORTS = ("_jit.py", "_simd.py", "c_arith.py", "dialects.py", "utils.py")


def package_source_stamp():
    """A digest of the name, mtime and size of each ``KERNEL_IMPORTS`` module, computed
    once per process."""
    global _PACKAGE_STAMP
    if _PACKAGE_STAMP is None:
        entries = [(name, st.st_mtime_ns, st.st_size) for name in KERNEL_IMPORTS
                   for st in [os.stat(os.path.join(PACKAGE_DIR, name))]]
        _PACKAGE_STAMP = (hashlib.sha256(repr(entries).encode()).hexdigest(),)
    return _PACKAGE_STAMP


class PackageStampMixin:
    """Cache validity of a darknet_bn kernel: its own file (Numba's rule) *and* the
    ``KERNEL_IMPORTS`` modules.

    Numba re-compiles a cached kernel only when the file defining it changes, but the
    kernels inline helpers, intrinsics and constants from other modules.  Without this,
    an edit there keeps serving the old machine code (a deliberately wrong lane order
    in ``_simd.vtranspose`` passed ``tests/test_fused.py`` until the cache was cleared).
    Modules no kernel uses (``compare``, ``cli``, ...) are left out, so editing them
    keeps the cache.
    """

    def get_source_stamp(self):
        return tuple(super().get_source_stamp()) + package_source_stamp()

    @classmethod
    def from_function(cls, py_func, py_file):
        if not _in_package(py_file):
            return None
        return super().from_function(py_func, py_file)


class PackageTempDirCacheLocator(PackageStampMixin, TempDirCacheLocator):
    """The temp-dir locator of last resort, with the ``KERNEL_IMPORTS`` stamp."""


def _install_locators(locators):
    """Put a package-stamped twin before each of Numba's source-file locators, and the
    temp-dir locator last (used only when every other location is unwritable)."""
    if any(getattr(c, "_darknet_bn", False) for c in locators):
        return
    twins = []
    for base in locators:
        if issubclass(base, caching._SourceFileBackedLocatorMixin):
            twins.append(type("Package" + base.__name__, (PackageStampMixin, base),
                              {"_darknet_bn": True}))
        twins.append(base)
    PackageTempDirCacheLocator._darknet_bn = True
    locators[:] = twins + [PackageTempDirCacheLocator]


_locators = getattr(getattr(caching, "CacheImpl", None), "_locator_classes", None)
if isinstance(_locators, list):
    _install_locators(_locators)


def _njit(fn, options):
    """``njit(**options)(fn)``, without the disk cache if no location is writable."""
    global CACHE_DISABLED
    try:
        return njit(**options)(fn)
    except RuntimeError as exc:
        if not options.get("cache") or "cannot cache" not in str(exc):
            raise
        if not CACHE_DISABLED:
            warnings.warn(
                "darknet_bn: no writable Numba cache location (the package directory, "
                "NUMBA_CACHE_DIR, the user cache directory and the temp directory are all "
                "read-only); "
                "kernels are compiled in memory on every run. Set NUMBA_CACHE_DIR to a "
                f"writable directory to cache them. ({exc})", CacheFallbackWarning,
                stacklevel=3)
        CACHE_DISABLED = True
        return njit(**{**options, "cache": False})(fn)


def kernel(*signatures):
    """Decorate a kernel with KERNEL_OPTIONS and register it for ``warmup``."""
    def wrap(fn):
        if not PARALLEL:
            # Keep serial and parallel builds apart in the on-disk cache (its
            # index is named after the qualname and does not record the flags).
            fn.__qualname__ += "__serial"
        dispatcher = _njit(fn, KERNEL_OPTIONS)
        KERNELS.append((dispatcher, signatures))
        return dispatcher
    return wrap


def helper(fn=None, **overrides):
    """Decorate a serial helper that kernels call: HELPER_OPTIONS, same cache fallback.

    Use as ``@helper`` or ``@helper(inline="always")``.
    """
    def wrap(f):
        return _njit(f, {**HELPER_OPTIONS, **overrides})
    return wrap(fn) if fn is not None else wrap


def sig(*args):
    return "void(" + ", ".join(args) + ")"


def threading_info():
    """How the kernels run here: threading layer, parallel or serial, threads, cache."""
    return {"threading_layer": THREADING_LAYER, "parallel": PARALLEL,
            "tbb_preloaded": _tbb.PRELOADED,
            "num_threads": numba.get_num_threads(), "max_threads": config.NUMBA_NUM_THREADS,
            "cache": not CACHE_DISABLED}


def warmup():
    """Compile (or load from the cache) every kernel for its float32 signatures.

    Returns the number of signatures compiled.  Call it once at start-up to move
    Numba's compilation out of the first real call.
    """
    for dispatcher, signatures in KERNELS:
        for s in signatures:
            dispatcher.compile(s)
    return sum(len(signatures) for _, signatures in KERNELS)
