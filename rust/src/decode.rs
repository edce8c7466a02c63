//! JSON event decoding and validation straight into columns.
//!
//! The event contract is documented by the msgspec Structs in `txfast/contract.py` (the
//! reference decoder); this module implements the same rules without creating one Python
//! object per event. Each payload either becomes one row of [`Columns`] or one [`Reject`] with
//! a stable reason code and a message. Nothing panics on bad input and nothing is dropped.

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt;
use std::ops::Range;

use rayon::prelude::*;
use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;

use crate::error::{TxError, TxResult};
use crate::hash::hash_id;

/// Stable reason codes of rejected events (the `reason` column of dead letters).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    EmptyMessage,
    TooLarge,
    InvalidUtf8,
    InvalidJson,
    NotAnObject,
    MissingField,
    WrongType,
    InvalidTimestamp,
    InvalidAmount,
    UnknownCurrency,
    PanCardId,
    InvalidValue,
}

impl Reason {
    /// All reasons, in code order.
    pub const ALL: [Reason; 12] = [
        Reason::EmptyMessage,
        Reason::TooLarge,
        Reason::InvalidUtf8,
        Reason::InvalidJson,
        Reason::NotAnObject,
        Reason::MissingField,
        Reason::WrongType,
        Reason::InvalidTimestamp,
        Reason::InvalidAmount,
        Reason::UnknownCurrency,
        Reason::PanCardId,
        Reason::InvalidValue,
    ];

    /// The reason code as written to dead letters.
    pub fn code(self) -> &'static str {
        match self {
            Reason::EmptyMessage => "empty_message",
            Reason::TooLarge => "too_large",
            Reason::InvalidUtf8 => "invalid_utf8",
            Reason::InvalidJson => "invalid_json",
            Reason::NotAnObject => "not_an_object",
            Reason::MissingField => "missing_field",
            Reason::WrongType => "wrong_type",
            Reason::InvalidTimestamp => "invalid_timestamp",
            Reason::InvalidAmount => "invalid_amount",
            Reason::UnknownCurrency => "unknown_currency",
            Reason::PanCardId => "pan_card_id",
            Reason::InvalidValue => "invalid_value",
        }
    }
}

/// Channel codes used as the `channel` feature.
pub const CHANNELS: [&str; 6] = ["pos", "ecom", "atm", "moto", "transfer", "other"];

/// Map a channel name to its code: 0 absent, 1..=5 known channels, 6 any other value.
pub fn channel_code(name: &str) -> u8 {
    let name = name.trim();
    if name.is_empty() {
        return 0;
    }
    CHANNELS[..5]
        .iter()
        .position(|c| c.eq_ignore_ascii_case(name))
        .map_or(6, |k| k as u8 + 1)
}

/// `s` in ASCII upper case, borrowed when it already is.
fn upper(s: &str) -> Cow<'_, str> {
    if s.bytes().any(|b| b.is_ascii_lowercase()) {
        Cow::Owned(s.to_ascii_uppercase())
    } else {
        Cow::Borrowed(s)
    }
}

/// `s` in ASCII lower case, borrowed when it already is.
fn lower(s: &str) -> Cow<'_, str> {
    if s.bytes().any(|b| b.is_ascii_uppercase()) {
        Cow::Owned(s.to_ascii_lowercase())
    } else {
        Cow::Borrowed(s)
    }
}

/// Earliest accepted event time (2000-01-01T00:00:00Z). Catches epoch seconds sent as ms.
pub const MIN_TS_MS: i64 = 946_684_800_000;
/// Latest accepted event time (2100-01-01T00:00:00Z).
pub const MAX_TS_MS: i64 = 4_102_444_800_000;

/// Decoder configuration: currency rates and limits.
#[derive(Debug, Clone)]
pub struct DecoderConfig {
    /// Base currency code; amounts are converted into it.
    pub base_currency: String,
    /// Multiplier from each accepted currency to the base currency (base maps to 1.0).
    pub rates: HashMap<String, f64>,
    /// Largest accepted payload in bytes.
    pub max_event_bytes: usize,
    /// Largest accepted amount (in the event's currency).
    pub max_amount: f64,
    /// `rates` keyed by the three letters packed in a `u32`, sorted (no string hashing per
    /// event).
    packed_rates: Vec<(u32, f64)>,
}

