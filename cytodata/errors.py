"""Exceptions for people: every error names the bad value, where it was, and the fix."""

from __future__ import annotations


class CytodataError(Exception):
    """Base class of all cytodata errors."""


class SchemaError(CytodataError, ValueError):
    """A table does not match the harmonized schema (names the column and rows)."""


class RecipeError(CytodataError, ValueError):
    """A recipe/config file is malformed (names the file, key and valid options)."""


class SourceError(CytodataError, ValueError):
    """A source's metadata cannot be read (names the file, row, column)."""


class ImageReadError(CytodataError, OSError):
    """An image file is missing, truncated, corrupt or inconsistent (names the file)."""

    def __init__(self, message: str, path: str | None = None, reason: str = "unreadable"):
        super().__init__(message)
        self.path = path
        self.reason = reason


class ShardError(CytodataError, ValueError):
    """A shard set is corrupt, inconsistent with its index, or not ours."""


class LedgerError(CytodataError, RuntimeError):
    """The ledger invariant inputs == kept + dropped does not hold."""


class EvaluationError(CytodataError, ValueError):
    """Embeddings/metadata cannot be evaluated as asked (names rows and the fix)."""


def preview(values, limit: int = 5) -> str:
    """Render the first few offending values/rows for an error message."""
    values = list(values)
    shown = ", ".join(repr(v) for v in values[:limit])
    more = f" (and {len(values) - limit} more)" if len(values) > limit else ""
    return shown + more


class TrainingError(CytodataError, RuntimeError):
    """A training run cannot start or continue (bad config, data, checkpoint or a NaN loss)."""


class PublishError(CytodataError, ValueError):
    """A shard set cannot be published as asked (names the file or DEST and the fix)."""


class ClusterError(CytodataError, RuntimeError):
    """A dask scheduler cannot be reached, has no workers, or lost a task (names the address)."""


class EmptyResultError(CytodataError, RuntimeError):
    """A stage kept no rows (the message names the largest drop reason); the CLI exits non-zero."""
