"""The command line: ``darknet-bn demo`` (and ``python -m darknet_bn``)."""
import re
import subprocess
import sys

import pytest

from _recorded import demo_summary
from darknet_bn.cli import build_parser, main
from darknet_bn.compare import REGIMES
from darknet_bn.dialects import names


def test_demo_replays_every_case_bit_identically(capsys):
    assert main(["demo", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert demo_summary() in out
    assert "MISMATCH" not in out


def test_demo_shows_every_dialect_step_by_step(capsys):
    assert main(["demo"]) == 0
    out = capsys.readouterr().out
    for text in ("pjreddie [batchnorm]", "alexeyab [convolutional]", "hankai [convolutional]",
                 "inference", "max ulp"):
        assert text in out


def test_unknown_command_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exc:
        build_parser().parse_args(["nope"])
    assert exc.value.code == 2


def test_python_dash_m_entry_point():
    r = subprocess.run([sys.executable, "-m", "darknet_bn", "--help"], capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0 and "demo" in r.stdout


# ---------------------------------------------------------------- progress line
class _Terminal:
    """A stderr that says it is a terminal and records what is written."""

    def __init__(self):
        self.text = ""

    def isatty(self):
        return True

    def write(self, s):
        self.text += s

    def flush(self):
        pass


@pytest.mark.parametrize("command", [
    ["demo", "--quiet"],
    ["compare", "--max-m", "4", "--no-plot", "--dialect", "pjreddie"],
])
def test_progress_line_on_a_terminal_only(command, tmp_path, monkeypatch, capsys):
    """On a terminal: a progress line on stderr, rewritten in place and erased at the
    end (stdout untouched).  Piped (pytest's capture): nothing on stderr."""
    if command[0] == "compare":
        command = command + ["--out", str(tmp_path / "cmp")]
    assert main(command) == 0
    piped = capsys.readouterr()
    assert piped.err == ""

    if command[0] == "demo":
        command = ["demo"]          # --quiet also silences the progress line (below)
    terminal = _Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    assert main(command) == 0
    out = capsys.readouterr().out
    label = f"darknet-bn {command[0]}: "
    frames = [f for f in terminal.text.split("\r") if f.strip()]
    assert frames and all(f.startswith(label) for f in frames), terminal.text[:500]
    counts = [re.match(label + r"(\d+)/(\d+) ", f).groups() for f in frames]
    total = int(counts[0][1])
    assert [int(done) for done, _ in counts] == list(range(total + 1))
    assert terminal.text.endswith("\r") and terminal.text.split("\r")[-2].strip() == ""
    assert "\r" not in out and label not in out


@pytest.mark.parametrize("command", [["demo", "--quiet"],
                                     ["compare", "--quiet", "--max-m", "2", "--no-plot",
                                      "--dialect", "alexeyab"]])
def test_quiet_means_no_progress_line_even_on_a_terminal(command, tmp_path, monkeypatch,
                                                         capsys):
    if command[0] == "compare":
        command = command + ["--out", str(tmp_path / "cmp")]
    terminal = _Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    assert main(command) == 0
    assert terminal.text == ""
    capsys.readouterr()


def test_progress_in_a_real_terminal(tmp_path):
    """The installed entry point under a pseudo-terminal: the line appears and is erased."""
    pty = pytest.importorskip("pty")
    import os
    out = tmp_path / "stdout.txt"
    code = (f"import sys; sys.stdout = open({str(out)!r}, 'w'); from darknet_bn.cli import "
            f"main; sys.exit(main(['compare', '--max-m', '2', '--no-plot', '--out', "
            f"{str(tmp_path / 'cmp')!r}]))")
    pid, fd = pty.fork()
    if pid == 0:                                           # child: stderr is the pty
        os.execv(sys.executable, [sys.executable, "-c", code])
    seen = b""
    while True:
        try:
            chunk = os.read(fd, 4096)
        except OSError:                                    # EIO: the child closed the pty
            break
        if not chunk:
            break
        seen += chunk
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, seen[-2000:]
    text = seen.decode()
    # m = 2: one size, 4 regimes x every fork, no inference sizes
    total = len(REGIMES) * len(names())
    assert f"darknet-bn compare: 0/{total} " in text and \
        f"darknet-bn compare: {total}/{total} " in text
    assert "measurements in" in out.read_text()
