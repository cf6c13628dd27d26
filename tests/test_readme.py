"""The README runs as written: every Python block, and every ``darknet-bn`` command of
its shell blocks, in order, in one scratch directory of a clone (``data/`` is the
checkout's).  Later blocks may use the files earlier ones wrote.  Also: its length,
the quick start, and the links of the README and the docs index."""
import re
import shlex
from pathlib import Path

import pytest

from darknet_bn.cli import main

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
TEXT = README.read_text()
MAX_CHARS = 10_000


def _blocks(text):
    """``(id, language, code)`` per fenced block; the id names its section."""
    blocks, section = [], "top"
    for m in re.finditer(r"^## ([^\n]+)$|^```(\w+)\n(.*?)^```", text, re.M | re.S):
        if m.group(1):
            section = re.sub(r"[^a-z0-9]+", "-", m.group(1).lower()).strip("-")
        else:
            blocks.append((f"{len(blocks):02d}-{m.group(2)}-{section}", m.group(2),
                           m.group(3)))
    return blocks


BLOCKS = _blocks(TEXT)


@pytest.fixture(scope="module")
def scratch(tmp_path_factory):
    """A directory laid out like a clone for the blocks: ``data`` is the checkout's."""
    d = tmp_path_factory.mktemp("readme")
    (d / "data").symlink_to(ROOT / "data")
    return d


def _commands(code):
    """The ``darknet-bn`` command lines of a shell block, as argument lists."""
    for line in code.splitlines():
        words = shlex.split(line, comments=True)
        if words[:1] == ["darknet-bn"]:
            yield words[1:]


def test_readme_has_python_and_command_examples():
    languages = [lang for _, lang, _ in BLOCKS]
    assert languages.count("python") >= 3
    assert sum(1 for _, lang, code in BLOCKS if lang == "sh" and list(_commands(code))) >= 3


@pytest.mark.parametrize("block_id, language, code", BLOCKS, ids=[b[0] for b in BLOCKS])
def test_readme_block_runs(block_id, language, code, scratch, monkeypatch, capsys):
    monkeypatch.chdir(scratch)
    if language == "python":
        exec(compile(code, f"{README}:{block_id}", "exec"), {"__name__": "__readme__"})
        return
    assert language == "sh", f"{block_id}: a block in {language}"
    for args in _commands(code):
        try:
            status = main(args)
        except SystemExit as e:          # --help and --version exit through argparse
            status = e.code
        out = capsys.readouterr()
        assert status == 0, f"darknet-bn {shlex.join(args)}: exit {status}\n{out.err}"


def test_readme_is_a_landing_page():
    assert len(TEXT) <= MAX_CHARS, f"README.md is {len(TEXT)} characters"


@pytest.mark.parametrize("command", ["make demo", "make test", "pip install .",
                                     "darknet-bn demo"])
def test_quick_start_gives_the_commands(command):
    quick = TEXT.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    assert command in quick


@pytest.mark.parametrize("page", ["README.md", "docs/README.md"])
def test_links_resolve(page):
    path = ROOT / page
    links = re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", path.read_text())
    assert links
    for link in links:
        if "://" not in link:
            assert (path.parent / link).exists(), f"{page}: {link}"


def test_docs_index_lists_every_page():
    index = (ROOT / "docs" / "README.md").read_text()
    for page in (ROOT / "docs").glob("*.md"):
        if page.name != "README.md":
            assert f"]({page.name})" in index, page.name
