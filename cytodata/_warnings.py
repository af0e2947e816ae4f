"""Warnings on the command line: one line each (no source line), repeats counted and summed up."""

from __future__ import annotations

import contextlib
import sys
import warnings
from collections import Counter


@contextlib.contextmanager
def one_line_warnings(stream=None):
    """Print each warning as ``warning: Category: message`` on one line; a warning repeated
    (same category and text) prints once, and its count is given when the block ends.
    """
    seen: Counter = Counter()
    out = stream if stream is not None else sys.stderr

    def show(message, category, filename, lineno, file=None, line=None):
        text = " ".join(str(message).split())
        key = (category.__name__, text)
        seen[key] += 1
        if seen[key] == 1:
            print(f"warning: {category.__name__}: {text}", file=out)

    before = warnings.showwarning
    warnings.showwarning = show
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("always", UserWarning)  # count every repeat (printed once)
            warnings.showwarning = show
            yield seen
    finally:
        warnings.showwarning = before
        for (name, text), n in seen.items():
            if n > 1:
                print(f"warning: {name}: (the warning above repeated {n} times) {text[:80]}", file=out)
