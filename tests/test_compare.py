"""The compare sub-command and the claims it reports about Darknet's backward.

Darknet's backward (the port, float32) is compared with float64 formulas.  The
tolerance is the first-order rounding bound of the float32 code it mirrors, per
element: a sequential float32 sum of m terms errs by at most ~m*u times the sum
of the terms' magnitudes (u = 2^-24), and each of the few float32 roundings
around it adds u.  So |port - formula| <= (m + 8) * u * (sum of the magnitudes of
the three terms of normalize_delta_cpu), evaluated on the float32 mean/variance
Darknet had (their own rounding is a separate, measured column).
"""
import os
import re
import sys

import numpy as np
import pytest

from darknet_bn import compare as C
from darknet_bn import reference as R
from darknet_bn._extras import install_command
from darknet_bn.cli import main
from darknet_bn.dialects import names

U32 = 2.0 ** -24
DIALECTS = ("pjreddie", "alexeyab", "hankai")


def inputs(regime, batch, c, sp, seed=0):
    return C.make_inputs(regime, batch, c, sp, np.random.default_rng(seed))


def layer(dialect, batch, h, w, c, gamma, beta):
    return C._layer(dialect, batch, h, w, c, gamma, beta)


def formula_bound(x, dy, gamma, batch, c, sp, mean, variance, dialect):
    """Per-element float32 rounding bound of Darknet's backward (see module doc)."""
    m = batch * sp
    xs = x.astype(np.float64).reshape(batch, c, sp)
    g = np.abs(gamma.astype(np.float64).reshape(1, c, 1) * dy.reshape(batch, c, sp))
    mu = mean.astype(np.float64).reshape(1, c, 1)
    var = variance.astype(np.float64).reshape(1, c, 1)
    d = np.abs(xs - mu)
    root = np.sqrt(var + R.EPS_DARKNET)
    a = 1 / root if dialect == "pjreddie" else 1 / (np.sqrt(var) + R.EPS_DARKNET)
    vd = 0.5 * (g * d).sum(axis=(0, 2), keepdims=True) / root ** 3
    md = g.sum(axis=(0, 2), keepdims=True) / root
    return ((m + 8) * U32 * (g * a + vd * 2 * d / m + md / m)).reshape(-1)


@pytest.mark.parametrize("dialect", DIALECTS)
@pytest.mark.parametrize("regime,batch,h,w", [("normal", 4, 1, 1), ("normal", 4, 8, 8),
                                              ("offset", 3, 5, 7), ("tiny", 2, 4, 4)])
def test_port_backward_is_darknet_formula_up_to_float32(dialect, regime, batch, h, w):
    """What Darknet computes is darknet_backward_formula, rounded: the decomposition's base."""
    c, sp = 3, h * w
    x, dy, gamma, beta = inputs(regime, batch, c, sp)
    l = layer(dialect, batch, h, w, c, gamma, beta)
    l.forward(x, train=True)
    dn = -l.backward(-dy, train=True).astype(np.float64)
    f32 = R.darknet_backward_formula(x, dy, gamma, batch, c, sp, dialect=dialect,
                                     mean=l.mean, variance=l.variance)
    bound = formula_bound(x, dy, gamma, batch, c, sp, l.mean, l.variance, dialect)
    assert np.all(np.abs(dn - f32) <= bound)
    if regime == "tiny":
        # ... and not the other placement's formula: the check can fail (where eps
        # placement matters; for v ~ 1 it moves the result by ~eps, below the bound)
        other = "alexeyab" if dialect == "pjreddie" else "pjreddie"
        f_other = R.darknet_backward_formula(x, dy, gamma, batch, c, sp, dialect=other,
                                             mean=l.mean, variance=l.variance)
        assert np.all(np.abs(dn - f_other) > 100 * bound)


