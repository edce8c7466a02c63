"""The live alert feed behind ``GET /alerts/stream``: one store poller per app, fanned out.

The poller reads the alerts created since the last poll (:meth:`Store.alert_feed`, by the
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

The store encodes each alert's JSON (:class:`~txfast.store.FeedAlert`): a poll re-reads about
``lookback`` seconds of alerts (hundreds at a busy scorer's rate, many times a second), and
building a Python object for each of them took a tenth of a core from the API beside a
scorer at 10,000 tx/s.

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

from txfast.exceptions import StoreError
from txfast.store import FeedAlert, Store

__all__ = ["AlertBroadcaster", "Subscription"]

log = logging.getLogger(__name__)

_PAGE = 1000
_EPOCH = datetime(1970, 1, 1)


@dataclass(eq=False)
class Subscription:
    """One listener: the risk levels it wants (empty: all) and its queue of alerts.

    Each alert is queued as its transaction id and its JSON; ``None`` in the queue ends the
    subscription (overflow or shutdown).
    """

    levels: frozenset[str]
    queue: asyncio.Queue[tuple[str, str] | None]
    dropped: bool = False


@dataclass(eq=False)
class _Cursor:
    """What the poller has seen: the newest creation time and the ids near it (µs, UTC)."""

    watermark: int = 0
    seen: dict[str, int] = field(default_factory=dict)


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
        self.lookback_us = round(lookback * 1_000_000)
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
        delta = latest.astimezone(UTC).replace(tzinfo=None) - _EPOCH
        watermark = delta // timedelta(microseconds=1)
        recent = self._read(watermark - self.lookback_us, ids_only=True)
        return _Cursor(watermark=watermark, seen={a.transaction_id: a.created_us for a in recent})

    def _read(self, since_us: int, *, ids_only: bool = False) -> list[FeedAlert]:
        """Every alert created at or after ``since_us``, oldest first, page by page."""
        out = self.store.alert_feed(_time(since_us), limit=_PAGE, ids_only=ids_only)
        page = out
        while len(page) == _PAGE:
            last = page[-1]
            page = self.store.alert_feed(
                _time(last.created_us),
                after_id=last.transaction_id,
                limit=_PAGE,
                ids_only=ids_only,
            )
            out += page
        return out

    def _poll(self) -> list[FeedAlert]:
        """The alerts not sent yet (runs in a worker thread, one poll at a time).

        The lookback's ids first, then the JSON of the alerts from the oldest new one on:
        usually only the last batch's, since the lookback holds hundreds of alerts already
        sent at a busy scorer's rate.
        """
        cur = self._cursor
        since = max(cur.watermark - self.lookback_us, 0) if cur.watermark else 0
        seen = cur.seen
        fresh = [
            a.created_us for a in self._read(since, ids_only=True) if a.transaction_id not in seen
        ]
        if not fresh:
            return []
        # Alerts committed since the first read are new too (their ids are not seen).
        new = [a for a in self._read(min(fresh)) if a.transaction_id not in seen]
        for a in new:
            seen[a.transaction_id] = a.created_us
            if a.created_us > cur.watermark:
                cur.watermark = a.created_us
        horizon = cur.watermark - self.lookback_us
        if len(seen) > 2 * _PAGE or new:
            cur.seen = {k: t for k, t in seen.items() if t >= horizon}
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

    def _publish(self, alert: FeedAlert) -> None:
        item = (alert.transaction_id, alert.json)
        for sub in list(self._subscribers):
            if sub.levels and alert.risk_level not in sub.levels:
                continue
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


def _time(us: int) -> datetime:
    """Microseconds since the epoch as a naive UTC datetime (as stored)."""
    return _EPOCH + timedelta(microseconds=us)
