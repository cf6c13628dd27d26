"""The package as a user installs it: version, package data, the wheel, one-line errors.

The slow test builds the sdist and the wheel (``python -m build``: the wheel is built
from the sdist), installs the wheel into a fresh virtual environment and runs the
installed ``darknet-bn`` from a directory outside the checkout.  The new environment
has no pip and no dependencies of its own: its ``darknet_bn`` is the wheel's, and a
``.pth`` file lends it the test environment's numba and numpy (no network).
"""
import configparser
import fnmatch
import json
import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

import darknet_bn
from _recorded import demo_summary, manifest_cases
from darknet_bn import golden
from darknet_bn.cli import COMMANDS, main

ROOT = Path(__file__).resolve().parent.parent
SETUP = configparser.ConfigParser()
SETUP.read(ROOT / "setup.cfg")


def test_version_is_the_latest_changelog_release(capsys):
    releases = re.findall(r"^## \[(\d+\.\d+\.\d+)\]", (ROOT / "CHANGELOG.md").read_text(), re.M)
    assert releases and releases[0] == darknet_bn.__version__
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0
    assert capsys.readouterr().out.strip() == f"darknet-bn {darknet_bn.__version__}"


def test_layer_fixtures_are_package_data_and_have_one_copy():
    """Every file the manifest names is inside the package and matched by setup.cfg's
    package_data; the checkout holds no second copy."""
    layer = golden.PACKAGE_DATA / "layer"
    names = [c["file"] for c in json.loads((layer / "manifest.json").read_text())["cases"]]
    assert len(names) == 40 and all((layer / n).is_file() for n in names)
    patterns = SETUP["options.package_data"]["darknet_bn"].replace(",", " ").split()
    package = Path(darknet_bn.__file__).parent
    for path in [layer / "manifest.json", *(layer / n for n in names)]:
        rel = path.relative_to(package).as_posix()
        assert any(fnmatch.fnmatch(rel, p) for p in patterns), rel
    assert not (ROOT / "data" / "golden" / "layer").exists()


def test_the_tests_read_the_package_copy(monkeypatch):
    monkeypatch.delenv(golden.ENV_VAR, raising=False)
    assert golden.layer_dir() == golden.PACKAGE_DATA / "layer"
    assert golden.layer_dir().is_relative_to(Path(darknet_bn.__file__).parent)


