"""Labelled histories in other shapes: CSV with a column mapping, PAN card ids, timestamps."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from txfast.cli import main
from txfast.config import load_settings
from txfast.exceptions import ConfigError
from txfast.history import replay_features
from txfast.sources import ColumnMapping

HANDBOOK_MAPPING = """
[columns]
transaction_id = "TRANSACTION_ID"
timestamp = "TX_DATETIME"
card_id = "CUSTOMER_ID"
merchant_id = "TERMINAL_ID"
amount = "TX_AMOUNT"
label = "TX_FRAUD"
"""


def _iso(ms: int) -> str:
    from datetime import UTC, datetime

    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S")


@pytest.fixture(scope="module")
def handbook(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """The simulator's history written the way the fraud-detection handbook's data is: a
    pandas index column, integer customer and terminal ids, naive timestamps, no currency,
    no location; plus the same rows as contract JSON lines (EUR) and the mapping file."""
    from txfast.simulate import simulate

    t = simulate(300, 10, seed=7, start="2026-01-01").to_pydict()
    ts = [int(v) for v in t["timestamp"]]  # epoch ms
    ts = [v - v % 1000 for v in ts]  # the CSV has whole seconds
    d = tmp_path_factory.mktemp("handbook")
    card_no = {c: i for i, c in enumerate(sorted(set(t["card_id"])))}
    terminal_no = {m: i for i, m in enumerate(sorted(set(t["merchant_id"])))}
    with (d / "transactions.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(
            [
                "",
                "TRANSACTION_ID",
                "TX_DATETIME",
                "CUSTOMER_ID",
                "TERMINAL_ID",
                "TX_AMOUNT",
                "TX_TIME_SECONDS",
                "TX_FRAUD",
                "TX_FRAUD_SCENARIO",
            ]
        )
        for i in range(len(ts)):
            w.writerow(
                [
                    i,
                    i,
                    _iso(ts[i]),
                    card_no[t["card_id"][i]],
                    terminal_no[t["merchant_id"][i]],
                    t["amount"][i],
                    ts[i] // 1000,
                    t["label"][i],
                    0,
                ]
            )
    with (d / "contract.jsonl").open("w") as f:
        for i in range(len(ts)):
            doc = {
                "transaction_id": str(i),
                "timestamp": ts[i],
                "card_id": str(card_no[t["card_id"][i]]),
                "merchant_id": str(terminal_no[t["merchant_id"][i]]),
                "amount": t["amount"][i],
                "currency": "EUR",
                "label": t["label"][i],
            }
            f.write(json.dumps(doc) + "\n")
    (d / "mapping.toml").write_text(HANDBOOK_MAPPING)
    return d / "transactions.csv", d / "contract.jsonl", d / "mapping.toml"


def test_a_mapped_csv_gives_the_features_of_the_same_events_sent_natively(handbook) -> None:
    csv_path, jsonl, mapping = handbook
    settings = load_settings(env={})
    mapped = replay_features(settings, csv_path, ColumnMapping.load(mapping))
    native = replay_features(settings, jsonl)
    assert mapped.rejected == [] and native.rejected == []
    assert mapped.transaction_id.to_pylist() == native.transaction_id.to_pylist()
    np.testing.assert_array_equal(mapped.ts_ms, native.ts_ms)
    np.testing.assert_array_equal(mapped.label, native.label)
    np.testing.assert_array_equal(mapped.X, native.X)
    assert mapped.label.sum() > 0
    # Each event's card key, as the engine hashes the card id.
    from txfast._core import hash_ids

    card_ids = [json.loads(line)["card_id"] for line in jsonl.read_text().splitlines()]
    np.testing.assert_array_equal(native.card, hash_ids(card_ids))
    np.testing.assert_array_equal(mapped.card, native.card)


def test_train_and_evaluate_on_a_mapped_csv(handbook, tmp_path: Path) -> None:
    csv_path, _, mapping = handbook
    r = CliRunner().invoke(
        main,
        [
            "train",
            "--data",
            str(csv_path),
            "--mapping",
            str(mapping),
            "--registry",
            str(tmp_path / "reg"),
            "--model",
            "gbt",
        ],
    )
    assert r.exit_code == 0, r.output
    assert "gbt" in r.output.lower()
    r = CliRunner().invoke(
        main,
        [
            "evaluate",
            "--data",
            str(csv_path),
            "--mapping",
            str(mapping),
            "--model",
            "gbt",
            "--train-days",
            "4",
            "--delay-days",
            "1",
            "--test-days",
            "2",
            "--folds",
            "1",
            "--out",
            str(tmp_path / "eval" / "report.json"),
            "--json",
        ],
    )
    assert r.exit_code == 0, r.output
    report = json.loads(r.output[r.output.index("{") :])
    assert report["models"]["gbt"]["summary"]["auc_roc"]["mean"] > 0.5


def _luhn_pan(rng: np.random.Generator) -> str:
    digits = [int(v) for v in rng.integers(0, 10, size=15)]
    digits[0] = 4
    total = 0
    for i, v in enumerate(reversed(digits)):  # the check digit goes right of these
        if i % 2 == 0:
            v *= 2
            v -= 9 if v > 9 else 0
        total += v
    return "".join(map(str, digits)) + str((10 - total % 10) % 10)


def test_card_numbers_are_rejected_unless_tokenized(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    pans = [_luhn_pan(rng) for _ in range(20)]
    path = tmp_path / "fraudTrain.csv"
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(
            [
                "",
                "trans_date_trans_time",
                "cc_num",
                "merchant",
                "category",
                "amt",
                "lat",
                "long",
                "trans_num",
                "is_fraud",
            ]
        )
        for i in range(400):
            w.writerow(
                [
                    i,
                    f"2019-01-01 {i // 60 % 24:02d}:{i % 60:02d}:00",
                    pans[i % 20],
                    f"fraud_Kub, Mann {i % 7}",
                    "misc_net",
                    10.5 + i,
                    36.07,
                    -81.17,
                    f"t{i:04d}",
                    int(i % 50 == 0),
                ]
            )
    mapping = """
