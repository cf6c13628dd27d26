"""``darknet-bn`` as a command-line tool: pipes, file modes, arguments in the wrong
place, files of the wrong kind, errors in the command line's words, the folded
file's cfg, a check table that fits a terminal, the pip install a missing extra
needs.

The commands run in a subprocess as ``python -m darknet_bn`` with this checkout
first on ``PYTHONPATH``.  That is the installed console script's entry point
(``darknet_bn.__main__`` calls ``darknet_bn.cli:main``, the target setup.cfg gives
``darknet-bn``; the first test checks it), run from
this checkout's code: a ``darknet-bn`` on PATH may come from an editable install of
another checkout.  The built wheel's own script is run by test_package.py's slow
test.
"""
import configparser
import hashlib
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CFG_DIR = ROOT / "data" / "golden" / "cfg"
FOLD_DIR = ROOT / "data" / "golden" / "fold"
FORK = "alexeyab"


def darknet_bn(*args, cwd, umask=None, close_stdout=False):
    """Run ``python -m darknet_bn ARGS`` in ``cwd``: ``(exit status, stdout, stderr)``.
    ``close_stdout``: stdout is a pipe whose reader has gone before the command
    writes (what ``| head -1`` leaves once head has its line)."""
    env = {k: v for k, v in os.environ.items() if k != "DARKNET_BN_DATA"}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [env.get("PYTHONPATH")])])
    command = [sys.executable, "-m", "darknet_bn", *map(str, args)]
    if close_stdout:
        proc = subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        proc.stdout.close()
        err = proc.stderr.read()
        return proc.wait(timeout=600), "", err
    r = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True,
                       timeout=600, umask=-1 if umask is None else umask)
    return r.returncode, r.stdout, r.stderr


def one_line_error(status, out, err, command):
    """Exit status 2, nothing on stdout, one line on stderr naming the command."""
    assert status == 2, (status, out, err)
    assert out == "" and "Traceback" not in err and "\x1b" not in err, err
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"darknet-bn {command}: "), err
    return lines[0]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """AlexeyAB's bn-zoo cfg and weights, the PyTorch model built from them as a
    state_dict, as a pickled ``nn.Module`` and as ONNX, and an ONNX export with
    eps 1e-3 (every batchnorm layer fails ``check`` with the same diagnosis)."""
    import onnx
    import torch
    from _check_models import build, export
    d = tmp_path_factory.mktemp("models")
    cfg, weights = d / "bn-zoo.cfg", d / "bn-zoo.weights"
    shutil.copy(CFG_DIR / FORK / "bn-zoo.cfg", cfg)
    shutil.copy(CFG_DIR / FORK / "bn-zoo.weights", weights)
    model, _ = build(cfg, weights, FORK)
    torch.save(model.state_dict(), d / "model.pt")
    torch.save(model, d / "module.pt")
    onnx.save(export(model, 32), d / "model.onnx")
    bad, _ = build(cfg, weights, FORK, eps=1e-3)
    onnx.save(export(bad, 32, fold=False), d / "bad-eps.onnx")
    return d


def copies(models, tmp_path, *names):
    for name in names:
        shutil.copy(models / name, tmp_path / name)
    return tmp_path


def snapshot(directory):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(directory.iterdir())}


