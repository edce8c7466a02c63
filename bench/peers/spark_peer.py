"""The Spark peer: pyspark Structured Streaming, the spark-sql-kafka connector, pandas state.

``local[2]`` (the machine's two cores), the Kafka source and sink of
``org.apache.spark:spark-sql-kafka-0-10_2.13:<pyspark version>`` (resolved from Maven
Central through ``spark.jars.packages``), JSON parsed and validated in Spark SQL, then three chained
``transformWithStateInPandas`` operators, each keeping its windows in Spark's RocksDB state
store (checkpointed every micro-batch). ``applyInPandasWithState`` would be the older
choice, but Spark refuses more than one of them in a query ("Multiple
applyInPandasWithStates are not supported"), and merchant and user windows need their own
keys:

1. ``groupBy("card_id")``: the card's retained events and last location, the 34 card,
   amount and time features (``common.card_features``, events in offset order);
2. ``groupBy("merchant_id")``: the merchant's event times, its 24 h and 7 d counts;
3. ``groupBy(user)``: the user's (time, card) pairs, distinct cards in 24 h.

Scoring is ``mapInPandas`` (scikit-learn ``score_samples`` per Arrow batch, the default
rules, the alert JSON), and ``foreachBatch`` writes the alerts to Kafka with the batch
Kafka sink (``source_timestamp`` header). The drain uses ``trigger(availableNow=True)``;
latency runs use the default trigger (a new micro-batch as soon as the previous one ends).
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from collections import deque
from datetime import datetime
from pathlib import Path

import numpy as np
import pandas as pd
from common import (
    N_CARD,
    Model,
    Status,
    add_common_args,
    alert_json,
    card_features,
    merchant_features,
    user_features,
)

PASS = [
    ("transaction_id", "string"),
    ("card_id", "string"),
    ("user_id", "string"),
    ("merchant_id", "string"),
    ("merchant_category", "string"),
    ("country", "string"),
    ("channel", "string"),
    ("currency", "string"),
    ("amount", "double"),
    ("amount_base", "double"),
    ("ts", "long"),
    ("lat", "double"),
    ("lon", "double"),
    ("src_ts", "long"),
    ("part", "int"),
    ("off", "long"),
]


def _none(v: object) -> object:
    return None if v is None or (isinstance(v, float) and v != v) else v


def _events(pdfs, order: list[str]) -> list[dict]:
    """All rows a state function receives for its key, as dicts sorted by ``order``."""
    frames = list(pdfs)
    pdf = frames[0] if len(frames) == 1 else pd.concat(frames, ignore_index=True)
    if len(pdf) > 1:
        pdf = pdf.sort_values(order, kind="stable")
    recs = pdf.to_dict("records")
    for r in recs:
        for k in ("user_id", "merchant_category", "country", "channel", "lat", "lon"):
            r[k] = _none(r[k])
    return recs


def _frame(recs: list[dict], columns: list[str]) -> pd.DataFrame:
    return pd.DataFrame.from_records(recs, columns=columns)


CARD_STATE = (
    "ts array<long>, amt array<double>, mer array<string>, cat array<string>, "
    "ctry array<string>, lts long, llat double, llon double"
)


def _processors():
    """The three stateful processors (defined late: pyspark is imported in main())."""
    from pyspark.sql.streaming import StatefulProcessor

    class PerCard(StatefulProcessor):
        """The card's retained events and last location; columns 0-33."""

        def init(self, handle) -> None:
            self.state = handle.getValueState("card", CARD_STATE)

        def handleInputRows(self, key, rows, timerValues):
            if self.state.exists():
                ts, amt, mer, cat, ctry, lts, llat, llon = self.state.get()
                events = deque(zip(ts, amt, mer, cat, ctry, strict=True))
                loc = [lts, llat, llon] if lts is not None else None
            else:
                events, loc = deque(), None
            recs = _events(rows, ["part", "off"])  # arrival order
            for r in recs:
                row, loc = card_features(events, loc, r)
                for i, v in enumerate(row):
                    r[f"f{i}"] = float(v)
            cols = list(zip(*events, strict=True))
            self.state.update(
                (
                    [int(x) for x in cols[0]],
                    [float(x) for x in cols[1]],
                    list(cols[2]),
                    list(cols[3]),
                    list(cols[4]),
                    None if loc is None else int(loc[0]),
                    None if loc is None else float(loc[1]),
                    None if loc is None else float(loc[2]),
                )
            )
            yield _frame(recs, CARD_COLS)

        def close(self) -> None:
            pass

    class PerMerchant(StatefulProcessor):
        """The merchant's event times; columns 34-35."""

        def init(self, handle) -> None:
            self.state = handle.getValueState("merchant", "ts array<long>")

        def handleInputRows(self, key, rows, timerValues):
            stamps = deque(self.state.get()[0]) if self.state.exists() else deque()
            recs = _events(rows, ["ts", "part", "off"])
            for r in recs:
                c24, c7 = merchant_features(stamps, r["ts"])
                r["f34"], r["f35"] = float(c24), float(c7)
            self.state.update(([int(x) for x in stamps],))
            yield _frame(recs, MERCHANT_COLS)

        def close(self) -> None:
            pass

    class PerUser(StatefulProcessor):
        """The user's (time, card) pairs; column 36."""

        def init(self, handle) -> None:
            self.state = handle.getValueState("user", "ts array<long>, cards array<string>")

        def handleInputRows(self, key, rows, timerValues):
            recs = _events(rows, ["ts", "part", "off"])
            if recs[0]["user_id"] is None:  # no user: the key is the card, nothing to keep
                for r in recs:
                    r["f36"] = -1.0
            else:
                if self.state.exists():
                    ts, cards = self.state.get()
                    seen = deque(zip(ts, cards, strict=True))
                else:
                    seen = deque()
                for r in recs:
                    r["f36"] = user_features(seen, r["ts"], r["card_id"])
                cols = list(zip(*seen, strict=True))
                self.state.update(([int(x) for x in cols[0]], list(cols[1])))
            yield _frame(recs, USER_COLS)

        def close(self) -> None:
            pass

    return PerCard, PerMerchant, PerUser


