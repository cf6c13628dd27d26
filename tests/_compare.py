"""Bitwise comparison with a labelled report (llm.c's test_gpt2.c style)."""
import numpy as np

from darknet_bn.golden import ulp_diff


def bit_report(pairs):
    """``pairs``: iterable of (label, actual, expected) float32 arrays.

    Returns (lines, failures): one line per tensor with its max difference in ulp
    and in value, and the labels of the tensors whose bits differ.
    """
    lines, failures = [], []
    for label, actual, expected in pairs:
        actual = np.asarray(actual, np.float32)
        expected = np.asarray(expected, np.float32)
        if actual.shape != expected.shape:
            lines.append(f"{label:<40} SHAPE {actual.shape} != {expected.shape}")
            failures.append(label)
            continue
        n, ulp = ulp_diff(actual, expected)
        with np.errstate(invalid="ignore", over="ignore"):
            absdiff = float(np.nanmax(np.abs(actual.astype(np.float64) - expected), initial=0.0))
        status = "OK" if n == 0 else "DIFF"
        lines.append(f"{label:<40} {status:<4} {n:>6}/{actual.size:<6} differ, "
                     f"max {ulp} ulp, max |diff| {absdiff:.3g}")
        if n:
            failures.append(label)
    return lines, failures


def assert_bits(pairs, context=""):
    """Assert every (label, actual, expected) pair is identical bit for bit.

    Prints the labelled report (shown by pytest on failure or with -s) and fails
    listing every differing tensor, not just the first.
    """
    lines, failures = bit_report(pairs)
    print((context + "\n" if context else "") + "\n".join(lines))
    assert not failures, (f"{context}: {len(failures)} tensor(s) differ in bits:\n"
                          + "\n".join(line for line in lines if "OK " not in line))