# --------------------------------------------------------------------------
# a pipe closed early
# --------------------------------------------------------------------------
def test_a_closed_pipe_is_silent_and_keeps_the_exit_status(models, tmp_path):
    """Every command, its stdout's reader gone: nothing on stderr, and the status the
    command would have had (a passing check 0, a failing one 1); the files are
    written all the same.  (``python -m darknet_bn`` is the console script: checked
    first.)"""
    setup = configparser.ConfigParser()
    setup.read(ROOT / "setup.cfg")
    scripts = setup["options.entry_points"]["console_scripts"]
    assert scripts.strip() == "darknet-bn = darknet_bn.cli:main"
    assert "from .cli import main" in (ROOT / "darknet_bn" / "__main__.py").read_text()
    d = copies(models, tmp_path, "bn-zoo.cfg", "bn-zoo.weights", "model.pt", "model.onnx",
               "bad-eps.onnx")
    runs = [
        (["demo", "--quiet"], 0),
        (["inspect", "bn-zoo.cfg", "bn-zoo.weights", "--dialect", FORK], 0),
        (["compare", "--max-m", "4", "--no-plot", "--out", "cmp"], 0),
        (["check", "bn-zoo.cfg", "bn-zoo.weights", "model.onnx", "--dialect", FORK], 0),
        (["check", "bn-zoo.cfg", "bn-zoo.weights", "bad-eps.onnx", "--dialect", FORK], 1),
        (["fold", "bn-zoo.cfg", "bn-zoo.weights", "folded.weights", "--dialect", FORK], 0),
        (["to-weights", "bn-zoo.cfg", "model.pt", "out.weights", "--dialect", FORK], 0),
        (["fix", "bn-zoo.cfg", "bn-zoo.weights", "bad-eps.onnx", "fixed.onnx", "--dialect",
          FORK], 0),
        (["--help"], 0),
    ]
    for args, expected in runs:
        status, _, err = darknet_bn(*args, cwd=d, close_stdout=True)
        assert (status, err) == (expected, ""), (args, status, err[-1000:])
    for name in ("cmp/compare.csv", "folded.weights", "folded.cfg", "out.weights",
                 "fixed.onnx"):
        assert (d / name).is_file(), name
    # the pipeline itself: head takes the first line, the exit status is check's
    pipeline = (f"{sys.executable} -m darknet_bn check bn-zoo.cfg bn-zoo.weights model.onnx "
                f"--dialect {FORK} | head -n 1; exit ${{PIPESTATUS[0]}}")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    r = subprocess.run(["bash", "-c", pipeline], cwd=d, env=env, capture_output=True,
                       text=True, timeout=600)
    assert (r.returncode, r.stderr) == (0, "")
    assert r.stdout == f"model.onnx against bn-zoo.cfg + bn-zoo.weights ({FORK})\n"


# --------------------------------------------------------------------------
# file modes
# --------------------------------------------------------------------------
def _modes(directory):
    return {p.relative_to(directory).as_posix(): stat.S_IMODE(p.stat().st_mode)
            for p in directory.rglob("*") if p.is_file()}


@pytest.mark.parametrize("umask", [0o022, 0o077], ids=["022", "077"])
def test_the_commands_write_files_with_the_mode_open_gives(models, tmp_path, umask):
    """fold (the weights and their cfg), to-weights, fix, compare (CSV, Markdown, PNG):
    every file gets 0o666 & ~umask, as open() gives a new file; a file written over
    keeps its mode, as open() keeps it."""
    d = copies(models, tmp_path, "bn-zoo.cfg", "bn-zoo.weights", "model.pt", "bad-eps.onnx")
    inputs = _modes(d)
    out = d / "out"
    out.mkdir()
    for args in (["fold", "bn-zoo.cfg", "bn-zoo.weights", "out/folded.weights"],
                 ["to-weights", "bn-zoo.cfg", "model.pt", "out/model.weights"],
                 ["fix", "bn-zoo.cfg", "bn-zoo.weights", "bad-eps.onnx", "out/fixed.onnx"]):
        status, _, err = darknet_bn(*args, "--dialect", FORK, cwd=d, umask=umask)
        assert status == 0, err
    status, _, err = darknet_bn("compare", "--max-m", "4", "--out", "out/cmp", cwd=d,
                                umask=umask)
    assert status == 0, err
    written = _modes(out)
    assert sorted(written) == ["cmp/compare.csv", "cmp/compare.md", "cmp/compare.png",
                               "cmp/compare_inference.csv", "fixed.onnx", "folded.cfg",
                               "folded.weights", "model.weights"]
    assert written == {name: 0o666 & ~umask for name in written}
    assert _modes(d) == {**inputs, **{f"out/{k}": v for k, v in written.items()}}
    os.chmod(out / "folded.weights", 0o640)
    status, _, err = darknet_bn("fold", "bn-zoo.cfg", "bn-zoo.weights", "out/folded.weights",
                                "--dialect", FORK, cwd=d, umask=umask)
    assert status == 0, err
    assert stat.S_IMODE((out / "folded.weights").stat().st_mode) == 0o640


_API_WRITES = """
import sys
import torch
from darknet_bn.darknet import (denormalize_net, fix_file, fold_weights, read_weights,
                                write_weights)
from darknet_bn.torch import save_darknet_weights
cfg, weights, state, broken = sys.argv[1:5]
fold_weights(cfg, weights, "fold.weights", dialect="alexeyab", out_cfg_path="fold.cfg")
write_weights(cfg, "write.weights", read_weights(cfg, weights, dialect="alexeyab"))
save_darknet_weights(torch.load(state), cfg, "save.weights", dialect="alexeyab")
pj = cfg.replace("alexeyab", "pjreddie")
denormalize_net(pj, pj.replace(".cfg", ".weights"), "denormalize.weights")
fix_file(cfg, weights, broken, "fix.onnx", dialect="alexeyab")
"""