impl DecoderConfig {
    /// Validate and build a configuration.
    pub fn new(
        base_currency: &str,
        rates: HashMap<String, f64>,
        max_event_bytes: usize,
        max_amount: f64,
    ) -> TxResult<Self> {
        let base = base_currency.trim().to_ascii_uppercase();
        if !is_currency_code(&base) {
            return Err(TxError::Config(format!(
                "base currency {base_currency:?} is not a three-letter ISO 4217 code"
            )));
        }
        let mut table = HashMap::with_capacity(rates.len() + 1);
        for (code, rate) in rates {
            let up = code.trim().to_ascii_uppercase();
            if !is_currency_code(&up) {
                return Err(TxError::Config(format!(
                    "rates table key {code:?} is not a three-letter ISO 4217 code"
                )));
            }
            if !(rate.is_finite() && rate > 0.0) {
                return Err(TxError::Config(format!(
                    "rate for {up} must be a positive finite number, got {rate}"
                )));
            }
            table.insert(up, rate);
        }
        match table.get(&base) {
            Some(r) if *r != 1.0 => {
                return Err(TxError::Config(format!(
                    "rate of the base currency {base} must be 1.0, got {r}"
                )))
            }
            _ => {
                table.insert(base.clone(), 1.0);
            }
        }
        if max_event_bytes == 0 {
            return Err(TxError::Config("max_event_bytes must be positive".into()));
        }
        if !(max_amount.is_finite() && max_amount > 0.0) {
            return Err(TxError::Config(
                "max_amount must be a positive finite number".into(),
            ));
        }
        let mut packed_rates: Vec<(u32, f64)> = table
            .iter()
            .filter_map(|(code, rate)| pack_code(code).map(|k| (k, *rate)))
            .collect();
        packed_rates.sort_by_key(|&(k, _)| k);
        Ok(Self {
            base_currency: base,
            rates: table,
            max_event_bytes,
            max_amount,
            packed_rates,
        })
    }

    /// The rate of an upper-case currency code, if the table has it (no string hashing).
    #[inline]
    fn rate(&self, code: &str) -> Option<f64> {
        let key = pack_code(code)?;
        self.packed_rates
            .binary_search_by_key(&key, |&(k, _)| k)
            .ok()
            .map(|i| self.packed_rates[i].1)
    }
}

/// A three-byte code packed in a `u32` (None for other lengths).
fn pack_code(s: &str) -> Option<u32> {
    match s.as_bytes() {
        &[a, b, c] => Some(u32::from_le_bytes([a, b, c, 0])),
        _ => None,
    }
}

fn is_currency_code(s: &str) -> bool {
    s.len() == 3 && s.bytes().all(|b| b.is_ascii_uppercase())
}

/// One rejected payload.
#[derive(Debug, Clone, PartialEq)]
pub struct Reject {
    /// Position of the payload in the input.
    pub index: u32,
    pub reason: Reason,
    pub message: String,
}

/// A nullable string column in Arrow's large-string layout.
#[derive(Debug, Default, Clone)]
pub struct StrColumn {
    /// `len + 1` offsets into `data`.
    pub offsets: Vec<i64>,
    pub data: Vec<u8>,
    /// One flag per row; `false` means null.
    pub valid: Vec<bool>,
}

impl StrColumn {
    fn with_capacity(n: usize) -> Self {
        let mut offsets = Vec::with_capacity(n + 1);
        offsets.push(0);
        Self {
            offsets,
            data: Vec::with_capacity(n * 12),
            valid: Vec::with_capacity(n),
        }
    }

    fn push(&mut self, v: Option<&str>) {
        if let Some(s) = v {
            self.data.extend_from_slice(s.as_bytes());
        }
        self.offsets.push(self.data.len() as i64);
        self.valid.push(v.is_some());
    }

    /// Value of row `i` (None when null).
    pub fn get(&self, i: usize) -> Option<&str> {
        if !self.valid[i] {
            return None;
        }
        let a = self.offsets[i] as usize;
        let b = self.offsets[i + 1] as usize;
        std::str::from_utf8(&self.data[a..b]).ok()
    }
}

/// Accepted events as columns (row `k` came from payload `index[k]`).
#[derive(Debug, Default)]
pub struct Columns {
    /// Only `transaction_id` among the string columns was kept (the others are empty): for
    /// replaying history into features, which needs the ids and the numeric columns only.
    pub ids_only: bool,
    pub index: Vec<u32>,
    pub ts_ms: Vec<i64>,
    pub amount: Vec<f64>,
    pub amount_base: Vec<f64>,
    pub lat: Vec<f64>,
    pub lon: Vec<f64>,
    pub channel: Vec<u8>,
    /// -1 when absent.
    pub label: Vec<i8>,
    pub card: Vec<u64>,
    pub merchant: Vec<u64>,
    pub user: Vec<u64>,
    pub category: Vec<u64>,
    pub country: Vec<u64>,
    pub transaction_id: StrColumn,
    pub card_id: StrColumn,
    pub user_id: StrColumn,
    pub merchant_id: StrColumn,
    pub merchant_category: StrColumn,
    pub country_code: StrColumn,
    pub currency: StrColumn,
    pub channel_name: StrColumn,
    pub device_id: StrColumn,
}

/// Result of decoding a batch.
#[derive(Debug, Default)]
pub struct Decoded {
    pub columns: Columns,
    pub rejects: Vec<Reject>,
}

// ---------------------------------------------------------------------------------------------
// Raw event as it appears on the wire.

