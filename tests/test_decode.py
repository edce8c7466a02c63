"""The native batch decoder against the msgspec reference of the event contract."""

from __future__ import annotations

import json
import math

import msgspec
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from txfast import _core
from txfast.contract import REJECT_REASONS, Normalized, Rejection, decode_event
from txfast.decode import Decoder, mask_pan
from txfast.exceptions import ConfigError

RATES = {"EUR": 1.0, "USD": 0.9, "GBP": 1.2}


def good(**over: object) -> dict[str, object]:
    e: dict[str, object] = {
        "transaction_id": "t1",
        "timestamp": "2026-03-01T10:00:00.250+02:00",
        "card_id": "card_1",
        "user_id": "u1",
        "amount": 12.5,
        "currency": "USD",
        "merchant_id": "m1",
        "merchant_category": "5411",
        "country": "de",
        "lat": 52.5,
        "lon": 13.4,
        "channel": "POS",
        "device_id": "d1",
    }
    e.update(over)
    return {k: v for k, v in e.items() if v is not _DROP}


_DROP = object()


def enc(e: object) -> bytes:
    return json.dumps(e).encode()


def test_good_event_is_normalised() -> None:
    b = Decoder(RATES).decode([enc(good())])
    assert len(b) == 1 and not b.rejected
    c = b.columns
    assert c["ts_ms"][0] == 1772352000250  # 2026-03-01T08:00:00.250Z
    assert c["amount_base"][0] == pytest.approx(11.25)
    assert c["country_code"].to_pylist() == ["DE"]
    assert c["currency"].to_pylist() == ["USD"]
    assert c["channel_name"].to_pylist() == ["pos"]
    assert c["channel"][0] == 1
    assert c["card"][0] == _core.hash_id("card_1")
    assert c["label"][0] == -1


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"", "empty_message"),
        (b"   ", "empty_message"),
        (None, "empty_message"),
        (b"{not json", "invalid_json"),
        (b"\xff\xfe{}", "invalid_utf8"),
        (b"[1, 2]", "not_an_object"),
        (b"42", "not_an_object"),
        (enc(good(amount="12.5")), "wrong_type"),
        (enc(good(card_id=12345)), "wrong_type"),
        (enc(good(merchant_id=_DROP)), "missing_field"),
        (enc(good(transaction_id="")), "missing_field"),
        (enc(good(amount=-3)), "invalid_amount"),
        (enc(good(amount=0)), "invalid_amount"),
        (enc(good(currency="XYZ")), "unknown_currency"),
        (enc(good(card_id="4111 1111 1111 1111")), "pan_card_id"),
        (enc(good(timestamp=1_700_000_000)), "invalid_timestamp"),
        (enc(good(timestamp="2026-03-01T10:00:00")), "invalid_timestamp"),
        (enc(good(lat=_DROP)), "invalid_value"),
        (enc(good(lat=91.0)), "invalid_value"),
        (enc(good(country="DEU")), "invalid_value"),
        (enc(good(label=3)), "invalid_value"),
        (b'{"transaction_id": "x", "pad": "' + b"x" * (2 << 20) + b'"}', "too_large"),
    ],
)
def test_rejects_have_reasons_and_original_bytes(payload: bytes | None, reason: str) -> None:
    batch = Decoder(RATES).decode([enc(good(transaction_id="ok")), payload])
    assert len(batch) == 1, "the good event must survive its bad neighbour"
    assert [r.reason for r in batch.rejected] == [reason]
    r = batch.rejected[0]
    assert r.index == 1 and r.message
    if reason != "pan_card_id":
        assert r.payload == (payload or b"")
    ref = decode_event(payload, rates=RATES)
    assert isinstance(ref, Rejection) and ref.reason == reason


def test_pan_is_masked_in_dead_letters() -> None:
    batch = Decoder(RATES).decode([enc(good(card_id="4111111111111111"))])
    stored = batch.rejected[0].payload
    assert b"4111111111111111" not in stored
    assert b"411111******1111" in stored
    assert mask_pan(b"order 12345") == b"order 12345"


