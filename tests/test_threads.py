"""Concurrency: separate layers used from 4 Python threads at once give the bits of
sequential use; the thread count and the threading layer never change the bits.

Threading-layer policy (darknet_bn/_jit.py, docs/reliability.md): Numba's own
choice (tbb, then omp, then workqueue) is kept; when it would be workqueue, which
aborts the whole process on concurrent use, the kernels are compiled serially.
The pip package tbb's libtbb.so.12 is preloaded (darknet_bn/_tbb.py) so that
Numba can use it (its test is skipped when tbb is not installed).
"""
import os
import signal
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import numba
import numpy as np
import pytest

from _state import WORKLOADS, same_bits, training_run
from darknet_bn import _jit, _tbb, blas
from darknet_bn.batchnorm_layer import PATHS

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent


def run_in_threads(fn, args_list, timeout=300):
    """Run ``fn(*args)`` for each args in its own thread, all released at once."""
    barrier = threading.Barrier(len(args_list))
    results, errors = [None] * len(args_list), []

    def work(i, args):
        try:
            barrier.wait()
            results[i] = fn(*args)
        except BaseException as exc:          # reported in the main thread
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i, a)) for i, a in enumerate(args_list)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout)
    assert not any(t.is_alive() for t in threads), "a thread hung"
    if errors:
        raise errors[0]
    return results


@pytest.fixture(scope="module")
def sequential():
    """The reference: each workload run alone, on the blas path, in this thread."""
    return [training_run(i) for i in range(len(WORKLOADS))]


@pytest.mark.parametrize("kernel", sorted(PATHS))
def test_threads_match_sequential(kernel, sequential):
    results = run_in_threads(training_run, [(i, kernel) for i in range(len(WORKLOADS))])
    for i, (got, want) in enumerate(zip(results, sequential)):
        assert same_bits(got, want), f"workload {i} ({WORKLOADS[i]}) on {kernel}: bits differ"


def test_threads_sharing_routines_on_separate_buffers():
    """The BLAS wrappers from many threads at once (each on its own buffers)."""
    def job(seed):
        rng = np.random.default_rng(seed)
        x = rng.standard_normal(6 * 50 * 40).astype(np.float32)
        mean, var = np.empty(50, np.float32), np.empty(50, np.float32)
        for _ in range(30):
            blas.mean_cpu(x, 6, 50, 40, mean)
            blas.variance_cpu(x, mean, 6, 50, 40, var)
            blas.normalize_cpu(x, mean, var, 6, 50, 40)
            blas.scal_cpu(x.size, 1.5, x, 1)
        return x
    want = [job(s) for s in range(8)]
    got = run_in_threads(job, [(s,) for s in range(8)])
    assert all(same_bits(g, w) for g, w in zip(got, want))


def test_thread_count_does_not_change_bits(sequential):
    """numba.set_num_threads is respected and is not part of the arithmetic."""
    before = numba.get_num_threads()
    try:
        for n in sorted({1, numba.config.NUMBA_NUM_THREADS}):
            numba.set_num_threads(n)
            assert same_bits(training_run(0), sequential[0]), f"{n} threads"
            assert numba.get_num_threads() == n, "darknet_bn changed the thread count"
    finally:
        numba.set_num_threads(before)


def test_set_num_threads_in_worker_threads(sequential):
    """Numba's thread count is per Python thread: each worker may choose its own."""
    def job(i, n):
        numba.set_num_threads(n)
        out = training_run(i)
        assert numba.get_num_threads() == n
        return out
    maxn = numba.config.NUMBA_NUM_THREADS
    got = run_in_threads(job, [(i, 1 + i % maxn) for i in range(len(WORKLOADS))])
    assert all(same_bits(g, w) for g, w in zip(got, sequential))


def test_threading_layer_is_threadsafe_or_kernels_are_serial():
    info = _jit.threading_info()
    assert info["parallel"] == (info["threading_layer"] in ("tbb", "omp"))
    if info["parallel"]:
        numba.njit(parallel=True)(lambda a: a.sum())(np.ones(4))   # make Numba pick it
        assert numba.threading_layer() == info["threading_layer"]
    modes = {d.py_func.__name__: bool(d.targetoptions.get("parallel")) for d, _ in _jit.KERNELS}
    if info["parallel"]:
        assert any(modes.values()), modes
    else:                               # the safety property: nothing parallel on workqueue
        assert not any(modes.values()), modes
        assert all(name.endswith("__serial") for name in
                   (d.py_func.__qualname__ for d, _ in _jit.KERNELS))