#[derive(Deserialize)]
pub(crate) struct RawEvent<'a> {
    #[serde(borrow, default)]
    pub(crate) transaction_id: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    pub(crate) timestamp: Option<RawTs<'a>>,
    #[serde(borrow, default)]
    pub(crate) card_id: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    pub(crate) user_id: Option<Cow<'a, str>>,
    #[serde(default)]
    pub(crate) amount: Option<f64>,
    #[serde(borrow, default)]
    pub(crate) currency: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    pub(crate) merchant_id: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    pub(crate) merchant_category: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    pub(crate) country: Option<Cow<'a, str>>,
    #[serde(default)]
    pub(crate) lat: Option<f64>,
    #[serde(default)]
    pub(crate) lon: Option<f64>,
    #[serde(borrow, default)]
    pub(crate) channel: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    pub(crate) device_id: Option<Cow<'a, str>>,
    #[serde(default)]
    pub(crate) label: Option<RawLabel>,
}

pub(crate) enum RawTs<'a> {
    Millis(f64),
    Text(Cow<'a, str>),
}

impl<'de: 'a, 'a> Deserialize<'de> for RawTs<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = RawTs<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("epoch milliseconds or an ISO-8601 string")
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
                Ok(RawTs::Millis(v as f64))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
                Ok(RawTs::Millis(v as f64))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Self::Value, E> {
                Ok(RawTs::Millis(v))
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(RawTs::Text(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(RawTs::Text(Cow::Owned(v.to_owned())))
            }
        }
        d.deserialize_any(V)
    }
}

/// A label as sent: a bool or any integer (the 0/1 range is checked after all types are).
pub(crate) struct RawLabel(pub(crate) i64);

impl<'de> Deserialize<'de> for RawLabel {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = RawLabel;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("0, 1, true or false")
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<Self::Value, E> {
                Ok(RawLabel(i64::from(v)))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
                Ok(RawLabel(v))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
                Ok(RawLabel(i64::try_from(v).unwrap_or(i64::MAX)))
            }
        }
        d.deserialize_any(V)
    }
}

// ---------------------------------------------------------------------------------------------
// Validation of one event.

/// A validated event, borrowing from the payload where possible.
pub(crate) struct Event<'a> {
    transaction_id: Cow<'a, str>,
    ts_ms: i64,
    card_id: Cow<'a, str>,
    user_id: Option<Cow<'a, str>>,
    amount: f64,
    amount_base: f64,
    currency: Cow<'a, str>,
    merchant_id: Cow<'a, str>,
    merchant_category: Option<Cow<'a, str>>,
    country: Option<Cow<'a, str>>,
    lat: f64,
    lon: f64,
    channel: Option<Cow<'a, str>>,
    device_id: Option<Cow<'a, str>>,
    label: i8,
}

pub(crate) type Rejection = (Reason, String);

const MAX_ID_LEN: usize = 256;

/// How an id looks: blank (only white space), holding a control character, or fine.
#[derive(PartialEq)]
enum IdShape {
    Blank,
    Control,
    Fine,
}

/// One pass over the bytes for ASCII ids (nearly all of them); `trim` and `char` checks
/// otherwise. Blank wins over control, as white space includes some control characters.
#[inline]
fn id_shape(s: &str) -> IdShape {
    if s.is_ascii() {
        let (mut blank, mut control) = (true, false);
        for b in s.bytes() {
            let space = b == b' ' || (b'\t'..=b'\r').contains(&b);
            blank &= space;
            control |= b < 0x20 || b == 0x7f;
        }
        return if blank {
            IdShape::Blank
        } else if control {
            IdShape::Control
        } else {
            IdShape::Fine
        };
    }
    if s.trim().is_empty() {
        IdShape::Blank
    } else if s.chars().any(char::is_control) {
        IdShape::Control
    } else {
        IdShape::Fine
    }
}

fn required_id<'a>(v: Option<Cow<'a, str>>, field: &str) -> Result<Cow<'a, str>, Rejection> {
    let Some(s) = v else {
        return Err((
            Reason::MissingField,
            format!("missing required field `{field}`"),
        ));
    };
    match id_shape(&s) {
        IdShape::Blank => Err((
            Reason::MissingField,
            format!("required field `{field}` is empty"),
        )),
        _ if s.len() > MAX_ID_LEN => Err((
            Reason::InvalidValue,
            format!("`{field}` is longer than {MAX_ID_LEN} bytes"),
        )),
        IdShape::Control => Err((
            Reason::InvalidValue,
            format!("`{field}` contains a control character"),
        )),
        IdShape::Fine => Ok(s),
    }
}