@pytest.mark.parametrize("dialect", DIALECTS)
def test_parameter_gradients(dialect):
    """scale_updates = -sum(dy*x_norm) in float32; bias_updates = -sum(dy) (pjreddie) or
    untouched (alexeyab)."""
    batch, h, w, c = 4, 6, 5, 3
    sp, m = h * w, batch * h * w
    x, dy, gamma, beta = inputs("normal", batch, c, sp, seed=1)
    l = layer(dialect, batch, h, w, c, gamma, beta)
    l.forward(x, train=True)
    l.backward(-dy, train=True)
    prod = (dy.astype(np.float64) * l.x_norm).reshape(batch, c, sp)
    assert np.all(np.abs(-l.scale_updates - prod.sum(axis=(0, 2)))
                  <= (m + 2) * U32 * np.abs(prod).sum(axis=(0, 2)))
    dys = dy.astype(np.float64).reshape(batch, c, sp)
    if dialect == "pjreddie":
        assert np.all(np.abs(-l.bias_updates - dys.sum(axis=(0, 2)))
                      <= (m + 2) * U32 * np.abs(dys).sum(axis=(0, 2)))
    else:
        assert np.all(l.bias_updates == 0)


@pytest.mark.parametrize("dialect", DIALECTS)
def test_inference_backward_uses_what_the_table_says(dialect):
    """train=0: pjreddie applies the training formula to the current x with the rolling
    statistics; alexeyab to the last training batch's x and statistics.  Both
    accumulate scale_updates from the stale x_norm of the training step."""
    batch, h, w, c = 4, 4, 4, 3
    sp = h * w
    xa, dya, gamma, beta = inputs("normal", batch, c, sp, seed=2)
    xb, dyb, _, _ = inputs("normal", batch, c, sp, seed=3)
    l = layer(dialect, batch, h, w, c, gamma, beta)
    l.forward(xa, train=True)
    l.backward(-dya, train=True)
    mean_a, var_a, x_norm_a = l.mean.copy(), l.variance.copy(), l.x_norm.copy()
    l.rolling_mean[:] = 0.1
    l.rolling_variance[:] = 1.2
    l.scale_updates[:] = 0
    l.forward(xb, train=False)
    dn = -l.backward(-dyb, train=False).astype(np.float64)
    if dialect == "pjreddie":
        x_used, mean, var = xb, l.rolling_mean, l.rolling_variance
    else:
        x_used, mean, var = xa, mean_a, var_a
    f = R.darknet_backward_formula(x_used, dyb, gamma, batch, c, sp, dialect=dialect,
                                   mean=mean, variance=var)
    assert np.all(np.abs(dn - f) <= formula_bound(x_used, dyb, gamma, batch, c, sp, mean, var,
                                                  dialect))
    prod = (dyb.astype(np.float64) * x_norm_a).reshape(batch, c, sp)
    assert np.all(np.abs(-l.scale_updates - prod.sum(axis=(0, 2)))
                  <= (batch * sp + 2) * U32 * np.abs(prod).sum(axis=(0, 2)))


def test_sweep_columns_add_up():
    """dn - own = (dn - f32) + (f32 - f_m) + (f_m - f_m1) + (f_m1 - own): err_own is at
    most the sum of its parts (triangle inequality), in every row."""
    sizes = ((2, 1, 1), (4, 1, 1), (4, 4, 4), (4, 8, 8))
    rows = C.sweep(sizes=sizes, c=3, seed=1)
    assert len(rows) == len(sizes) * len(C.REGIMES) * len(DIALECTS)
    for r in rows:
        values = [r[k] for k in C.COLUMNS[C.COLUMNS.index("err_own"):]]
        assert np.all(np.isfinite(values)), r
        parts = r["divisor"] + r["eps"] + r["stats32"] + r["backward32"]
        assert r["err_own"] <= parts * (1 + 1e-9), r
        assert r["dbeta"] == 1.0 if r["dialect"] != "pjreddie" else r["dbeta"] < 1e-5
        if r["m"] >= 4 and r["regime"] != "tiny":
            assert r["trap"] > r["err_own"]     # the trap is worse than Darknet's formula