_MODEL: list[Model] = []


def score(batches):
    if not _MODEL:
        _MODEL.append(Model(os.environ["PEER_MODEL_DIR"]))
    model = _MODEL[0]
    feats = [f"f{i}" for i in range(37)]
    for pdf in batches:
        X = pdf[feats].to_numpy(dtype=np.float32)
        s = model.score(X)
        cats = [_none(c) for c in pdf["merchant_category"].tolist()]
        chans = [_none(c) for c in pdf["channel"].tolist()]
        anomalous, level, action, fired = model.decide(
            s, X, pdf["amount_base"].to_numpy(np.float64), cats, chans
        )
        values: list[bytes | None] = [None] * len(pdf)
        idx = np.flatnonzero(action != 0).tolist()
        if idx:
            recs = pdf.iloc[idx][[c for c, _ in PASS]].to_dict("records")
            for i, r in zip(idx, recs, strict=True):
                for k in ("user_id", "merchant_category", "country", "channel"):
                    r[k] = _none(r[k])
                values[i] = alert_json(
                    r,
                    float(s[i]),
                    bool(anomalous[i]),
                    int(level[i]),
                    int(action[i]),
                    int(fired[i]),
                    model.version,
                )
        yield pd.DataFrame({"card_id": pdf["card_id"], "value": values, "src_ts": pdf["src_ts"]})


CARD_COLS = [c for c, _ in PASS] + [f"f{i}" for i in range(N_CARD)]
MERCHANT_COLS = CARD_COLS + ["f34", "f35"]
USER_COLS = MERCHANT_COLS + ["f36"]


