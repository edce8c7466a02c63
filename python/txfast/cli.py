"""The ``txfast`` command line."""

from __future__ import annotations

import contextlib
import faulthandler
import json
import signal
import sys
import threading
from pathlib import Path
from typing import Any

import click
import msgspec
import numpy as np

from txfast.config import Settings, load_settings, parse_duration_ms
from txfast.exceptions import ConfigError, TxfastError
from txfast.logs import FORMATS
from txfast.logs import configure as configure_logging

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


def _settings(config: str | None, *, label_delay: str | None = None, **overrides: Any) -> Settings:
    settings = load_settings(config, overrides=overrides)
    if label_delay is not None:
        features = msgspec.structs.replace(settings.features, label_delay=label_delay)
        settings = settings.replace(features=features)
    return settings


def _check_duration(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    if value is None:
        return None
    try:
        parse_duration_ms(value)
    except ConfigError as e:
        raise click.BadParameter(str(e)) from e
    return value


def _label_delay_option(f: Any) -> Any:
    """`--label-delay`, overriding `[features] label_delay` (train, evaluate, features, retrain)."""
    return click.option(
        "--label-delay",
        default=None,
        callback=_check_duration,
        help="With label features on, how long after its transaction a history's label "
        "is known, e.g. 7d [default: [features] label_delay, 7d].",
    )(f)


class _Group(click.Group):
    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except TxfastError as e:
            raise click.ClickException(f"{type(e).__name__}: {e}") from e


@click.group(cls=_Group, context_settings=CONTEXT)
@click.version_option(package_name="txfast")
@click.option(
    "--log-level",
    type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"], case_sensitive=False),
    default="INFO",
    show_default=True,
    envvar="TXFAST_LOG_LEVEL",
    help="Log level of the txfast loggers (stderr).",
)
@click.option(
    "--log-format",
    type=click.Choice(FORMATS),
    default="text",
    show_default=True,
    envvar="TXFAST_LOG_FORMAT",
    help="text, or json: one JSON object per line with structured fields (txfast.logs).",
)
def main(log_level: str, log_format: str) -> None:
    """txfast: real-time transaction anomaly detection and alerting.

    \b
    Typical session:
      txfast simulate --cards 2000 --days 30 --seed 1 --out var/history.parquet
      txfast train --data var/history.parquet --registry var/registry
      txfast run --source simulate --store duckdb:var/txfast.duckdb --registry var/registry
      txfast alerts --store duckdb:var/txfast.duckdb --risk CRITICAL
    """
    configure_logging(log_level, log_format)
    if hasattr(signal, "SIGUSR1"):  # `kill -USR1 PID`: every thread's stack, to stderr
        # Not when stderr is no file (an embedding caller, click's test runner).
        with contextlib.suppress(AttributeError, OSError, ValueError):
            faulthandler.register(signal.SIGUSR1, file=sys.stderr, all_threads=True)


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
@_label_delay_option
def features(
    data: str, out: str, mapping: str | None, config: str | None, label_delay: str | None
) -> None:
    """Replay a history through the feature engine and write every feature column.

    \b
    Example:
      txfast features --data var/history.parquet --out var/features.parquet
      txfast features --data fraud.csv --mapping mapping.toml --out var/features.parquet
    """
    from txfast.history import write_features

    settings = _settings(config, label_delay=label_delay)
    rows, rejected = write_features(settings, data, out, _mapping(mapping))
    click.echo(f"wrote features of {rows:,} transactions to {out} ({len(rejected):,} rejected)")


_MODEL_CHOICES = ["auto", "gbt", "isolation-forest", "iforest"]
_AUTO_MIN_FRAUD = 20  # fewer fraud labels than this: --model auto trains an Isolation Forest


def _threshold_options(f: Any) -> Any:
    """The mutually exclusive threshold targets shared by `train` and `evaluate`."""
    for option in reversed(
        [
            click.option(
                "--target-alert-rate",
                type=click.FloatRange(0, 1, min_open=True, max_open=True),
                default=None,
                help="Threshold: share of transactions to flag [default: 0.01].",
            ),
            click.option(
                "--alerts-per-day",
                type=click.FloatRange(0, min_open=True),
                default=None,
                help="Threshold: alerts per day the analysts can review.",
            ),
            click.option(
                "--target-precision",
                type=click.FloatRange(0, 1, min_open=True),
                default=None,
                help="Threshold: precision to reach on the validation period (needs labels).",
            ),
        ]
    ):
        f = option(f)
    return f


def _targets(
    target_alert_rate: float | None, alerts_per_day: float | None, target_precision: float | None
) -> dict[str, Any]:
    given = [v for v in (target_alert_rate, alerts_per_day, target_precision) if v is not None]
    if len(given) > 1:
        raise click.UsageError(
            "give at most one of --target-alert-rate, --alerts-per-day, --target-precision"
        )
    return {
        "target_alert_rate": target_alert_rate,
        "alerts_per_day": alerts_per_day,
        "target_precision": target_precision,
    }


def _gbt_params(
    trees: int | None,
    max_depth: int,
    learning_rate: float,
    scale_pos_weight: str,
    validation_fraction: float,
) -> dict[str, Any]:
    params: dict[str, Any] = {
        "max_depth": max_depth,
        "learning_rate": learning_rate,
        "scale_pos_weight": scale_pos_weight,
        "validation_fraction": validation_fraction,
    }
    if trees is not None:
        params["n_estimators"] = trees
    return params


def _kind_params(
    trees: int | None,
    max_samples: int,
    max_depth: int,
    learning_rate: float,
    scale_pos_weight: str,
    validation_fraction: float,
) -> dict[str, dict[str, Any]]:
    """Trainer arguments per model kind, from the `_model_options` (evaluate, retrain)."""
    return {
        "gbt": _gbt_params(trees, max_depth, learning_rate, scale_pos_weight, validation_fraction),
        "iforest": {"n_estimators": trees or 100, "max_samples": max_samples},
    }


def _model_options(f: Any) -> Any:
    """Hyper-parameters shared by `train` and `evaluate`."""
    for option in reversed(
        [
            click.option(
                "--trees",
                type=click.IntRange(1),
                default=None,
                help="Trees [default: iforest 100; gbt at most 100, early-stopped].",
            ),
            click.option(
                "--max-samples",
                type=click.IntRange(2),
                default=256,
                show_default=True,
                help="iforest",
            ),
            click.option(
                "--max-depth", type=click.IntRange(1, 16), default=5, show_default=True, help="gbt"
            ),
            click.option(
                "--learning-rate",
                type=click.FloatRange(0, 1, min_open=True),
                default=0.2,
                show_default=True,
                help="gbt",
            ),
            click.option(
                "--scale-pos-weight",
                default="sqrt",
                show_default=True,
                help="gbt fraud-class weight: sqrt (of negatives/positives), balanced, none or "
                "a number.",
            ),
            click.option(
                "--validation-fraction",
                type=click.FloatRange(0, 1, max_open=True),
                default=0.2,
                show_default=True,
                help="gbt: latest share of the labelled rows held out (early stopping, "
                "threshold, validation metrics).",
            ),
        ]
    ):
        f = option(f)
    return f


@main.command(context_settings=CONTEXT)
@click.option("--data", required=True, type=click.Path(exists=True, dir_okay=False))
@click.option(
    "--model",
    "kind",
    type=click.Choice(_MODEL_CHOICES),
    default="auto",
    show_default=True,
    help="auto: gbt when the history has legitimate and at least "
    f"{_AUTO_MIN_FRAUD} fraud labels, else isolation-forest.",
)
@click.option("--registry", type=click.Path(file_okay=False), help="Registry directory.")
@click.option("--name", default=None, help="Model name in the registry [default: default].")
@click.option("--mapping", type=click.Path(exists=True, dir_okay=False), help="Column mapping.")
@click.option("--config", type=click.Path(exists=True, dir_okay=False), help="Settings TOML.")
@_label_delay_option
@_model_options
@_threshold_options
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
    label_delay: str | None,
    trees: int | None,
    max_samples: int,
    max_depth: int,
    learning_rate: float,
    scale_pos_weight: str,
    validation_fraction: float,
    target_alert_rate: float | None,
    alerts_per_day: float | None,
    target_precision: float | None,
    seed: int,
    promote: bool | None,
) -> None:
    """Train a model on features computed by the Rust core and register it.

    The threshold and risk bands are calibrated to one target (an alert rate, alerts per
    day or a precision) and stored with the model. Registration re-checks that the ONNX
    graph scores like the native model (to 1e-5) and refuses it otherwise.

    \b
    Examples:
      txfast train --data var/history.parquet --registry var/registry
      txfast train --data var/history.parquet --model gbt --alerts-per-day 200
      txfast train --data var/history.parquet --model gbt --target-precision 0.8
      txfast train --data fraud.csv --mapping mapping.toml --model isolation-forest
    """
    from txfast.history import replay_features
    from txfast.registry import Registry

    targets = _targets(target_alert_rate, alerts_per_day, target_precision)
    settings = _settings(config, label_delay=label_delay, registry=registry, model_name=name)
    fs = replay_features(settings, data, _mapping(mapping))
    if len(fs.X) < 2:
        raise click.ClickException(f"{data} has fewer than 2 valid transactions")
    labelled = bool((fs.label == 1).any() and (fs.label == 0).any())
    if kind == "auto":
        enough = labelled and int((fs.label == 1).sum()) >= _AUTO_MIN_FRAUD
        kind = "gbt" if enough else "isolation-forest"
    try:
        if kind == "gbt":
            if not labelled:
                raise click.ClickException(
                    f"{data} has no fraud and legitimate labels: gbt needs them "
                    "(use --model isolation-forest, or --mapping to name the label column)"
                )
            from txfast.training.gbt import train_gbt

            trained = train_gbt(
                fs.X,
                fs.label,
                fs.feature_names,
                fs.feature_version,
                ts_ms=fs.ts_ms,
                seed=seed,
                **_gbt_params(
                    trees, max_depth, learning_rate, scale_pos_weight, validation_fraction
                ),
                **targets,
            )
        else:
            from txfast.training.isolation_forest import train_isolation_forest

            if target_precision is not None and not labelled:
                raise click.UsageError("--target-precision needs a labelled history")
            trained = train_isolation_forest(
                fs.X,
                fs.feature_names,
                fs.feature_version,
                n_estimators=trees or 100,
                max_samples=max_samples,
                labels=fs.label if labelled else None,
                ts_ms=fs.ts_ms,
                seed=seed,
                **targets,
            )
    except ValueError as e:
        if isinstance(e, TxfastError):
            raise
        raise click.ClickException(str(e)) from e
    meta = dict(trained.metadata)
    meta["training"] = {**meta["training"], "source": str(data), "rejected": len(fs.rejected)}
    reg = Registry(settings.registry)
    has_champion = (
        settings.model_name in reg.names() and reg.champion(settings.model_name) is not None
    )
    make_champion = promote if promote is not None else not has_champion
    version = trained.register(reg, settings.model_name, promote=make_champion, metadata=meta)
    state = "champion" if make_champion else "not promoted"
    bands = meta.get("risk_bands") or {}
    click.echo(
        f"registered {settings.model_name}/{version.version} ({kind}, {len(fs.X):,} rows, "
        f"{len(fs.feature_names)} features) in {settings.registry} [{state}]"
    )
    metrics = meta["metrics"]
    extra = ""
    if "validation_average_precision" in metrics:
        extra = (
            f"; validation AUC {metrics['validation_auc_roc']:.3f}, "
            f"AP {metrics['validation_average_precision']:.3f}"
        )
    click.echo(
        f"threshold {meta['threshold']:.6g}, bands MEDIUM {bands.get('medium', 0):.6g} / "
        f"HIGH {bands.get('high', 0):.6g} / CRITICAL {bands.get('critical', 0):.6g}{extra}"
    )


