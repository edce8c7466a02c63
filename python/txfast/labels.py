"""Online labels: analysts' verdicts flow from the store into the live feature state.

Offline, a history's label becomes known a fixed delay after its transaction
(``txfast.history.feed_history_labels``). Online, it becomes known when it is recorded:
an analyst labels an alert (``POST /alerts/{id}/feedback``, ``Store.record_feedback``) or
a chargeback file is imported. The store is the one place every label lands, so the
scorer polls it (``[features] label_poll``) and gives each new label to the engine with
``known_ms = labelled_at``; the Rust state counts it for transactions at or after that
time, exactly as it counts offline labels.

Only the first label of a transaction is fed: a later correction (fraud → legit) is
stored and used for training, but the live counters keep the first verdict (the engine's
label state only adds). A label reaches transactions processed after the next poll, so
live features may miss a label for up to ``label_poll`` of event time that a replay would
count; the per-partition cursor is checkpointed with the state, so a restart neither
loses nor double-counts a label.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from txfast.features import hash_ids

if TYPE_CHECKING:
    from txfast.features import FeatureEngine
    from txfast.store import Store

__all__ = ["LabelBatch", "poll_labels"]

log = logging.getLogger(__name__)


class LabelBatch:
    """New label events, as the engine's columns, with the cursor after them.

    Attributes:
        ids: int64 store ids of the label events (ascending).
        known_ms: int64 ``labelled_at`` in epoch milliseconds.
        card: uint64 card hashes.
        merchant: uint64 merchant hashes.
        label: uint8, 1 fraud, 0 legitimate.
    """

    def __init__(self, table: pa.Table) -> None:
        self.ids = table.column("id").to_numpy().astype(np.int64)
        us = pc.cast(table.column("labelled_at"), pa.timestamp("us")).cast(pa.int64())
        # Rounded up to the millisecond: a label is never known before it was recorded.
        self.known_ms = -(-us.to_numpy().astype(np.int64) // 1000)
        self.card = hash_ids(table.column("card_id").to_pylist())
        self.merchant = hash_ids(table.column("merchant_id").to_pylist())
        self.label = table.column("label").to_numpy().astype(np.uint8)

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def cursor(self) -> int:
        """The id of the last label event (0 when there is none)."""
        return int(self.ids[-1]) if len(self.ids) else 0

    def feed(self, engine: FeatureEngine, after: int) -> int:
        """Give ``engine`` the events with an id above ``after``; returns how many."""
        rows = np.flatnonzero(self.ids > after)
        if not len(rows):
            return 0
        return engine.process_labels(
            known_ms=self.known_ms[rows],
            card=self.card[rows],
            merchant=self.merchant[rows],
            label=self.label[rows],
        )


def poll_labels(store: Store, after: int, *, limit: int = 100_000) -> LabelBatch:
    """The first label of each transaction recorded after label event ``after``."""
    return LabelBatch(store.label_events(after, limit=limit))
