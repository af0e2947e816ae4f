"""Did-you-mean suggestions for unknown names (keys, commands, configs)."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


def did_you_mean(name: str, valid: Iterable[str]) -> str:
    """``"; did you mean 'steps'?"`` for the closest valid names, or ``""`` when none is close.

    A dotted key is also matched by its last part (``step`` -> ``optim.steps`` is not offered
    over ``steps``, but ``lr`` finds ``optim.lr``).
    """
    valid = [str(v) for v in valid]
    close = difflib.get_close_matches(str(name), valid, n=3, cutoff=0.6)
    if not close and "." not in str(name):
        tails = {v.rsplit(".", 1)[-1]: v for v in valid if "." in v}
        close = [tails[t] for t in difflib.get_close_matches(str(name), list(tails), n=3, cutoff=0.8)]
    if not close:
        return ""
    return "; did you mean " + " or ".join(repr(c) for c in close) + "?"
