"""Core benchmark: the whole in-memory path, each stage alone, state memory, and a baseline.

    python bench/bench_core.py --events 1000000 --cards 100000 --json

Figures (medians of ``--repeat`` runs, fresh state each run):

- ``tx_per_s``: JSON bytes → native decode+validate → features → ONNX score → rules, batches
  of ``--batch`` (8192), one process.
- ``features_tx_per_s``: the Rust feature engine alone on pre-decoded columns.
- ``decode_tx_per_s``, ``score_rows_per_s``, ``rules_rows_per_s``: the other stages alone.
- ``bytes_per_card``: feature-state bytes per card after ``--state-days`` (30) of
  ``--state-rate`` (3) transactions per card per day for ``--state-cards`` (1,000,000) cards.
- ``explain``: the cost of explanations, per model kind (the default Isolation Forest with
  path attribution, and gradient-boosted trees with TreeSHAP trained on the simulator's
  labels): ``tx_per_s_off`` / ``tx_per_s_on`` is the whole path above without / with the
  alerts' explanations (JSON with the top 5 contributions), measured alternately;
  ``ratio`` = on / off (target ≥ 0.9); ``score_stage_ratio`` the same for score + rules
  alone; ``alert_share`` the explained rows.
- ``metrics``: the whole path above without / with the Prometheus metrics updated per
  batch (``txfast.metrics.ScorerMetrics``: counters, stage histograms, score histogram,
  drift on every 16th row), measured alternately; ``ratio`` = on / off (target ≥ 0.97).
- ``baseline``: the same path written the usual way in pure Python, one event at a time
  (``bench/baseline.py``: ``json.loads``, ``if`` checks, ``dict``/``deque`` window state, the
  same forest walked in Python, ``bisect`` calibration), on the first ``--baseline-events``
  events, after checking that its scores equal txfast's on a prefix
  (``max_abs_score_diff_vs_txfast``); ``ratio`` is ``tx_per_s / baseline.tx_per_s``.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from txfast.config import load_settings
from txfast.pipeline import build_decoder, build_engine
from txfast.rules import RuleEngine
from txfast.scoring import Scorer
from txfast.simulate import iter_json_batches, simulate


def log(msg: str) -> None:
    print(f"[bench_core] {msg}", file=sys.stderr, flush=True)


def median_rate(n: int, fn, repeat: int) -> float:
    rates = []
    for _ in range(repeat):
        gc.collect()
        t0 = time.perf_counter()
        fn()
        rates.append(n / (time.perf_counter() - t0))
    return statistics.median(rates)


def paired_rates(n: int, off, on, repeat: int) -> dict[str, float]:
    """Rates of ``off`` and ``on`` run in pairs, each pair in the other order than the last.

    After one untimed warm-up run. The ratio is the median of the pairs' ratios: a slow
    spell of the machine hits both runs of a pair, and alternating the order cancels what
    the first run of a pair pays for the second (allocator, caches).
    """
    off()  # warm-up
    rates: dict[bool, list[float]] = {False: [], True: []}
    for i in range(max(repeat, 4)):
        for flag in (False, True) if i % 2 == 0 else (True, False):
            rates[flag].append(median_rate(n, on if flag else off, 1))
    ratios = [b / a for a, b in zip(rates[False], rates[True], strict=True)]
    return {
        "tx_per_s_off": statistics.median(rates[False]),
        "tx_per_s_on": statistics.median(rates[True]),
        "ratio": statistics.median(ratios),
        "pairs": len(ratios),
    }


def make_payloads(events: int, cards: int, seed: int, batch: int) -> list[list[bytes]]:
    # The simulator averages ~3 transactions per card per day; simulate enough days.
    days = max(1, math.ceil(events / (cards * 2.5)))
    table = simulate(cards, days, seed, start="2026-01-01")
    table = table.slice(0, min(events, table.num_rows))
    return list(iter_json_batches(table, batch))


def train_model(settings, decoded, registry: Path) -> tuple[Scorer, object]:
    from txfast.training.isolation_forest import train_isolation_forest

    engine = build_engine(settings)
    X = np.concatenate([engine.process(**d.feature_inputs()) for d in decoded])
    rng = np.random.default_rng(0)
    sample = X[rng.choice(len(X), size=min(len(X), 200_000), replace=False)]
    trained = train_isolation_forest(
        sample, list(engine.feature_names), engine.feature_version, n_estimators=100, seed=0
    )
    trained.register(registry, promote=True)
    scorer = Scorer.from_registry(
        registry,
        "default",
        feature_names=list(engine.feature_names),
        feature_version=engine.feature_version,
    )
    return scorer, trained.model


def apply_rules(rules, d, X, scores, threshold, bands=None):
    """The rules on a decoded batch, as the pipeline applies them."""
    c = d.columns
    return rules.apply(
        scores,
        threshold,
        c["amount_base"],
        X,
        channel=c["channel"],
        category=c["merchant_category"],
        country=c["country_code"],
        bands=bands,
    )


def explain_figures(settings, batches, decoded, scorer: Scorer, rules, repeat: int) -> dict:
    """Whole path and score stage with and without the alerts' explanations."""
    engine = build_engine(settings)
    matrices = [engine.process(**d.feature_inputs()) for d in decoded]
    n = sum(len(m) for m in matrices)
    decoder = build_decoder(settings)
    explainer = scorer.score_batch(matrices[0][:1]).explainer
    assert explainer is not None, "the model has an explainer"
    explained = 0

    def decide(d, X, explain: bool) -> None:
        nonlocal explained
        scored = scorer.score_batch(X)
        out = apply_rules(rules, d, X, scored.score, scored.threshold, scored.bands)
        if explain:
            rows = np.flatnonzero(out.is_alert)
            if len(rows):
                explainer.explain(X[rows])
                explained += len(rows)

    def path(explain: bool):
        def run() -> None:
            eng = build_engine(settings)
            for b in batches:
                d = decoder.decode(b)
                decide(d, eng.process(**d.feature_inputs()), explain)

        return run

    def stage(explain: bool):
        def run() -> None:
            for d, X in zip(decoded, matrices, strict=True):
                decide(d, X, explain)

        return run

    whole = paired_rates(n, path(False), path(True), repeat)
    stage_only = paired_rates(n, stage(False), stage(True), repeat)
    explained = 0
    stage(True)()  # once more, counted
    return {
        "method": explainer.method,
        "alert_share": explained / n,
        **whole,
        "score_stage_rows_per_s_off": stage_only["tx_per_s_off"],
        "score_stage_rows_per_s_on": stage_only["tx_per_s_on"],
        "score_stage_ratio": stage_only["ratio"],
    }