def test_demo_without_fixtures_is_one_line_naming_the_fix(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv(golden.ENV_VAR, raising=False)
    monkeypatch.setattr(golden, "PACKAGE_DATA", tmp_path / "absent")
    assert main(["demo", "--quiet"]) == 2
    captured = capsys.readouterr()
    err = captured.err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("darknet-bn demo: ")
    assert "reinstall darknet_bn" in err[0] and golden.ENV_VAR in err[0]
    assert captured.out == ""


def test_data_override_pointing_nowhere_is_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv(golden.ENV_VAR, str(tmp_path))
    assert main(["demo"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"unset {golden.ENV_VAR}" in err[0]
    with pytest.raises(golden.FixturesNotFound, match="routines/"):
        golden.data_dir()


def test_data_override_is_read(tmp_path, monkeypatch):
    """$DARKNET_BN_DATA/layer replaces the package's cases (here: one of them)."""
    (tmp_path / "layer").mkdir()
    source = golden.PACKAGE_DATA / "layer"
    manifest = json.loads((source / "manifest.json").read_text())
    case = manifest["cases"][0]
    (tmp_path / "layer" / case["file"]).write_bytes((source / case["file"]).read_bytes())
    (tmp_path / "layer" / "manifest.json").write_text(json.dumps({"cases": [case]}))
    monkeypatch.setenv(golden.ENV_VAR, str(tmp_path))
    assert golden.layer_dir() == tmp_path / "layer"
    assert [c.file for c in golden.layer_cases()] == [case["file"]]


def test_a_missing_extra_is_one_line_naming_the_pip_install(monkeypatch, capsys):
    """Any command whose run needs an optional package that is absent: exit 2, one line
    with the extra that installs it (here a command that imports torch)."""
    import types
    cmd = types.ModuleType("needs_torch")
    cmd.HELP, cmd.add_arguments = "needs torch", lambda p: None

    def run(args):
        import torch  # noqa: F401
        return 0
    cmd.run = run
    monkeypatch.setitem(sys.modules, "needs_torch", cmd)
    monkeypatch.setitem(sys.modules, "torch", None)          # import torch fails
    monkeypatch.setitem(COMMANDS, "needs-torch", "needs_torch")
    monkeypatch.chdir(ROOT)                 # from the checkout: its own extras
    assert main(["needs-torch"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["darknet-bn needs-torch: this needs torch, which is not installed: "
                   "pip install '.[torch]'"]


def test_check_without_onnx_is_one_line(tmp_path, monkeypatch, capsys):
    cfg = ROOT / "data" / "golden" / "cfg" / "pjreddie" / "bn-zoo.cfg"
    model = tmp_path / "model.onnx"
    model.write_bytes(b"\x08\x07")
    monkeypatch.setitem(sys.modules, "onnx", None)
    monkeypatch.chdir(ROOT)
    assert main(["check", str(cfg), str(cfg.with_suffix(".weights")), str(model),
                 "--dialect", "pjreddie"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "pip install '.[onnx]'" in err[0]


# ---------------------------------------------------------------- the installed wheel
def _run(args, **kw):
    r = subprocess.run(args, capture_output=True, text=True, timeout=900, **kw)
    assert r.returncode == 0, f"{args}\n{r.stdout[-2000:]}\n{r.stderr[-2000:]}"
    return r


@pytest.mark.slow
def test_built_wheel_installs_and_runs_every_command(tmp_path):
    dist = tmp_path / "dist"
    _run([sys.executable, "-m", "build", "--no-isolation", "--outdir", str(dist), str(ROOT)])
    wheel, = dist.glob("darknet_bn-*.whl")
    sdist, = dist.glob("darknet_bn-*.tar.gz")
    size = wheel.stat().st_size
    print(f"wheel {wheel.name}: {size} bytes; sdist {sdist.stat().st_size} bytes")
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
    assert "darknet_bn/data/layer/manifest.json" in names
    assert sum(n.startswith("darknet_bn/data/layer/") and n.endswith(".npz")
               for n in names) == len(manifest_cases())
    assert not any(n.endswith((".nbi", ".nbc", ".pyc")) for n in names)

    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", str(venv)])
    _run([sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "install",
          "--no-deps", "--no-index", "-q", str(wheel)])
    purelib = Path(_run([str(venv / "bin" / "python"), "-c",
                         "import sysconfig; print(sysconfig.get_paths()['purelib'])"]
                        ).stdout.strip())
    lent = {str(Path(__import__(m).__file__).resolve().parent.parent)
            for m in ("numpy", "numba", "llvmlite")}
    (purelib / "_darknet_bn_test_deps.pth").write_text("\n".join(sorted(lent)) + "\n")

    outside = tmp_path / "elsewhere"
    outside.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", golden.ENV_VAR)}
    exe = str(venv / "bin" / "darknet-bn")

    def cli(*args):
        return _run([exe, *args], cwd=outside, env=env)

    where = _run([str(venv / "bin" / "python"), "-c",
                  "import darknet_bn; print(darknet_bn.__file__)"], cwd=outside, env=env)
    assert Path(where.stdout.strip()).is_relative_to(venv), where.stdout
    assert cli("--version").stdout.strip() == f"darknet-bn {darknet_bn.__version__}"
    demo = cli("demo", "--quiet").stdout
    assert demo_summary() in demo and "MISMATCH" not in demo
    assert str(venv) in demo                     # the fixtures came from the installed wheel

    cfg_dir = ROOT / "data" / "golden" / "cfg" / "alexeyab"
    cfg, weights = str(cfg_dir / "bn-zoo.cfg"), str(cfg_dir / "bn-zoo.weights")
    assert "layers carry batchnorm" in cli("inspect", cfg, weights, "--dialect", "alexeyab").stdout
    folded = outside / "folded.weights"
    cli("fold", cfg, weights, str(folded), "--dialect", "alexeyab")
    expected = ROOT / "data" / "golden" / "fold" / "alexeyab" / "bn-zoo.folded.weights"
    assert folded.read_bytes() == expected.read_bytes()
    cli("compare", "--max-m", "4", "--no-plot", "--out", str(outside / "cmp"))
    assert (outside / "cmp" / "compare.csv").is_file()
    # check's verdicts are tested in test_check; here: installed, it reads and reports
    # a broken file in one line (exit 2)
    broken = outside / "broken.onnx"
    broken.write_bytes(b"not a model")
    check = subprocess.run([exe, "check", cfg, weights, str(broken), "--dialect", "alexeyab"],
                           cwd=outside, env=env, capture_output=True, text=True, timeout=300)
    assert check.returncode == 2, check.stderr
    assert len(check.stderr.strip().splitlines()) == 1 and "Traceback" not in check.stderr
    # the conventions, installed: a closed pipe is silent; a missing extra's fix names
    # the installed distribution (pip resolves its extra against the installed copy)
    piped = subprocess.Popen([exe, "inspect", cfg, weights, "--dialect", "AlexeyAB"],
                             cwd=outside, env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    piped.stdout.close()
    assert (piped.stderr.read(), piped.wait(timeout=300)) == ("", 0)
    no_onnx = ("import sys; sys.modules['onnx'] = None; from darknet_bn.cli import main; "
               "sys.exit(main(sys.argv[1:]))")
    hint = subprocess.run([str(venv / "bin" / "python"), "-c", no_onnx, "check", cfg, weights,
                           str(broken), "--dialect", "alexeyab"], cwd=outside, env=env,
                          capture_output=True, text=True, timeout=300)
    assert hint.returncode == 2 and \
        hint.stderr.strip().endswith("pip install 'darknet_bn[onnx]'"), hint.stderr
