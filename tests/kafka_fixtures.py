"""Fixtures for a real Apache Kafka broker (see scripts/kafka.sh).

``kafka_broker`` (session scope) starts a single-node KRaft broker on 127.0.0.1 with
``scripts/kafka.sh`` in a state directory of its own (so a developer's broker, started by hand
with the same script, is left alone), and stops it, data removed, at the end of the session.
Set ``TXFAST_KAFKA_BOOTSTRAP=host:port`` to run the tests against an existing broker instead;
that one is never stopped or restarted.

If no broker can be had, the tests that need one fail when ``CI=true`` (a service the suite
needs must not silently turn into skips there) and are skipped otherwise.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, NoReturn

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "kafka.sh"
"""The script that fetches, starts and stops the development broker."""

START_TIMEOUT_S = 900
"""Limit for one ``kafka.sh start``: the first one resolves the jars with Maven."""


def _unavailable(reason: str) -> NoReturn:
    """Fail (in CI) or skip (elsewhere) a test whose broker cannot be had.

    Args:
        reason: Why there is no broker; shown in the test report.
    """
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"Kafka broker unavailable: {reason}", pytrace=False)
    pytest.skip(f"Kafka broker unavailable: {reason}")


def _state_dir() -> Path:
    """The state directory of the session's broker.

    One per checkout (and per xdist worker), so that a broker left behind by an interrupted
    session of the same checkout is found and replaced, and two checkouts do not collide.

    Returns:
        A path under the system's temporary directory.
    """
    tag = hashlib.sha256(str(SCRIPT).encode()).hexdigest()[:8]
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    base = Path(os.environ.get("TMPDIR", "/tmp"))
    return base / f"txfast-kafka-{os.getuid()}-pytest-{tag}{'-' + worker if worker else ''}"


class KafkaBroker:
    """A Kafka broker the tests can reach: started by ``scripts/kafka.sh`` or external.

    Attributes:
        bootstrap: ``host:port`` for the clients' ``bootstrap.servers``.
        external: True for a broker named by ``TXFAST_KAFKA_BOOTSTRAP`` (never stopped).
        state_dir: The managed broker's state directory (config, data, logs); None if external.
    """

    def __init__(self, bootstrap: str, *, external: bool, state_dir: Path | None = None):
        self.bootstrap = bootstrap
        self.external = external
        self.state_dir = state_dir
        self._admin: tuple[str, Any] | None = None

    def __repr__(self) -> str:
        kind = "external" if self.external else f"managed in {self.state_dir}"
        return f"KafkaBroker({self.bootstrap!r}, {kind})"

    def config(self, extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Client configuration for this broker.

        Args:
            extra: More librdkafka properties, e.g. ``{"group.id": "g"}``.

        Returns:
            A dict with ``bootstrap.servers`` and the extra properties.
        """
        return {"bootstrap.servers": self.bootstrap, **(extra or {})}

    def script_env(self) -> dict[str, str]:
        """The environment for running ``scripts/kafka.sh`` on the managed broker.

        Returns:
            A copy of ``os.environ`` with the state directory and this Python set.
        """
        env = dict(os.environ)
        env["TXFAST_KAFKA_DIR"] = str(self.state_dir or _state_dir())
        env["PYTHON"] = sys.executable
        return env

    def run_script(
        self, *args: str, timeout: float = START_TIMEOUT_S
    ) -> subprocess.CompletedProcess:
        """Run ``scripts/kafka.sh`` with ``args`` on this broker's state directory.

        Args:
            *args: The command and its options, e.g. ``"stop", "--keep"``.
            timeout: Seconds before the script is abandoned.

        Returns:
            The completed process (text stdout and stderr); the caller checks the exit code.
        """
        return subprocess.run(
            ["bash", str(SCRIPT), *args],
            env=self.script_env(),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def _require_managed(self) -> None:
        if self.external:
            pytest.skip("the broker is external (TXFAST_KAFKA_BOOTSTRAP): not restarted by tests")

    def stop(self, keep: bool = True) -> None:
        """Stop the managed broker.

        Args:
            keep: Keep its data, ports and configuration for :meth:`start` (the default);
                False discards them.

        Raises:
            RuntimeError: If the script fails.
        """
        self._require_managed()
        proc = self.run_script("stop", *(["--keep"] if keep else []), timeout=120)
        if proc.returncode != 0:
            raise RuntimeError(f"kafka.sh stop failed:\n{proc.stderr}")

    def start(self) -> str:
        """Start the managed broker again, on the data and ports kept by ``stop(keep=True)``.

        Returns:
            The bootstrap address (the same as before a kept stop).

        Raises:
            RuntimeError: If the script fails.
        """
        self._require_managed()
        proc = self.run_script("start")
        if proc.returncode != 0:
            raise RuntimeError(f"kafka.sh start failed:\n{proc.stderr}")
        self.bootstrap = proc.stdout.strip().splitlines()[-1]
        return self.bootstrap

    def admin(self) -> Any:
        """The AdminClient of this broker, made on first use and kept.

        Keeping it matters: the futures an AdminClient returns fail with ``_DESTROY`` once the
        client is garbage-collected, as a temporary ``AdminClient(...).create_topics(...)`` is.
        It reconnects by itself after a restart of the broker.

        Returns:
            A ``confluent_kafka.admin.AdminClient``.
        """
        from confluent_kafka.admin import AdminClient

        if self._admin is None or self._admin[0] != self.bootstrap:
            self._admin = (self.bootstrap, AdminClient(self.config()))
        return self._admin[1]

    def wait_topic(self, topic: str, partitions: int, timeout: float = 30.0) -> None:
        """Wait until every partition of ``topic`` has a leader.

        Args:
            topic: Topic name.
            partitions: Expected number of partitions.
            timeout: Seconds to wait.

        Raises:
            TimeoutError: If the topic is not ready in time.
        """
        admin = self.admin()
        deadline = time.monotonic() + timeout
        while True:
            md = admin.list_topics(topic=topic, timeout=10).topics.get(topic)
            if (
                md is not None
                and md.error is None
                and len(md.partitions) == partitions
                and all(p.leader >= 0 for p in md.partitions.values())
            ):
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"topic {topic} has no leader for every partition")
            time.sleep(0.1)