# --------------------------------------------------------------------------
# subprocesses: other threading layers and thread counts
# --------------------------------------------------------------------------
WORKER = textwrap.dedent("""
    import sys, threading
    sys.path.insert(0, {tests!r})
    import numpy as np
    from _state import WORKLOADS, training_run
    from darknet_bn import _jit
    out = [None] * len(WORKLOADS)
    barrier = threading.Barrier(len(WORKLOADS))
    def work(i):
        barrier.wait()
        out[i] = training_run(i)
    ts = [threading.Thread(target=work, args=(i,)) for i in range(len(WORKLOADS))]
    [t.start() for t in ts]; [t.join() for t in ts]
    np.savez(sys.argv[1], *out)
    import numba
    assert _jit.PARALLEL or not any(d.targetoptions.get("parallel") for d, _ in _jit.KERNELS)
    print(_jit.THREADING_LAYER, _jit.PARALLEL, numba.config.NUMBA_NUM_THREADS,
          numba.threading_layer() if _jit.PARALLEL else "-")
""")


def run_worker(tmp_path, **env):
    out = tmp_path / "out.npz"
    r = subprocess.run([sys.executable, "-c", WORKER.format(tests=str(TESTS)), str(out)],
                       env={**os.environ, **env}, capture_output=True, text=True,
                       timeout=600, cwd=ROOT)
    return r, out


@pytest.mark.slow
@pytest.mark.parametrize("env,layer,parallel", [
    ({"NUMBA_THREADING_LAYER": "workqueue"}, "workqueue", "False"),
    ({"NUMBA_NUM_THREADS": "1"}, None, "True"),
], ids=["workqueue", "NUMBA_NUM_THREADS=1"])
def test_threads_in_subprocess(tmp_path, sequential, env, layer, parallel):
    r, out = run_worker(tmp_path, **env)
    assert r.returncode == 0, f"worker died ({r.returncode}):\n{r.stderr[-2000:]}"
    predicted, par, nthreads, actual = r.stdout.split()
    assert par == parallel and (layer is None or predicted == layer)
    if "NUMBA_NUM_THREADS" in env:
        assert nthreads == env["NUMBA_NUM_THREADS"]
    if par == "True":
        assert actual == predicted
    with np.load(out) as z:
        for i, want in enumerate(sequential):
            assert same_bits(z[f"arr_{i}"], want), f"workload {i} under {env}"


@pytest.mark.slow
def test_workqueue_really_aborts_without_the_fallback(tmp_path):
    """Why the fallback exists: plain parallel Numba code on workqueue, 4 threads."""
    script = textwrap.dedent("""
        import threading, numpy as np, numba
        @numba.njit(parallel=True, nogil=True)
        def f(a):
            s = 0.0
            for i in numba.prange(a.size):
                s += np.sqrt(a[i])
            return s
        a = np.ones(1_000_000)
        f(a)
        def work():
            for _ in range(300):
                f(a)
        ts = [threading.Thread(target=work) for _ in range(4)]
        [t.start() for t in ts]; [t.join() for t in ts]
    """)
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                       timeout=300, env={**os.environ, "NUMBA_THREADING_LAYER": "workqueue"})
    if r.returncode == 0:
        pytest.skip("this Numba's workqueue layer survived concurrent use here")
    assert r.returncode == -signal.SIGABRT, r.stderr[-1000:]
    assert "Concurrent access" in r.stderr or "Terminating" in r.stderr


FORKER = textwrap.dedent("""
    import multiprocessing as mp, queue, sys
    sys.path.insert(0, {tests!r})
    from _state import training_run
    def child(q):
        q.put(training_run(1).tobytes())
    if __name__ == "__main__":
        want = training_run(1).tobytes()
        for method in ("spawn", "fork"):
            ctx = mp.get_context(method)
            q = ctx.Queue()
            p = ctx.Process(target=child, args=(q,))
            p.start()
            got = None                              # read before join: the pipe must drain
            for _ in range(240):
                try:
                    got = q.get(timeout=0.5)
                    break
                except queue.Empty:
                    if not p.is_alive():
                        try:
                            got = q.get(timeout=1)
                        except queue.Empty:
                            pass
                        break
            same = got == want
            p.join(60)
            print(method, p.exitcode, same)
""")


