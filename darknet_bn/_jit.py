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

Fork (docs/reliability.md): GNU OpenMP's pool does not survive ``fork()``: Numba
terminates a direct child that launches a parallel kernel after its parent
started the omp layer, and a grandchild, or a child whose parent used libgomp
through torch, hangs in the pool.  So when the layer is omp, an
``os.register_at_fork`` hook switches every registered kernel of a forked child
to its serial build (``use_serial_builds``): the same dispatcher objects callers
hold, their parallel machine code dropped and their compiler and cache replaced
by the ``<name>__serial`` ones, so no call in the child (or its children) enters
an OpenMP parallel region, with the same bits.  A ``multiprocessing`` child
started with fork that imports the package for the first time does the same at
import.  Nothing changes in the parent, nor on tbb (fork-safe) and workqueue
(already serial).

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
import contextlib
import hashlib
import importlib
import os
import stat
import sys
import tempfile
import threading
import types
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
#: Layers whose pool a forked child must not enter: kernels switch to serial builds there.
FORK_UNSAFE_LAYERS = ("omp",)
#: The qualname suffix of serial builds (their own entries in the on-disk cache).
SERIAL_SUFFIX = "__serial"


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

#: True in a process whose kernels run their serial builds because it was forked from
#: a process on a ``FORK_UNSAFE_LAYERS`` layer (inherited by its own children).
SERIAL_AFTER_FORK = False

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
            fn.__qualname__ += SERIAL_SUFFIX
        dispatcher = _njit(fn, KERNEL_OPTIONS)
        if SERIAL_AFTER_FORK:                   # a kernel defined in a switched child
            _switch_to_serial(dispatcher)
        KERNELS.append((dispatcher, signatures))
        return dispatcher
    return wrap


# --------------------------------------------------------------------------
# fork: serial builds in a child of a process on a fork-unsafe layer
# --------------------------------------------------------------------------
def _current_layer():
    """The layer Numba started in this process (or an ancestor), else the predicted one."""
    try:
        return numba.threading_layer()
    except ValueError:
        return THREADING_LAYER


def _serial_twin(dispatcher):
    """A new dispatcher for ``dispatcher``'s function with ``parallel=False``, named
    ``<qualname>__serial`` (the serial builds' cache entries, shared with workqueue's)."""
    fn = dispatcher.py_func
    twin = types.FunctionType(fn.__code__, fn.__globals__, fn.__name__, fn.__defaults__,
                              fn.__closure__)
    twin.__kwdefaults__ = fn.__kwdefaults__
    twin.__module__ = fn.__module__
    twin.__qualname__ = fn.__qualname__ + SERIAL_SUFFIX
    return _njit(twin, {**KERNEL_OPTIONS, "parallel": False})


def _switch_to_serial(dispatcher):
    """Make ``dispatcher`` (the object every caller holds) run its serial build.

    Its parallel machine code is unhooked, so its next call compiles; the first compile
    (``_compile_serial``) takes the compiler and cache of the ``__serial`` twin, so the
    serial code is loaded from the cache (or compiled once and cached).  A few
    microseconds per kernel, nothing on disk, and Numba's call path is unchanged.
    """
    if not dispatcher.targetoptions.get("parallel"):
        return
    # Keep the parallel builds alive, never to be called: freeing compiled code takes
    # time (0.35 ms for one kernel compiled in the process) and copies shared pages.
    _PARALLEL_BUILDS_KEPT.append(dict(dispatcher.overloads))
    dispatcher._reset_overloads()
    dispatcher.targetoptions = {**dispatcher.targetoptions, "parallel": False}
    dispatcher.compile = types.MethodType(_compile_serial, dispatcher)


def _compile_serial(dispatcher, sig):
    """``dispatcher.compile`` until the first compile in a switched process."""
    with _SWITCH_LOCK:
        if "compile" in vars(dispatcher):
            twin = _serial_twin(dispatcher)
            dispatcher._compiler, dispatcher._cache = twin._compiler, twin._cache
            del dispatcher.compile                  # Numba's own compile from now on
    return dispatcher.compile(sig)


def use_serial_builds():
    """Switch every registered kernel of this process, and every kernel defined later,
    to its serial build: the same bits, no parallel region.  The at-fork hook calls it
    in a child; idempotent."""
    global SERIAL_AFTER_FORK
    SERIAL_AFTER_FORK = True
    for dispatcher, _ in KERNELS:
        _switch_to_serial(dispatcher)


def _after_fork_in_child():
    global _SWITCH_LOCK
    _SWITCH_LOCK = threading.Lock()                 # a parent's thread may have held it
    if PARALLEL and not SERIAL_AFTER_FORK and _current_layer() in FORK_UNSAFE_LAYERS:
        use_serial_builds()


def forked_by_multiprocessing():
    """Whether this process is a ``multiprocessing`` child started with ``fork`` (a
    ``Pool`` or ``DataLoader`` worker, say).  Imported there for the first time, the
    package has no hook that saw the fork, and the parent may have used GNU OpenMP."""
    mp = sys.modules.get("multiprocessing")
    try:
        fork_process = mp.context.ForkProcess if mp is not None else None
    except AttributeError:                          # no fork on this platform
        return False
    return fork_process is not None and isinstance(mp.current_process(), fork_process)


_SWITCH_LOCK = threading.Lock()
_PARALLEL_BUILDS_KEPT = []
if PARALLEL and hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
    if _current_layer() in FORK_UNSAFE_LAYERS and forked_by_multiprocessing():
        use_serial_builds()                         # every kernel defined from now on


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
    """How the kernels run here: threading layer, parallel or serial (and whether serial
    because this process was forked from one on omp), threads, cache."""
    return {"threading_layer": THREADING_LAYER, "parallel": PARALLEL and not SERIAL_AFTER_FORK,
            "serial_after_fork": SERIAL_AFTER_FORK, "tbb_preloaded": _tbb.PRELOADED,
            "num_threads": numba.get_num_threads(), "max_threads": config.NUMBA_NUM_THREADS,
            "cache": not CACHE_DISABLED}


def warmup(serial=False):
    """Compile (or load from the cache) every kernel for its float32 signatures.

    Returns the number of builds compiled or loaded.  Call it once at start-up to move
    Numba's compilation out of the first real call.  ``serial=True`` also compiles
    into the cache the serial builds that a forked child of a process on GNU OpenMP
    runs (docs/reliability.md, "Processes"), so that the first such child (a
    DataLoader worker, say) loads them instead of compiling them.
    """
    count = 0
    for dispatcher, signatures in KERNELS:
        builds = [dispatcher]
        if serial and dispatcher.targetoptions.get("parallel"):
            builds.append(_serial_twin(dispatcher))
        for build in builds:
            for s in signatures:
                build.compile(s)
            count += len(signatures)
    return count


@contextlib.contextmanager
def calling_thread_only():
    """Run the parallel kernels called inside the block on the calling thread alone
    (``numba.set_num_threads(1)``, thread-local, restored after).  For inputs of a
    few hundred values, waking the thread pool costs far more than the work (about
    10 ms against 20 us per call on a busy 2-core machine).  The bits do not change:
    every kernel keeps Darknet's loop order within a channel whatever the thread
    count (tests/test_threads.py)."""
    previous = numba.get_num_threads()
    numba.set_num_threads(1)
    try:
        yield
    finally:
        numba.set_num_threads(previous)
