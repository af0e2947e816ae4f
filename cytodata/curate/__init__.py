"""Curation: weak labels, stratified sampling, leak-free splits, QC and the ledger."""

from .ledger import Ledger

__all__ = ["Ledger", "assign_weak_labels", "stratified_sample", "assign_splits"]


def __getattr__(name: str):
    # deferred so that importing the ledger does not pull in the heavier stages
    if name == "assign_weak_labels":
        from .weak_labels import assign_weak_labels
        return assign_weak_labels
    if name == "stratified_sample":
        from .sampling import stratified_sample
        return stratified_sample
    if name == "assign_splits":
        from .splits import assign_splits
        return assign_splits
    raise AttributeError(name)
