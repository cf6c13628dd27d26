"""The benchmarks behind ``make bench`` and ``make profile`` (not part of the installed
package).  Run from the repository root as modules:

    python -m benchmarks.bench          the side-by-side table and the target table
    python -m benchmarks.targets        the target table alone
    python -m benchmarks.profile_step   where a train step's time goes
    python -m benchmarks.fork_child     a process and its forked child, side by side

``_common`` is the leaf the others share (shapes, data, the implementations, the
timer); nothing here is a test: timings are printed, never asserted.
"""
