"""Alert and history stores behind one interface.

``open_store("duckdb:PATH")`` opens the embedded DuckDB store (the default). PostgreSQL
(``postgresql://…``) shares the interface in :mod:`txfast.store.base`.
"""

from txfast.store.base import ScoredBatch, Store, open_store

__all__ = ["ScoredBatch", "Store", "open_store"]