@main.command(context_settings=CONTEXT)
@click.option("--data", required=True, type=click.Path(exists=True, dir_okay=False))
@click.option(
    "--model",
    "kinds",
    type=click.Choice(["gbt", "iforest", "isolation-forest"]),
    multiple=True,
    help="Model(s) to evaluate (repeatable) [default: gbt and iforest].",
)
@click.option("--mapping", type=click.Path(exists=True, dir_okay=False), help="Column mapping.")
@click.option("--config", type=click.Path(exists=True, dir_okay=False), help="Settings TOML.")
@_label_delay_option
@click.option("--train-days", type=click.IntRange(1), default=30, show_default=True)
@click.option("--delay-days", type=click.IntRange(0), default=7, show_default=True)
@click.option("--test-days", type=click.IntRange(1), default=7, show_default=True)
@click.option("--folds", type=click.IntRange(1), default=1, show_default=True)
@click.option(
    "--step-days",
    type=click.IntRange(1),
    default=None,
    help="Shift between folds [default: --test-days, reduced to fit the data].",
)
@click.option(
    "--k",
    "k",
    type=click.IntRange(1),
    default=100,
    show_default=True,
    help="Transactions / cards reviewed per day (precision@k, card precision@k).",
)
@_model_options
@_threshold_options
@click.option("--seed", type=click.IntRange(0), default=0, show_default=True)
@click.option(
    "--out",
    type=click.Path(dir_okay=False),
    default="var/evaluation/report.json",
    show_default=True,
    help="JSON report.",
)
@click.option(
    "--png",
    type=click.Path(dir_okay=False),
    default=None,
    help="Precision-recall PNG [default: pr_curve.png beside --out].",
)
@click.option("--json", "as_json", is_flag=True, help="Print the JSON report.")
def evaluate(
    data: str,
    kinds: tuple[str, ...],
    mapping: str | None,
    config: str | None,
    label_delay: str | None,
    train_days: int,
    delay_days: int,
    test_days: int,
    folds: int,
    step_days: int | None,
    k: int,
    trees: int | None,
    max_samples: int,
    max_depth: int,
    learning_rate: float,
    scale_pos_weight: str,
    validation_fraction: float,
    target_alert_rate: float | None,
    alerts_per_day: float | None,
    target_precision: float | None,
    seed: int,
    out: str,
    png: str | None,
    as_json: bool,
) -> None:
    """Evaluate models on a labelled history: train, skip a delay, test; over folds.

    Each fold trains on --train-days days, skips --delay-days, tests on the next
    --test-days; the next fold starts --step-days later. Reports AUC-ROC, average
    precision, precision@k and card precision@k per day, and at the calibrated threshold
    precision, recall, F1, alert rate and fraud amount caught; writes the JSON report and
    a precision-recall PNG.

    \b
    Examples:
      txfast evaluate --data var/history.parquet --folds 4 --json
      txfast evaluate --data fraud.csv --mapping mapping.toml --model gbt --alerts-per-day 100
    """
    from txfast.evaluate import evaluate_history, write_pr_curve_png
    from txfast.training.dataset import load_history

    targets = _targets(target_alert_rate, alerts_per_day, target_precision)
    models = list(dict.fromkeys("iforest" if m == "isolation-forest" else m for m in kinds))
    settings = _settings(config, label_delay=label_delay)
    history = load_history(settings, data, _mapping(mapping))
    params = _kind_params(
        trees, max_samples, max_depth, learning_rate, scale_pos_weight, validation_fraction
    )
    try:
        report, curves = evaluate_history(
            history,
            models=models or ["gbt", "iforest"],
            train_days=train_days,
            delay_days=delay_days,
            test_days=test_days,
            folds=folds,
            step_days=step_days,
            k=k,
            seed=seed,
            model_params=params,
            progress=None if as_json else lambda line: click.echo(line, err=True),
            **targets,
        )
    except ValueError as e:
        if isinstance(e, TxfastError):
            raise
        raise click.ClickException(str(e)) from e
    png_path = Path(png) if png else Path(out).with_name("pr_curve.png")
    report["pr_curve_png"] = str(png_path)
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(report, indent=2)
    Path(out).write_text(text + "\n", encoding="utf-8")
    write_pr_curve_png(curves, png_path, title=f"Precision-recall on the test days: {data}")
    if as_json:
        click.echo(text)
        return
    p = report["protocol"]
    click.echo(
        f"{report['data']['rows']:,} transactions, {p['folds']} fold(s): train "
        f"{p['train_days']} d, delay {p['delay_days']} d, test {p['test_days']} d, "
        f"step {p['step_days']} d"
    )
    for kind, r in report["models"].items():
        s = r["summary"]

        def mean(name: str, s: dict[str, Any] = s) -> str:
            v = s.get(name)
            return "n/a" if v is None else f"{v['mean']:.3f}"

        click.echo(
            f"{kind:>8}: AUC-ROC {mean('auc_roc')}  AP {mean('average_precision')}  "
            f"P@{k} {mean('precision_at_k')}  card P@{k} {mean('card_precision_at_k')}  "
            f"precision {mean('precision')}  recall {mean('recall')}  F1 {mean('f1')}  "
            f"alert rate {mean('alert_rate')}  fraud amount caught "
            f"{mean('fraud_amount_caught_share')}"
        )
    click.echo(f"report: {out}  precision-recall curve: {png_path}")