fn optional_id<'a>(
    v: Option<Cow<'a, str>>,
    field: &str,
) -> Result<Option<Cow<'a, str>>, Rejection> {
    let Some(s) = v else { return Ok(None) };
    match id_shape(&s) {
        IdShape::Blank => Ok(None),
        _ if s.len() > MAX_ID_LEN => Err((
            Reason::InvalidValue,
            format!("`{field}` is longer than {MAX_ID_LEN} bytes"),
        )),
        IdShape::Control => Err((
            Reason::InvalidValue,
            format!("`{field}` contains a control character"),
        )),
        IdShape::Fine => Ok(Some(s)),
    }
}

/// Apply a normalisation that borrows its input where it can, keeping the payload's lifetime.
fn normalized<'a>(c: Cow<'a, str>, f: impl for<'b> Fn(&'b str) -> Cow<'b, str>) -> Cow<'a, str> {
    match c {
        Cow::Borrowed(s) => f(s),
        Cow::Owned(s) => Cow::Owned(f(&s).into_owned()),
    }
}

/// True when `s` looks like a primary account number: 13–19 digits (spaces and dashes
/// ignored) passing the Luhn check.
pub fn looks_like_pan(s: &str) -> bool {
    let mut digits = [0u8; 19];
    let mut n = 0usize;
    for b in s.bytes() {
        match b {
            b'0'..=b'9' => {
                if n == 19 {
                    return false;
                }
                digits[n] = b - b'0';
                n += 1;
            }
            b' ' | b'-' => {}
            _ => return false,
        }
    }
    if !(13..=19).contains(&n) {
        return false;
    }
    let mut sum = 0u32;
    for (k, &d) in digits[..n].iter().rev().enumerate() {
        let mut v = u32::from(d);
        if k % 2 == 1 {
            v *= 2;
            if v > 9 {
                v -= 9;
            }
        }
        sum += v;
    }
    sum.is_multiple_of(10)
}

fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    // Howard Hinnant's algorithm: days since 1970-01-01 of a proleptic Gregorian date.
    let y = if m <= 2 { y - 1 } else { y };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn days_in_month(y: i64, m: i64) -> i64 {
    match m {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        _ if (y % 4 == 0 && y % 100 != 0) || y % 400 == 0 => 29,
        _ => 28,
    }
}

/// Parse `YYYY-MM-DDTHH:MM:SS[.fraction](Z|±HH:MM|±HHMM)` into epoch milliseconds. A space may
/// replace `T`. An offset is required: event time must be unambiguous.
pub fn parse_iso8601_ms(s: &str) -> Result<i64, String> {
    let b = s.trim().as_bytes();
    let bad =
        || format!("timestamp {s:?} is not ISO-8601 with an offset (e.g. 2026-01-31T12:00:00Z)");
    let num = |r: std::ops::Range<usize>| -> Result<i64, String> {
        let part = b.get(r).ok_or_else(bad)?;
        if part.is_empty() || !part.iter().all(u8::is_ascii_digit) {
            return Err(bad());
        }
        Ok(part.iter().fold(0i64, |a, &c| a * 10 + i64::from(c - b'0')))
    };
    if b.len() < 20
        || b[4] != b'-'
        || b[7] != b'-'
        || !(b[10] == b'T' || b[10] == b't' || b[10] == b' ')
        || b[13] != b':'
        || b[16] != b':'
    {
        return Err(bad());
    }
    let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (h, mi, se) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&mo) || d < 1 || d > days_in_month(y, mo) || h > 23 || mi > 59 || se > 60
    {
        return Err(format!(
            "timestamp {s:?} has an out-of-range date or time field"
        ));
    }
    let mut i = 19;
    let mut millis = 0i64;
    if b.get(i) == Some(&b'.') || b.get(i) == Some(&b',') {
        i += 1;
        let start = i;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        if i == start {
            return Err(bad());
        }
        let frac = &b[start..i.min(start + 3)];
        millis = frac.iter().fold(0i64, |a, &c| a * 10 + i64::from(c - b'0'));
        for _ in frac.len()..3 {
            millis *= 10;
        }
    }
    let offset_min = match b.get(i) {
        Some(b'Z') | Some(b'z') if i + 1 == b.len() => 0,
        Some(&sign) if sign == b'+' || sign == b'-' => {
            let rest = &b[i + 1..];
            let (oh, om) = match rest.len() {
                5 if rest[2] == b':' => (num(i + 1..i + 3)?, num(i + 4..i + 6)?),
                4 => (num(i + 1..i + 3)?, num(i + 3..i + 5)?),
                2 => (num(i + 1..i + 3)?, 0),
                _ => return Err(bad()),
            };
            if oh > 23 || om > 59 {
                return Err(bad());
            }
            let m = oh * 60 + om;
            if sign == b'-' {
                -m
            } else {
                m
            }
        }
        _ => return Err(bad()),
    };
    let days = days_from_civil(y, mo, d);
    let secs = days * 86_400 + h * 3600 + mi * 60 + se.min(59) - offset_min * 60;
    Ok(secs * 1000 + millis)
}

