"""What every request handler gets as ``ctx``: the store, the registry and the app's parts."""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from litestar.di import NamedDependency

from txfast.api.metrics import ApiMetrics
from txfast.api.stream import AlertBroadcaster
from txfast.config import Settings
from txfast.exceptions import StoreError
from txfast.registry import Registry
from txfast.store import ApiKey, Store

__all__ = ["ApiContext", "Ctx", "RuntimeStats"]

RuntimeStats = Callable[[], Mapping[str, Any]]
"""Returns the scorer's throughput and latency figures (JSON values) for ``GET /stats``."""


@dataclass(eq=False)
class ApiContext:
    """The app's state, shared by its handlers (one per app).

    Attributes:
        settings: The settings the app was made with.
        registry: The model registry (``settings.registry`` unless given).
        store: The store, once open (the app opens ``settings.store`` at startup unless one
            was given, and then closes it at shutdown).
        metrics: The API's Prometheus metrics.
        runtime_stats: The scorer's runtime figures when the API runs inside it.
        scorer_metrics: The scorer's Prometheus registry when the API runs inside it.
        keepalive_s: Seconds between keep-alive comments of a quiet event stream.
        poll_interval_s: Seconds between the event stream's store polls.
        key_cache_s: Seconds a looked-up API key is trusted without reading the store again
            (a key revoked by another process is refused at most this much later; one
            revoked through this app at once). 0 reads the store on every request.
    """

    settings: Settings
    registry: Registry
    store: Store | None = None
    metrics: ApiMetrics = field(default_factory=ApiMetrics)
    runtime_stats: RuntimeStats | None = None
    scorer_metrics: Any = None  # prometheus_client.CollectorRegistry
    keepalive_s: float = 15.0
    poll_interval_s: float = 0.25
    key_cache_s: float = 5.0
    _broadcaster: AlertBroadcaster | None = None
    _keys: dict[bytes, tuple[float, ApiKey]] = field(default_factory=dict)
    _keys_lock: Any = field(default_factory=threading.Lock)  # (Litestar converts the fields)

    def cached_key(self, token: str) -> ApiKey | None:
        """The key of ``token`` if it was looked up less than ``key_cache_s`` ago."""
        entry = self._keys.get(_digest(token))
        if entry is None or entry[0] < time.monotonic():
            return None
        return entry[1]

    def remember_key(self, token: str, key: ApiKey) -> None:
        """Trust a key found in the store for ``key_cache_s`` (valid keys only)."""
        if self.key_cache_s <= 0 or key.revoked:
            return
        with self._keys_lock:
            if len(self._keys) >= 10_000:  # bounded: start over
                self._keys.clear()
            self._keys[_digest(token)] = (time.monotonic() + self.key_cache_s, key)

    def forget_keys(self) -> None:
        """Drop every cached key (after a revocation)."""
        with self._keys_lock:
            self._keys.clear()

    def require_store(self) -> Store:
        """The open store.

        Raises:
            StoreError: Before startup or after shutdown.
        """
        if self.store is None:
            raise StoreError("the store is not open")
        return self.store

    def alerts_stored(self) -> None:
        """Tell the live feed that alerts were just stored (any thread; see ``notify``)."""
        if self._broadcaster is not None:
            self._broadcaster.notify()

    @property
    def broadcaster(self) -> AlertBroadcaster:
        """The live feed's poller (made on first use)."""
        if self._broadcaster is None:
            self._broadcaster = AlertBroadcaster(
                self.require_store(), interval=self.poll_interval_s
            )
        return self._broadcaster

    async def close_stream(self) -> None:
        """End the live feed's subscriptions (at shutdown)."""
        if self._broadcaster is not None:
            await self._broadcaster.close()
            self._broadcaster = None


Ctx = NamedDependency[ApiContext]
"""The handlers' ``ctx`` parameter: the app's :class:`ApiContext`, injected by name."""


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()
