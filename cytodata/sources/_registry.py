"""The source-adapter registry (its own module, so adapters import it without importing the
package that imports them).
"""

from __future__ import annotations

from collections.abc import Callable

import pandas as pd

from .._registry import Registry

Adapter = Callable[..., pd.DataFrame]
#: adapter name -> ``adapter(**params) -> DataFrame``
SOURCES: Registry[Adapter] = Registry("source")
