"""The live alert feed behind ``GET /alerts/stream``: one store poller per app, fanned out.

The poller reads the alerts created since the last poll (:meth:`Store.alerts_since`, by the
``created_at`` the scorer stamps on each batch) every ``interval`` seconds, so the feed works
the same whether the API runs inside the scorer process or alone next to a shared database.
Each poll re-reads a short ``lookback`` before the newest alert seen and skips the ids already
sent: a batch whose commit lands after a later batch's (several scorers, or a store write
retried after an outage) is still sent, once. The poller runs only while someone listens; it
starts at the newest stored alert, so a client sees the alerts stored after it subscribed.

When the API runs inside the scorer process, the pipeline calls :meth:`AlertBroadcaster.notify`
after each store write, and the poller reads at once instead of at its next tick: the feed's
delay is then the store commit plus one read, not up to ``interval`` more. The reads are the
same, so what is sent, and in what order, does not change.

Each subscriber has a bounded queue; one that falls ``max_queue`` events behind is
disconnected (an ``EventSource`` reconnects by itself) rather than slowing the others.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Collection
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import anyio.to_thread
import msgspec

from txfast.exceptions import StoreError
from txfast.store import Alert, Store

__all__ = ["AlertBroadcaster", "Subscription"]

log = logging.getLogger(__name__)

_PAGE = 1000
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass(eq=False)
class Subscription:
    """One listener: the risk levels it wants (empty: all) and its queue of alerts.

    Each alert is queued as its transaction id and its JSON encoding; ``None`` in the queue
    ends the subscription (overflow or shutdown).
    """

    levels: frozenset[str]
    queue: asyncio.Queue[tuple[str, bytes] | None]
    dropped: bool = False


@dataclass(eq=False)
class _Cursor:
    """What the poller has seen: the newest creation time and the ids near it."""

    watermark: datetime = _EPOCH
    seen: dict[str, datetime] = field(default_factory=dict)


class AlertBroadcaster:
    """Polls the store for new alerts and hands each to the subscribers that want it.

    Args:
        store: Where the alerts are.
        interval: Seconds between polls.
        lookback: Seconds re-read before the newest alert seen (late commits).
        max_queue: Events a subscriber may fall behind before it is disconnected.
    """

    def __init__(
        self,
        store: Store,
        *,
        interval: float = 0.25,
        lookback: float = 2.0,
        max_queue: int = 1000,
    ) -> None:
        self.store = store
        self.interval = interval
        self.lookback = timedelta(seconds=lookback)
        self.max_queue = max_queue
        self._subscribers: set[Subscription] = set()
        self._task: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()
        self._cursor = _Cursor()
        self._closed = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake: asyncio.Event | None = None
        self.sent = 0
        """Events queued to subscribers since the start."""

    @property
    def subscribers(self) -> int:
        """Current subscribers."""
        return len(self._subscribers)

    async def subscribe(self, levels: Collection[str] = ()) -> Subscription:
        """Start listening; the alerts stored from now on are queued.

        The first subscriber starts the poller at the newest stored alert (read before this
        returns), so nothing stored after this call is missed.

        Raises:
            StoreError: If the store cannot be read.
        """
        async with self._lock:
            if self._closed:
                raise StoreError("the alert stream is shut down")
            if self._task is None:
                self._loop, self._wake = asyncio.get_running_loop(), asyncio.Event()
                self._cursor = await anyio.to_thread.run_sync(self._start_cursor)
                self._task = asyncio.create_task(self._run(), name="txfast-alert-poller")
            sub = Subscription(frozenset(levels), asyncio.Queue(self.max_queue))
            self._subscribers.add(sub)
        return sub

    def notify(self) -> None:
        """New alerts were stored: poll now rather than at the next tick (any thread)."""
        loop, wake = self._loop, self._wake
        if loop is None or wake is None or self._task is None:
            return  # nobody listens
        try:
            loop.call_soon_threadsafe(wake.set)
        except RuntimeError:  # the loop is closed (shutdown)
            pass

    def unsubscribe(self, sub: Subscription) -> None:
        """Stop listening (the poller stops with the last subscriber)."""
        self._subscribers.discard(sub)

    async def close(self) -> None:
        """End every subscription and stop the poller."""
        self._closed = True
        for sub in list(self._subscribers):
            self._end(sub)
        self._subscribers.clear()
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                pass

    # -- the poller ---------------------------------------------------------------------------

    def _start_cursor(self) -> _Cursor:
        latest = self.store.latest_alert_time()
        if latest is None:
            return _Cursor()
        recent = self._read(latest - self.lookback)
        return _Cursor(watermark=latest, seen={a.transaction_id: a.created_at for a in recent})

    def _read(self, since: datetime) -> list[Alert]:
        """Every alert created at or after ``since``, oldest first, page by page."""
        out = self.store.alerts_since(since, limit=_PAGE)
        page = out
        while len(page) == _PAGE:
            last = page[-1]
            page = self.store.alerts_since(
                last.created_at, after_id=last.transaction_id, limit=_PAGE
            )
            out += page
        return out

    def _poll(self) -> list[Alert]:
        """The alerts not sent yet (runs in a worker thread, one poll at a time)."""
        cur = self._cursor
        since = cur.watermark - self.lookback if cur.watermark > _EPOCH else _EPOCH
        new = [a for a in self._read(since) if a.transaction_id not in cur.seen]
        for a in new:
            cur.seen[a.transaction_id] = a.created_at
            if a.created_at > cur.watermark:
                cur.watermark = a.created_at
        horizon = cur.watermark - self.lookback
        if len(cur.seen) > 2 * _PAGE or new:
            cur.seen = {k: t for k, t in cur.seen.items() if t >= horizon}
        return new

    async def _run(self) -> None:
        failures = 0
        try:
            wake = self._wake
            assert wake is not None
            while self._subscribers:
                try:  # the next tick, or sooner when the scorer says it stored alerts
                    await asyncio.wait_for(wake.wait(), self.interval * min(2**failures, 40))
                except TimeoutError:
                    pass
                wake.clear()
                if not self._subscribers:
                    break
                try:
                    new = await anyio.to_thread.run_sync(self._poll)
                except StoreError as e:
                    failures += 1
                    if failures in (1, 10) or failures % 100 == 0:
                        log.warning("alert stream: reading new alerts failed: %s", e)
                    continue
                failures = 0
                for alert in new:
                    self._publish(alert)
        finally:
            if self._task is asyncio.current_task():
                self._task = None

    def _publish(self, alert: Alert) -> None:
        item: tuple[str, bytes] | None = None
        for sub in list(self._subscribers):
            if sub.levels and alert.risk_level not in sub.levels:
                continue
            if item is None:
                item = (alert.transaction_id, msgspec.json.encode(alert))
            try:
                sub.queue.put_nowait(item)
                self.sent += 1
            except asyncio.QueueFull:
                log.warning("alert stream: a subscriber fell behind; disconnecting it")
                self._subscribers.discard(sub)
                self._end(sub)

    @staticmethod
    def _end(sub: Subscription) -> None:
        sub.dropped = True
        while True:  # make room for the end marker
            try:
                sub.queue.put_nowait(None)
                return
            except asyncio.QueueFull:
                sub.queue.get_nowait()