@pytest.mark.slow          # the commands' run above goes through the same writers
@pytest.mark.parametrize("umask", [0o022, 0o077], ids=["022", "077"])
def test_the_api_writes_files_with_the_mode_open_gives(models, tmp_path, umask):
    """fold_weights (weights and cfg), write_weights, save_darknet_weights,
    denormalize_net, fix_file: 0o666 & ~umask."""
    r = subprocess.run([sys.executable, "-c", _API_WRITES, str(CFG_DIR / FORK / "bn-zoo.cfg"),
                        str(CFG_DIR / FORK / "bn-zoo.weights"), str(models / "model.pt"),
                        str(models / "bad-eps.onnx")],
                       cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(ROOT)},
                       capture_output=True, text=True, timeout=600, umask=umask)
    assert r.returncode == 0, r.stderr
    assert _modes(tmp_path) == {name: 0o666 & ~umask for name in (
        "fold.weights", "fold.cfg", "write.weights", "save.weights", "denormalize.weights",
        "fix.onnx")}


# --------------------------------------------------------------------------
# positional arguments in the wrong place
# --------------------------------------------------------------------------
#: Every command with positional files: its arguments in order (OUT: not there yet).
POSITIONAL = {
    "inspect": (["bn-zoo.cfg", "bn-zoo.weights"], "CFG WEIGHTS"),
    "fold": (["bn-zoo.cfg", "bn-zoo.weights", "out.weights"], "CFG WEIGHTS OUT"),
    "check": (["bn-zoo.cfg", "bn-zoo.weights", "model.onnx"], "CFG WEIGHTS MODEL"),
    "to-weights": (["bn-zoo.cfg", "model.pt", "out.weights"], "CFG STATE_DICT OUT"),
    "fix": (["bn-zoo.cfg", "bn-zoo.weights", "model.onnx", "out.onnx"],
            "CFG WEIGHTS MODEL OUT"),
}
SWAPS = [(command, i, j) for command, (args, _) in POSITIONAL.items()
         for i in range(len(args)) for j in range(i + 1, len(args))]


@pytest.mark.parametrize("command,i,j", SWAPS, ids=[f"{c}-{i}{j}" for c, i, j in SWAPS])
def test_swapped_arguments_are_named_with_the_order(models, tmp_path, command, i, j):
    """Two positional arguments swapped: exit 2, one line naming the argument and the
    order of the arguments; no file written or changed (OUT in an input's place
    overwrites nothing)."""
    d = copies(models, tmp_path, "bn-zoo.cfg", "bn-zoo.weights", "model.pt", "model.onnx")
    before = snapshot(d)
    args, order = POSITIONAL[command]
    args = list(args)
    args[i], args[j] = args[j], args[i]
    line = one_line_error(*darknet_bn(command, *args, "--dialect", FORK, cwd=d), command)
    assert line.endswith(f"; the order is {order}"), line
    assert any(m in line.split(";")[0] for m in order.split()), line
    assert snapshot(d) == before


@pytest.mark.parametrize("command,args,words", [
    ("to-weights", ["bn-zoo.cfg", "model.onnx", "o.weights"],
     ["STATE_DICT", "an ONNX model", "torch.save(model.state_dict(), path)"]),
    ("to-weights", ["bn-zoo.cfg", "module.pt", "o.weights"],
     ["module.pt", "pickled nn.Module", "CfgNet", "torch.save(model.state_dict(), path)"]),
    ("to-weights", ["bn-zoo.cfg", "text.pt", "o.weights"],
     ["text.pt", "not a PyTorch file", "torch.save(model.state_dict(), path)"]),
    ("check", ["bn-zoo.cfg", "bn-zoo.weights", "module.pt", "--eps", "1e-5"],
     ["module.pt", "pickled nn.Module", "torch.save(model.state_dict(), path)"]),
    ("check", ["bn-zoo.cfg", "model.pt", "model.onnx"], ["WEIGHTS", "a PyTorch file"]),
    ("inspect", ["bn-zoo.cfg", "model.onnx"], ["WEIGHTS", "an ONNX model"]),
    ("fold", ["bn-zoo.cfg", "model.onnx", "o.weights"], ["WEIGHTS", "an ONNX model"]),
    ("fold", ["bn-zoo.cfg", "bn-zoo.weights", "model.pt"],
     ["OUT", "a PyTorch file", "would overwrite"]),
    ("fix", ["bn-zoo.cfg", "bn-zoo.weights", "module.pt", "o.pt"],
     ["module.pt", "pickled nn.Module", "torch.save(model.state_dict(), path)"]),
    ("fix", ["bn-zoo.cfg", "model.pt", "model.onnx", "o.onnx"], ["WEIGHTS", "a PyTorch file"]),
    ("fix", ["bn-zoo.cfg", "bn-zoo.weights", "model.onnx", "bn-zoo.weights"],
     ["OUT 'bn-zoo.weights' is the WEIGHTS file", "pass another OUT"]),
], ids=lambda v: v if isinstance(v, str) else None)
def test_files_of_the_wrong_kind_are_named_for_what_they_are(models, tmp_path, command,
                                                             args, words):
    d = copies(models, tmp_path, "bn-zoo.cfg", "bn-zoo.weights", "model.pt", "model.onnx",
               "module.pt")
    (d / "text.pt").write_text("not a model\n")
    before = snapshot(d)
    line = one_line_error(*darknet_bn(command, *args, "--dialect", FORK, cwd=d), command)
    assert all(w in line for w in words), line
    assert snapshot(d) == before