def _check_client() -> None:
    try:
        import confluent_kafka  # noqa: F401
    except ImportError as exc:
        _unavailable(f"the confluent-kafka client is not installed ({exc})")


@pytest.fixture(scope="session")
def kafka_broker() -> Iterator[KafkaBroker]:
    """A real Kafka broker for the session (started on first use, stopped at the end).

    Yields:
        The broker; ``.bootstrap`` is its address.
    """
    _check_client()
    external = os.environ.get("TXFAST_KAFKA_BOOTSTRAP", "").strip()
    if external:
        broker = KafkaBroker(external, external=True)
        try:
            md = broker.admin().list_topics(timeout=15)
        except Exception as exc:  # KafkaException: no broker answered
            _unavailable(f"TXFAST_KAFKA_BOOTSTRAP={external} does not answer: {exc}")
        if not md.brokers:
            _unavailable(f"TXFAST_KAFKA_BOOTSTRAP={external} lists no brokers")
        yield broker
        return

    broker = KafkaBroker("", external=False, state_dir=_state_dir())
    try:
        # A broker left behind by an interrupted session of this checkout: discard it.
        broker.run_script("stop", timeout=120)
        proc = broker.run_script("start")
    except FileNotFoundError as exc:  # no bash
        _unavailable(str(exc))
    except subprocess.TimeoutExpired:
        broker.run_script("stop", timeout=120)
        _unavailable(f"scripts/kafka.sh start took more than {START_TIMEOUT_S} s")
    if proc.returncode != 0:
        _unavailable(f"scripts/kafka.sh start exited {proc.returncode}:\n{proc.stderr.strip()}")
    broker.bootstrap = proc.stdout.strip().splitlines()[-1]
    try:
        yield broker
    finally:
        broker._admin = None  # no reconnect attempts (and their log lines) after the stop
        proc = broker.run_script("stop", timeout=120)
        if proc.returncode != 0:
            print(f"kafka.sh stop failed:\n{proc.stderr}", file=sys.stderr)


@pytest.fixture
def kafka_topic(kafka_broker: KafkaBroker) -> Iterator[Callable[..., str]]:
    """A factory of fresh, uniquely named topics, deleted after the test.

    Call it as ``kafka_topic(partitions=3, prefix="tx", config={"max.message.bytes": "…"})``.

    Yields:
        The factory; it returns the new topic's name once every partition has a leader.
    """
    from confluent_kafka.admin import NewTopic

    created: list[str] = []
    admin = kafka_broker.admin()

    def make(
        partitions: int = 1, prefix: str = "test", config: Mapping[str, str] | None = None
    ) -> str:
        name = f"{prefix}-{uuid.uuid4().hex[:12]}"
        new = NewTopic(name, num_partitions=partitions, config=dict(config or {}))
        for future in admin.create_topics([new], operation_timeout=30).values():
            future.result(timeout=60)
        created.append(name)
        kafka_broker.wait_topic(name, partitions)
        return name

    yield make
    if created:
        try:
            futures = admin.delete_topics(created, operation_timeout=10)
            for future in futures.values():
                future.result(timeout=15)
        except Exception as exc:  # best effort: the broker may have been stopped by the test
            print(f"could not delete topics {created}: {exc}", file=sys.stderr)