def metrics_figures(settings, batches, scorer: Scorer, rules, repeat: int) -> dict:
    """Whole path without and with the per-batch metrics updates."""
    from txfast.metrics import ScorerMetrics
    from txfast.rules import LEVELS

    decoder = build_decoder(settings)
    n = sum(len(b) for b in batches)

    def path(with_metrics: bool):
        def run() -> None:
            metrics = ScorerMetrics() if with_metrics else None
            names = list(build_engine(settings).feature_names)
            if metrics is not None:
                metrics.observe_model(scorer.metadata, names)
            eng = build_engine(settings)
            for b in batches:
                t0 = time.perf_counter()
                d = decoder.decode(b)
                t1 = time.perf_counter()
                X = eng.process(**d.feature_inputs())
                t2 = time.perf_counter()
                scored = scorer.score_batch(X)
                out = apply_rules(rules, d, X, scored.score, scored.threshold, scored.bands)
                if metrics is not None:
                    t3 = time.perf_counter()
                    metrics.observe_batch(
                        events=d.size,
                        scored=len(d),
                        rejected_reasons=[r.reason for r in d.rejected],
                        alert_levels=out.level[out.is_alert],
                        scores=scored.score,
                        features=X,
                        stages={"decode": t1 - t0, "features": t2 - t1, "score": t3 - t2},
                        level_names=LEVELS,
                    )
                    metrics.observe_state(lambda eng=eng: [eng.stats()])

        return run

    return paired_rates(n, path(False), path(True), repeat)


def train_gbt_scorer(settings, decoded, registry: Path) -> Scorer:
    from txfast.training.gbt import train_gbt

    engine = build_engine(settings)
    X = np.concatenate([engine.process(**d.feature_inputs()) for d in decoded])
    y = np.concatenate([d.columns["label"] for d in decoded])
    known = y >= 0
    trained = train_gbt(
        X[known], y[known], list(engine.feature_names), engine.feature_version, seed=0
    )
    trained.register(registry, "gbt", promote=True)
    return Scorer.from_registry(
        registry,
        "gbt",
        feature_names=list(engine.feature_names),
        feature_version=engine.feature_version,
    )