def test_lines_and_arrow_inputs_agree_with_payloads() -> None:
    import pyarrow as pa

    events = [enc(good(transaction_id=f"t{i}", amount=i + 1.0)) for i in range(50)]
    events[7] = b"garbage"
    a = Decoder(RATES).decode(events)
    b = Decoder(RATES).decode_lines(b"\n".join(events) + b"\n")
    c = Decoder(RATES).decode_arrow(pa.array([e.decode() for e in events]))
    for other in (b, c):
        assert other.columns["transaction_id"].equals(a.columns["transaction_id"])
        np.testing.assert_array_equal(other.columns["ts_ms"], a.columns["ts_ms"])
        assert [(r.index, r.reason, r.payload) for r in other.rejected] == [
            (7, "invalid_json", b"garbage")
        ]


def test_bad_configuration_is_refused() -> None:
    with pytest.raises(ConfigError, match="ISO 4217"):
        Decoder({"EURO": 1.0})
    with pytest.raises(ConfigError, match="positive"):
        Decoder({"USD": 0.0})


def test_reason_codes_are_shared() -> None:
    assert tuple(_core.REJECT_REASONS) == REJECT_REASONS


# --- property: the native decoder equals the reference on random, often broken, events ------

_text = st.one_of(st.text(max_size=8), st.sampled_from(["", " ", "4111111111111111", "ab"]))
_value = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**40), 2**45),
    st.floats(allow_nan=False, allow_infinity=False, width=32),
    _text,
)
_fields = {
    "transaction_id": st.one_of(_text, _value),
    "timestamp": st.one_of(
        st.integers(900_000_000_000, 4_200_000_000_000),
        st.sampled_from(
            [
                "2026-01-01T00:00:00Z",
                "2026-02-30T00:00:00Z",
                "2026-01-01 12:00:00.5+05:30",
                "2026-01-01T00:00:00",
                "yesterday",
                "2026-01-01T00:00:00-0800",
            ]
        ),
        _value,
    ),
    "card_id": st.one_of(_text, _value),
    "amount": st.one_of(st.floats(-10, 1e10), _value),
    "currency": st.one_of(st.sampled_from(["EUR", "usd", "GBP", "XXX", "eu"]), _value),
    "merchant_id": st.one_of(_text, _value),
    "merchant_category": _value,
    "country": st.one_of(st.sampled_from(["FR", "de", "USA", "1A", ""]), _value),
    "lat": st.one_of(st.floats(-100, 100), st.none()),
    "lon": st.one_of(st.floats(-200, 200), st.none()),
    "channel": _value,
    "label": st.one_of(st.sampled_from([0, 1, 2, True]), st.none()),
}
_event = st.fixed_dictionaries({}, optional=_fields)


@settings(
    max_examples=400,
    derandomize=True,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(st.lists(_event, min_size=1, max_size=20))
def test_native_decoder_equals_reference(events: list[dict[str, object]]) -> None:
    payloads = [msgspec.json.encode(e) for e in events]
    batch = Decoder(RATES).decode(payloads)
    accepted = {int(i): k for k, i in enumerate(batch.columns["index"])}
    rejected = {r.index: r for r in batch.rejected}
    assert len(accepted) + len(rejected) == len(payloads)
    c = batch.columns
    for i, p in enumerate(payloads):
        ref = decode_event(p, rates=RATES)
        if isinstance(ref, Rejection):
            assert i in rejected, f"native accepted {p!r}; reference: {ref}"
            assert rejected[i].reason == ref.reason, (p, rejected[i].message, ref.message)
            continue
        assert isinstance(ref, Normalized)
        assert i in accepted, f"native rejected {p!r}: {rejected[i].message}"
        k = accepted[i]
        assert c["transaction_id"][k].as_py() == ref.transaction_id
        assert c["card_id"][k].as_py() == ref.card_id
        assert int(c["ts_ms"][k]) == ref.ts_ms
        assert math.isclose(c["amount_base"][k], ref.amount_base, rel_tol=1e-12)
        assert c["currency"][k].as_py() == ref.currency
        assert c["country_code"][k].as_py() == ref.country
        assert c["user_id"][k].as_py() == ref.user_id
        assert c["merchant_category"][k].as_py() == ref.merchant_category
        assert int(c["label"][k]) == ref.label


@pytest.mark.parametrize(
    "card", ["card\x00one", "card\x1f", "\x1c", "tab\tinside"], ids=["nul", "us", "fs", "tab"]
)
def test_control_characters_in_ids_are_rejected(card: str) -> None:
    payload = enc(good(card_id=card))
    batch = Decoder(RATES).decode([payload])
    ref = decode_event(payload, rates=RATES)
    assert len(batch) == 0
    assert isinstance(ref, Rejection)
    assert batch.rejected[0].reason == ref.reason
