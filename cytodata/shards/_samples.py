"""Manifest rows -> samples: read pixels, image QC, channel mode, and mergeable pixel statistics.

Shared by every writer (webdataset, zarr, ome-zarr). Rows travel to dask workers as plain
JSON-able dicts (``records``), so tasks are cheap to ship and the manifest digest is stable.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import threading
from dataclasses import dataclass
from typing import Callable

import numpy as np
import pandas as pd

from .._registry import Registry
from ..errors import ImageReadError
from ..images.normalize import combine_moments, plane_moments

#: manifest columns copied into every sample's JSON member
META_COLUMNS: tuple[str, ...] = (
    "source", "image_id", "parent_id", "label", "category", "split", "plate", "well", "site",
    "batch", "compound", "concentration", "moa", "control_type",
    "x_min", "x_max", "y_min", "y_max", "scaling", "channel_paths",
)
#: manifest columns copied into index.parquet (strings, except ``site``)
INDEX_COLUMNS: tuple[str, ...] = (
    "label", "split", "plate", "batch", "source", "well", "site", "image_id", "parent_id",
    "category", "control_type", "compound", "moa",
)
_INT = {"site", "x_min", "x_max", "y_min", "y_max"}
_FLOAT = {"concentration", "scaling"}
_SAFE = re.compile(r"[^A-Za-z0-9_\-]+")


def _plain(value, column: str):
    """A JSON-able scalar (None for NA) with the schema's type."""
    if isinstance(value, (list, tuple, np.ndarray)):
        return [str(v) for v in value]
    if value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value)):
        return None
    if column in _INT:
        return int(value)
    if column in _FLOAT:
        return float(value)
    return str(value)


def records(table: pd.DataFrame) -> list[dict]:
    """Harmonized rows -> JSON-able dicts (key, channels + META_COLUMNS), sorted by key."""
    cols = ["key", "channels"] + [c for c in META_COLUMNS]
    out = []
    for row in table.reindex(columns=cols).itertuples(index=False, name=None):
        rec = {c: _plain(v, c) for c, v in zip(cols, row)}
        rec["channels"] = rec["channels"] or []
        rec["channel_paths"] = rec["channel_paths"] or []
        out.append(rec)
    out.sort(key=lambda r: r["key"])
    return out


def digest(obj) -> str:
    """sha256 of the canonical JSON of ``obj`` (the identity of a manifest / shard set)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


@dataclass
class Sample:
    """One written sample: key, ``(C, H, W)`` pixels and channel names."""

    key: str
    image: np.ndarray
    channels: list[str]


class Dropped(Exception):
    """A row that cannot be written: ``reason`` goes to the ledger."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason, self.detail = reason, detail


# --- channel modes: (image, record) -> samples -------------------------------------------
CHANNEL_MODES: Registry[Callable[[np.ndarray, dict], list[Sample]]] = Registry("channel mode")


@CHANNEL_MODES.register("own")
def _own(image: np.ndarray, rec: dict) -> list[Sample]:
    names = rec["channels"] if len(rec["channels"]) == image.shape[0] else [f"c{i}" for i in range(image.shape[0])]
    return [Sample(rec["key"], image, list(names))]


#: percentiles of CytoImageNet-style per-channel scaling before merging to one gray channel
MERGE_PERCENTILES = (0.1, 99.9)


def merge_channels(image: np.ndarray) -> np.ndarray:
    """``(C, H, W)`` -> ``(1, H, W)`` uint16: each channel scaled to [0, 1] between its 0.1th and
    99.9th percentile (so a bright channel does not drown a dim one), averaged, times 65535.

    One implementation for the whole package: ``cytodata.images.normalize.merge_gray``.
    """
    from ..images.normalize import merge_gray

    return merge_gray(image, low=MERGE_PERCENTILES[0], high=MERGE_PERCENTILES[1])


@CHANNEL_MODES.register("merged")
def _merged(image: np.ndarray, rec: dict) -> list[Sample]:
    return [Sample(rec["key"], merge_channels(image), ["merged"])]


@CHANNEL_MODES.register("split")
def _split(image: np.ndarray, rec: dict) -> list[Sample]:
    names = _own(image, rec)[0].channels
    return [Sample(f"{rec['key']}-c{_SAFE.sub('-', n)}", image[i:i + 1], [n]) for i, n in enumerate(names)]


def _qc_check():
    """The image QC check of cytodata.images.qc (imported on first use)."""
    from ..images.qc import check

    return check


#: the last field read by this thread: crop rows of one field (single cells) are neighbours in
#: key order, so cutting N cells reads the field once, not N times (one field per thread)
_LAST_FIELD = threading.local()