@pytest.mark.parametrize("dialect", DIALECTS)
def test_eps_column_matches_the_first_term_prediction(dialect):
    """At m = 1024 the eps part is the first term's mismatch: a relative
    |a_backward/r_forward - 1| with v ~ 1, i.e. ~eps/2 - 1e-6 (pjreddie) and
    ~eps/2 (alexeyab), to within the O(1/sqrt(m)) weight of the other terms."""
    row = C.sweep((dialect,), ("normal",), sizes=((4, 16, 16),), c=3, seed=2)[0]
    e = R.EPS_DARKNET
    v = 1.0                                   # N(0, 1) inputs
    if dialect == "pjreddie":
        predicted = abs((np.sqrt(v) + R.EPS_PJ_NORMALIZE) / np.sqrt(v + e) - 1)
    else:
        predicted = abs(np.sqrt(v + e) / (np.sqrt(v) + e) - 1)
    assert 0.5 * predicted < row["eps"] < 1.5 * predicted


def test_cli_compare_writes_table_and_csv(tmp_path, capsys):
    out = tmp_path / "cmp"
    assert main(["compare", "--out", str(out), "--max-m", "16", "--no-plot"]) == 0
    text = capsys.readouterr().out
    assert all(d in text for d in DIALECTS) and "inference mode" in text
    # one line of explanation per part, and the causes of the other gaps
    why = text.split("\nwhy", 1)[1].split("\ninference mode", 1)[0]
    for key in ("divisor", "eps", "stats32", "backward32", "omitted", "trap"):
        assert f"\n  {key} " in why
    assert "never computes bias_updates" in text and "stale x_norm" in text
    rows = (out / "compare.csv").read_text().splitlines()
    assert rows[0].split(",") == list(C.COLUMNS)
    assert len(rows) == 1 + 4 * len(C.REGIMES) * len(DIALECTS)      # m = 2, 4, 8, 16
    md = (out / "compare.md").read_text()
    assert "| dialect | regime | m |" in md and "## Inference mode" in md
    assert (out / "compare_inference.csv").is_file()
    assert not (out / "compare.png").exists()


