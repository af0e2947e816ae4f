"""Progress bars on a terminal only: a log or a pipe gets no carriage-return lines.

Every bar of the package is made by :func:`bar`. ``progress=False`` turns it off; otherwise it
shows when standard error is a terminal, or everywhere with ``cytodata --progress`` (the
environment variable ``CYTODATA_PROGRESS=1``).
"""

from __future__ import annotations

import os
import sys

FORCE_ENV = "CYTODATA_PROGRESS"


def shown(progress: bool = True) -> bool:
    """Whether a bar asked for with ``progress`` is drawn here."""
    if not progress:
        return False
    if os.environ.get(FORCE_ENV) == "1":
        return True
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):  # a replaced or closed stream
        return False


def bar(iterable=None, *, progress: bool = True, **kwargs):
    """A ``tqdm.auto.tqdm`` bar, disabled unless :func:`shown`."""
    from tqdm.auto import tqdm

    return tqdm(iterable, disable=not shown(progress), **kwargs)
