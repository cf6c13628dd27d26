"""Numba's on-disk cache with a read-only install (docs/reliability.md).

The package is installed (its source files copied, as a wheel of this pure-Python
package would place them) into a temporary directory that is then made
read-only, together with the HOME it runs under where a case needs that.  A
fresh interpreter imports it from there, runs a kernel, and reports where Numba
cached the code, whether the cache was hit, and the result's bits.

Root ignores permission bits; as root the child runs with every capability
dropped (``setpriv``), so the bits apply to it as to any user.
"""
import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import numpy as np
import pytest

import darknet_bn
from darknet_bn import blas

CHILD = textwrap.dedent("""
    import json, sys, tempfile, warnings
    sys.path.insert(0, sys.argv[1])
    tempfile.tempdir = sys.argv[2]      # the temp dir (gettempdir() would skip a read-only one)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        import numpy as np
        import darknet_bn
        from darknet_bn import _jit, blas
        assert darknet_bn.__file__.startswith(sys.argv[1]), darknet_bn.__file__
        x = (np.arange(2 * 3 * 5, dtype=np.float32) * np.float32(0.37)) ** 2
        mean = np.empty(3, np.float32)
        blas.mean_cpu(x, 2, 3, 5, mean)
    stats = blas._mean_cpu.stats
    print(json.dumps({"mean": mean.view(np.int32).tolist(), "cache_path": stats.cache_path,
                      "hits": sum(stats.cache_hits.values()),
                      "misses": sum(stats.cache_misses.values()),
                      "disabled": _jit.CACHE_DISABLED,
                      "warnings": [str(w.message) for w in caught
                                   if "cache" in str(w.message).lower()]}))
""")


def _expected_mean():
    x = (np.arange(2 * 3 * 5, dtype=np.float32) * np.float32(0.37)) ** 2
    mean = np.empty(3, np.float32)
    blas.mean_cpu(x, 2, 3, 5, mean)
    return mean.view(np.int32).tolist()


def _drop_privileges():
    """argv prefix that makes a root child obey permission bits (None: cannot)."""
    if os.geteuid() != 0:
        return []
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        return None
    probe = tempfile.mkdtemp()
    try:
        os.chmod(probe, 0o555)
        code = (f"try:\n    open({probe!r} + '/f', 'w')\nexcept PermissionError:\n"
                "    print('denied')")
        r = subprocess.run([setpriv, "--inh-caps=-all", "--bounding-set=-all", sys.executable,
                            "-c", code], capture_output=True, text=True)
        return ([setpriv, "--inh-caps=-all", "--bounding-set=-all"]
                if r.returncode == 0 and r.stdout.strip() == "denied" else None)
    finally:
        os.chmod(probe, 0o755)
        shutil.rmtree(probe)


def _make_read_only(path):
    for root, dirs, files in os.walk(path):
        for f in files:
            os.chmod(os.path.join(root, f), 0o444)
        os.chmod(root, 0o555)


def _make_writable(path):
    for root, dirs, files in os.walk(path):
        os.chmod(root, 0o755)


@pytest.fixture(scope="module")
def sandbox():
    prefix = _drop_privileges()
    if prefix is None:
        pytest.skip("running as root without setpriv: cannot make a directory read-only here")
    top = Path(tempfile.mkdtemp(prefix="darknet_bn-ro-"))
    site = top / "site"
    shutil.copytree(Path(darknet_bn.__file__).parent, site / "darknet_bn",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "*.nbi", "*.nbc"))
    _make_read_only(site)
    for d in ("home-rw", "home-ro", "numba-cache", "tmp-rw", "tmp-ro"):
        (top / d).mkdir()
    (top / "tmp-rw").chmod(0o700)
    for d in ("home-ro", "tmp-ro"):
        (top / d).chmod(0o555)
    yield top, site, prefix
    _make_writable(top)
    shutil.rmtree(top, ignore_errors=True)


