"""Label vocabulary: token normalization, the synonym table, and ``harmonize_labels``.

Raw source tables spell the same thing many ways (``NEUTROPHIL``, ``U-2 OS``, ``nuclei``,
``fluorescence (?)``, ``"['red blood cell', 'white blood cell']"``, ``mcf7|a549``). Harmonized
label cells hold lower-case canonical tokens joined by ``|`` so that weak labelling can count
them across sources.

Normalization of one cell (:func:`parse_cell`): NA/empty -> no tokens; a Python list literal is
parsed safely with :func:`ast.literal_eval`; ``|`` separates tokens; each token is lower-cased,
inner whitespace collapsed, uncertainty markers (``(?)``, ``?``) at either end removed;
empty and repeated tokens are dropped (first occurrence kept).

Synonyms (``cytodata/data/synonyms.csv``, columns ``column,raw,canonical``; ``column`` ``*``
applies to every label column, a column name to that column only and takes precedence). The
shipped table follows CytoImageNet's merges:

- white blood cell subtypes (neutrophil, eosinophil, lymphocyte, monocyte, basophil, leukocyte)
  -> ``white blood cell``; erythrocyte/rbc -> ``red blood cell`` (CytoImageNet merged these
  because the source classes are too small and too alike at its 64-224 px resolution);
- cell line spellings -> one name without punctuation (``u-2 os``/``u2-os`` -> ``u2os``,
  ``he-la`` -> ``hela``, ``mcf-7`` -> ``mcf7``, ``a-549`` -> ``a549``, ``hep g2`` -> ``hepg2`` ...);
- cell components in the plural or as adjectives -> singular noun (``nuclei`` -> ``nucleus``);
- organisms by Latin name -> common name (``homo sapiens`` -> ``human``);
- microscopy spellings (``bright field`` -> ``brightfield``, ``fluorescent`` -> ``fluorescence``);
- ``dimethyl sulfoxide`` -> ``dmso``;
- one canonical actin: ``actin filament(s)``, ``f-actin``, ``filamentous actin`` -> ``actin``;
- the HPA single-cell classes as CytoImageNet used them (``nucleoli`` -> ``nucleolus``,
  ``nucleoli fibrillar center`` -> ``nucleolus fibrillar center``, ``intermediate filament``
  -> ``intermediate filaments``); class 18 ``negative`` (no or unspecific staining) maps to
  ``-``, which removes the token: it names no visible structure.

Recipes extend the table with ``synonyms:`` (flat ``raw: canonical`` for all columns, or
``column: {raw: canonical}``); see :func:`load_synonyms`.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np
import pandas as pd

from . import schema
from .errors import RecipeError

#: label columns plus ``microscopy``, the text columns sources.read harmonizes
TEXT_COLUMNS: tuple[str, ...] = schema.LABEL_COLUMNS + ("microscopy",)
#: the shipped synonym table (package data)
SYNONYMS_CSV = Path(__file__).resolve().parent / "data" / "synonyms.csv"
#: columns whose raw cells use "," as a token separator too (CytoImageNet's blood-cell table
#: has "NEUTROPHIL, EOSINOPHIL"); compound, gene and sirna names may contain commas
COMMA_COLUMNS: tuple[str, ...] = ("organism", "cell_type", "cell_visible", "microscopy")
#: key of the synonym entries that apply to every column
ANY_COLUMN = "*"

_SPACE = re.compile(r"\s+")
_MARK_END = re.compile(r"(?:\s*(?:\(\s*\?\s*\)|\?))+\s*$")
_MARK_START = re.compile(r"^\s*(?:(?:\(\s*\?\s*\)|\?)\s*)+")

Synonyms = dict[str, dict[str, str]]


def normalize_token(token: str) -> str:
    """Lower-case, collapse whitespace, strip uncertainty markers at the ends (may return "")."""
    text = _SPACE.sub(" ", str(token)).strip().lower()
    text = _MARK_START.sub("", _MARK_END.sub("", text))
    return text.strip()


def _is_missing(value) -> bool:
    if value is None or value is pd.NA or value is pd.NaT:
        return True
    return isinstance(value, (float, np.floating)) and np.isnan(value)


def _raw_tokens(value, commas: bool = False) -> Iterable[str]:
    """Split one cell into raw (un-normalized) token strings."""
    if _is_missing(value):
        return []
    if isinstance(value, (list, tuple, np.ndarray, pd.Series)):
        out: list[str] = []
        for item in value:
            out.extend(_raw_tokens(item, commas))
        return out
    text = str(value).strip()
    if len(text) >= 2 and text[0] in "[(" and text[-1] in "])":
        try:
            parsed = ast.literal_eval(text)
        except (ValueError, SyntaxError, MemoryError, RecursionError):
            parsed = None  # not a literal after all: plain text such as "(?)" or "[sic]"
        if isinstance(parsed, (list, tuple)):
            return _raw_tokens(list(parsed), commas)
    return re.split(r"[|,]", text) if commas else text.split("|")


def parse_cell(value, *, commas: bool = False) -> list[str]:
    """Normalized tokens of one label cell, in order, without duplicates.

    Accepts NA/None/NaN (-> ``[]``), strings (``a|b``, list literals such as
    ``"['red blood cell', 'white blood cell']"``) and list/tuple/ndarray values.
    ``commas=True`` also splits at ``,`` (``"NEUTROPHIL, EOSINOPHIL"``); never use it for
    compound names, which contain commas (``1,10-phenanthroline``).
    """
    seen: dict[str, None] = {}
    for raw in _raw_tokens(value, commas):
        tok = normalize_token(raw)
        if tok:
            seen.setdefault(tok, None)
    return list(seen)


def _read_table() -> pd.DataFrame:
    return pd.read_csv(SYNONYMS_CSV, dtype=str, keep_default_na=False, encoding="utf-8")


#: canonical value that removes a token (``column,raw,-`` in synonyms.csv): not a label
NOT_A_LABEL = "-"


def _add(out: Synonyms, column: str, raw: str, canonical: str, where: str) -> None:
    raw_n = normalize_token(raw)
    canon = NOT_A_LABEL if canonical.strip() == NOT_A_LABEL else normalize_token(canonical)
    if not raw_n or not canon:
        raise RecipeError(f"{where}: empty synonym {raw!r} -> {canonical!r}; give both sides")
    out.setdefault(column, {})[raw_n] = canon


def load_synonyms(
    extra: Mapping[str, str] | Mapping[str, Mapping[str, str]] | None = None,
) -> Synonyms:
    """The shipped synonym table, extended by ``extra``: ``{column or "*": {raw: canonical}}``.

    ``extra`` may be flat (``{"nuclei": "nucleus"}``: every column) or per column
    (``{"cell_type": {"hela s3": "hela"}}``); both kinds may be mixed. Raw and canonical
    values are normalized like tokens. ``extra`` entries override shipped ones.
    """
    out: Synonyms = {ANY_COLUMN: {}}
    for row in _read_table().itertuples(index=False):
        _add(out, row.column.strip() or ANY_COLUMN, row.raw, row.canonical, "synonyms.csv")
    for key, value in (extra or {}).items():
        if isinstance(value, Mapping):
            if key != ANY_COLUMN and key not in schema.COLUMNS:
                raise RecipeError(
                    f"synonyms: unknown column {key!r}; use '*' or one of {list(TEXT_COLUMNS)}")
            for raw, canon in value.items():
                _add(out, key, raw, canon, f"synonyms[{key!r}]")
        elif isinstance(value, str):
            _add(out, ANY_COLUMN, key, value, "synonyms")
        else:
            raise RecipeError(f"synonyms[{key!r}]: expected a string or a mapping, got {value!r}")
    return out


def _resolve(synonyms) -> Synonyms:
    """Accept a loaded table (has the ``*`` key, values mappings) or an extension of the default."""
    if synonyms is None:
        return load_synonyms()
    if ANY_COLUMN in synonyms and all(isinstance(v, Mapping) for v in synonyms.values()):
        return {k: dict(v) for k, v in synonyms.items()}
    return load_synonyms(synonyms)


def canonical_tokens(value, table: Mapping[str, str], suffix: str | None = None,
                     commas: bool = False) -> list[str]:
    """Tokens of one cell after synonyms (``table``: raw -> canonical) and an optional suffix."""
    seen: dict[str, None] = {}
    for tok in parse_cell(value, commas=commas):
        tok = table.get(tok, tok)
        if tok == NOT_A_LABEL:  # e.g. HPA class 18 "negative": no visible structure
            continue
        if suffix and not tok.endswith(suffix.strip()):
            tok = tok + suffix
        seen.setdefault(tok, None)
    return list(seen)


def _hashable(series: pd.Series) -> pd.Series:
    if series.dtype != object:
        return series
    return series.map(lambda v: tuple(v) if isinstance(v, (list, np.ndarray)) else v)


def harmonize_labels(
    table: pd.DataFrame,
    *,
    columns: Iterable[str] = schema.LABEL_COLUMNS,
    synonyms=None,
    gene_suffix: str | None = " targeted",
    comma_columns: Iterable[str] = COMMA_COLUMNS,
) -> pd.DataFrame:
    """Copy of ``table`` whose label ``columns`` hold canonical tokens joined by ``|`` (NA if none).

    ``synonyms``: a table from :func:`load_synonyms`, or a mapping that extends the shipped one.
    ``gene_suffix``: appended to gene tokens (CytoImageNet's ``"actb targeted"``); None disables.
    ``comma_columns``: columns where ``,`` also separates tokens (see :data:`COMMA_COLUMNS`).
    Each distinct cell value is normalized once, so cost scales with the number of unique
    values, not rows. Columns absent from ``table`` are skipped.
    """
    syn = _resolve(synonyms)
    out = table.copy()
    for col in columns:
        if col not in out.columns:
            continue
        lookup = {**syn.get(ANY_COLUMN, {}), **syn.get(col, {})}
        suffix = gene_suffix if col == "gene" else None
        commas = col in set(comma_columns)
        codes, uniques = pd.factorize(_hashable(out[col]), use_na_sentinel=True)
        mapped = np.array(
            ["|".join(canonical_tokens(u, lookup, suffix, commas)) or None for u in uniques]
            + [None],
            dtype=object,
        )
        values = mapped[codes]  # code -1 (NA) picks the trailing None
        out[col] = pd.Series(values, index=out.index, dtype="string")
    return out


__all__ = [
    "ANY_COLUMN", "COMMA_COLUMNS", "NOT_A_LABEL", "TEXT_COLUMNS", "canonical_tokens",
    "harmonize_labels",
    "load_synonyms", "normalize_token", "parse_cell",
]