def test_cli_compare_one_dialect_with_plot(tmp_path):
    pytest.importorskip("matplotlib")
    out = tmp_path / "cmp"
    assert main(["compare", "--dialect", "alexeyab", "--out", str(out), "--max-m", "16"]) == 0
    rows = (out / "compare.csv").read_text().splitlines()[1:]
    assert rows and all(r.startswith("alexeyab,") for r in rows)
    png = (out / "compare.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000


def test_every_fork_is_the_default_and_all(tmp_path):
    """No --dialect and --dialect all measure the same rows: every fork's."""
    assert set(names()) == set(DIALECTS)
    out = {}
    for args in ([], ["--dialect", "all"]):
        where = tmp_path / str(len(args))
        assert main(["compare", "--out", str(where), "--max-m", "4", "--no-plot", *args]) == 0
        out[len(args)] = (where / "compare.csv").read_text()
    assert out[0] == out[2]
    assert {line.split(",")[0] for line in out[0].splitlines()[1:]} == set(DIALECTS)


def test_both_is_refused_naming_all(tmp_path, capsys, monkeypatch):
    """``--dialect both`` meant the two C forks: with three it is an error saying to
    pass ``all``, before anything runs."""
    monkeypatch.setattr(C, "sweep", lambda *a, **k: pytest.fail("the sweep ran"))
    with pytest.raises(SystemExit) as e:
        main(["compare", "--dialect", "both", "--out", str(tmp_path / "cmp")])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("darknet-bn compare: error: argument --dialect: 'both' is not a "
                          "choice since there are 3 forks; pass --dialect all"), err
    assert not (tmp_path / "cmp").exists()


def test_hankai_rows_share_alexeyabs_formulas_not_its_bits():
    """hankai's float64 references and statistics are alexeyab's (same formulas, same
    mean_cpu/variance_cpu); its float32 arithmetic (sqrtf in x_norm and the backward,
    powf) is its own."""
    seed = 4
    rows = C.sweep(("alexeyab", "hankai"), ("normal", "tiny"), sizes=((4, 4, 4), (4, 8, 8)),
                   c=3, seed=seed)
    pairs = list(zip(rows[0::2], rows[1::2]))
    assert all(a["dialect"] == "alexeyab" and b["dialect"] == "hankai" for a, b in pairs)
    for a, b in pairs:
        for key in ("divisor", "eps", "stats32", "omitted", "trap", "dbeta"):
            assert a[key] == b[key], (key, a, b)
    for key in ("backward32", "dgamma"):
        assert any(a[key] != b[key] for a, b in pairs), f"{key}, seed {seed}"


def test_plot_without_matplotlib_says_how_to_get_it(tmp_path, monkeypatch):
    rows = C.sweep(("pjreddie",), ("normal",), sizes=((4, 1, 1),), c=2)
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(RuntimeError, match=re.escape(install_command("plot"))):
        C.plot(rows, os.fspath(tmp_path / "x.png"))


def test_cli_compare_without_matplotlib_skips_the_plot(tmp_path, capsys, monkeypatch):
    """No matplotlib: tables and summary as usual, exit 0, one line on stderr saying how."""
    monkeypatch.setitem(sys.modules, "matplotlib", None)      # import matplotlib fails
    out = tmp_path / "cmp"
    assert main(["compare", "--out", str(out), "--max-m", "8"]) == 0
    captured = capsys.readouterr()
    assert "inference mode" in captured.out and "why" in captured.out
    assert "compare.png" not in captured.out
    err = captured.err.strip().splitlines()
    assert len(err) == 1 and "plot skipped" in err[0]
    assert install_command("plot") in err[0] and "--no-plot" in err[0]
    assert (out / "compare.csv").is_file() and (out / "compare.md").is_file()
    assert (out / "compare_inference.csv").is_file()
    assert not (out / "compare.png").exists()


def test_cli_compare_below_the_plot_range_skips_the_plot(tmp_path, capsys):
    out = tmp_path / "cmp"
    assert main(["compare", "--out", str(out), "--max-m", "3", "--dialect", "pjreddie"]) == 0
    assert "plot skipped, it starts at m = 4" in capsys.readouterr().err
    assert (out / "compare.csv").is_file() and not (out / "compare.png").exists()


@pytest.mark.parametrize("args,pattern", [
    (["--max-m", "1"], r"argument --max-m: must be >= 2"),
    (["--max-m", "0"], r"argument --max-m: must be >= 2"),
    (["--max-m", "-5"], r"argument --max-m: must be >= 2"),
    (["--max-m", "1e6"], r"argument --max-m: must be an integer >= 2"),
    (["--max-m", "9" * 5000], r"argument --max-m: must be an integer >= 2 .*, got '9999"),
    (["--seed", "-1"], r"argument --seed: must be 0\.\.9223372036854775807"),
    (["--seed", "99999999999999999999999"], r"argument --seed: must be 0\.\.\d+ \(2\*\*63-1\), "
     r"got 99999999999999999999999; pass e\.g\. --seed 0"),
    (["--seed", str(2**63)], r"argument --seed: must be 0\.\."),
    (["--seed", "x"], r"argument --seed: must be an integer 0\.\."),
])
def test_cli_compare_rejects_bad_arguments_before_running(tmp_path, capsys, monkeypatch,
                                                          args, pattern):
    """argparse errors: usage and one error line naming the option, exit status 2,
    nothing run and nothing written."""
    monkeypatch.setattr(C, "sweep", lambda *a, **k: pytest.fail("the sweep ran"))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as e:
        main(["compare", "--out", str(tmp_path / "cmp"), "--no-plot", *args])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[0].startswith("usage: darknet-bn compare")
    assert len(err[-1]) < 300 and err[-1].startswith("darknet-bn compare: error: ")
    assert re.search(pattern, err[-1]), err[-1]
    assert list(tmp_path.iterdir()) == []


def test_cli_compare_seed_limits_run(tmp_path, capsys):
    out = tmp_path / "cmp"
    for seed in ("0", str(2**63 - 1)):
        assert main(["compare", "--out", str(out), "--seed", seed, "--max-m", "2",
                     "--dialect", "pjreddie", "--no-plot"]) == 0
        assert f"(seed {seed};" in (out / "compare.md").read_text()
    capsys.readouterr()


@pytest.mark.parametrize("make_out,pattern", [
    (lambda d: "/dev/null/x", r"--out '/dev/null/x': cannot create the directory \(Not a "
                              r"directory: '?/dev/null/x"),
    (lambda d: _touch(d / "file"), r"cannot create the directory \(File exists"),
    (lambda d: _touch(d / "f") + "/sub", r"cannot create the directory \(Not a directory"),
    (lambda d: "", r"--out '': cannot create the directory \(No such file or directory"),
    (lambda d: str(d / "a\0b"), r"cannot create the directory \(.*null byte"),
])
def test_cli_compare_unusable_out_fails_before_the_sweep(tmp_path, capsys, monkeypatch,
                                                          make_out, pattern):
    """An --out that cannot hold the results: one line, exit 2, before any measurement
    (the sweep is replaced by a failure)."""
    out = make_out(tmp_path)
    monkeypatch.setattr(C, "sweep", lambda *a, **k: pytest.fail("the sweep ran"))
    assert main(["compare", "--out", out, "--max-m", "4", "--no-plot"]) == 2
    captured = capsys.readouterr()
    err = captured.err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("darknet-bn compare: error: ")
    assert re.search(pattern, err[0]), err[0]
    assert captured.out == ""


def _touch(path):
    path.write_text("")
    return str(path)


def _mkdir(path):
    path.mkdir(parents=True)
    return str(path)


def test_cli_compare_unwritable_result_file_is_one_line(tmp_path, capsys):
    """An output file that cannot be written (here a directory in its place): the OS
    error, once, as one line; exit 2."""
    out = _mkdir(tmp_path / "cmp" / "compare.csv")[:-len("/compare.csv")]
    assert main(["compare", "--out", out, "--max-m", "4", "--no-plot"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("darknet-bn compare: error: "), err
    assert re.search(r"cannot write the results \(Is a directory: .*compare\.csv\)", err[0])


def test_cli_compare_creates_nested_out_before_the_sweep(tmp_path, capsys, monkeypatch):
    out = tmp_path / "a" / "b"
    seen = []
    real = C.sweep
    monkeypatch.setattr(C, "sweep", lambda *a, **k: seen.append(out.is_dir()) or real(*a, **k))
    assert main(["compare", "--out", str(out), "--max-m", "2", "--no-plot"]) == 0
    assert seen == [True] and (out / "compare.csv").is_file()
    capsys.readouterr()


def test_sweep_validates_its_arguments():
    with pytest.raises(ValueError, match="unknown dialect"):
        C.sweep(("yolo",), sizes=((4, 1, 1),))
    with pytest.raises(ValueError, match="unknown regime"):
        C.sweep(regimes=("flat",), sizes=((4, 1, 1),))
    with pytest.raises(TypeError, match="sequences of names"):
        C.sweep("pjreddie", sizes=((4, 1, 1),))
    with pytest.raises(ValueError, match=r"batch\*h\*w = 1 leaves one value per channel"):
        C.sweep(sizes=((1, 1, 1),))
    with pytest.raises(ValueError, match="each size is \\(batch, h, w\\)"):
        C.sweep(sizes=((4, 1),))
    with pytest.raises(TypeError, match="batch must be an integer"):
        C.sweep_inference(sizes=((4.0, 1, 1),))
    with pytest.raises(ValueError, match=r"sweep: seed must be 0\.\.9223372036854775807 "
                       r"\(2\*\*63-1\), got 99999999999999999999999$"):
        C.sweep(sizes=((4, 1, 1),), seed=99999999999999999999999)
    with pytest.raises(ValueError, match=r"sweep_inference: seed must be 0\.\..*got -1"):
        C.sweep_inference(sizes=((4, 1, 1),), seed=-1)
    with pytest.raises(TypeError, match=r"sweep: seed must be an integer, got float"):
        C.sweep(sizes=((4, 1, 1),), seed=1.0)


def test_a_case_gets_the_same_data_whatever_else_is_swept():
    one = C.sweep(("alexeyab",), ("offset",), sizes=((4, 2, 2),), c=2, seed=3)
    many = C.sweep(regimes=("tiny", "offset"), sizes=((4, 1, 1), (4, 2, 2)), c=2, seed=3)
    match = [r for r in many if r["dialect"] == "alexeyab" and r["regime"] == "offset"
             and r["m"] == 16]
    assert match == one
