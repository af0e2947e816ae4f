"""pycytominer interop: ``Metadata_*`` tables in and out, and finding the feature columns.

pycytominer/cytominer-eval tables prefix every metadata column with ``Metadata_``
(``Metadata_Plate``, ``Metadata_Well``, ``Metadata_moa``, ``Metadata_pert_iname``) and leave
the features bare. :func:`from_metadata_names` maps those onto our harmonized names
(``plate``, ``well``, ``moa``, ``compound``) so the protocols run on them;
:func:`to_metadata_names` writes profiles back in that layout.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import pandas as pd

from ..errors import EvaluationError, preview
from ..schema import COLUMNS

METADATA_PREFIX = "Metadata_"

#: snake_cased ``Metadata_*`` names (prefix stripped) -> harmonized column, beyond identity
SYNONYMS: dict[str, str] = {
    "pert_iname": "compound", "compound_name": "compound", "treatment": "compound",
    "mmoles_per_liter": "concentration", "dose": "concentration", "conc": "concentration",
    "concentration_um": "concentration", "mode_of_action": "moa", "moa_label": "moa",
    "plate_map_name": "plate_map", "pert_type": "control_type", "field": "site",
    "image_number": "image_id", "week": "batch",
}

#: numeric columns that are never features (counts written by aggregate/consensus)
NOT_FEATURES: frozenset[str] = frozenset({"replicate", "n_wells", "n_images", "n_rows",
                                          "n_cells", "n_replicates"})


def _snake(name: str) -> str:
    """``ControlType`` -> ``control_type``; ``pert_iname`` stays."""
    name = re.sub(r"(?<=[a-z0-9])([A-Z])", r"_\1", name)
    return name.lower()


def from_metadata_names(table: pd.DataFrame, prefix: str = METADATA_PREFIX) -> pd.DataFrame:
    """Rename ``{prefix}X`` columns to harmonized names where one fits, else to ``x``.

    A rename that would collide with an existing column (or another renamed one) is skipped,
    so no column is ever lost. Feature columns (no prefix) are left alone.
    """
    if not prefix:
        raise EvaluationError("metadata prefix must be non-empty (pycytominer uses 'Metadata_')")
    taken = set(table.columns)
    rename: dict[str, str] = {}
    for col in table.columns:
        if not str(col).startswith(prefix):
            continue
        snake = _snake(str(col)[len(prefix):])
        target = SYNONYMS.get(snake, snake)
        if target in taken or target in rename.values():
            continue
        rename[col] = target
    out = table.rename(columns=rename)
    out.attrs["renamed"] = rename
    if "control_type" in out.columns:
        # pycytominer layouts say "negcon"/"poscon"/"trt" already; JUMP sometimes "negcon"
        # with other case: fold to the harmonized vocabulary
        out["control_type"] = out["control_type"].astype("string").str.lower()
    return out


def to_metadata_names(table: pd.DataFrame, features: Sequence[str],
                      prefix: str = METADATA_PREFIX) -> pd.DataFrame:
    """Prefix every non-feature column with ``prefix`` (harmonized ones JUMP-cased).

    ``plate`` -> ``Metadata_Plate``, ``control_type`` -> ``Metadata_ControlType``, other
    metadata ``x`` -> ``Metadata_x``; features keep their names.
    """
    feats = set(features)
    rename = {}
    for col in table.columns:
        if col in feats or str(col).startswith(prefix):
            continue
        if col in COLUMNS:
            rename[col] = prefix + "".join(p.capitalize() for p in str(col).split("_"))
        else:
            rename[col] = prefix + str(col)
    return table.rename(columns=rename)


def infer_features(table: pd.DataFrame, *, prefix: str | None = None,
                   metadata_prefix: str = METADATA_PREFIX) -> list[str]:
    """Feature columns of a table that also holds metadata.

    ``prefix`` given: the columns starting with it. Otherwise ``emb_*`` columns when there
    are any (the trainers' layout), else every numeric column that is not a harmonized
    metadata column, a ``Metadata_*`` column or a count (``n_wells``...).
    """
    if prefix is not None:
        cols = [c for c in table.columns if str(c).startswith(prefix)]
        how = f"prefix {prefix!r}"
    else:
        cols = [c for c in table.columns if str(c).startswith("emb_")]
        how = "'emb_' prefix or numeric non-metadata columns"
        if not cols:
            cols = [c for c in table.columns
                    if c not in COLUMNS and c not in NOT_FEATURES
                    and not str(c).startswith(metadata_prefix)
                    and pd.api.types.is_numeric_dtype(table[c])
                    and not pd.api.types.is_bool_dtype(table[c])]
    if not cols:
        raise EvaluationError(f"no feature columns found by {how}; columns are "
                              f"{preview(table.columns, 10)}. Pass --features PREFIX.")
    return cols
