"""One table of the ported routines: drives the golden tests and the naive tests.

Each row names the port, its naive transcription (tests/naive.py), the argument
list in Darknet's order and the buffers the routine writes.  Argument names are
the fixture array names (data/golden/routines) or dimension names.
"""
from dataclasses import dataclass

import numpy as np

import naive
from darknet_bn import batchnorm_layer, blas, convolutional_layer

DIMS = ("batch", "filters", "spatial", "N", "ALPHA", "INCX", "INCY")
TENSORS = ("x", "delta", "output", "x_norm")               # batch*filters*spatial floats
REGIMES = ("normal", "offset", "tiny", "huge", "constant_channel")
#: Every fork, by name (the tests name them; the package never does outside dialects.py).
FORKS = ("pjreddie", "alexeyab", "hankai")


@dataclass(frozen=True)
class Routine:
    name: str
    port: object
    naive: object
    args: tuple
    writes: tuple
    forked: bool = False            # takes dialect= (the routines whose bits differ by fork)

    @property
    def module(self):
        return self.port.__module__

    @property
    def strided(self):
        return "N" in self.args


ROUTINES = [
    Routine("mean_cpu", blas.mean_cpu, naive.mean_cpu,
            ("x", "batch", "filters", "spatial", "mean"), ("mean",)),
    Routine("variance_cpu", blas.variance_cpu, naive.variance_cpu,
            ("x", "mean", "batch", "filters", "spatial", "variance"), ("variance",)),
    Routine("normalize_cpu", blas.normalize_cpu, naive.normalize_cpu,
            ("x", "mean", "variance", "batch", "filters", "spatial"), ("x",), forked=True),
    Routine("mean_delta_cpu", blas.mean_delta_cpu, naive.mean_delta_cpu,
            ("delta", "variance", "batch", "filters", "spatial", "mean_delta"), ("mean_delta",),
            forked=True),
    Routine("variance_delta_cpu", blas.variance_delta_cpu, naive.variance_delta_cpu,
            ("x", "delta", "mean", "variance", "batch", "filters", "spatial", "variance_delta"),
            ("variance_delta",), forked=True),
    Routine("normalize_delta_cpu", blas.normalize_delta_cpu, naive.normalize_delta_cpu,
            ("x", "mean", "variance", "mean_delta", "variance_delta", "batch", "filters",
             "spatial", "delta"), ("delta",), forked=True),
    Routine("axpy_cpu", blas.axpy_cpu, naive.axpy_cpu,
            ("N", "ALPHA", "X", "INCX", "Y", "INCY"), ("Y",)),
    Routine("scal_cpu", blas.scal_cpu, naive.scal_cpu, ("N", "ALPHA", "X", "INCX"), ("X",)),
    Routine("copy_cpu", blas.copy_cpu, naive.copy_cpu, ("N", "X", "INCX", "Y", "INCY"), ("Y",)),
    Routine("scale_bias", convolutional_layer.scale_bias, naive.scale_bias,
            ("output", "scales", "batch", "filters", "spatial"), ("output",)),
    Routine("add_bias", convolutional_layer.add_bias, naive.add_bias,
            ("output", "biases", "batch", "filters", "spatial"), ("output",)),
    Routine("backward_bias", convolutional_layer.backward_bias, naive.backward_bias,
            ("bias_updates", "delta", "batch", "filters", "spatial"), ("bias_updates",)),
    Routine("backward_scale_cpu", batchnorm_layer.backward_scale_cpu, naive.backward_scale_cpu,
            ("x_norm", "delta", "batch", "filters", "spatial", "scale_updates"),
            ("scale_updates",)),
]
BY_NAME = {r.name: r for r in ROUTINES}


def routines_of(module):
    return [r for r in ROUTINES if r.module == module.__name__]


def call(routine, impl, values, dialect):
    """Call ``impl`` (the port or the naive reference) with ``values`` by name."""
    args = [values[name] for name in routine.args]
    if routine.forked:
        return impl(*args, dialect=dialect) if impl is routine.port else impl(*args, dialect)
    return impl(*args)


def golden_values(routine, entry, arrays):
    """(inputs by name, expected written buffers) from a golden manifest entry.

    Written buffers with no recorded ``*_in`` start as NaN, so an element the
    port forgets to write shows up as a difference.
    """
    values = {"batch": entry.get("batch"), "filters": entry.get("filters"),
              "spatial": entry.get("spatial"), "N": entry.get("N"),
              "ALPHA": entry.get("alpha"), "INCX": entry.get("incx"), "INCY": entry.get("incy")}
    expected = {}
    for name in routine.args:
        if name in DIMS:
            continue
        if name in routine.writes:
            expected[name] = arrays[name]
            start = arrays.get(name + "_in")
            values[name] = (start.copy() if start is not None
                            else np.full_like(arrays[name], np.nan))
        else:
            values[name] = arrays[name].copy()
    return values, expected


