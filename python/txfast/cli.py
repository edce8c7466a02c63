"""The ``txfast`` command line."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click
import numpy as np

from txfast.config import Settings, load_settings
from txfast.exceptions import TxfastError

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


def _settings(config: str | None, **overrides: Any) -> Settings:
    return load_settings(config, overrides=overrides)


class _Group(click.Group):
    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except TxfastError as e:
            raise click.ClickException(f"{type(e).__name__}: {e}") from e


@click.group(cls=_Group, context_settings=CONTEXT)
@click.version_option(package_name="txfast")
def main() -> None:
    """txfast: real-time transaction anomaly detection and alerting.

    \b
    Typical session:
      txfast simulate --cards 2000 --days 30 --seed 1 --out var/history.parquet
      txfast train --data var/history.parquet --registry var/registry
      txfast run --source simulate --store duckdb:var/txfast.duckdb --registry var/registry
      txfast alerts --store duckdb:var/txfast.duckdb --risk CRITICAL
    """


@main.command(context_settings=CONTEXT)
@click.option("--cards", type=click.IntRange(1), default=2000, show_default=True)
@click.option("--days", type=click.IntRange(1), default=30, show_default=True)
@click.option("--seed", type=click.IntRange(0), default=0, show_default=True)
@click.option(
    "--fraud-rate", type=click.FloatRange(0, 0.5, max_open=True), default=0.005, show_default=True
)
@click.option("--start", default="2026-01-01", show_default=True, help="First simulated day.")
@click.option(
    "--out", required=True, type=click.Path(dir_okay=False), help=".jsonl/.json, .csv or .parquet"
)
def simulate(cards: int, days: int, seed: int, fraud_rate: float, start: str, out: str) -> None:
    """Write realistic labelled transactions (normal habits plus fraud scenarios).

    \b
    Example:
      txfast simulate --cards 10000 --days 60 --seed 1 --out var/history.parquet
    """
    from txfast.simulate import simulate as run_simulation
    from txfast.simulate import write_table

    table = run_simulation(cards, days, seed, fraud_rate=fraud_rate, start=start)
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    write_table(table, out)
    frauds = int(table["label"].to_numpy().astype(np.int64).sum())
    click.echo(f"wrote {table.num_rows:,} transactions ({frauds:,} fraudulent) to {out}")


def _mapping(path: str | None) -> Any:
    from txfast.sources import ColumnMapping

    return ColumnMapping.load(path) if path else None


@main.command(context_settings=CONTEXT)
@click.option("--data", required=True, type=click.Path(exists=True, dir_okay=False))
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="Parquet file.")
@click.option("--mapping", type=click.Path(exists=True, dir_okay=False), help="Column mapping.")
@click.option("--config", type=click.Path(exists=True, dir_okay=False), help="Settings TOML.")
def features(data: str, out: str, mapping: str | None, config: str | None) -> None:
    """Replay a history through the feature engine and write every feature column.

    \b
    Example:
      txfast features --data var/history.parquet --out var/features.parquet
      txfast features --data fraud.csv --mapping mapping.toml --out var/features.parquet
    """
    from txfast.history import write_features

    settings = _settings(config)
    rows, rejected = write_features(settings, data, out, _mapping(mapping))
    click.echo(f"wrote features of {rows:,} transactions to {out} ({len(rejected):,} rejected)")


@main.command(context_settings=CONTEXT)
@click.option("--data", required=True, type=click.Path(exists=True, dir_okay=False))
@click.option(
    "--model",
    "kind",
    type=click.Choice(["isolation-forest"]),
    default="isolation-forest",
    show_default=True,
)
@click.option("--registry", type=click.Path(file_okay=False), help="Registry directory.")
@click.option("--name", default=None, help="Model name in the registry [default: default].")
@click.option("--mapping", type=click.Path(exists=True, dir_okay=False), help="Column mapping.")
@click.option("--config", type=click.Path(exists=True, dir_okay=False), help="Settings TOML.")
@click.option("--trees", type=click.IntRange(1), default=100, show_default=True)
@click.option("--max-samples", type=click.IntRange(2), default=256, show_default=True)
@click.option("--target-alert-rate", type=click.FloatRange(0, 1), default=0.01, show_default=True)
@click.option("--seed", type=click.IntRange(0), default=0, show_default=True)
@click.option(
    "--promote/--no-promote",
    default=None,
    help="Make it the champion [default: only when there is none].",
)
def train(
    data: str,
    kind: str,
    registry: str | None,
    name: str | None,
    mapping: str | None,
    config: str | None,
    trees: int,
    max_samples: int,
    target_alert_rate: float,
    seed: int,
    promote: bool | None,
) -> None:
    """Train a model on features computed by the Rust core and register it.

    \b
    Example:
      txfast train --data var/history.parquet --model isolation-forest --registry var/registry
    """
    from txfast.history import replay_features
    from txfast.registry import Registry
    from txfast.training.isolation_forest import train_isolation_forest

    settings = _settings(config, registry=registry, model_name=name)
    fs = replay_features(settings, data, _mapping(mapping))
    if len(fs.X) < 2:
        raise click.ClickException(f"{data} has fewer than 2 valid transactions")
    trained = train_isolation_forest(
        fs.X,
        fs.feature_names,
        fs.feature_version,
        n_estimators=trees,
        max_samples=max_samples,
        target_alert_rate=target_alert_rate,
        seed=seed,
        time_range_ms=(int(fs.ts_ms.min()), int(fs.ts_ms.max())),
    )
    meta = dict(trained.metadata)
    meta["training"] = {**meta["training"], "source": str(data), "rejected": len(fs.rejected)}
    reg = Registry(settings.registry)
    has_champion = (
        settings.model_name in reg.names() and reg.champion(settings.model_name) is not None
    )
    make_champion = promote if promote is not None else not has_champion
    version = reg.register(settings.model_name, trained.onnx_bytes, meta, promote=make_champion)
    state = "champion" if make_champion else "not promoted"
    click.echo(
        f"registered {settings.model_name}/{version.version} ({kind}, {len(fs.X):,} rows, "
        f"{len(fs.feature_names)} features) in {settings.registry} [{state}]"
    )


@main.command(context_settings=CONTEXT)
@click.option(
    "--source",
    default="simulate",
    show_default=True,
    help="`simulate` (a live simulated stream), `file:PATH` (.jsonl, .csv, .parquet) or `kafka`.",
)
@click.option("--bootstrap", default=None, help="Kafka bootstrap servers (--source kafka).")
@click.option("--group", default=None, help="Kafka consumer group [default: txfast].")
@click.option("--topics", default=None, help="Comma-separated topics [transactions_raw].")
@click.option("--instance", default=None, help="Stable id of this process in the group [0].")
@click.option("--checkpoint-dir", default=None, help="State checkpoints [var/checkpoints].")
@click.option(
    "--idle-exit", type=click.FloatRange(0), default=None, help="Stop after N s without input."
)
@click.option("--store", default=None, help="Store URL [default: duckdb:var/txfast.duckdb].")
@click.option("--registry", type=click.Path(file_okay=False), help="Registry directory.")
@click.option("--name", default=None, help="Model name in the registry.")
@click.option("--config", type=click.Path(exists=True, dir_okay=False), help="Settings TOML.")
@click.option("--mapping", type=click.Path(exists=True, dir_okay=False), help="Column mapping.")
@click.option("--cards", type=click.IntRange(1), default=2000, show_default=True)
@click.option("--days", type=click.IntRange(1), default=1, show_default=True)
@click.option("--seed", type=click.IntRange(0), default=0, show_default=True)
@click.option("--start", default="2026-02-01", show_default=True)
@click.option("--rate", type=click.FloatRange(0), default=0.0, help="Pace events/s (0: max).")
@click.option(
    "--warm-from",
    type=click.Path(exists=True, dir_okay=False),
    help="Replay this history into the feature state first (nothing scored or stored).",
)
@click.option("--max-events", type=click.IntRange(1), default=None)
@click.option("--json", "as_json", is_flag=True, help="Print a JSON summary at the end.")
def run(
    source: str,
    bootstrap: str | None,
    group: str | None,
    topics: str | None,
    instance: str | None,
    checkpoint_dir: str | None,
    idle_exit: float | None,
    store: str | None,
    registry: str | None,
    name: str | None,
    config: str | None,
    mapping: str | None,
    cards: int,
    days: int,
    seed: int,
    start: str,
    rate: float,
    warm_from: str | None,
    max_events: int | None,
    as_json: bool,
) -> None:
    """Score a stream: decode, features, ONNX score, rules, store.

    \b
    Examples:
      txfast run --source simulate --store duckdb:var/txfast.duckdb --registry var/registry
      txfast run --source file:var/stream.jsonl --warm-from var/history.parquet --json
      txfast run --source kafka --bootstrap 127.0.0.1:9092 --group txfast --topics transactions_raw

    With --source kafka, alerts go to the alerts topic and the store exactly once, state is
    kept per partition and checkpointed, and SIGTERM drains the batch, commits and
    checkpoints before exiting.
    """
    from txfast.pipeline import Pipeline, stderr_if_tty
    from txfast.sources import SimulatedSource, open_source

    settings = _settings(config, store=store, registry=registry, model_name=name)
    if source == "kafka":
        _run_kafka(
            settings,
            bootstrap,
            group,
            topics,
            instance,
            checkpoint_dir,
            idle_exit,
            max_events,
            as_json,
        )
        return
    batch = settings.pipeline.batch_size
    src = (
        SimulatedSource(cards=cards, days=days, seed=seed, rate=rate, batch_size=batch, start=start)
        if source == "simulate"
        else open_source(source, batch_size=batch, mapping=_mapping(mapping))
    )
    if isinstance(src, SimulatedSource):
        src.table()  # simulate before the clock starts: the rate is the scorer's
    pipeline = Pipeline.from_settings(settings)
    if warm_from:
        warmed = pipeline.warm(open_source(f"file:{warm_from}", batch_size=batch))
        if not as_json:
            click.echo(f"feature state warmed with {warmed:,} events from {warm_from}")
    try:
        summary = pipeline.run(
            src,
            source=src.name,
            progress=None if as_json else stderr_if_tty(),
            max_events=max_events,
        )
    finally:
        pipeline.store.close()
    if as_json:
        click.echo(json.dumps(summary.as_dict(), indent=2))
    else:
        d = summary.as_dict()
        click.echo(
            f"scored {d['scored']:,} of {d['events']:,} events in {d['seconds']} s "
            f"({d['tx_per_s']:,} tx/s): {d['alerts']:,} alerts, {d['rejected']:,} rejected, "
            f"model {d['model_version']}, store {d['store']}"
        )
        click.echo(f"risk levels: {d['by_risk']}")
        click.echo(f"see the alerts: txfast alerts --store {settings.store}")


def _run_kafka(
    settings: Settings,
    bootstrap: str | None,
    group: str | None,
    topics: str | None,
    instance: str | None,
    checkpoint_dir: str | None,
    idle_exit: float | None,
    max_events: int | None,
    as_json: bool,
) -> None:
    import msgspec

    from txfast.streaming import KafkaScorer

    changes: dict[str, Any] = {}
    for key, value in (
        ("bootstrap", bootstrap),
        ("group", group),
        ("instance", instance),
        ("checkpoint_dir", checkpoint_dir),
    ):
        if value is not None:
            changes[key] = value
    if topics:
        changes["topics"] = [t.strip() for t in topics.split(",") if t.strip()]
    settings = settings.replace(kafka=msgspec.structs.replace(settings.kafka, **changes))
    scorer = KafkaScorer(settings)
    scorer.install_signal_handlers()
    stats = scorer.run(max_messages=max_events, idle_timeout_s=idle_exit)
    if as_json:
        click.echo(json.dumps(stats.as_dict(), indent=2))
    else:
        d = stats.as_dict()
        click.echo(
            f"consumed {d['consumed']:,} ({d['replayed']:,} replayed into state), scored "
            f"{d['scored']:,}, {d['alerts']:,} alerts, {d['rejected']:,} dead letters, "
            f"{d['transactions']:,} transactions, {d['checkpoints']:,} checkpoints"
        )


@main.command(context_settings=CONTEXT)
@click.option("--bootstrap", required=True, help="Kafka bootstrap servers.")
@click.option("--topic", default="transactions_raw", show_default=True)
@click.option("--data", type=click.Path(exists=True, dir_okay=False), help="History file.")
@click.option("--simulate", "simulated", is_flag=True, help="Produce simulated transactions.")
@click.option("--cards", type=click.IntRange(1), default=2000, show_default=True)
@click.option("--days", type=click.IntRange(1), default=1, show_default=True)
@click.option("--seed", type=click.IntRange(0), default=0, show_default=True)
@click.option("--start", default="2026-02-01", show_default=True)
@click.option("--rate", type=click.FloatRange(0), default=0.0, help="Events/s (0: max).")
@click.option("--limit", type=click.IntRange(1), default=None, help="Stop after N events.")
def produce(
    bootstrap: str,
    topic: str,
    data: str | None,
    simulated: bool,
    cards: int,
    days: int,
    seed: int,
    start: str,
    rate: float,
    limit: int | None,
) -> None:
    """Load a topic at a fixed rate, keyed by card_id (demos and load tests).

    \b
    Examples:
      txfast produce --bootstrap 127.0.0.1:9092 --simulate --cards 10000 --days 1 --rate 5000
      txfast produce --bootstrap 127.0.0.1:9092 --data var/stream.jsonl --topic transactions_raw
    """
    from txfast.producer import produce_events

    if bool(data) == simulated:
        raise click.UsageError("give exactly one of --data PATH or --simulate")
    n, seconds = produce_events(
        bootstrap,
        topic,
        data=data,
        simulate={"cards": cards, "days": days, "seed": seed, "start": start}
        if simulated
        else None,
        rate=rate,
        limit=limit,
    )
    click.echo(
        f"produced {n:,} events to {topic} in {seconds:.1f} s ({n / max(seconds, 1e-9):,.0f}/s)"
    )


@main.command(context_settings=CONTEXT)
@click.option("--store", default=None, help="Store URL [default: duckdb:var/txfast.duckdb].")
@click.option("--config", type=click.Path(exists=True, dir_okay=False), help="Settings TOML.")
@click.option("--risk", multiple=True, help="Filter by risk level (repeatable).")
@click.option("--card", default=None, help="Filter by card id.")
@click.option("--limit", type=click.IntRange(1, 10_000), default=20, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print JSON lines.")
def alerts(
    store: str | None,
    config: str | None,
    risk: tuple[str, ...],
    card: str | None,
    limit: int,
    as_json: bool,
) -> None:
    """List the most recent alerts of a store.

    \b
    Example:
      txfast alerts --store duckdb:var/txfast.duckdb --risk CRITICAL --risk HIGH --limit 10
    """
    from txfast.store import open_store

    settings = _settings(config, store=store)
    where: list[str] = []
    params: list[Any] = []
    if risk:
        where.append(f"risk_level IN ({', '.join('?' for _ in risk)})")
        params.extend(r.upper() for r in risk)
    if card:
        where.append("card_id = ?")
        params.append(card)
    sql = (
        "SELECT transaction_id, ts, card_id, merchant_id, amount_base, score, risk_level, "
        "action, rules FROM alerts"
        + (" WHERE " + " AND ".join(where) if where else "")
        + " ORDER BY ts DESC, transaction_id LIMIT ?"
    )
    with open_store(settings.store) as s:
        rows = s.query(sql, [*params, limit])
    cols = [
        "transaction_id",
        "ts",
        "card_id",
        "merchant_id",
        "amount",
        "score",
        "risk",
        "action",
        "rules",
    ]
    for r in rows:
        rec = dict(zip(cols, r, strict=True))
        if as_json:
            click.echo(json.dumps(rec, default=str))
        else:
            click.echo(
                f"{rec['ts']}  {rec['risk']:<8} {rec['action']:<7} score={rec['score']:.4f} "
                f"amount={rec['amount']:>10.2f}  card={rec['card_id']}  tx={rec['transaction_id']}"
                f"  rules={','.join(rec['rules'])}"
            )


@main.group(context_settings=CONTEXT)
def models() -> None:
    """Inspect and manage the model registry."""


@models.command("list")
@click.option("--registry", type=click.Path(file_okay=False), help="Registry directory.")
@click.option("--name", default=None, help="Model name.")
@click.option("--config", type=click.Path(exists=True, dir_okay=False), help="Settings TOML.")
def models_list(registry: str | None, name: str | None, config: str | None) -> None:
    """List the versions of a model; the champion is marked with `*`."""
    from txfast.registry import Registry

    settings = _settings(config, registry=registry, model_name=name)
    reg = Registry(settings.registry)
    champ = reg.champion(settings.model_name)
    for v in reg.versions(settings.model_name):
        mark = "*" if champ is not None and v.version == champ.version else " "
        click.echo(f"{mark} {settings.model_name}/{v.version}")


@models.command("promote")
@click.argument("version")
@click.option("--registry", type=click.Path(file_okay=False), help="Registry directory.")
@click.option("--name", default=None, help="Model name.")
@click.option("--config", type=click.Path(exists=True, dir_okay=False), help="Settings TOML.")
def models_promote(
    version: str, registry: str | None, name: str | None, config: str | None
) -> None:
    """Make VERSION the champion (running scorers pick it up between batches)."""
    from txfast.registry import Registry

    settings = _settings(config, registry=registry, model_name=name)
    Registry(settings.registry).promote(settings.model_name, version)
    click.echo(f"{settings.model_name}/{version} is the champion")


@models.command("rollback")
@click.option("--registry", type=click.Path(file_okay=False), help="Registry directory.")
@click.option("--name", default=None, help="Model name.")
@click.option("--config", type=click.Path(exists=True, dir_okay=False), help="Settings TOML.")
def models_rollback(registry: str | None, name: str | None, config: str | None) -> None:
    """Make the previous champion the champion again."""
    from txfast.registry import Registry

    settings = _settings(config, registry=registry, model_name=name)
    v = Registry(settings.registry).rollback(settings.model_name)
    click.echo(f"{settings.model_name}/{v.version} is the champion")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