def state_bytes_per_card(settings, cards: int, days: int, rate: float, seed: int) -> dict:
    """Feed a synthetic steady-state stream and measure the engine's state per card."""
    rng = np.random.default_rng(seed)
    engine = build_engine(settings)
    merchants = 50_000
    home = rng.integers(1, 30, size=cards).astype(np.uint64)
    per_day = int(cards * rate)
    day_ms = 86_400_000
    t_start = 1_767_225_600_000  # 2026-01-01
    chunk = 1 << 16
    t0 = time.perf_counter()
    total = 0
    for d in range(days):
        card = rng.integers(0, cards, size=per_day)
        ts = np.sort(rng.integers(0, day_ms, size=per_day)) + t_start + d * day_ms
        # Habits: each card draws from 8 regular merchants; category follows the merchant.
        slot = rng.integers(0, 8, size=per_day)
        merchant = ((card * 8 + slot) * 2_654_435_761 % merchants).astype(np.uint64) + 1
        category = merchant % np.uint64(20) + np.uint64(1)
        country = home[card]
        amount = np.round(rng.lognormal(3.0, 1.0, size=per_day), 2)
        lat = 48.0 + (card % 1000) * 0.001
        lon = 2.0 + (card % 1000) * 0.001
        user = (card // 2).astype(np.uint64) + 1
        channel = rng.integers(1, 3, size=per_day).astype(np.uint8)
        cardh = card.astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15) + np.uint64(1)
        for a in range(0, per_day, chunk):
            s = slice(a, a + chunk)
            engine.process(
                ts_ms=ts[s].astype(np.int64),
                card=cardh[s],
                amount=amount[s],
                merchant=merchant[s],
                user=user[s],
                category=category[s],
                country=country[s],
                lat=lat[s].astype(np.float64),
                lon=lon[s].astype(np.float64),
                channel=channel[s],
            )
        total += per_day
    seconds = time.perf_counter() - t0
    stats = engine.stats()
    return {
        "bytes_per_card": stats["state_bytes"] / max(1, stats["cards"]),
        "state_cards": int(stats["cards"]),
        "state_events": total,
        "state_days": days,
        "state_feed_tx_per_s": total / seconds,
        "state_stats": {k: int(v) for k, v in stats.items()},
    }


def baseline(payloads: list[bytes], settings, scorer: Scorer, model) -> dict:
    """The per-event pure-Python baseline (bench/baseline.py) on the same events."""
    from baseline import PythonBaseline, PythonForest

    meta = scorer.metadata
    base = PythonBaseline(
        PythonForest(model),
        list(meta.calibration.quantiles),
        scorer.threshold,
        dict(settings.decoder.rates),
    )
    # Same answers as txfast (in-order stream): compare scores on a prefix first.
    check = payloads[: min(len(payloads), 5000)]
    expected = txfast_scores(check, settings, scorer)
    got = np.array([base.handle(p) for p in check], dtype=np.float64)
    max_diff = float(np.max(np.abs(got - expected)))
    base = PythonBaseline(
        PythonForest(model),
        list(meta.calibration.quantiles),
        scorer.threshold,
        dict(settings.decoder.rates),
    )
    t0 = time.perf_counter()
    for p in payloads:
        base.handle(p)
    seconds = time.perf_counter() - t0
    n = len(payloads)
    return {
        "events": n,
        "tx_per_s": n / seconds,
        "features_tx_per_s": n / base.feature_seconds,
        "score_rows_per_s": n / base.score_seconds,
        "max_abs_score_diff_vs_txfast": max_diff,
    }


def baseline_bytes_per_card(cards: int, days: int, rate: float, seed: int) -> float:
    """State bytes per card of the baseline's dict/deque state at the same steady state."""
    import random
    import tracemalloc

    from baseline import PythonBaseline

    rng = random.Random(seed)
    base = PythonBaseline.__new__(PythonBaseline)
    base.cards, base.last_loc, base.merchants, base.users = {}, {}, {}, {}
    t_start = 1_767_225_600_000
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    for d in range(days):
        day = sorted(
            (t_start + d * 86_400_000 + rng.randrange(86_400_000), rng.randrange(cards))
            for _ in range(int(cards * rate))
        )
        for ts, c in day:
            m = (c * 8 + rng.randrange(8)) * 2_654_435_761 % 50_000
            base.features(
                ts,
                f"card_{c}",
                round(rng.lognormvariate(3.0, 1.0), 2),
                f"m{m}",
                f"u{c // 2}",
                f"{m % 20}",
                "FR",
                48.0 + c % 1000 * 0.001,
                2.0 + c % 1000 * 0.001,
                "pos",
            )
    used = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    return used / cards


def txfast_scores(payloads: list[bytes], settings, scorer: Scorer) -> np.ndarray:
    decoder = build_decoder(settings)
    engine = build_engine(settings)
    out = []
    for a in range(0, len(payloads), 8192):
        d = decoder.decode(payloads[a : a + 8192])
        out.append(scorer.score(engine.process(**d.feature_inputs())))
    return np.concatenate(out).astype(np.float64)