[columns]
transaction_id = "trans_num"
timestamp = "trans_date_trans_time"
card_id = "cc_num"
merchant_id = "merchant"
merchant_category = "category"
amount = "amt"
lat = "lat"
lon = "long"
label = "is_fraud"
[defaults]
currency = "USD"
"""
    (tmp_path / "plain.toml").write_text(mapping)
    (tmp_path / "tok.toml").write_text(mapping + '[options]\ntokenize = "card_id"\n')
    settings = load_settings(env={})
    plain = replay_features(settings, path, ColumnMapping.load(tmp_path / "plain.toml"))
    assert len(plain.rejected) == 400
    assert {r.reason for r in plain.rejected} == {"pan_card_id"}
    for r in plain.rejected:  # the dead letters keep no full card number
        assert not any(p.encode() in r.payload for p in pans)
    tok = replay_features(settings, path, ColumnMapping.load(tmp_path / "tok.toml"))
    assert tok.rejected == [] and len(tok.ts_ms) == 400
    count_24h = tok.X[:, tok.feature_names.index("card_count_24h")]
    # 20 cards in turn (the count includes the transaction itself): the 21st transaction
    # is its card's second, so the same number gives the same token every time.
    assert count_24h[:20].tolist() == [1.0] * 20
    assert count_24h[20:40].tolist() == [2.0] * 20


def test_timestamp_forms(tmp_path: Path) -> None:
    rows = [
        ("a", "2026-03-01T10:00:00+02:00"),
        ("b", "2026-03-01 08:30:00"),
        ("c", "2026-03-01T08:45:00Z"),
    ]
    (tmp_path / "iso.csv").write_text(
        "id,when,card,shop,amt\n" + "".join(f"{i},{w},c1,m1,5.0\n" for i, w in rows)
    )
    (tmp_path / "secs.csv").write_text(
        "id,when,card,shop,amt\nd,1772351100,c1,m1,5.0\ne,1772351100.123,c1,m1,5.0\n"
    )
    m = tmp_path / "m.toml"
    base = (
        '[columns]\ntransaction_id = "id"\ntimestamp = "when"\ncard_id = "card"\n'
        'merchant_id = "shop"\namount = "amt"\n'
    )
    m.write_text(base)
    settings = load_settings(env={})
    iso = replay_features(settings, tmp_path / "iso.csv", ColumnMapping.load(m))
    assert iso.ts_ms.tolist() == [1772352000000, 1772353800000, 1772354700000]
    (tmp_path / "s.toml").write_text(base + '[options]\ntimestamp_unit = "s"\n')
    secs = replay_features(settings, tmp_path / "secs.csv", ColumnMapping.load(tmp_path / "s.toml"))
    assert secs.ts_ms.tolist() == [1772351100000, 1772351100123]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('[columns]\ncard = "x"\n', "'card' is not a contract field"),
        ('[options]\ntimestamp_unit = "us"\n', "timestamp_unit must be ms or s"),
        ('[options]\nhash = "card_id"\n', "unknown option 'hash'"),
        ('[options]\ntokenize = "amount"\n', "cannot tokenize 'amount'"),
        ("[columns\n", "is invalid"),
    ],
)
def test_mapping_errors_name_the_problem(tmp_path: Path, text: str, message: str) -> None:
    (tmp_path / "m.toml").write_text(text)
    with pytest.raises(ConfigError, match=message):
        ColumnMapping.load(tmp_path / "m.toml")


def test_a_mapped_column_missing_from_the_file_is_named(handbook, tmp_path: Path) -> None:
    csv_path, _, _ = handbook
    (tmp_path / "m.toml").write_text(HANDBOOK_MAPPING.replace("TX_AMOUNT", "TX_AMT"))
    with pytest.raises(ConfigError, match="'TX_AMT' for 'amount' is missing"):
        replay_features(load_settings(env={}), csv_path, ColumnMapping.load(tmp_path / "m.toml"))


def test_empty_and_unreadable_cells_and_an_absent_column(tmp_path: Path) -> None:
    (tmp_path / "cur.csv").write_text(
        "id,when,card,shop,amt,currency\n"
        "a,2026-03-01 10:00:00,c1,m1,5.0,USD\n"
        "b,2026-03-01 10:01:00,c1,m1,5.0,\n"
        "c,2026-03-01 10:02:00,c1,m1,abc,EUR\n"
        "d,2026-03-01 10:03:00,c1,m1,,EUR\n"
    )
    (tmp_path / "m.toml").write_text(
        '[columns]\ntransaction_id = "id"\ntimestamp = "when"\ncard_id = "card"\n'
        'merchant_id = "shop"\namount = "amt"\n'
    )
    settings = load_settings(env={})
    fs = replay_features(settings, tmp_path / "cur.csv", ColumnMapping.load(tmp_path / "m.toml"))
    assert fs.transaction_id.to_pylist() == ["a"]
    assert [(r.index, r.reason) for r in fs.rejected] == [
        (1, "missing_field"),
        (2, "wrong_type"),  # a value that is not a number is not an absent one
        (3, "missing_field"),
    ]
    assert "currency" in fs.rejected[0].message and "amount" in fs.rejected[2].message
    assert "amount: abc" in fs.rejected[1].message
    assert json.loads(fs.rejected[1].payload)["transaction_id"] == "c"
    no_col = tmp_path / "nocur.csv"
    no_col.write_text("id,when,card,shop,amt\na,2026-03-01 10:00:00,c1,m1,5.0\n")
    plain = replay_features(settings, no_col, ColumnMapping.load(tmp_path / "m.toml"))
    assert plain.rejected == [] and plain.transaction_id.to_pylist() == ["a"]


def test_labels_that_are_not_numbers_reject_their_rows_not_vanish(tmp_path: Path) -> None:
    (tmp_path / "lab.csv").write_text(
        "id,when,card,shop,amt,fraud\n"
        "a,2026-03-01 10:00:00,c1,m1,5.0,1\n"
        "b,2026-03-01 10:01:00,c1,m1,5.0,yes\n"
        "c,2026-03-01 10:02:00,c1,m1,5.0,\n"
    )
    (tmp_path / "m.toml").write_text(
        '[columns]\ntransaction_id = "id"\ntimestamp = "when"\ncard_id = "card"\n'
        'merchant_id = "shop"\namount = "amt"\nlabel = "fraud"\n'
    )
    fs = replay_features(
        load_settings(env={}), tmp_path / "lab.csv", ColumnMapping.load(tmp_path / "m.toml")
    )
    assert fs.transaction_id.to_pylist() == ["a", "c"]
    assert fs.label.tolist() == [1, -1]  # an empty cell: no label
    assert [(r.index, r.reason) for r in fs.rejected] == [(1, "wrong_type")]
    assert "label: yes" in fs.rejected[0].message


@pytest.mark.parametrize("kind", ["csv", "jsonl"])
def test_batch_and_phase_sizes_change_nothing(
    handbook, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kind: str
) -> None:
    """Replays read batches ahead on a thread and alternate read and feature phases: tiny
    batches and phases (many of each, a phase ending inside a batch's worth of rows) give the
    same features, ids, labels and rejected rows, at the same positions, as one batch."""
    import txfast.history as history

    csv_path, jsonl, mapping = handbook
    if kind == "csv":
        lines = csv_path.read_text().splitlines(keepends=True)
        lines[40] = lines[40].replace(",", ",not-a-time,", 1).rsplit(",", 1)[0] + "\n"
        path, columns = tmp_path / "bad.csv", ColumnMapping.load(mapping)
    else:
        lines = jsonl.read_text().splitlines(keepends=True)
        lines[40] = "{broken\n"
        lines[77] = "\n"
        path, columns = tmp_path / "bad.jsonl", None
    path.write_text("".join(lines))

    def replay(batch: int, chunk: int) -> history.FeatureSet:
        monkeypatch.setattr(history, "_CHUNK_ROWS", chunk)
        settings = load_settings(env={}, overrides={"pipeline": {"history_batch_size": batch}})
        return replay_features(settings, path, columns)

    whole = replay(1 << 20, 1 << 20)
    assert whole.rejected, "the file has a bad row"
    for batch, chunk in [(7, 20), (64, 1), (1, 3)]:
        fs = replay(batch, chunk)
        assert fs.transaction_id.to_pylist() == whole.transaction_id.to_pylist()
        np.testing.assert_array_equal(fs.X, whole.X)
        np.testing.assert_array_equal(fs.ts_ms, whole.ts_ms)
        np.testing.assert_array_equal(fs.label, whole.label)
        assert [(r.index, r.reason, r.payload) for r in fs.rejected] == [
            (r.index, r.reason, r.payload) for r in whole.rejected
        ]


def test_a_replay_stopped_early_closes_its_reader(handbook) -> None:
    """A caller may stop after a few batches (an error, an interrupt): the batch being read
    ahead is waited for and the file's reader closed, nothing hangs or raises."""
    from txfast.history import iter_feature_batches

    csv_path, _, mapping = handbook
    settings = load_settings(env={}, overrides={"pipeline": {"history_batch_size": 50}})
    batches = iter_feature_batches(settings, csv_path, ColumnMapping.load(mapping))
    table, rejected = next(batches)
    assert table.num_rows == 50 and rejected == []
    batches.close()
    with pytest.raises(StopIteration):
        next(batches)


@pytest.mark.parametrize("kind", ["csv", "jsonl"])
def test_bad_values_past_the_type_sniffing_sample_reject_their_rows_only(
    tmp_path: Path, kind: str
) -> None:
    """DuckDB types a CSV or mapped JSON-lines column from a sample of its first rows
    (20,480): a value further down that does not fit used to fail the whole read. Each bad
    row is rejected with its reason, every other row replayed."""
    path = tmp_path / f"long.{kind}"
    bad = {30_000: ("abc", "0", None), 30_001: (None, "x", None), 30_002: (None, "0", "soon")}
    with path.open("w") as f:
        if kind == "csv":
            f.write("id,when,card,shop,amt,fraud\n")
        for i in range(32_000):
            amount, label, when = bad.get(i, (None, None, None))
            when = when or _iso(1_772_323_200_000 + i * 60_000)
            row = [f"t{i}", when, f"c{i % 300}", f"m{i % 40}", amount or 5 + i % 97, label or 0]
            if kind == "csv":
                f.write(",".join(map(str, row)) + "\n")
            else:
                keys = ["id", "when", "card", "shop", "amt", "fraud"]
                value = {k: v for k, v in zip(keys, row, strict=True)}
                value["amt"] = row[4] if isinstance(row[4], str) else float(row[4])
                value["fraud"] = row[5] if row[5] == "x" else int(row[5])
                f.write(json.dumps(value) + "\n")
    (tmp_path / "m.toml").write_text(
        '[columns]\ntransaction_id = "id"\ntimestamp = "when"\ncard_id = "card"\n'
        'merchant_id = "shop"\namount = "amt"\nlabel = "fraud"\n'
    )
    fs = replay_features(load_settings(env={}), path, ColumnMapping.load(tmp_path / "m.toml"))
    assert len(fs.transaction_id) == 32_000 - 3
    assert [(r.index, r.reason) for r in fs.rejected] == [
        (30_000, "wrong_type"),
        (30_001, "wrong_type"),
        (30_002, "invalid_timestamp"),
    ]
    assert "amount: abc" in fs.rejected[0].message and "label: x" in fs.rejected[1].message
    assert '"soon"' in fs.rejected[2].message
    assert json.loads(fs.rejected[0].payload)["transaction_id"] == "t30000"
    assert fs.label.sum() == 0 and fs.ts_ms[0] == 1_772_323_200_000


@pytest.mark.parametrize("kind", ["csv", "jsonl"])
def test_true_and_false_labels(tmp_path: Path, kind: str) -> None:
    rows = [("a", "true"), ("b", "false"), ("c", "")]
    if kind == "csv":
        text = "id,when,card,shop,amt,fraud\n" + "".join(
            f"{i},2026-03-01 10:0{n}:00,c1,m1,5.0,{label}\n" for n, (i, label) in enumerate(rows)
        )
    else:
        text = "".join(
            json.dumps(
                {"id": i, "when": f"2026-03-01T10:0{n}:00Z", "card": "c1", "shop": "m1", "amt": 5.0}
                | ({"fraud": label == "true"} if label else {})
            )
            + "\n"
            for n, (i, label) in enumerate(rows)
        )
    (tmp_path / f"b.{kind}").write_text(text)
    (tmp_path / "m.toml").write_text(
        '[columns]\ntransaction_id = "id"\ntimestamp = "when"\ncard_id = "card"\n'
        'merchant_id = "shop"\namount = "amt"\nlabel = "fraud"\n'
    )
    fs = replay_features(
        load_settings(env={}), tmp_path / f"b.{kind}", ColumnMapping.load(tmp_path / "m.toml")
    )
    assert fs.rejected == []
    assert fs.label.tolist() == [1, 0, -1]


@pytest.mark.parametrize(
    ("cells", "expected"),
    [
        (["15/03/2026 10:00:00", "16/03/2026 11:30:00"], [1773568800000, 1773660600000]),
        (["15-03-2026", "16-03-2026"], [1773532800000, 1773619200000]),
    ],
)
def test_day_first_times_are_read_in_the_format_the_sniffer_found(
    tmp_path: Path, cells: list[str], expected: list[int]
) -> None:
    (tmp_path / "d.csv").write_text(
        "id,when,card,shop,amt\n" + "".join(f"t{i},{w},c1,m1,5.0\n" for i, w in enumerate(cells))
    )
    (tmp_path / "m.toml").write_text(
        '[columns]\ntransaction_id = "id"\ntimestamp = "when"\ncard_id = "card"\n'
        'merchant_id = "shop"\namount = "amt"\n'
    )
    fs = replay_features(
        load_settings(env={}), tmp_path / "d.csv", ColumnMapping.load(tmp_path / "m.toml")
    )
    assert fs.rejected == []
    assert fs.ts_ms.tolist() == expected
