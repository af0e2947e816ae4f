"""Typed options of a shard write: what ``write()`` was asked, and what each dask task needs.

Frozen dataclasses at module level, so they pickle for dask workers and cannot be changed on
the way; the per-format task types (``ShardTask``, ``RowsTask``, ``PlateTask``) live next to
their task functions and carry a :class:`SampleOptions`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Mapping

from ._samples import Sample, load_samples

if TYPE_CHECKING:
    from ..images.qc import QCConfig

#: options of ``write(**options)`` that only some formats read (the others ignore them)
FORMAT_OPTIONS: dict[str, str] = {
    "tile": "zarr: cut images into tile x tile rows",
    "chunk": "zarr: chunk edge in pixels (default 256, at most the image)",
    "pixel_size": "ome-zarr: pixel size in micrometers, or (y, x)",
    "pyramid_levels": "ome-zarr: extra pyramid levels (default 0)",
}


@dataclass(frozen=True)
class SampleOptions:
    """How one manifest row becomes samples: the part of the options every write task needs.

    ``channel_mode``: a ``CHANNEL_MODES`` name (own, merged, split); ``qc``: image QC rules for
    ``cytodata.images.qc.check`` (a ``QCConfig``, a mapping, or None for no QC); ``gray``: how
    RGB files become one channel (``cytodata.images.read_image``'s ``gray``).
    """

    channel_mode: str = "own"
    qc: QCConfig | Mapping | None = None
    gray: str | None = "auto"

    def load(self, rec: Mapping) -> list[Sample]:
        """``(C, H, W)`` samples of one record; raises ``Dropped`` (for the ledger)."""
        return load_samples(rec, self.channel_mode, self.qc, self.gray)


@dataclass(frozen=True)
class WriteOptions:
    """Every option of one ``write()`` call, typed (see ``cytodata.shards.write`` for meanings).

    ``shard_size`` is in bytes (already parsed from "256MB"); ``tile``/``chunk`` (pixels) are read
    by the Zarr writer, ``pixel_size`` (micrometers) and ``pyramid_levels`` by the OME-Zarr one.
    """

    codec: str = "blosc-lz4"
    shard_size: int = 256_000_000
    samples_per_shard: int | None = None
    channel_mode: str = "own"
    qc: QCConfig | Mapping | None = None
    gray: str | None = "auto"
    scheduler: str | None = None
    n_workers: int | None = None
    progress: bool = True
    overwrite: bool = False
    tile: int | None = None
    chunk: int | None = None
    pixel_size: float | tuple[float, float] | None = None
    pyramid_levels: int | None = None

    @property
    def samples(self) -> SampleOptions:
        """The options every task loads its rows with."""
        return SampleOptions(self.channel_mode, self.qc, self.gray)

    @classmethod
    def from_write(cls, **kwargs: Any) -> "WriteOptions":
        """``WriteOptions`` from ``write()``'s keyword arguments; an unknown name is a TypeError
        naming it and the valid format options (never ignored without a word).
        """
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(kwargs) - known)
        if unknown:
            valid = "; ".join(f"{k} ({v})" for k, v in FORMAT_OPTIONS.items())
            raise TypeError(f"write() got unknown option(s) {', '.join(map(repr, unknown))}; "
                            f"format options are: {valid}")
        return cls(**kwargs)