pub(crate) fn validate<'a>(raw: RawEvent<'a>, cfg: &DecoderConfig) -> Result<Event<'a>, Rejection> {
    let label = match raw.label {
        None => -1,
        Some(RawLabel(v)) if v == 0 || v == 1 => v as i8,
        Some(RawLabel(v)) => {
            return Err((
                Reason::InvalidValue,
                format!("label must be 0 or 1, got {v}"),
            ));
        }
    };
    let transaction_id = required_id(raw.transaction_id, "transaction_id")?;
    let ts_ms = match raw.timestamp {
        None => {
            return Err((
                Reason::MissingField,
                "missing required field `timestamp`".into(),
            ))
        }
        Some(RawTs::Millis(v)) => {
            if !v.is_finite() || v.fract() != 0.0 {
                return Err((
                    Reason::InvalidTimestamp,
                    format!("timestamp {v} is not a whole number of epoch milliseconds"),
                ));
            }
            v as i64
        }
        Some(RawTs::Text(t)) => parse_iso8601_ms(&t).map_err(|m| (Reason::InvalidTimestamp, m))?,
    };
    if !(MIN_TS_MS..MAX_TS_MS).contains(&ts_ms) {
        return Err((
            Reason::InvalidTimestamp,
            format!(
                "timestamp {ts_ms} ms is outside 2000-01-01..2100-01-01 (epoch seconds instead of milliseconds?)"
            ),
        ));
    }
    let card_id = required_id(raw.card_id, "card_id")?;
    if looks_like_pan(&card_id) {
        return Err((
            Reason::PanCardId,
            "card_id looks like a primary account number (13-19 digits, Luhn-valid); send a token"
                .into(),
        ));
    }
    let merchant_id = required_id(raw.merchant_id, "merchant_id")?;
    let amount = match raw.amount {
        None => {
            return Err((
                Reason::MissingField,
                "missing required field `amount`".into(),
            ))
        }
        Some(a) => a,
    };
    if !(amount.is_finite() && amount > 0.0) {
        return Err((
            Reason::InvalidAmount,
            format!("amount must be a positive finite number, got {amount}"),
        ));
    }
    if amount > cfg.max_amount {
        return Err((
            Reason::InvalidAmount,
            format!(
                "amount {amount} exceeds the configured maximum {}",
                cfg.max_amount
            ),
        ));
    }
    let currency = match raw.currency {
        None => {
            return Err((
                Reason::MissingField,
                "missing required field `currency`".into(),
            ))
        }
        Some(c) => normalized(c, |s| upper(s.trim())),
    };
    let rate = match cfg.rate(&currency) {
        Some(r) => r,
        None => {
            let shown: String = currency.chars().take(16).collect();
            return Err((
                Reason::UnknownCurrency,
                format!("currency {shown:?} is not in the configured rates table"),
            ));
        }
    };
    let country = match raw.country {
        None => None,
        Some(c) if c.trim().is_empty() => None,
        Some(c) => {
            let t = normalized(c, |s| upper(s.trim()));
            if t.len() != 2 || !t.bytes().all(|b| b.is_ascii_alphabetic()) {
                let shown: String = t.chars().take(16).collect();
                return Err((
                    Reason::InvalidValue,
                    format!("country {shown:?} is not an ISO 3166-1 alpha-2 code"),
                ));
            }
            Some(t)
        }
    };
    let (lat, lon) = match (raw.lat, raw.lon) {
        (None, None) => (f64::NAN, f64::NAN),
        (Some(la), Some(lo)) => {
            if !(la.is_finite() && (-90.0..=90.0).contains(&la)) {
                return Err((
                    Reason::InvalidValue,
                    format!("lat {la} is outside [-90, 90]"),
                ));
            }
            if !(lo.is_finite() && (-180.0..=180.0).contains(&lo)) {
                return Err((
                    Reason::InvalidValue,
                    format!("lon {lo} is outside [-180, 180]"),
                ));
            }
            (la, lo)
        }
        _ => {
            return Err((
                Reason::InvalidValue,
                "lat and lon must be given together".into(),
            ));
        }
    };
    Ok(Event {
        transaction_id,
        ts_ms,
        card_id,
        user_id: optional_id(raw.user_id, "user_id")?,
        amount,
        amount_base: amount * rate,
        currency,
        merchant_id,
        merchant_category: optional_id(raw.merchant_category, "merchant_category")?,
        country,
        lat,
        lon,
        channel: optional_id(raw.channel, "channel")?.map(|c| normalized(c, |s| lower(s.trim()))),
        device_id: optional_id(raw.device_id, "device_id")?,
        label,
    })
}

fn classify_json_error(e: &serde_json::Error) -> Rejection {
    use serde_json::error::Category;
    let msg = e.to_string();
    match e.classify() {
        Category::Data => {
            if msg.starts_with("invalid type: map") || msg.contains("expected struct") {
                (
                    Reason::NotAnObject,
                    format!("event is not a JSON object: {msg}"),
                )
            } else {
                (Reason::WrongType, msg)
            }
        }
        Category::Io | Category::Syntax | Category::Eof => (Reason::InvalidJson, msg),
    }
}

