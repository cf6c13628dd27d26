"""The command line: ``darknet-bn demo`` (and ``python -m darknet_bn``)."""
import subprocess
import sys

import pytest

from darknet_bn.cli import build_parser, main


def test_demo_replays_every_case_bit_identically(capsys):
    assert main(["demo", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "32 cases, 3520/3520 buffers bit-identical" in out
    assert "MISMATCH" not in out


def test_demo_shows_both_dialects_step_by_step(capsys):
    assert main(["demo"]) == 0
    out = capsys.readouterr().out
    for text in ("pjreddie [batchnorm]", "alexeyab [convolutional]", "inference", "max ulp"):
        assert text in out


def test_unknown_command_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exc:
        build_parser().parse_args(["nope"])
    assert exc.value.code == 2


def test_python_dash_m_entry_point():
    r = subprocess.run([sys.executable, "-m", "darknet_bn", "--help"], capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0 and "demo" in r.stdout
