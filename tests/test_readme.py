"""The README's Python examples run as written."""
import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parent.parent / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)


def test_readme_has_examples():
    assert BLOCKS


def test_readme_examples_run(capsys):
    namespace = {}
    for block in BLOCKS:          # later blocks reuse names from earlier ones
        exec(compile(block, str(README), "exec"), namespace)


@pytest.mark.parametrize("command", ["make demo", "make test"])
def test_quick_start_gives_the_two_commands(command):
    quick = README.read_text().split("## Quick start", 1)[1].split("##", 1)[0]
    assert command in quick