def _regime(rng, regime, n):
    if regime == "normal":
        return rng.standard_normal(n)
    if regime == "offset":              # large mean, small spread: cancellation
        return 1000.0 + 0.01 * rng.standard_normal(n)
    if regime == "tiny":
        return 1e-20 * rng.standard_normal(n)
    if regime == "huge":
        return 1e15 * rng.standard_normal(n)
    if regime == "constant_channel":
        return np.full(n, rng.standard_normal())
    raise ValueError(regime)


def random_values(routine, rng, batch, filters, spatial, regime="normal",
                  N=0, INCX=1, INCY=1, ALPHA=0.5):
    """Random arguments of the right sizes for ``routine``, as float32."""
    values = dict(batch=batch, filters=filters, spatial=spatial, N=N, INCX=INCX, INCY=INCY,
                  ALPHA=ALPHA)
    n = batch * filters * spatial
    for name in routine.args:
        if name in DIMS:
            continue
        if name in ("X", "Y"):
            inc = INCX if name == "X" else INCY
            size = (N - 1) * inc + 1 + int(rng.integers(0, 3)) if N else int(rng.integers(0, 3))
            arr = rng.standard_normal(size)
        elif name in TENSORS:
            arr = _regime(rng, regime, n)
        elif name == "variance":        # a variance is >= 0; include an exact 0
            arr = _regime(rng, regime, filters) ** 2
            arr[rng.integers(0, filters)] = 0.0
        elif name == "mean":
            arr = _regime(rng, regime, filters)
        else:                           # scales, biases, *_updates, *_delta
            arr = rng.standard_normal(filters)
        values[name] = np.asarray(arr, dtype=np.float32)
    return values


# --------------------------------------------------------------------------
# the two checks every routine gets (used by test_blas, test_convolutional_layer,
# test_batchnorm_layer)
# --------------------------------------------------------------------------
def golden_params(module):
    """pytest params (routine, manifest entry) for the golden cases of ``module``."""
    import pytest
    from darknet_bn.golden import routine_cases
    names = {r.name for r in routines_of(module)}
    return [pytest.param(BY_NAME[e["routine"]], e, id=e["file"][:-4])
            for e in routine_cases() if e["routine"] in names]


def check_golden(routine, entry):
    """Run the port on a recorded case; every written buffer must match Darknet's bits."""
    from darknet_bn.golden import load_routine_arrays

    from _compare import assert_bits
    values, expected = golden_values(routine, entry, load_routine_arrays(entry))
    call(routine, routine.port, values, entry.get("fork") or "pjreddie")
    assert_bits([(f"{routine.name}:{name}", values[name], exp) for name, exp in expected.items()],
                context=entry["file"])


def check_naive(routine, values, dialect="pjreddie"):
    """Port and naive transcription on copies of the same inputs: identical bits in
    every written buffer, and read-only inputs left untouched."""
    from _compare import assert_bits
    copy = lambda v: {k: (a.copy() if isinstance(a, np.ndarray) else a) for k, a in v.items()}
    port, ref = copy(values), copy(values)
    call(routine, routine.port, port, dialect)
    with np.errstate(all="ignore"):
        call(routine, routine.naive, ref, dialect)
    pairs = [(f"{routine.name}:{name}", port[name], ref[name]) for name in routine.writes]
    pairs += [(f"{routine.name}:{name} (input, unchanged)", port[name], values[name])
              for name in routine.args if name not in DIMS and name not in routine.writes]
    assert_bits(pairs, context=f"{routine.name} vs naive ({dialect})")


def naive_strategy():
    """Hypothesis: shapes (batch, filters, spatial) incl. 1s, a regime, a fork, a seed."""
    from hypothesis import strategies as st
    return st.fixed_dictionaries(dict(
        batch=st.integers(1, 5), filters=st.integers(1, 6), spatial=st.integers(1, 13),
        regime=st.sampled_from(REGIMES), dialect=st.sampled_from(FORKS),
        seed=st.integers(0, 2**32 - 1), N=st.integers(0, 40), INCX=st.integers(1, 4),
        INCY=st.integers(1, 4), ALPHA=st.floats(-4, 4, width=32)))


def run_naive_example(routine, ex):
    """One hypothesis example: random values for ``routine`` checked against naive."""
    from hypothesis import assume
    if routine.name == "variance_cpu":
        assume(ex["batch"] * ex["spatial"] >= 2)       # rejected input, tested elsewhere
    rng = np.random.default_rng(ex["seed"])
    values = random_values(routine, rng, ex["batch"], ex["filters"], ex["spatial"],
                           ex["regime"], ex["N"], ex["INCX"], ex["INCY"], ex["ALPHA"])
    check_naive(routine, values, ex["dialect"])


def routine_tests(module):
    """The two standard tests for every routine of ``module``, for the test module
    mirroring it: ``test_golden, test_matches_naive = routine_tests(blas)``."""
    import pytest
    from hypothesis import given, settings

    @pytest.mark.parametrize("routine, entry", golden_params(module))
    def test_golden(routine, entry):
        check_golden(routine, entry)

    @pytest.mark.parametrize("routine", routines_of(module), ids=lambda r: r.name)
    @settings(max_examples=30, deadline=None)
    @given(ex=naive_strategy())
    def test_matches_naive(routine, ex):
        run_naive_example(routine, ex)

    return test_golden, test_matches_naive