def run_child(sandbox, home, tmp, numba_cache_dir=None):
    top, site, prefix = sandbox
    env = {k: v for k, v in os.environ.items()
           if k not in ("NUMBA_CACHE_DIR", "XDG_CACHE_HOME", "PYTHONPATH")}
    env.update(HOME=str(top / home), PYTHONDONTWRITEBYTECODE="1")
    if numba_cache_dir:
        env["NUMBA_CACHE_DIR"] = str(top / numba_cache_dir)
    r = subprocess.run(prefix + [sys.executable, "-c", CHILD, str(site), str(top / tmp)], env=env,
                       capture_output=True, text=True, timeout=300, cwd=str(top))
    assert r.returncode == 0, f"child failed:\n{r.stderr[-3000:]}"
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["mean"] == _expected_mean(), "wrong bits from the read-only install"
    return out


def _no_cache_files_in(site):
    return not any(p.suffix in (".nbi", ".nbc") for p in site.rglob("*"))


def test_package_is_really_read_only(sandbox):
    top, site, prefix = sandbox
    r = subprocess.run(prefix + [sys.executable, "-c",
                                 f"open({str(site / 'darknet_bn' / 'probe')!r}, 'w')"],
                       capture_output=True, text=True)
    assert r.returncode != 0 and "Permission denied" in r.stderr


def test_user_cache_dir(sandbox):
    """Read-only package, writable HOME: Numba's user-wide cache; hit on the second run."""
    top, site, _ = sandbox
    first = run_child(sandbox, "home-rw", "tmp-ro")
    assert first["cache_path"].startswith(str(top / "home-rw")), first
    assert first["misses"] >= 1 and not first["disabled"] and not first["warnings"]
    second = run_child(sandbox, "home-rw", "tmp-ro")
    assert second["hits"] >= 1 and second["misses"] == 0, second
    assert _no_cache_files_in(site)


def test_numba_cache_dir(sandbox):
    """NUMBA_CACHE_DIR wins over everything (even a read-only HOME)."""
    top, site, _ = sandbox
    out = run_child(sandbox, "home-ro", "tmp-ro", numba_cache_dir="numba-cache")
    assert out["cache_path"].startswith(str(top / "numba-cache")), out
    assert any((top / "numba-cache").rglob("*.nbi"))
    assert run_child(sandbox, "home-ro", "tmp-ro", numba_cache_dir="numba-cache")["hits"] >= 1
    assert _no_cache_files_in(site)


def test_private_temp_dir_when_nothing_else_is_writable(sandbox):
    """Read-only package and HOME, no NUMBA_CACHE_DIR: darknet_bn's last locator."""
    top, site, _ = sandbox
    out = run_child(sandbox, "home-ro", "tmp-rw")
    cache_root = top / "tmp-rw" / f"darknet_bn-numba-cache-{os.getuid()}"
    assert out["cache_path"].startswith(str(cache_root)), out
    assert stat.S_IMODE(cache_root.stat().st_mode) == 0o700
    assert run_child(sandbox, "home-ro", "tmp-rw")["hits"] >= 1
    assert _no_cache_files_in(site)


def test_every_jit_goes_through_the_fallback():
    """No module bypasses darknet_bn._jit (whose decorators handle an unwritable cache)."""
    package = Path(darknet_bn.__file__).parent
    plain = sorted(str(p.relative_to(package)) for p in package.rglob("*.py")
                   if p.name != "_jit.py" and "njit(" in p.read_text())
    assert not plain, (f"{plain} call numba.njit directly: use darknet_bn._jit.kernel or "
                       "helper (same options, plus the cache fallback)")


def test_no_writable_location_at_all(sandbox):
    """Nothing writable: import still works, kernels compile in memory, one warning."""
    out = run_child(sandbox, "home-ro", "tmp-ro")
    assert out["disabled"] and out["hits"] == 0
    assert len(out["warnings"]) == 1 and "NUMBA_CACHE_DIR" in out["warnings"][0]


