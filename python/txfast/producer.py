"""Loading a Kafka topic with transactions at a fixed rate (``txfast produce``)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec

__all__ = ["iter_payloads", "produce_events"]


def iter_payloads(
    data: str | None = None, simulate: dict[str, Any] | None = None, batch: int = 8192
) -> Iterator[list[bytes]]:
    """Batches of JSON payloads from a history file or the simulator."""
    from txfast.simulate import iter_json_batches

    if simulate is not None:
        from txfast.simulate import simulate as run_simulation

        table = run_simulation(
            simulate["cards"], simulate["days"], simulate["seed"], start=simulate["start"]
        )
        yield from iter_json_batches(table, batch)
        return
    assert data is not None
    path = Path(data)
    if path.suffix in (".jsonl", ".json", ".ndjson"):
        with path.open("rb") as f:
            lines: list[bytes] = []
            for line in f:
                line = line.rstrip(b"\r\n")
                if line:
                    lines.append(line)
                if len(lines) >= batch:
                    yield lines
                    lines = []
            if lines:
                yield lines
        return
    import pyarrow.parquet as pq

    table = pq.read_table(path) if path.suffix == ".parquet" else _read_csv(path)
    yield from iter_json_batches(table, batch)


def _read_csv(path: Path) -> Any:
    import pyarrow.csv as pcsv

    return pcsv.read_csv(path)


_KEY = msgspec.json.Decoder(type=dict[str, Any])


def _card_key(payload: bytes) -> bytes | None:
    try:
        card = _KEY.decode(payload).get("card_id")
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None
    return str(card).encode() if card is not None else None


def produce_events(
    bootstrap: str,
    topic: str,
    *,
    data: str | None = None,
    simulate: dict[str, Any] | None = None,
    rate: float = 0.0,
    limit: int | None = None,
    producer_config: dict[str, Any] | None = None,
) -> tuple[int, float]:
    """Produce events keyed by ``card_id``, paced at ``rate`` per second (0: as fast as possible).

    Returns:
        ``(events produced, seconds)``.
    """
    from confluent_kafka import Producer

    p = Producer(
        {
            "bootstrap.servers": bootstrap,
            "linger.ms": 5,
            "compression.type": "lz4",
            "enable.idempotence": True,
            "partitioner": "murmur2_random",
            "message.max.bytes": 16 << 20,
            **(producer_config or {}),
        }
    )
    n = 0
    t0 = time.perf_counter()
    for batch in iter_payloads(data, simulate):
        for payload in batch:
            if limit is not None and n >= limit:
                break
            if rate > 0:
                delay = t0 + n / rate - time.perf_counter()
                if delay > 0:
                    time.sleep(delay)
            while True:
                try:
                    p.produce(topic, value=payload, key=_card_key(payload))
                    break
                except BufferError:
                    p.poll(0.05)
            n += 1
            if n % 1000 == 0:
                p.poll(0)
        if limit is not None and n >= limit:
            break
    remaining = p.flush(60)
    if remaining:
        raise RuntimeError(f"{remaining} messages were not delivered to {topic}")
    return n, time.perf_counter() - t0