def machine() -> dict:
    info = {
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
    }
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
        mem = Path("/proc/meminfo").read_text().splitlines()[0].split()[1]
        info["mem_gib"] = round(int(mem) / 2**20, 1)
    except OSError:
        pass
    return info


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--events", type=int, default=1_000_000)
    ap.add_argument("--cards", type=int, default=100_000)
    ap.add_argument("--batch", type=int, default=8192)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--state-cards", type=int, default=1_000_000)
    ap.add_argument("--state-days", type=int, default=30)
    ap.add_argument("--state-rate", type=float, default=3.0)
    ap.add_argument("--baseline-events", type=int, default=20_000)
    ap.add_argument("--skip-state", action="store_true", help="Skip the bytes_per_card run.")
    ap.add_argument("--skip-explain", action="store_true", help="Skip the explanation runs.")
    ap.add_argument("--json", action="store_true", help="Print the figures as JSON.")
    args = ap.parse_args()

    settings = load_settings(env={})
    log(f"simulating {args.events:,} events over {args.cards:,} cards")
    batches = make_payloads(args.events, args.cards, args.seed, args.batch)
    n = sum(len(b) for b in batches)
    decoder = build_decoder(settings)
    decoded = [decoder.decode(b) for b in batches]

    with tempfile.TemporaryDirectory() as tmp:
        log("training the default Isolation Forest (100 trees)")
        scorer, model = train_model(settings, decoded, Path(tmp) / "registry")
        names = list(build_engine(settings).feature_names)
        rules = RuleEngine(settings.risk, settings.rules, names)

        def full_path() -> None:
            engine = build_engine(settings)
            for b in batches:
                d = decoder.decode(b)
                X = engine.process(**d.feature_inputs())
                s = scorer.score(X)
                apply_rules(rules, d, X, s, scorer.threshold)

        def decode_only() -> None:
            for b in batches:
                decoder.decode(b)

        def features_only() -> None:
            engine = build_engine(settings)
            for d in decoded:
                engine.process(**d.feature_inputs())

        engine = build_engine(settings)
        matrices = [engine.process(**d.feature_inputs()) for d in decoded]
        scores = [scorer.score(X) for X in matrices]

        def score_only() -> None:
            for X in matrices:
                scorer.score(X)

        def rules_only() -> None:
            for d, X, s in zip(decoded, matrices, scores, strict=True):
                apply_rules(rules, d, X, s, scorer.threshold)

        log("measuring the whole path")
        result: dict = {"events": n, "cards": args.cards, "batch": args.batch}
        result["tx_per_s"] = median_rate(n, full_path, args.repeat)
        log("measuring each stage")
        result["decode_tx_per_s"] = median_rate(n, decode_only, args.repeat)
        result["features_tx_per_s"] = median_rate(n, features_only, args.repeat)
        result["score_rows_per_s"] = median_rate(n, score_only, args.repeat)
        result["rules_rows_per_s"] = median_rate(n, rules_only, args.repeat)
        log("metrics: the whole path without / with the per-batch Prometheus updates")
        result["metrics"] = metrics_figures(settings, batches, scorer, rules, args.repeat)
        if not args.skip_explain:
            log("explanations: Isolation Forest (path attribution)")
            result["explain"] = {
                "isolation_forest": explain_figures(
                    settings, batches, decoded, scorer, rules, args.repeat
                )
            }
            log("explanations: gradient-boosted trees (TreeSHAP), trained on the labels")
            gbt = train_gbt_scorer(settings, decoded, Path(tmp) / "registry")
            result["explain"]["gbt"] = explain_figures(
                settings, batches, decoded, gbt, rules, args.repeat
            )
        log(f"baseline: pure Python per event on {args.baseline_events:,} events")
        flat = [p for b in batches for p in b][: args.baseline_events]
        base = baseline(flat, settings, scorer, model)
        if not args.skip_state:
            log("baseline state memory: 5,000 cards x 30 days (tracemalloc)")
            base["bytes_per_card"] = baseline_bytes_per_card(
                5_000, args.state_days, args.state_rate, args.seed
            )
        result["baseline"] = base
        result["ratio"] = result["tx_per_s"] / base["tx_per_s"]
        result["features_ratio"] = result["features_tx_per_s"] / base["features_tx_per_s"]
        result["score_ratio"] = result["score_rows_per_s"] / base["score_rows_per_s"]

    if not args.skip_state:
        log(
            f"state memory: {args.state_cards:,} cards x {args.state_days} days x "
            f"{args.state_rate}/day"
        )
        result.update(
            state_bytes_per_card(
                settings, args.state_cards, args.state_days, args.state_rate, args.seed
            )
        )
        if "bytes_per_card" in base:
            result["baseline_bytes_per_card_ratio"] = (
                base["bytes_per_card"] / result["bytes_per_card"]
            )
    result["machine"] = machine()
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        for k, v in result.items():
            print(f"{k:>22}: {v}")


if __name__ == "__main__":
    main()