fn decode_one<'a>(payload: &'a [u8], cfg: &DecoderConfig) -> Result<Event<'a>, Rejection> {
    if payload.iter().all(u8::is_ascii_whitespace) {
        return Err((Reason::EmptyMessage, "empty message".into()));
    }
    if payload.len() > cfg.max_event_bytes {
        return Err((
            Reason::TooLarge,
            format!(
                "message of {} bytes exceeds max_event_bytes = {}",
                payload.len(),
                cfg.max_event_bytes
            ),
        ));
    }
    if let Err(e) = std::str::from_utf8(payload) {
        return Err((
            Reason::InvalidUtf8,
            format!("message is not valid UTF-8: {e}"),
        ));
    }
    let first = payload.iter().find(|b| !b.is_ascii_whitespace()).copied();
    if first != Some(b'{') {
        // Valid JSON that is not an object (array, number, string) or plain garbage.
        return match serde_json::from_slice::<serde::de::IgnoredAny>(payload) {
            Ok(_) => Err((Reason::NotAnObject, "event is not a JSON object".into())),
            Err(e) => Err((Reason::InvalidJson, e.to_string())),
        };
    }
    let raw: RawEvent<'a> = serde_json::from_slice(payload).map_err(|e| classify_json_error(&e))?;
    validate(raw, cfg)
}

pub(crate) fn push_event(c: &mut Columns, index: u32, e: &Event<'_>) {
    c.index.push(index);
    c.ts_ms.push(e.ts_ms);
    c.amount.push(e.amount);
    c.amount_base.push(e.amount_base);
    c.lat.push(e.lat);
    c.lon.push(e.lon);
    c.channel.push(e.channel.as_deref().map_or(0, channel_code)); // trimmed, lower case
    c.label.push(e.label);
    c.card.push(hash_id(e.card_id.as_bytes()));
    c.merchant.push(hash_id(e.merchant_id.as_bytes()));
    c.user
        .push(e.user_id.as_deref().map_or(0, |s| hash_id(s.as_bytes())));
    c.category.push(
        e.merchant_category
            .as_deref()
            .map_or(0, |s| hash_id(s.trim().as_bytes())),
    );
    c.country
        .push(e.country.as_deref().map_or(0, |s| hash_id(s.as_bytes())));
    c.transaction_id.push(Some(&e.transaction_id));
    if c.ids_only {
        return;
    }
    c.card_id.push(Some(&e.card_id));
    c.user_id.push(e.user_id.as_deref());
    c.merchant_id.push(Some(&e.merchant_id));
    c.merchant_category
        .push(e.merchant_category.as_deref().map(str::trim));
    c.country_code.push(e.country.as_deref());
    c.currency.push(Some(&e.currency));
    c.channel_name.push(e.channel.as_deref());
    c.device_id.push(e.device_id.as_deref());
}

impl Columns {
    /// Empty columns with room for `n` rows; with `ids_only`, `transaction_id` is the only
    /// string column kept (see [`Columns::ids_only`]).
    pub(crate) fn with_capacity(n: usize, ids_only: bool) -> Self {
        let s = if ids_only { 0 } else { n };
        Self {
            ids_only,
            index: Vec::with_capacity(n),
            ts_ms: Vec::with_capacity(n),
            amount: Vec::with_capacity(n),
            amount_base: Vec::with_capacity(n),
            lat: Vec::with_capacity(n),
            lon: Vec::with_capacity(n),
            channel: Vec::with_capacity(n),
            label: Vec::with_capacity(n),
            card: Vec::with_capacity(n),
            merchant: Vec::with_capacity(n),
            user: Vec::with_capacity(n),
            category: Vec::with_capacity(n),
            country: Vec::with_capacity(n),
            transaction_id: StrColumn::with_capacity(n),
            card_id: StrColumn::with_capacity(s),
            user_id: StrColumn::with_capacity(s),
            merchant_id: StrColumn::with_capacity(s),
            merchant_category: StrColumn::with_capacity(s),
            country_code: StrColumn::with_capacity(s),
            currency: StrColumn::with_capacity(s),
            channel_name: StrColumn::with_capacity(s),
            device_id: StrColumn::with_capacity(s),
        }
    }

    /// Number of accepted rows.
    pub fn len(&self) -> usize {
        self.index.len()
    }

    /// True when no row was accepted.
    pub fn is_empty(&self) -> bool {
        self.index.is_empty()
    }
}

fn decode_chunk<P: AsRef<[u8]>>(
    payloads: &[P],
    first_index: usize,
    cfg: &DecoderConfig,
) -> Decoded {
    let mut out = Decoded {
        columns: Columns::with_capacity(payloads.len(), false),
        rejects: Vec::new(),
    };
    for (k, p) in payloads.iter().enumerate() {
        let index = (first_index + k) as u32;
        match decode_one(p.as_ref(), cfg) {
            Ok(e) => push_event(&mut out.columns, index, &e),
            Err((reason, message)) => out.rejects.push(Reject {
                index,
                reason,
                message,
            }),
        }
    }
    out
}