# --------------------------------------------------------------------------
# When a cached kernel is stale: its own file, or a module in _jit.KERNEL_IMPORTS
# --------------------------------------------------------------------------
STAMP_CHILD = textwrap.dedent("""
    import json, sys
    sys.path.insert(0, sys.argv[1])
    import numpy as np
    import darknet_bn
    from darknet_bn import blas
    assert darknet_bn.__file__.startswith(sys.argv[1]), darknet_bn.__file__
    x = np.arange(12, dtype=np.float32)
    blas.normalize_cpu(x, np.ones(3, np.float32), np.ones(3, np.float32), 2, 3, 2)
    stats = blas._normalize_cpu.stats
    print(json.dumps({"hits": sum(stats.cache_hits.values()),
                      "misses": sum(stats.cache_misses.values()),
                      "cache_path": stats.cache_path}))
""")


def _copy_package(tmp_path):
    site = tmp_path / "site"
    shutil.copytree(Path(darknet_bn.__file__).parent, site / "darknet_bn",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "*.nbi", "*.nbc"))
    return site


def _run(child, site):
    env = {k: v for k, v in os.environ.items()
           if k not in ("NUMBA_CACHE_DIR", "PYTHONPATH", "NUMBA_DISABLE_JIT")}
    r = subprocess.run([sys.executable, "-c", child, str(site)], env=env,
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


def _touch(site, name):
    path = site / "darknet_bn" / name
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**10))


@pytest.mark.slow          # recompiles every kernel module's imports in child processes
def test_cache_stamp_covers_exactly_the_kernel_imports(tmp_path):
    """Editing a module compiled into the kernels (the arithmetic, the dialect table,
    the intrinsics, _jit) recompiles them; editing one they do not use keeps the cache."""
    site = _copy_package(tmp_path)
    first = _run(STAMP_CHILD, site)
    assert first["misses"] == 1 and first["cache_path"].startswith(str(site))
    assert _run(STAMP_CHILD, site) == {**first, "hits": 1, "misses": 0}
    for name in ("compare.py", "cli.py", "_validate.py"):
        _touch(site, name)
        assert _run(STAMP_CHILD, site)["hits"] == 1, f"editing {name} recompiled the kernels"
    for name in ("c_arith.py", "_simd.py", "dialects.py", "_jit.py"):
        _touch(site, name)
        assert _run(STAMP_CHILD, site)["misses"] == 1, f"editing {name} kept a stale kernel"


def _compiled_in(fn, seen):
    """The package modules whose code ``fn`` (a kernel or helper) compiles in: its own,
    and, recursively, those of the functions, helpers and intrinsics it refers to."""
    py = getattr(fn, "py_func", None) or getattr(fn, "_defn", None) or fn
    module = getattr(py, "__module__", "") or ""
    if not module.startswith("darknet_bn") or py in seen:
        return set()
    seen.add(py)
    found = {module}
    code = getattr(py, "__code__", None)
    for name in (code.co_names if code else ()):
        value = py.__globals__.get(name)
        if callable(value):
            found |= _compiled_in(value, seen)
    return found


def test_kernel_imports_are_what_the_kernels_use():
    """_jit.KERNEL_IMPORTS (the modules in the cache stamp) is exactly the set of other
    modules the kernels compile in, plus _jit itself (the compile options)."""
    from darknet_bn import _jit
    used = set()
    for dispatcher, _ in _jit.KERNELS:
        own = dispatcher.py_func.__module__
        used |= {m for m in _compiled_in(dispatcher, set()) if m != own}
    used = {m.rsplit(".", 1)[-1] + ".py" for m in used} | {"_jit.py"}
    assert used == set(_jit.KERNEL_IMPORTS)