# --------------------------------------------------------------------------
# the command line's words
# --------------------------------------------------------------------------
def test_errors_speak_the_command_lines_words(models, tmp_path):
    """The API's errors, raised inside a command, name options and arguments as the
    command line does: --dialect alexeyab, --eps, OUT; no routine prefix or errno."""
    d = copies(models, tmp_path, "bn-zoo.cfg", "bn-zoo.weights", "model.pt", "model.onnx")
    shutil.copy(CFG_DIR / "pjreddie" / "yolov3-tiny.cfg", d / "other.cfg")
    cases = [
        ("inspect", ["bn-zoo.cfg", "bn-zoo.weights", "--dialect", "pjreddie"],
         "--dialect alexeyab"),
        ("check", ["bn-zoo.cfg", "bn-zoo.weights", "model.onnx", "--dialect", FORK,
                   "--eps", "1e-5"], "--eps 1e-05 given"),
        ("fold", ["bn-zoo.cfg", "bn-zoo.weights", "bn-zoo.weights", "--dialect", FORK],
         "OUT 'bn-zoo.weights' is the WEIGHTS file"),
        ("to-weights", ["other.cfg", "model.pt", "o.weights", "--dialect", "pjreddie"],
         "cannot pair"),
    ]
    python_words = ("dialect=", "eps=", "out_path", "weights_path", "save_darknet_weights",
                    "fold_weights", "check_model", "read_weights", "[Errno")
    for command, args, words in cases:
        line = one_line_error(*darknet_bn(command, *args, cwd=d), command)
        assert words in line, line
        assert not any(w in line for w in python_words), line


def test_one_dialect_rule_for_every_command(models, tmp_path):
    """--dialect in any case, as the fork record reads names; required by every command
    that reads Darknet files, inspect included."""
    d = copies(models, tmp_path, "bn-zoo.cfg", "bn-zoo.weights")
    status, out, err = darknet_bn("inspect", "bn-zoo.cfg", "bn-zoo.weights", "--dialect",
                                  "AlexeyAB", cwd=d)
    assert status == 0 and "(alexeyab)" in out, err
    status, _, err = darknet_bn("inspect", "bn-zoo.cfg", cwd=d)
    assert status == 2 and "--dialect" in err.splitlines()[-1]
    status, _, err = darknet_bn("fold", "bn-zoo.cfg", "bn-zoo.weights", "f.weights",
                                "--dialect", "ALEXEYAB", cwd=d)
    assert status == 0, err


# --------------------------------------------------------------------------
# fold writes the cfg of its output
# --------------------------------------------------------------------------
def test_fold_writes_the_cfg_of_the_folded_file(models, tmp_path):
    """OUT with .cfg beside OUT: the cfg with batch_normalize=0 on the folded layers,
    every other line as it was; inspect reads the pair without a complaint."""
    d = copies(models, tmp_path, "bn-zoo.cfg", "bn-zoo.weights")
    status, out, err = darknet_bn("fold", "bn-zoo.cfg", "bn-zoo.weights", "folded.weights",
                                  "--dialect", FORK, cwd=d)
    assert status == 0, err
    assert "folded.cfg" in out
    original = (d / "bn-zoo.cfg").read_text().splitlines()
    folded = (d / "folded.cfg").read_text().splitlines()
    changed = [(a, b) for a, b in zip(original, folded) if a != b]
    assert len(folded) == len(original) and changed == [("batch_normalize=1",
                                                         "batch_normalize=0")] * 3
    status, out, err = darknet_bn("inspect", "folded.cfg", "folded.weights", "--dialect",
                                  FORK, cwd=d)
    assert status == 0, err
    status, _, err = darknet_bn("fold", "bn-zoo.cfg", "bn-zoo.weights", "again.weights",
                                "--dialect", FORK, "--out-cfg", "bn-zoo.cfg", cwd=d)
    assert status == 2 and "--out-cfg 'bn-zoo.cfg' is the CFG file" in err


