"""The ledger, as the curation stage names it: :mod:`cytodata.ledger` (below every stage, since
sources, curation and the shard writers all record dropped rows).
"""

from ..ledger import LEDGER_COLUMNS, Ledger

__all__ = ["LEDGER_COLUMNS", "Ledger"]