def _read_cached(paths: list[str], gray, n: int | None) -> np.ndarray:
    from ..images.io import read_image

    key = (tuple(paths), gray)
    last = getattr(_LAST_FIELD, "entry", None)
    if last is not None and last[0] == key:
        if isinstance(last[1], ImageReadError):
            raise last[1]
        return last[1]
    try:
        image = read_image(list(paths), gray=gray, expected_channels=n)
    except ImageReadError as exc:
        _LAST_FIELD.entry = (key, exc)
        raise
    _LAST_FIELD.entry = (key, image)
    return image


def load_samples(rec: dict, channel_mode: str, qc=None, gray="auto") -> list[Sample]:
    """Read one manifest row and turn it into samples; raise :class:`Dropped` for the ledger.

    The one loading path shared with image QC (``cytodata.images.rows``): crop rows are cut to
    their window (moved inside when they hang over an edge), so QC and the writers see the same
    pixels.
    """
    from ..images.io import read_image
    from ..images.rows import WindowError, cut, window_of

    if rec.get("qc_reject"):  # rejected by `cytodata qc` (see shards.write(qc_results=...))
        raise Dropped(*rec["qc_reject"])
    n = len(rec["channel_paths"])
    try:
        window = window_of(rec)
        if window is None:
            image = read_image(rec["channel_paths"], gray=gray, expected_channels=n or None)
        else:
            field = _read_cached(rec["channel_paths"], gray, n or None)
            image = cut(field, window, where=rec["key"])
    except (ImageReadError, WindowError) as exc:
        raise Dropped(exc.reason, str(exc)) from None
    if qc is not None:
        reason = _qc_check()(image, qc)
        if reason:
            raise Dropped(str(reason), f"{rec['key']}: image QC rejected the image ({reason})")
    return CHANNEL_MODES.get(channel_mode)(image, rec)


def window_of(rec: dict):
    """The record's crop window (``cytodata.images.rows.window_of``); Dropped when malformed."""
    from ..images.rows import WindowError
    from ..images.rows import window_of as _window_of

    try:
        return _window_of(rec)
    except WindowError as exc:
        raise Dropped(exc.reason, str(exc)) from None


def fit_window(window, h: int, w: int, key: str) -> tuple[int, int, int, int]:
    """``(x0, y0, width, height)`` of ``window`` inside an ``h x w`` field; Dropped if too large."""
    from ..images.rows import WindowError, fit

    try:
        return fit(window, h, w, key)
    except WindowError as exc:
        raise Dropped(exc.reason, str(exc)) from None


# --- mergeable per-channel moments (Chan et al. parallel variance) -------------------------
def moment_groups(rec: dict, plate: str | None = None) -> dict[str, str | None]:
    """The statistics groups of one manifest row: ``{level: group}`` (``None``: not counted).

    ``plate``, ``batch`` and ``all`` count every image; ``controls`` counts a plate's
    negative-control images only (``control_type == "negcon"``, e.g. DMSO), the reference that
    profiling normalises to, since a plate's treatments change its all-image statistics.
    """
    plate = rec.get("plate") if plate is None else plate
    negcon = str(rec.get("control_type") or "").lower() == "negcon"
    return {"plate": plate, "batch": rec.get("batch"), "all": "all",
            "controls": plate if negcon else None}


class Moments:
    """Per group and channel: pixel count, mean, sum of squared deviations (float64).

    Partial results from shards combine exactly (``merge``), so statistics never need a
    second pass over the pixels. Stored as ``{level: {group: {channel: [n, mean, m2]}}}``.
    """

    def __init__(self, data: dict | None = None):
        self.data: dict = data or {}

    def add(self, levels: dict[str, str | None], image: np.ndarray, channels: list[str]) -> None:
        for name, plane in zip(channels, image):
            part = list(plane_moments(plane))
            for level, group in levels.items():
                if group is not None:
                    self._combine(level, str(group), name, part)

    def _combine(self, level: str, group: str, channel: str, part: list[float]) -> None:
        slot = self.data.setdefault(level, {}).setdefault(group, {})
        if channel not in slot:
            slot[channel] = list(part)
            return
        slot[channel] = list(combine_moments(slot[channel], part))

    def merge(self, other: "Moments") -> None:
        for level, groups in other.data.items():
            for group, chans in groups.items():
                for channel, part in chans.items():
                    self._combine(level, group, channel, part)

    def summary(self) -> dict:
        """``{level: {group: {"channels", "mean", "std", "pixels"}}}`` (population std)."""
        out: dict = {}
        for level, groups in self.data.items():
            out[level] = {}
            for group in sorted(groups):
                chans = groups[group]
                names = list(chans)
                out[level][group] = {
                    "channels": names,
                    "mean": [chans[c][1] for c in names],
                    "std": [math.sqrt(chans[c][2] / chans[c][0]) if chans[c][0] else 0.0 for c in names],
                    "pixels": int(chans[names[0]][0]) if names else 0,
                }
        return out