def ddl(cols: list[str]) -> str:
    types = dict(PASS)
    return ", ".join(f"{c} {types.get(c, 'double')}" for c in cols)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    add_common_args(ap)
    args = ap.parse_args()
    os.environ["PEER_MODEL_DIR"] = args.model_dir
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    import pyspark
    from pyspark.sql import SparkSession
    from pyspark.sql import functions as F

    model = Model(args.model_dir)
    rates = model.rates
    status = Status()
    work = Path(args.workdir)
    spark = (
        SparkSession.builder.master("local[2]")
        .appName("txfast-peer-spark")
        .config(
            "spark.jars.packages",
            f"org.apache.spark:spark-sql-kafka-0-10_2.13:{pyspark.__version__}",
        )
        .config("spark.sql.shuffle.partitions", "2")
        .config("spark.ui.enabled", "false")
        .config("spark.driver.memory", "3g")
        .config(
            "spark.sql.streaming.stateStore.providerClass",
            "org.apache.spark.sql.execution.streaming.state.RocksDBStateStoreProvider",
        )
        .config("spark.local.dir", str(work / "local"))
        .config("spark.python.unix.domain.socket.enabled", "true")  # Python workers: UDS, not TCP
        .config("spark.executorEnv.PYTHONPATH", os.path.dirname(os.path.abspath(__file__)))
        .getOrCreate()
    )
    spark.sparkContext.setLogLevel("WARN")
    spark.sparkContext.addPyFile(
        os.path.join(os.path.dirname(os.path.abspath(__file__)), "common.py")
    )

    schema = (
        "transaction_id string, timestamp long, card_id string, user_id string, "
        "amount double, currency string, merchant_id string, merchant_category string, "
        "country string, lat double, lon double, channel string"
    )
    rate_map = F.create_map(*[x for k, v in rates.items() for x in (F.lit(k), F.lit(v))])
    raw = (
        spark.readStream.format("kafka")
        .option("kafka.bootstrap.servers", args.bootstrap)
        .option("subscribe", args.topic)
        .option("startingOffsets", "earliest")
        .option("kafka.fetch.max.wait.ms", "5")
        .load()
    )
    e = raw.select(
        F.from_json(F.col("value").cast("string"), schema).alias("e"),
        (F.unix_millis(F.col("timestamp"))).alias("src_ts"),
        F.col("partition").alias("part"),
        F.col("offset").alias("off"),
    ).select("e.*", "src_ts", "part", "off")
    rate = rate_map[F.upper(F.col("currency"))]
    valid = (
        F.col("transaction_id").isNotNull()
        & (F.col("transaction_id") != "")
        & F.col("card_id").isNotNull()
        & (F.col("card_id") != "")
        & F.col("merchant_id").isNotNull()
        & (F.col("merchant_id") != "")
        & F.col("timestamp").between(946_684_800_000, 4_102_444_799_999)
        & (F.col("amount") > 0)
        & (F.col("amount") <= 1e9)
        & rate.isNotNull()
    )
    e = e.where(valid).select(
        "transaction_id",
        "card_id",
        "user_id",
        "merchant_id",
        "merchant_category",
        "country",
        F.lower("channel").alias("channel"),
        "currency",
        "amount",
        (F.col("amount") * rate).alias("amount_base"),
        F.col("timestamp").alias("ts"),
        "lat",
        "lon",
        "src_ts",
        "part",
        "off",
    )
    PerCard, PerMerchant, PerUser = _processors()
    cards = e.groupBy("card_id").transformWithStateInPandas(
        PerCard(), ddl(CARD_COLS), "Append", "None"
    )
    merchants = cards.groupBy("merchant_id").transformWithStateInPandas(
        PerMerchant(), ddl(MERCHANT_COLS), "Append", "None"
    )
    merchants = merchants.withColumn(
        "user_key", F.coalesce(F.col("user_id"), F.concat(F.lit("~"), F.col("card_id")))
    )
    users = merchants.groupBy("user_key").transformWithStateInPandas(
        PerUser(), ddl(USER_COLS), "Append", "None"
    )
    scored = users.mapInPandas(score, "card_id string, value binary, src_ts long")

    def write(df, batch_id: int) -> None:
        df.persist()
        n = df.count()
        alerts = df.where(F.col("value").isNotNull())
        k = alerts.count()
        if k:
            (
                alerts.select(
                    F.col("card_id").alias("key"),
                    "value",
                    F.array(
                        F.struct(
                            F.lit("source_timestamp").alias("key"),
                            F.col("src_ts").cast("string").cast("binary").alias("value"),
                        )
                    ).alias("headers"),
                )
                .write.format("kafka")
                .option("kafka.bootstrap.servers", args.bootstrap)
                .option("kafka.linger.ms", "1")
                .option("topic", args.out_topic)
                .save()
            )
        df.unpersist()
        if n:
            status.add(n, k)

    writer = scored.writeStream.foreachBatch(write).option(
        "checkpointLocation", str(work / "checkpoint")
    )
    writer = writer.trigger(availableNow=True) if not args.latency else writer
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    signal.signal(signal.SIGINT, lambda *_: stop.append(1))
    query = writer.start()
    while query.isActive and not stop:
        query.awaitTermination(0.2)
    if query.isActive:
        query.stop()
    if query.exception() is not None:
        raise RuntimeError(str(query.exception()))
    progress = [p for p in query.recentProgress if p.numInputRows] or query.recentProgress
    first = None
    if progress:
        stamp = progress[0].timestamp  # the trigger's start, UTC ISO-8601
        first = datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()
    status.first_input_wall = first
    status.final(
        batches=len(query.recentProgress),
        input_rows=sum(p.numInputRows for p in query.recentProgress),
        first_batches_ms=[p.durationMs for p in query.recentProgress[:3]],
    )
    spark.stop()


if __name__ == "__main__":
    main()
