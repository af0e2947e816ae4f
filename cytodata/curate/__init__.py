"""Curation: weak labels, stratified sampling, leak-free splits, QC and the ledger."""

from ..ledger import Ledger
from .sampling import allocate, stratified_sample
from .splits import assign_splits, split_report
from .weak_labels import assign_weak_labels

__all__ = ["Ledger", "allocate", "assign_splits", "assign_weak_labels", "split_report",
           "stratified_sample"]