@main.command(context_settings=CONTEXT)
@click.option("--data", required=True, type=click.Path(exists=True, dir_okay=False))
@click.option(
    "--model",
    "kind",
    type=click.Choice(_MODEL_CHOICES),
    default="auto",
    show_default=True,
    help="auto: gbt when the training period has legitimate and at least "
    f"{_AUTO_MIN_FRAUD} fraud labels, else isolation-forest.",
)
@click.option(
    "--store",
    default=None,
    help="Store whose analyst labels are used [default: duckdb:var/txfast.duckdb].",
)
@click.option("--registry", type=click.Path(file_okay=False), help="Registry directory.")
@click.option("--name", default=None, help="Model name in the registry [default: default].")
@click.option("--mapping", type=click.Path(exists=True, dir_okay=False), help="Column mapping.")
@click.option("--config", type=click.Path(exists=True, dir_okay=False), help="Settings TOML.")
@_label_delay_option
@click.option(
    "--test-days",
    type=click.IntRange(1),
    default=None,
    help="Latest days of the history the candidate and the champion are compared on "
    "[default: [retrain] test_days, 7].",
)
@click.option(
    "--delay-days",
    type=click.IntRange(0),
    default=None,
    help="Days skipped before the test period (labels not known yet) "
    "[default: [retrain] delay_days, 7].",
)
@click.option(
    "--min-gain",
    type=click.FloatRange(-1, 1),
    default=None,
    help="Promote iff candidate AP >= champion AP + this [default: [retrain] min_gain, 0].",
)
@click.option(
    "--force",
    is_flag=True,
    help="Promote even if the gate fails or the champion cannot score these features.",
)
@_model_options
@_threshold_options
@click.option("--seed", type=click.IntRange(0), default=0, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print the report as one JSON object.")
def retrain(
    data: str,
    kind: str,
    store: str | None,
    registry: str | None,
    name: str | None,
    mapping: str | None,
    config: str | None,
    label_delay: str | None,
    test_days: int | None,
    delay_days: int | None,
    min_gain: float | None,
    force: bool,
    trees: int | None,
    max_samples: int,
    max_depth: int,
    learning_rate: float,
    scale_pos_weight: str,
    validation_fraction: float,
    target_alert_rate: float | None,
    alerts_per_day: float | None,
    target_precision: float | None,
    seed: int,
    as_json: bool,
) -> None:
    """Retrain on a history with the store's analyst labels; promote only a better model.

    The store's latest label of a transaction overrides the file's; a transaction labelled
    nowhere counts as legitimate. The candidate trains on the history up to --delay-days
    before the last --test-days days, then it and the champion score those test days: the
    candidate is registered, and promoted only if its average precision is at least the
    champion's plus --min-gain (or there is no champion). The decision and its figures go
    to the store's audit log (action model.retrain).

    \b
    Examples:
      txfast retrain --data var/history.parquet --store duckdb:var/txfast.duckdb
      txfast retrain --data var/history.parquet --min-gain 0.01 --json
      txfast retrain --data fraud.csv --mapping mapping.toml --model gbt --alerts-per-day 200
    """
    from txfast.retrain import retrain as run_retrain
    from txfast.store import open_store

    targets = _targets(target_alert_rate, alerts_per_day, target_precision)
    settings = _settings(
        config, label_delay=label_delay, store=store, registry=registry, model_name=name
    )
    params = _kind_params(
        trees, max_samples, max_depth, learning_rate, scale_pos_weight, validation_fraction
    )
    try:
        with open_store(settings.store, migrate=settings.store_migrate) as s:
            report = run_retrain(
                settings,
                data,
                s,
                mapping=_mapping(mapping),
                test_days=test_days,
                delay_days=delay_days,
                min_gain=min_gain,
                kind=kind,
                force=force,
                model_params=params,
                seed=seed,
                auto_min_fraud=_AUTO_MIN_FRAUD,
                **targets,
            )
    except ValueError as e:
        if isinstance(e, TxfastError):
            raise
        raise click.ClickException(str(e)) from e
    if as_json:
        click.echo(json.dumps(report.as_dict(), indent=2))
        return
    r = report
    labels = r.labels
    click.echo(
        f"candidate {r.model_name}/{r.candidate_version} ({r.candidate_kind}) trained on "
        f"{r.train_range[0]}..{r.train_range[1]} ({r.train_rows:,} rows, {r.train_frauds:,} "
        f"frauds); test {r.test_range[0]}..{r.test_range[1]} ({r.test_rows:,} rows, "
        f"{r.test_frauds:,} frauds) after a {r.delay_days}-day delay"
    )
    champion = (
        "no champion"
        if r.champion_version is None
        else f"champion {r.champion_version} AP "
        + ("n/a" if r.champion_ap is None else f"{r.champion_ap:.4f}")
    )
    click.echo(
        f"AP: candidate {r.candidate_ap:.4f}, {champion}, min gain {r.min_gain:g} -> "
        f"{r.decision.upper()}: {r.reason}"
    )
    click.echo(
        f"labels: {labels.from_store:,} from the store ({labels.store_overrides:,} overriding "
        f"the file, {labels.store_unmatched:,} not in the history), {labels.from_file:,} from "
        f"the file, {labels.unlabelled:,} unlabelled taken as legitimate"
    )
    if r.champion_trained_on_test:
        click.echo(
            f"note: champion {r.champion_version} was trained on data reaching into the test "
            "period, so its AP there is optimistic"
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
@click.option(
    "--api",
    default=None,
    metavar="HOST:PORT",
    help="Also serve the alerts API on HOST:PORT, from the scorer's store.",
)
@click.option(
    "--keep-serving",
    is_flag=True,
    help="With --api: keep serving after the source ends, until interrupted.",
)
@click.option(
    "--metrics",
    "metrics_addr",
    default=None,
    metavar="HOST:PORT",
    help="Serve the scorer's Prometheus metrics on HOST:PORT (/metrics).",
)
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
    api: str | None,
    keep_serving: bool,
    metrics_addr: str | None,
    as_json: bool,
) -> None:
    """Score a stream: decode, features, ONNX score, rules, store.

    \b
    Examples:
      txfast run --source simulate --store duckdb:var/txfast.duckdb --registry var/registry
      txfast run --source file:var/stream.jsonl --warm-from var/history.parquet --json
      txfast run --source kafka --bootstrap 127.0.0.1:9092 --group txfast --topics transactions_raw
      txfast run --source simulate --rate 2000 --api 127.0.0.1:8000 --keep-serving

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
            api,
            metrics_addr,
        )
        return
    batch = settings.pipeline.batch_size
    src = (
        SimulatedSource(
            cards=cards,
            days=days,
            seed=seed,
            rate=rate,
            batch_size=batch,
            start=start,
            linger_ms=settings.pipeline.linger_ms,
        )
        if source == "simulate"
        else open_source(
            source,
            batch_size=batch,
            mapping=_mapping(mapping),
            base_currency=settings.decoder.base_currency,
        )
    )
    if isinstance(src, SimulatedSource):
        src.table()  # simulate before the clock starts: the rate is the scorer's
    pipeline = Pipeline.from_settings(settings)
    if warm_from:
        warm_src = open_source(
            f"file:{warm_from}",
            batch_size=batch,
            mapping=_mapping(mapping),
            base_currency=settings.decoder.base_currency,
        )
        warmed = pipeline.warm(warm_src)
        if not as_json:
            click.echo(f"feature state warmed with {warmed:,} events from {warm_from}")
    server = _start_api(
        settings,
        api,
        pipeline,
        lambda: pipeline.summary.as_dict(),
        None if pipeline.metrics is None else pipeline.metrics.registry,
    )
    _start_metrics(metrics_addr, pipeline)
    _yield_to_api(settings, server)
    _freeze_startup_objects()
    try:
        summary = pipeline.run(
            src,
            source=src.name,
            progress=None if as_json else stderr_if_tty(),
            max_events=max_events,
        )
        if server is not None and keep_serving:
            click.echo(f"stream done; serving {server.url} until interrupted (Ctrl-C)", err=True)
            _wait_for_stop_signal()
    finally:
        if server is not None:
            server.stop()
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


def _wait_for_stop_signal() -> None:
    """Block until SIGINT or SIGTERM arrives.

    The handlers are installed here rather than relying on ``KeyboardInterrupt``: a process
    started in the background by a non-interactive shell inherits SIGINT ignored, and Python
    then raises nothing on Ctrl-C or ``kill -INT`` (and SIGTERM would kill it without closing
    the store).
    """
    stop = threading.Event()
    previous = {
        sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGINT, signal.SIGTERM)
    }
    try:
        while not stop.wait(0.5):
            pass
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _start_api(
    settings: Settings, api: str | None, pipeline: Any, runtime_stats: Any, scorer_metrics: Any
) -> Any:
    """Serve the API on ``api`` (``HOST:PORT``) from the pipeline's store in a thread.

    Returns ``None`` if ``api`` is unset. The live feed is told of each store write.
    """
    if not api:
        return None
    from txfast.api import ApiServer, create_app

    host, _, port = api.rpartition(":")
    if not port.isdigit():
        raise click.BadParameter(f"expected HOST:PORT, got {api!r}", param_hint="--api")
    app = create_app(
        settings, store=pipeline.store, runtime_stats=runtime_stats, scorer_metrics=scorer_metrics
    )
    pipeline.on_stored.append(app.state["ctx"].alerts_stored)
    server = ApiServer(app, host.strip("[]") or "127.0.0.1", int(port)).start()
    click.echo(f"alerts API on {server.url}", err=True)
    return server


def _yield_to_api(settings: Settings, server: Any) -> None:
    """With an API served beside it, this thread (the scorer's, from now on) runs nicer.

    Called once the API's and the metrics' servers started: their threads keep their
    priority (see :func:`txfast.api.yield_cpu_to_api` and ``[pipeline] api_nice``).
    """
    if server is None:
        return
    from txfast.api import yield_cpu_to_api

    nice = yield_cpu_to_api(settings.pipeline.api_nice)
    if nice is not None:
        click.echo(f"scorer at nice {nice}, below the API ([pipeline] api_nice)", err=True)


def _freeze_startup_objects() -> None:
    """Move what start-up allocated (models, numba, the API) out of the garbage collector.

    A long-running scorer otherwise rescans those objects in every full collection, which
    paused the whole process (scoring and API) for 100+ ms a few times a minute.
    """
    import gc

    gc.collect()
    gc.freeze()


def _start_metrics(addr: str | None, pipeline: Any) -> None:
    """Serve ``pipeline``'s Prometheus metrics on ``addr`` (``HOST:PORT``) in a thread."""
    if not addr:
        return
    if pipeline.metrics is None:
        raise click.UsageError("--metrics needs [metrics] enabled = true")
    from prometheus_client import start_http_server

    host, _, port = addr.rpartition(":")
    if not port.isdigit():
        raise click.BadParameter(f"expected HOST:PORT, got {addr!r}", param_hint="--metrics")
    try:
        start_http_server(int(port), host.strip("[]") or "127.0.0.1", pipeline.metrics.registry)
    except OSError as e:
        raise click.ClickException(f"the metrics cannot listen on {addr}: {e}") from e
    click.echo(f"metrics on http://{host or '127.0.0.1'}:{port}/metrics", err=True)


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
    api: str | None = None,
    metrics_addr: str | None = None,
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
    metrics = scorer.pipeline.metrics
    server = _start_api(
        settings,
        api,
        scorer.pipeline,
        lambda: scorer.stats.as_dict(),
        None if metrics is None else metrics.registry,
    )
    _start_metrics(metrics_addr, scorer.pipeline)
    _yield_to_api(settings, server)
    _freeze_startup_objects()
    try:
        stats = scorer.run(max_messages=max_events, idle_timeout_s=idle_exit)
    finally:
        if server is not None:
            server.stop()
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
@click.option("--json", "as_json", is_flag=True, help="One JSON object per version.")
def models_list(registry: str | None, name: str | None, config: str | None, as_json: bool) -> None:
    """List the versions of a model: `*` marks the champion, `~` the shadow challenger.

    \b
    Example:
      txfast models list --registry var/registry
    """
    import json

    from txfast.registry import Registry

    settings = _settings(config, registry=registry, model_name=name)
    reg = Registry(settings.registry)
    champ = reg.champion_version(settings.model_name)
    shadow = reg.challenger_version(settings.model_name)
    for v in reg.versions(settings.model_name):
        m = v.metadata
        ap = m.metrics.get("test_average_precision", m.metrics.get("validation_average_precision"))
        if as_json:
            row = {
                "version": v.version,
                "kind": m.kind,
                "created_at": m.created_at,
                "champion": v.version == champ,
                "challenger": v.version == shadow,
                "threshold": m.threshold,
                "feature_version": m.feature_version,
                "training_rows": m.training.rows,
                "average_precision": ap,
                "explainer": "explainer.npz" in m.artifacts,
            }
            click.echo(json.dumps(row))
            continue
        mark = "*" if v.version == champ else "~" if v.version == shadow else " "
        figures = f"AP {ap:.4f}" if ap is not None else ""
        click.echo(
            f"{mark} {settings.model_name}/{v.version:<4} {m.kind:<17} {m.created_at[:19]:<19} "
            f"threshold {m.threshold:.4f}  {m.training.rows:>10,} rows  {figures}".rstrip()
        )


@models.command("shadow")
@click.argument("version", required=False)
@click.option("--off", is_flag=True, help="Stop the shadow challenger.")
@click.option("--registry", type=click.Path(file_okay=False), help="Registry directory.")
@click.option("--name", default=None, help="Model name.")
@click.option("--config", type=click.Path(exists=True, dir_okay=False), help="Settings TOML.")
def models_shadow(
    version: str | None, off: bool, registry: str | None, name: str | None, config: str | None
) -> None:
    """Score VERSION in shadow beside the champion (stored, never acting); `--off` stops.

    Running scorers start, switch or stop the shadow between batches. Promoting the
    challenger ends its shadow.

    \b
    Example:
      txfast models shadow v3 --registry var/registry
      txfast models shadow --off --registry var/registry
    """
    from txfast.registry import Registry

    if off == (version is not None):
        raise click.UsageError("give a VERSION, or --off")
    settings = _settings(config, registry=registry, model_name=name)
    Registry(settings.registry).set_challenger(settings.model_name, version)
    if version is None:
        click.echo(f"{settings.model_name}: no shadow challenger")
    else:
        click.echo(f"{settings.model_name}/{version} scores in shadow")


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


@main.group(context_settings=CONTEXT)
def db() -> None:
    """Manage the store: schema migrations and retention."""


@db.command("upgrade")
@click.option("--store", default=None, help="Store URL [default: duckdb:var/txfast.duckdb].")
@click.option("--config", type=click.Path(exists=True, dir_okay=False), help="Settings TOML.")
def db_upgrade(store: str | None, config: str | None) -> None:
    """Apply the store's pending schema migrations, in order, each in one transaction.

    \b
    Examples:
      txfast db upgrade --store duckdb:var/txfast.duckdb
      txfast db upgrade --store postgresql://txfast@db.internal:5432/txfast
    """
    from txfast.store import open_store

    settings = _settings(config, store=store)
    with open_store(settings.store, migrate=True) as s:
        applied = list(s.applied_migrations)
        version = s.schema_version
        url = s.url
    if applied:
        done = ", ".join(map(str, applied))
        click.echo(f"{url}: migrated to schema version {version} (applied {done})")
    else:
        click.echo(f"{url}: schema version {version} is current; nothing to do")


@db.command("prune")
@click.option("--store", default=None, help="Store URL [default: duckdb:var/txfast.duckdb].")
@click.option("--config", type=click.Path(exists=True, dir_okay=False), help="Settings TOML.")
@click.option(
    "--older-than-days",
    type=click.IntRange(1),
    default=None,
    help="Remove what is older than N days [default: retention.days].",
)
@click.option(
    "--archive",
    type=click.Path(file_okay=False),
    default=None,
    help="Archive the removed rows to Parquet here first [default: retention.archive_dir].",
)
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def db_prune(
    store: str | None,
    config: str | None,
    older_than_days: int | None,
    archive: str | None,
    as_json: bool,
) -> None:
    """Delete (or archive, then delete) transactions, alerts and dead letters older than N days.

    Labelled transactions and alerts (analyst feedback) are kept, with their transaction;
    statistics rollups, labels and the audit log are never pruned. With an archive directory
    each run writes one Parquet file per table: DIR/<table>/<table>-<run time>.parquet.

    \b
    Examples:
      txfast db prune --store duckdb:var/txfast.duckdb --older-than-days 90
      txfast db prune --older-than-days 30 --archive var/archive
      txfast db prune --config txfast.toml     # [retention] days = 90, archive_dir = "…"
    """
    from datetime import UTC, datetime, timedelta

    import msgspec

    from txfast.store import open_store

    settings = _settings(config, store=store)
    days = older_than_days or settings.retention.days
    if days is None:
        raise click.UsageError("give --older-than-days N or set days under [retention]")
    archive_dir = archive or settings.retention.archive_dir
    cutoff = datetime.now(UTC) - timedelta(days=days)
    with open_store(settings.store, migrate=settings.store_migrate) as s:
        result = s.prune(cutoff, archive_dir=archive_dir, actor="txfast db prune")
    if as_json:
        click.echo(json.dumps(msgspec.to_builtins(result), indent=2))
        return
    click.echo(
        f"pruned what is older than {result.cutoff:%Y-%m-%d %H:%M} UTC: "
        f"{result.transactions:,} transactions, {result.alerts:,} alerts, "
        f"{result.dead_letters:,} dead letters ({result.kept_labelled:,} labelled kept)"
    )
    for path in result.archive:
        click.echo(f"archived to {path}")


def _add_api_commands() -> None:
    """`txfast serve` and `txfast keys` live with the API (imported lazily there)."""
    from txfast.api.commands import keys, serve

    main.add_command(serve, "serve")
    main.add_command(keys, "keys")


_add_api_commands()

if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
