"""A one-line progress display on stderr for the commands that can take a while.

Shown only when stderr is a terminal and the command was not given ``--quiet``:
piped or redirected output, logs and tests see nothing.  The line is rewritten in
place (carriage return) and erased when the work is done, so stdout's results are
never interleaved with it.
"""
import sys
import time


#: Shown until the first unit of work is done: the one that compiles the kernels.
FIRST = "a first run compiles the kernels"


class Progress:
    """``with Progress("compare", total, quiet=args.quiet) as p: ... p.step("m = 16")``:
    ``label: done/total what (elapsed s)``."""

    def __init__(self, label, total, *, quiet=False, stream=None):
        self.stream = sys.stderr if stream is None else stream
        self.enabled = not quiet and _is_terminal(self.stream)
        self.label, self.total, self.done = label, total, 0
        self.start = time.perf_counter()
        self._width = 0
        self._show(FIRST)

    def step(self, what=""):
        """Count one unit of work as done; ``what`` says what it was."""
        self.done += 1
        self._show(what)

    def _show(self, what):
        if not self.enabled:
            return
        elapsed = time.perf_counter() - self.start
        line = f"{self.label}: {self.done}/{self.total} {what} ({elapsed:.0f} s)"
        self._write(line)

    def _write(self, line):
        pad = max(0, self._width - len(line))
        self.stream.write("\r" + line + " " * pad)
        self.stream.flush()
        self._width = len(line)

    def close(self):
        if self.enabled and self._width:
            self.stream.write("\r" + " " * self._width + "\r")
            self.stream.flush()
            self._width = 0

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _is_terminal(stream):
    try:
        return stream.isatty()
    except (AttributeError, ValueError):      # no isatty, or a closed stream
        return False