def test_numba_internals_used_by_jit():
    """darknet_bn._jit relies on private Numba API, tested with the Numba minor version
    setup.cfg pins.  If this fails after a Numba upgrade, adapt _jit before widening
    the pin."""
    import importlib.util

    import numba
    from numba.core import caching
    from numba.np.ufunc import parallel

    from darknet_bn import _jit
    where = f"numba {numba.__version__}"
    for name in ("_CacheLocator", "_SourceFileBackedLocatorMixin", "CacheImpl"):
        assert isinstance(getattr(caching, name, None), type), f"{where}: no caching.{name}"
    for method in ("from_function", "get_source_stamp", "get_cache_path",
                   "get_suitable_cache_subpath", "ensure_cache_path"):
        assert callable(getattr(caching._SourceFileBackedLocatorMixin, method, None)) or \
            callable(getattr(caching._CacheLocator, method, None)), f"{where}: no {method}"
    locators = getattr(caching.CacheImpl, "_locator_classes", None)
    assert isinstance(locators, list), f"{where}: CacheImpl._locator_classes is gone"
    assert getattr(locators[0], "_darknet_bn", False), locators
    assert locators[-1] is _jit.PackageTempDirCacheLocator, locators
    locator = blas._mean_cpu._cache._impl._locator         # what a kernel really uses
    assert isinstance(locator, _jit.PackageStampMixin), type(locator)
    assert locator.get_source_stamp()[-1] == _jit.package_source_stamp()[0]
    assert callable(getattr(parallel, "_check_tbb_version_compatible", None)), where
    for layer in ("tbbpool", "omppool", "workqueue"):
        assert importlib.util.find_spec(f"numba.np.ufunc.{layer}"), f"{where}: no {layer}"
    # The switch to serial builds in a forked child (_jit._switch_to_serial) replaces a
    # dispatcher's compiler and cache and drops its overloads; its compile must use them.
    import inspect

    from numba.core.dispatcher import Dispatcher
    d = blas._mean_cpu
    for name in ("_compiler", "_cache", "targetoptions", "overloads"):
        assert hasattr(d, name), f"{where}: a dispatcher has no {name}"
    assert callable(getattr(d, "_reset_overloads", None)), f"{where}: no _reset_overloads"
    compile_source = inspect.getsource(Dispatcher.compile)
    for use in ("self._cache.load_overload", "self._compiler.compile", "self.add_overload"):
        assert use in compile_source, f"{where}: Dispatcher.compile no longer calls {use}"
    assert "self.compile(" in inspect.getsource(Dispatcher._compile_for_args), where


FUSED_CHILD = textwrap.dedent("""
    import json, sys
    sys.path.insert(0, sys.argv[1])
    import numpy as np
    import darknet_bn
    from darknet_bn import BatchNormLayer, fused
    assert darknet_bn.__file__.startswith(sys.argv[1]), darknet_bn.__file__
    layer = BatchNormLayer(2, 3, 3, 16)
    layer.forward(np.arange(2 * 16 * 9, dtype=np.float32), train=True)
    stats = fused._forward_train.stats
    print(json.dumps({"hits": sum(stats.cache_hits.values()),
                      "misses": sum(stats.cache_misses.values()),
                      "cache_path": stats.cache_path}))
""")


@pytest.mark.slow
def test_editing_simd_recompiles_the_fused_kernels(tmp_path):
    """Numba alone would keep the cached fused kernels after an edit of ``_simd.py`` (it
    only looks at ``fused.py``); the stamp recompiles them.  Slow: three compiles of
    the largest kernel."""
    site = _copy_package(tmp_path)
    first = _run(FUSED_CHILD, site)
    assert first["misses"] == 1 and first["cache_path"].startswith(str(site))
    assert _run(FUSED_CHILD, site) == {**first, "hits": 1, "misses": 0}
    _touch(site, "_simd.py")
    assert _run(FUSED_CHILD, site)["misses"] == 1
