"""``StreamingDataLoader``: a DataLoader over a StreamingDataset that counts what it hands out.

With DataLoader workers the dataset copies in the worker processes cannot know how many
samples the training loop has consumed; this loader counts the samples of every batch it
yields (batches prefetched by workers but not yet yielded do not count), so ``state_dict()``
is exact without computing ``samples_seen`` by hand, for any ``num_workers``:

    loader = StreamingDataLoader(StreamingDataset(path, seed=0), batch_size=32, num_workers=2)
    for step, batch in enumerate(loader):
        ...
        if step == 99:
            torch.save(loader.state_dict(), "loader.pt")
    # later, any worker count or world size:
    loader.load_state_dict(torch.load("loader.pt", weights_only=True))
"""

from __future__ import annotations

from typing import Any

import torch
from torch.utils.data import DataLoader

from .collate import collate
from .stream import StreamingDataset


def batch_length(batch: Any) -> int:
    """Count the samples of a collated batch (``__key__`` list, first tensor dim); 1 if single."""
    if isinstance(batch, dict):
        keys = batch.get("__key__")
        if isinstance(keys, (list, tuple)):
            return len(keys)
        if isinstance(keys, str):
            return 1  # batch_size=None: samples come one by one
        image = batch.get("image")
        if isinstance(image, torch.Tensor) and image.ndim == 4:
            return int(image.shape[0])
        return 1
    if isinstance(batch, torch.Tensor):
        return int(batch.shape[0]) if batch.ndim else 1
    if isinstance(batch, (list, tuple)) and batch:
        return batch_length(batch[0]) if not isinstance(batch[0], str) else len(batch)
    return 1


class StreamingDataLoader(DataLoader):
    """A ``DataLoader(dataset, batch_size, ...)`` with ``state_dict`` / ``load_state_dict``.

    ``dataset`` must be a :class:`StreamingDataset`; its ``batch_size_hint`` is set to
    ``batch_size`` so worker processes take whole batches and the global sample order is the
    same for any worker count. ``collate_fn`` defaults to :func:`cytodata.loaders.collate`
    (a clear error when a batch mixes image shapes). Other keyword arguments go to DataLoader.
    ``state_dict()`` -> the dataset's state with ``samples_seen`` = samples consumed in this
    epoch across ranks (``start + consumed * world_size``: ranks step in lock-step under DDP).
    """

    def __init__(self, dataset: StreamingDataset, batch_size: int | None = 1, **kwargs: Any):
        if not isinstance(dataset, StreamingDataset):
            raise TypeError(f"StreamingDataLoader needs a cytodata StreamingDataset, got "
                            f"{type(dataset).__name__}; use torch.utils.data.DataLoader for others")
        for name in ("sampler", "batch_sampler", "shuffle"):
            if kwargs.get(name) not in (None, False):
                raise ValueError(f"StreamingDataLoader: {name}= is not supported (the dataset "
                                 "orders itself); pass sampler=/shuffle= to StreamingDataset")
        if kwargs.get("persistent_workers"):
            # persistent workers keep the dataset copy of their first epoch: set_epoch and
            # load_state_dict would silently not reach them
            raise ValueError("StreamingDataLoader: persistent_workers=True would keep each "
                             "worker's epoch and resume position from the first pass; leave it "
                             "off, or decode on threads (StreamingDataset(..., threads=N) with "
                             "num_workers=0)")
        if batch_size is not None:
            dataset.batch_size_hint = int(batch_size)
        kwargs.setdefault("collate_fn", collate)
        super().__init__(dataset, batch_size=batch_size, **kwargs)
        self._base, self._consumed = int(dataset.start), 0

    def __iter__(self):
        self._base, self._consumed = int(self.dataset.start), 0
        for batch in super().__iter__():
            self._consumed += batch_length(batch)
            yield batch

    @property
    def samples_seen(self) -> int:
        """Global samples of the current epoch consumed so far (including a resumed start)."""
        return self._base + self._consumed * self.dataset.world_size

    def state_dict(self) -> dict:
        """Return the dataset's resume state, counted from the batches this loader yielded."""
        return self.dataset.state_dict(samples_seen=self.samples_seen)

    def load_state_dict(self, state: dict) -> None:
        """Resume where ``state`` stopped (the next iteration starts there)."""
        self.dataset.load_state_dict(state)
        self._base, self._consumed = int(self.dataset.start), 0

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch's order (a new epoch starts at its beginning)."""
        self.dataset.set_epoch(epoch)
        self._base, self._consumed = int(self.dataset.start), 0

    def __repr__(self) -> str:
        return (f"StreamingDataLoader({self.dataset!r}, batch_size={self.batch_size}, "
                f"num_workers={self.num_workers}, samples_seen={self.samples_seen})")