fn append_str(dst: &mut StrColumn, src: StrColumn) {
    let base = *dst.offsets.last().unwrap_or(&0);
    dst.offsets
        .extend(src.offsets[1..].iter().map(|o| o + base));
    dst.data.extend_from_slice(&src.data);
    dst.valid.extend_from_slice(&src.valid);
}

fn append(dst: &mut Decoded, src: Decoded) {
    let (d, s) = (&mut dst.columns, src.columns);
    d.index.extend_from_slice(&s.index);
    d.ts_ms.extend_from_slice(&s.ts_ms);
    d.amount.extend_from_slice(&s.amount);
    d.amount_base.extend_from_slice(&s.amount_base);
    d.lat.extend_from_slice(&s.lat);
    d.lon.extend_from_slice(&s.lon);
    d.channel.extend_from_slice(&s.channel);
    d.label.extend_from_slice(&s.label);
    d.card.extend_from_slice(&s.card);
    d.merchant.extend_from_slice(&s.merchant);
    d.user.extend_from_slice(&s.user);
    d.category.extend_from_slice(&s.category);
    d.country.extend_from_slice(&s.country);
    append_str(&mut d.transaction_id, s.transaction_id);
    append_str(&mut d.card_id, s.card_id);
    append_str(&mut d.user_id, s.user_id);
    append_str(&mut d.merchant_id, s.merchant_id);
    append_str(&mut d.merchant_category, s.merchant_category);
    append_str(&mut d.country_code, s.country_code);
    append_str(&mut d.currency, s.currency);
    append_str(&mut d.channel_name, s.channel_name);
    append_str(&mut d.device_id, s.device_id);
    dst.rejects.extend(src.rejects);
}

/// Decode and validate a batch of payloads, in parallel chunks; the output keeps input order.
pub fn decode_batch<P: AsRef<[u8]> + Sync>(payloads: &[P], cfg: &DecoderConfig) -> Decoded {
    in_chunks(payloads.len(), |rows| {
        decode_chunk(&payloads[rows.clone()], rows.start, cfg)
    })
}

/// `decode(rows)` over `0..n` in chunks of 2048 rows, in parallel when there are several,
/// concatenated in row order.
pub(crate) fn in_chunks(n: usize, decode: impl Fn(Range<usize>) -> Decoded + Sync) -> Decoded {
    const CHUNK: usize = 2048;
    if n <= CHUNK {
        return decode(0..n);
    }
    let parts: Vec<Decoded> = (0..n.div_ceil(CHUNK))
        .into_par_iter()
        .map(|k| decode(k * CHUNK..((k + 1) * CHUNK).min(n)))
        .collect();
    let mut it = parts.into_iter();
    let mut out = it.next().unwrap_or_default();
    for p in it {
        append(&mut out, p);
    }
    out
}