@pytest.mark.parametrize("fork", ["pjreddie", "alexeyab"])
@pytest.mark.parametrize("name", ["fold-zoo", "bn-zoo"])
def test_folded_cfg_reads_darknets_folded_file(fork, name, tmp_path):
    """Darknet's own folded file, read with ``folded_cfg``'s cfg: exactly its size, and
    no batchnorm left where the fork folds."""
    from darknet_bn.darknet import fold_weights, folded_cfg, parse_cfg, read_weights
    cfg = FOLD_DIR / "fold-zoo.cfg" if name == "fold-zoo" else CFG_DIR / fork / "bn-zoo.cfg"
    weights = (FOLD_DIR / fork / "fold-zoo.weights" if name == "fold-zoo"
               else CFG_DIR / fork / "bn-zoo.weights")
    written = tmp_path / "folded.cfg"
    written.write_text(folded_cfg(cfg, dialect=fork))
    darknet_file = FOLD_DIR / fork / f"{name}.folded.weights"
    read_weights(written, darknet_file, dialect=fork)          # the size is checked
    net = parse_cfg(written, dialect=fork)
    assert net.file_bytes() == darknet_file.stat().st_size
    result = fold_weights(cfg, weights, tmp_path / "f.weights", dialect=fork,
                          out_cfg_path=tmp_path / "f.cfg")
    assert (tmp_path / "f.cfg").read_text() == written.read_text()
    assert Path(result.cfg_path) == tmp_path / "f.cfg"
    assert not any(spec.bn_channels for spec in net.layers if spec.index in result.folded)


# --------------------------------------------------------------------------
# check's table
# --------------------------------------------------------------------------
def test_check_table_fits_a_terminal_and_says_a_diagnosis_once(models, tmp_path):
    """Six layers with one mistake: rows within 80 columns, the diagnosis and its fix
    once, under the table, naming the layers it covers; print(report) is the table."""
    d = copies(models, tmp_path, "bn-zoo.cfg", "bn-zoo.weights", "bad-eps.onnx")
    status, out, err = darknet_bn("check", "bn-zoo.cfg", "bn-zoo.weights", "bad-eps.onnx",
                                  "--dialect", FORK, cwd=d)
    assert status == 1, err
    lines = out.splitlines()
    assert all(len(line) <= 80 for line in lines), max(lines, key=len)
    rows = [line for line in lines if line[:5].strip().isdigit()]
    assert len(rows) == 6 and all(row.endswith("FAIL [1]") for row in rows)
    text = " ".join(line.strip() for line in lines)
    assert text.count("eps: computes (x-mean)/sqrt(var + 0.001)") == 1
    assert "[1] layers 0, 1, 3, 7, 9, 11: eps:" in text
    assert "convert_batchnorm(model, dialect='alexeyab') before torch.onnx.export" in text

    from darknet_bn import check_model
    report = check_model(str(d / "bad-eps.onnx"), d / "bn-zoo.cfg", d / "bn-zoo.weights",
                         dialect=FORK)
    assert str(report) == "\n".join(report.format_table()) == "\n".join(lines[1:])


# --------------------------------------------------------------------------
# the pip install a missing extra needs
# --------------------------------------------------------------------------
def test_a_missing_extras_install_works_where_the_package_runs_from(tmp_path, monkeypatch):
    """From a checkout: pip install '.[onnx]' in it (its path elsewhere); installed:
    the distribution's own name with the extra (pip resolves it against the installed
    copy); neither: the packages."""
    from darknet_bn import _extras
    monkeypatch.chdir(ROOT)
    assert _extras.install_command("onnx") == "pip install '.[onnx]'"
    monkeypatch.chdir(tmp_path)
    assert _extras.install_command("torch") == f"pip install '{ROOT}[torch]'"
    monkeypatch.setattr(_extras, "checkout_root", lambda: None)
    monkeypatch.setattr(_extras, "installed_distribution", lambda: "darknet_bn")
    assert _extras.install_command("plot") == "pip install 'darknet_bn[plot]'"
    monkeypatch.setattr(_extras, "installed_distribution", lambda: None)
    assert _extras.install_command("onnx") == "pip install onnx onnxscript"
    assert _extras.missing_package("matplotlib") == \
        "this needs matplotlib, which is not installed: pip install matplotlib"
    assert _extras.missing_package("scipy") is None
