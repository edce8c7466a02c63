"""Serving the API from a background thread: the API inside another process (the scorer).

``txfast serve`` runs uvicorn in the foreground; :class:`ApiServer` runs the same server in a
daemon thread, for ``txfast run … --api HOST:PORT`` (the app then serves the scorer's open
store) and for tests::

    app = create_app(settings, store=pipeline.store, runtime_stats=summary_figures)
    with ApiServer(app, "127.0.0.1", 8000) as server:
        print(f"API on {server.url}")
        pipeline.run(...)
"""

from __future__ import annotations

import logging
import os
import socket
import sys
import threading
import time
from typing import Any

import uvicorn

from txfast.exceptions import ConfigError

__all__ = ["ApiServer", "yield_cpu_to_api"]

log = logging.getLogger(__name__)


def yield_cpu_to_api(nice: int) -> int | None:
    """Lower the calling thread's CPU priority by ``nice`` (the scorer's, beside an API).

    On Linux a nice value belongs to a thread, and threads inherit it from the thread that
    starts them: called by the scorer's thread after the API's server started, it lowers the
    scorer and the worker threads it starts later (store writes, statistics folds), not the
    API's event loop and its workers, nor the threads started before (Kafka clients, ONNX
    Runtime). On two busy cores a request then waits for the next time slice rather than for
    a scorer batch to end; the scorer still gets every idle cycle.

    Returns:
        The thread's new nice value, or None where nothing changed (0, not Linux, refused).
    """
    if nice <= 0 or not sys.platform.startswith("linux"):
        return None
    tid = threading.get_native_id()
    try:
        new = min(19, os.getpriority(os.PRIO_PROCESS, tid) + nice)
        os.setpriority(os.PRIO_PROCESS, tid, new)
    except OSError as e:  # e.g. a seccomp sandbox
        log.warning("could not lower the scorer's CPU priority: %s", e)
        return None
    return new


class ApiServer:
    """An ASGI app served by uvicorn in a daemon thread.

    Args:
        app: The app (see :func:`txfast.api.create_app`).
        host: Address to listen on.
        port: Port (0: any free port; see :attr:`url`).
        log_level: uvicorn's log level.
        graceful_s: Seconds open connections (event streams) get to finish at :meth:`stop`.
    """

    def __init__(
        self,
        app: Any,
        host: str = "127.0.0.1",
        port: int = 8000,
        *,
        log_level: str = "warning",
        graceful_s: float = 2.0,
    ) -> None:
        self.host = host
        self.port = port
        self._config = uvicorn.Config(
            app,
            lifespan="on",
            ws="none",
            log_level=log_level,
            timeout_graceful_shutdown=max(1, round(graceful_s)),
        )
        self._server = uvicorn.Server(self._config)
        self._thread: threading.Thread | None = None
        self._sock: socket.socket | None = None

    @property
    def url(self) -> str:
        """The base URL, e.g. ``http://127.0.0.1:8000``."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def start(self, timeout: float = 10.0) -> ApiServer:
        """Listen and serve; returns once the app has started.

        Raises:
            ConfigError: If the address cannot be bound or the app fails to start (e.g. its
                store cannot be opened).
        """
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        # IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY on accepted connections only for a
        # listening socket created with it; without, each response's body waited ~40 ms for
        # the client's delayed ACK (uvicorn writes the headers and the body separately).
        sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((self.host, self.port))
        except OSError as e:
            sock.close()
            raise ConfigError(f"the API cannot listen on {self.host}:{self.port}: {e}") from e
        self._sock = sock
        self.port = sock.getsockname()[1]
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [sock]}, name="txfast-api", daemon=True
        )
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                raise ConfigError(f"the API did not start on {self.url} (see the log)")
            time.sleep(0.01)
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Stop serving (open event streams are cut after the grace period)."""
        self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def __enter__(self) -> ApiServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