/// Split a JSON-lines buffer into lines (without the line terminator, `\r\n` tolerated).
/// A final empty line is not an event; empty lines in the middle are (and are rejected).
pub fn split_lines(buf: &[u8]) -> Vec<&[u8]> {
    let mut lines: Vec<&[u8]> = buf
        .split(|&b| b == b'\n')
        .map(|l| l.strip_suffix(b"\r").unwrap_or(l))
        .collect();
    if lines.last().is_some_and(|l| l.is_empty()) {
        lines.pop();
    }
    lines
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// EUR base, USD at 0.9 (shared with the tabular tests).
    pub(crate) fn cfg() -> DecoderConfig {
        let mut rates = HashMap::new();
        rates.insert("USD".to_string(), 0.9);
        DecoderConfig::new("EUR", rates, 1 << 20, 1e9).unwrap()
    }

    const GOOD: &str = r#"{"transaction_id":"t1","timestamp":"2026-01-02T03:04:05.678+01:00","card_id":"c1","amount":10.5,"currency":"usd","merchant_id":"m1","country":"fr","lat":48.8,"lon":2.3,"channel":"ECOM"}"#;

    #[test]
    fn decodes_a_good_event() {
        let d = decode_batch(&[GOOD.as_bytes()], &cfg());
        assert!(d.rejects.is_empty(), "{:?}", d.rejects);
        let c = &d.columns;
        assert_eq!(
            c.ts_ms[0],
            parse_iso8601_ms("2026-01-02T02:04:05.678Z").unwrap()
        );
        assert!((c.amount_base[0] - 9.45).abs() < 1e-12);
        assert_eq!(c.channel[0], 2);
        assert_eq!(c.country_code.get(0), Some("FR"));
        assert_eq!(c.currency.get(0), Some("USD"));
        assert_eq!(c.user[0], 0);
        assert_eq!(c.label[0], -1);
        assert_eq!(c.card[0], hash_id(b"c1"));
    }

    #[test]
    fn iso_parsing() {
        assert_eq!(parse_iso8601_ms("1970-01-01T00:00:00Z").unwrap(), 0);
        assert_eq!(
            parse_iso8601_ms("2000-03-01T00:00:00+00:00").unwrap(),
            951_868_800_000
        );
        assert_eq!(
            parse_iso8601_ms("2000-03-01T01:30:00+0130").unwrap(),
            951_868_800_000
        );
        assert_eq!(
            parse_iso8601_ms("2000-03-01 00:00:00.5Z").unwrap(),
            951_868_800_500
        );
        assert!(parse_iso8601_ms("2000-03-01T00:00:00").is_err());
        assert!(parse_iso8601_ms("2001-02-29T00:00:00Z").is_err());
        assert!(parse_iso8601_ms("garbage").is_err());
    }

    #[test]
    fn luhn() {
        assert!(looks_like_pan("4111111111111111"));
        assert!(looks_like_pan("4111-1111-1111-1111"));
        assert!(!looks_like_pan("4111111111111112"));
        assert!(!looks_like_pan("411111111111")); // 12 digits
        assert!(!looks_like_pan("card_4111111111111111"));
    }

    fn reason_of(p: &[u8]) -> Reason {
        let d = decode_batch(&[p], &cfg());
        assert_eq!(
            d.columns.len(),
            0,
            "accepted {:?}",
            String::from_utf8_lossy(p)
        );
        d.rejects[0].reason
    }

    #[test]
    fn rejects_with_reasons() {
        let good = GOOD.to_string();
        assert_eq!(reason_of(b""), Reason::EmptyMessage);
        assert_eq!(reason_of(b"{\"a\":"), Reason::InvalidJson);
        assert_eq!(reason_of(b"[1,2]"), Reason::NotAnObject);
        assert_eq!(reason_of(b"\xff\xfe"), Reason::InvalidUtf8);
        assert_eq!(
            reason_of(good.replace("10.5", "\"10.5\"").as_bytes()),
            Reason::WrongType
        );
        assert_eq!(
            reason_of(good.replace("10.5", "-1").as_bytes()),
            Reason::InvalidAmount
        );
        assert_eq!(
            reason_of(good.replace("\"usd\"", "\"XXX\"").as_bytes()),
            Reason::UnknownCurrency
        );
        assert_eq!(
            reason_of(good.replace("\"c1\"", "\"4111111111111111\"").as_bytes()),
            Reason::PanCardId
        );
        assert_eq!(
            reason_of(good.replace("\"merchant_id\":\"m1\",", "").as_bytes()),
            Reason::MissingField
        );
        assert_eq!(
            reason_of(good.replace("\"lon\":2.3,", "").as_bytes()),
            Reason::InvalidValue
        );
        assert_eq!(
            reason_of(good.replace("\"fr\"", "\"FRA\"").as_bytes()),
            Reason::InvalidValue
        );
        assert_eq!(
            reason_of(
                good.replace("\"2026-01-02T03:04:05.678+01:00\"", "1700000000")
                    .as_bytes()
            ),
            Reason::InvalidTimestamp
        );
        let big = format!("{{\"pad\":\"{}\"}}", "x".repeat(2 << 20));
        assert_eq!(reason_of(big.as_bytes()), Reason::TooLarge);
    }

    #[test]
    fn parallel_batches_keep_order() {
        let good = GOOD.to_string();
        let payloads: Vec<Vec<u8>> = (0..5000)
            .map(|i| {
                if i % 7 == 0 {
                    b"not json".to_vec()
                } else {
                    good.replace("\"t1\"", &format!("\"t{i}\"")).into_bytes()
                }
            })
            .collect();
        let d = decode_batch(&payloads, &cfg());
        assert_eq!(d.columns.len() + d.rejects.len(), 5000);
        assert!(d.columns.index.windows(2).all(|w| w[0] < w[1]));
        for (k, &i) in d.columns.index.iter().enumerate() {
            assert_eq!(
                d.columns.transaction_id.get(k),
                Some(format!("t{i}").as_str())
            );
        }
        assert!(d.rejects.iter().all(|r| r.index % 7 == 0));
    }

    #[test]
    fn config_errors() {
        assert!(DecoderConfig::new("EURO", HashMap::new(), 10, 1.0).is_err());
        let mut bad = HashMap::new();
        bad.insert("USD".into(), -1.0);
        assert!(DecoderConfig::new("EUR", bad, 10, 1.0).is_err());
    }

    #[test]
    fn split_lines_handles_crlf_and_trailing_newline() {
        let lines = split_lines(b"a\r\nb\n\nc\n");
        assert_eq!(lines, vec![&b"a"[..], &b"b"[..], &b""[..], &b"c"[..]]);
    }
}