@pytest.mark.slow
def test_processes_after_use(tmp_path):
    """multiprocessing after the parent used the kernels, from a script (not pytest):
    spawn and fork children get the parent's bits on every layer; with omp the forked
    child runs the serial builds (docs/reliability.md; tests/test_fork.py has the rest)."""
    script = tmp_path / "forker.py"
    script.write_text(FORKER.format(tests=str(TESTS)))
    r = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                       timeout=600, cwd=ROOT)
    assert r.returncode == 0, r.stderr[-2000:]
    results = {m: (int(code), same == "True") for m, code, same in
               (line.split() for line in r.stdout.split("\n") if line)}
    assert results == {"spawn": (0, True), "fork": (0, True)}, (results, r.stderr[-2000:])
    assert "GNU OpenMP" not in r.stderr, r.stderr[-2000:]


# --------------------------------------------------------------------------
# tbb from pip: preloaded for Numba (darknet_bn/_tbb.py)
# --------------------------------------------------------------------------
TBB_REPORT = textwrap.dedent("""
    import sys
    {setup}
    from darknet_bn import _jit, _tbb
    print(_tbb.PRELOADED, _jit.THREADING_LAYER)
""")


def _tbb_installed():
    """A TBB runtime Numba could use: the pip package's file in a prefix, or a system one."""
    import ctypes.util
    relative = _tbb.TBB_LIBRARIES.get(sys.platform.rstrip("0123456789"))
    return bool(relative and any(os.path.isfile(os.path.join(p, relative))
                                 for p in _tbb.search_prefixes())) or bool(
        ctypes.util.find_library("tbb"))


def _env_without(*names):
    return {k: v for k, v in os.environ.items() if k not in names}


def test_tbb_preload_never_breaks_import(tmp_path):
    """A broken libtbb.so.12 where the pip package would put it: import still works,
    nothing is preloaded, and the layer is one Numba can use."""
    relative = _tbb.TBB_LIBRARIES.get(sys.platform.rstrip("0123456789"))
    if relative is None:
        pytest.skip(f"no TBB preload on {sys.platform}")
    (tmp_path / relative).parent.mkdir(parents=True)
    (tmp_path / relative).write_bytes(b"not a shared library")
    setup = (f"sys.prefix = sys.exec_prefix = {str(tmp_path)!r}\n"
             "import site; site.getuserbase = lambda: sys.prefix")
    r = subprocess.run([sys.executable, "-c", TBB_REPORT.format(setup=setup)],
                       capture_output=True, text=True, timeout=300, cwd=ROOT,
                       env=_env_without("NUMBA_THREADING_LAYER"))
    assert r.returncode == 0, r.stderr[-2000:]
    preloaded, layer = r.stdout.split()
    assert preloaded == "None" and layer in ("tbb", "omp", "workqueue")


@pytest.mark.parametrize("requested", ["omp", "workqueue"])
def test_tbb_not_preloaded_when_another_layer_is_asked_for(requested):
    """NUMBA_THREADING_LAYER naming another layer: no TBB is loaded behind its back."""
    assert _tbb.preload(requested, prefixes=[sys.prefix]) is None


def test_pip_tbb_gives_the_tbb_layer_and_fork_after_use(tmp_path):
    """With tbb installed (``pip install darknet_bn[tbb]``), the default layer is tbb,
    also when only the pip package provides libtbb.so.12 (preloaded), and a process
    that used the kernels can fork: the child's kernels run and give the same bits."""
    if not _tbb_installed():
        pytest.skip("tbb is not installed here (pip install 'darknet_bn[tbb]', or pip "
                    "install tbb); the default layer is then omp, whose forked children "
                    "run the serial builds (tests/test_fork.py)")
    env = _env_without("NUMBA_THREADING_LAYER", "NUMBA_THREADING_LAYER_PRIORITY")
    r = subprocess.run([sys.executable, "-c", TBB_REPORT.format(setup="")], env=env,
                       capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.split()[1] == "tbb", f"tbb installed but not used: {r.stdout}"
    r = subprocess.run([sys.executable, "-c", TBB_REPORT.format(setup="")],
                       env={**env, "NUMBA_THREADING_LAYER": "omp"},
                       capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert r.returncode == 0 and r.stdout.split() == ["None", "omp"], r.stdout + r.stderr
    script = tmp_path / "forker.py"
    script.write_text(FORKER.format(tests=str(TESTS)) + textwrap.dedent("""
        if __name__ == "__main__":
            import numba
            print("layer", numba.threading_layer(), "-")
    """))
    r = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                       timeout=600, cwd=ROOT, env=env)
    assert r.returncode == 0, r.stderr[-2000:]
    results = {m: (code, same) for m, code, same in
               (line.split() for line in r.stdout.split("\n") if line)}
    assert results["layer"][0] == "tbb"
    assert results["spawn"] == ("0", "True") and results["fork"] == ("0", "True"), results
