//! Validation of tabular history rows (Parquet, CSV) straight from typed Arrow columns.
//!
//! A history file read by DuckDB arrives as one typed column per contract field. Each row is
//! turned into the same raw event a JSON payload parses into and goes through the same
//! [`validate`] as a message from Kafka, so a file and a stream can never be judged by
//! different rules; only the JSON text in between is skipped. The columns borrow Arrow's
//! buffers (values, offsets, validity bitmaps): nothing is copied before validation.

use std::borrow::Cow;

use crate::decode::{
    in_chunks, push_event, validate, Columns, Decoded, DecoderConfig, Event, RawEvent, RawLabel,
    RawTs, Reason, Reject, Rejection,
};
use crate::error::{TxError, TxResult};

/// An Arrow validity bitmap (bit `offset + i` set = row `i` present); empty when no row is null.
#[derive(Debug, Clone, Copy)]
pub struct Validity<'a> {
    pub bitmap: &'a [u8],
    pub offset: usize,
}

impl Validity<'_> {
    /// Every row present.
    pub const ALL: Validity<'static> = Validity {
        bitmap: &[],
        offset: 0,
    };

    #[inline]
    fn get(&self, i: usize) -> bool {
        if self.bitmap.is_empty() {
            return true;
        }
        let bit = self.offset + i;
        self.bitmap[bit / 8] >> (bit % 8) & 1 == 1
    }

    fn check(&self, rows: usize, name: &str) -> TxResult<()> {
        if !self.bitmap.is_empty() && self.bitmap.len() * 8 < self.offset + rows {
            return Err(TxError::Input(format!(
                "validity bitmap of `{name}` covers fewer than {rows} rows"
            )));
        }
        Ok(())
    }
}

/// A nullable string column in Arrow's large-string layout (`rows + 1` offsets into `data`).
#[derive(Debug, Clone, Copy)]
pub struct StrInput<'a> {
    pub offsets: &'a [i64],
    pub data: &'a [u8],
    pub valid: Validity<'a>,
    /// Set by `check` when the bytes the rows span are valid UTF-8 (as Arrow promises): a
    /// row then only needs its two ends on character boundaries.
    pub utf8: bool,
}

/// True when `i` starts a character of a valid UTF-8 buffer (or is its end).
#[inline]
fn is_boundary(data: &[u8], i: usize) -> bool {
    data.get(i).is_none_or(|&b| (b as i8) >= -0x40)
}

impl<'a> StrInput<'a> {
    #[inline]
    fn get(&self, i: usize, name: &str) -> Result<Option<&'a str>, Rejection> {
        if !self.valid.get(i) {
            return Ok(None);
        }
        // Bounds were checked by `Table::check`.
        let (a, b) = (self.offsets[i] as usize, self.offsets[i + 1] as usize);
        let bytes = &self.data[a..b];
        if self.utf8 && is_boundary(self.data, a) && is_boundary(self.data, b) {
            // SAFETY: a slice of a valid UTF-8 buffer between two character boundaries is
            // valid UTF-8.
            return Ok(Some(unsafe { std::str::from_utf8_unchecked(bytes) }));
        }
        std::str::from_utf8(bytes).map(Some).map_err(|e| {
            (
                Reason::InvalidUtf8,
                format!("`{name}` is not valid UTF-8: {e}"),
            )
        })
    }

    fn check(&mut self, rows: usize, name: &str) -> TxResult<()> {
        self.valid.check(rows, name)?;
        if self.offsets.len() != rows + 1 {
            return Err(TxError::Input(format!(
                "`{name}` has {} offsets for {rows} rows",
                self.offsets.len()
            )));
        }
        let mut last = self.offsets[0];
        if last < 0 {
            return Err(TxError::Input(format!("`{name}` has a negative offset")));
        }
        for &o in &self.offsets[1..] {
            if o < last {
                return Err(TxError::Input(format!("`{name}` has decreasing offsets")));
            }
            last = o;
        }
        if last as usize > self.data.len() {
            return Err(TxError::Input(format!(
                "`{name}` offsets reach byte {last} of a {}-byte buffer",
                self.data.len()
            )));
        }
        // Only the bytes the rows use: a batch may be a slice of a larger buffer.
        let first = self.offsets[0] as usize;
        self.utf8 = std::str::from_utf8(&self.data[first..last as usize]).is_ok();
        Ok(())
    }
}

/// A nullable numeric column (values at null rows are ignored).
#[derive(Debug, Clone, Copy)]
pub struct NumInput<'a, T> {
    pub values: &'a [T],
    pub valid: Validity<'a>,
}

impl<T: Copy> NumInput<'_, T> {
    #[inline]
    fn get(&self, i: usize) -> Option<T> {
        self.valid.get(i).then(|| self.values[i])
    }

    fn check(&self, rows: usize, name: &str) -> TxResult<()> {
        self.valid.check(rows, name)?;
        if self.values.len() < rows {
            return Err(TxError::Input(format!(
                "`{name}` has {} values for {rows} rows",
                self.values.len()
            )));
        }
        Ok(())
    }
}

/// One batch of a history file, one column per contract field.
///
/// The timestamp comes as two columns: `timestamp_ms` (epoch milliseconds, from a timestamp
/// or numeric column, or a text column the reader could parse) and `timestamp_text` (the
/// original text, used when `timestamp_ms` is null: the decoder then parses it or rejects the
/// row with the text in its message). `unreadable` names the values the reader found but
/// could not read as their field's type (say `amount: "12,50"`); such a row is rejected as
/// `wrong_type`, as the same value sent as JSON text would be, never read as absent.
#[derive(Debug, Clone, Copy)]
pub struct Table<'a> {
    pub rows: usize,
    pub transaction_id: StrInput<'a>,
    pub timestamp_ms: NumInput<'a, f64>,
    pub timestamp_text: StrInput<'a>,
    pub card_id: StrInput<'a>,
    pub user_id: StrInput<'a>,
    pub amount: NumInput<'a, f64>,
    pub currency: StrInput<'a>,
    pub merchant_id: StrInput<'a>,
    pub merchant_category: StrInput<'a>,
    pub country: StrInput<'a>,
    pub lat: NumInput<'a, f64>,
    pub lon: NumInput<'a, f64>,
    pub channel: StrInput<'a>,
    pub device_id: StrInput<'a>,
    pub label: NumInput<'a, i64>,
    pub unreadable: StrInput<'a>,
}

impl<'a> Table<'a> {
    /// Check every column's shape and offsets (so that reading rows cannot go out of bounds).
    pub fn check(&mut self) -> TxResult<()> {
        let n = self.rows;
        for (name, c) in [
            ("transaction_id", &mut self.transaction_id),
            ("timestamp_text", &mut self.timestamp_text),
            ("card_id", &mut self.card_id),
            ("user_id", &mut self.user_id),
            ("currency", &mut self.currency),
            ("merchant_id", &mut self.merchant_id),
            ("merchant_category", &mut self.merchant_category),
            ("country", &mut self.country),
            ("channel", &mut self.channel),
            ("device_id", &mut self.device_id),
            ("unreadable", &mut self.unreadable),
        ] {
            c.check(n, name)?;
        }
        for (name, c) in [
            ("timestamp_ms", &self.timestamp_ms),
            ("amount", &self.amount),
            ("lat", &self.lat),
            ("lon", &self.lon),
        ] {
            c.check(n, name)?;
        }
        self.label.check(n, "label")
    }

    fn row(&self, i: usize, cfg: &DecoderConfig) -> Result<Event<'a>, Rejection> {
        if let Some(what) = self.unreadable.get(i, "unreadable")? {
            if !what.is_empty() {
                return Err((
                    Reason::WrongType,
                    format!("value of the wrong type: {what}"),
                ));
            }
        }
        let text = |c: &StrInput<'a>, name| c.get(i, name).map(|v| v.map(Cow::Borrowed));
        let timestamp = match self.timestamp_ms.get(i) {
            Some(ms) => Some(RawTs::Millis(ms)),
            None => self
                .timestamp_text
                .get(i, "timestamp")?
                .map(|t| RawTs::Text(Cow::Borrowed(t))),
        };
        let raw = RawEvent {
            transaction_id: text(&self.transaction_id, "transaction_id")?,
            timestamp,
            card_id: text(&self.card_id, "card_id")?,
            user_id: text(&self.user_id, "user_id")?,
            amount: self.amount.get(i),
            currency: text(&self.currency, "currency")?,
            merchant_id: text(&self.merchant_id, "merchant_id")?,
            merchant_category: text(&self.merchant_category, "merchant_category")?,
            country: text(&self.country, "country")?,
            lat: self.lat.get(i),
            lon: self.lon.get(i),
            channel: text(&self.channel, "channel")?,
            device_id: text(&self.device_id, "device_id")?,
            label: self.label.get(i).map(RawLabel),
        };
        validate(raw, cfg)
    }

    fn decode_rows(
        &self,
        rows: std::ops::Range<usize>,
        cfg: &DecoderConfig,
        ids_only: bool,
    ) -> Decoded {
        let mut out = Decoded {
            columns: Columns::with_capacity(rows.len(), ids_only),
            rejects: Vec::new(),
        };
        for i in rows {
            match self.row(i, cfg) {
                Ok(e) => push_event(&mut out.columns, i as u32, &e),
                Err((reason, message)) => out.rejects.push(Reject {
                    index: i as u32,
                    reason,
                    message,
                }),
            }
        }
        out
    }
}

/// Validate every row of `table` (in parallel chunks; the output keeps row order).
///
/// With `ids_only`, `transaction_id` is the only string column of the output (see
/// [`Columns::ids_only`]).
pub fn decode_table(table: &Table<'_>, cfg: &DecoderConfig, ids_only: bool) -> TxResult<Decoded> {
    let mut table = *table;
    table.check()?;
    Ok(in_chunks(table.rows, |rows| {
        table.decode_rows(rows, cfg, ids_only)
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decode::tests::cfg;
    use crate::decode::{decode_batch, parse_iso8601_ms};

    /// Owned columns for a test table.
    struct Strs {
        offsets: Vec<i64>,
        data: Vec<u8>,
        bitmap: Vec<u8>,
    }

    fn strs(values: &[Option<&str>]) -> Strs {
        let mut s = Strs {
            offsets: vec![0],
            data: Vec::new(),
            bitmap: vec![0; values.len().div_ceil(8)],
        };
        for (i, v) in values.iter().enumerate() {
            if let Some(v) = v {
                s.data.extend_from_slice(v.as_bytes());
                s.bitmap[i / 8] |= 1 << (i % 8);
            }
            s.offsets.push(s.data.len() as i64);
        }
        s
    }

    fn input(s: &Strs) -> StrInput<'_> {
        StrInput {
            offsets: &s.offsets,
            data: &s.data,
            valid: Validity {
                bitmap: &s.bitmap,
                offset: 0,
            },
            utf8: false,
        }
    }

    fn nums<T: Copy + Default>(values: &[Option<T>]) -> (Vec<T>, Vec<u8>) {
        let mut bitmap = vec![0u8; values.len().div_ceil(8)];
        for (i, v) in values.iter().enumerate() {
            if v.is_some() {
                bitmap[i / 8] |= 1 << (i % 8);
            }
        }
        (
            values.iter().map(|v| v.unwrap_or_default()).collect(),
            bitmap,
        )
    }

    fn num<'a, T>(v: &'a (Vec<T>, Vec<u8>)) -> NumInput<'a, T> {
        NumInput {
            values: &v.0,
            valid: Validity {
                bitmap: &v.1,
                offset: 0,
            },
        }
    }

    /// id, timestamp ms, timestamp text, card, amount.
    type Row = (
        Option<&'static str>,
        Option<f64>,
        Option<&'static str>,
        Option<&'static str>,
        Option<f64>,
    );

    /// The same rows as JSON payloads and as columns give the same columns and rejects.
    #[test]
    fn rows_are_judged_like_json_payloads() {
        let ts = 1_767_225_600_000.0; // 2026-01-01
        let rows: Vec<Row> = vec![
            (Some("t0"), Some(ts), None, Some("c1"), Some(10.0)),
            (
                Some("t1"),
                None,
                Some("2026-01-02T03:04:05.678+01:00"),
                Some("c2"),
                Some(5.5),
            ),
            (Some("t2"), None, Some("yesterday"), Some("c1"), Some(3.0)),
            (None, Some(ts), None, Some("c1"), Some(3.0)),
            (
                Some("t4"),
                Some(ts),
                None,
                Some("4111111111111111"),
                Some(3.0),
            ),
            (Some("t5"), Some(ts + 0.5), None, Some("c1"), Some(3.0)),
            (Some("t6"), Some(ts), None, Some("c1"), None),
            (Some("t7"), Some(ts), None, Some("c1"), Some(-1.0)),
            (Some("t8"), Some(1.7e9), None, Some("c1"), Some(1.0)),
            (Some("t9"), Some(ts), None, Some("c1"), None), // amount "12,50": unreadable
        ];
        let n = rows.len();
        let id = strs(&rows.iter().map(|r| r.0).collect::<Vec<_>>());
        let tms = nums(&rows.iter().map(|r| r.1).collect::<Vec<_>>());
        let ttext = strs(&rows.iter().map(|r| r.2).collect::<Vec<_>>());
        let card = strs(&rows.iter().map(|r| r.3).collect::<Vec<_>>());
        let amount = nums(&rows.iter().map(|r| r.4).collect::<Vec<_>>());
        let currency = strs(&vec![Some("usd"); n]);
        let merchant = strs(&vec![Some("m1"); n]);
        let country = strs(&vec![Some("fr"); n]);
        let channel = strs(&vec![Some("ECOM"); n]);
        let null_strs = strs(&vec![None; n]);
        let mut unread = vec![None; n];
        unread[n - 1] = Some("amount: \"12,50\"");
        let unreadable = strs(&unread);
        let null_nums = nums::<f64>(&vec![None; n]);
        let labels = nums(
            &(0..n)
                .map(|i| (i % 2 == 0).then_some(1i64))
                .collect::<Vec<_>>(),
        );
        let table = Table {
            rows: n,
            transaction_id: input(&id),
            timestamp_ms: num(&tms),
            timestamp_text: input(&ttext),
            card_id: input(&card),
            user_id: input(&null_strs),
            amount: num(&amount),
            currency: input(&currency),
            merchant_id: input(&merchant),
            merchant_category: input(&null_strs),
            country: input(&country),
            lat: num(&null_nums),
            lon: num(&null_nums),
            channel: input(&channel),
            device_id: input(&null_strs),
            label: num(&labels),
            unreadable: input(&unreadable),
        };
        let got = decode_table(&table, &cfg(), false).unwrap();
        let ids = decode_table(&table, &cfg(), true).unwrap();
        assert_eq!(ids.columns.card, got.columns.card);
        assert_eq!(
            ids.columns.transaction_id.data,
            got.columns.transaction_id.data
        );
        assert!(ids.columns.card_id.valid.is_empty() && ids.columns.ids_only);
        let payloads: Vec<String> = rows
            .iter()
            .enumerate()
            .map(|(i, r)| {
                let mut doc = serde_json::Map::new();
                if let Some(v) = r.0 {
                    doc.insert("transaction_id".into(), v.into());
                }
                match (r.1, r.2) {
                    (Some(ms), _) => {
                        doc.insert("timestamp".into(), ms.into());
                    }
                    (None, Some(t)) => {
                        doc.insert("timestamp".into(), t.into());
                    }
                    _ => {}
                }
                doc.insert("card_id".into(), r.3.unwrap().into());
                if let Some(a) = r.4 {
                    doc.insert("amount".into(), a.into());
                }
                if r.0 == Some("t9") {
                    doc.insert("amount".into(), "12,50".into());
                }
                for (k, v) in [
                    ("currency", "usd"),
                    ("merchant_id", "m1"),
                    ("country", "fr"),
                ] {
                    doc.insert(k.into(), v.into());
                }
                doc.insert("channel".into(), "ECOM".into());
                if i % 2 == 0 {
                    doc.insert("label".into(), 1.into());
                }
                serde_json::Value::Object(doc).to_string()
            })
            .collect();
        let want = decode_batch(&payloads, &cfg());
        let judged = |d: &Decoded| -> Vec<(u32, Reason)> {
            d.rejects.iter().map(|r| (r.index, r.reason)).collect()
        };
        assert_eq!(judged(&got), judged(&want));
        assert_eq!(got.rejects[..7], want.rejects[..7]); // same messages too
        assert!(
            got.rejects[7].message.contains("12,50"),
            "{}",
            got.rejects[7].message
        );
        let (g, w) = (&got.columns, &want.columns);
        assert_eq!(g.index, vec![0, 1]);
        assert_eq!(g.index, w.index);
        assert_eq!(g.ts_ms, w.ts_ms);
        assert_eq!(
            g.ts_ms[1],
            parse_iso8601_ms("2026-01-02T02:04:05.678Z").unwrap()
        );
        assert_eq!(g.amount_base, w.amount_base);
        assert_eq!(g.card, w.card);
        assert_eq!(g.channel, w.channel);
        assert_eq!(g.label, w.label);
        assert_eq!(g.country, w.country);
        assert_eq!(g.currency.data, w.currency.data);
        let reasons: Vec<&str> = got.rejects.iter().map(|r| r.reason.code()).collect();
        assert_eq!(
            reasons,
            [
                "invalid_timestamp",
                "missing_field",
                "pan_card_id",
                "invalid_timestamp",
                "missing_field",
                "invalid_amount",
                "invalid_timestamp",
                "wrong_type"
            ]
        );
    }

    #[test]
    fn bad_buffers_are_errors_not_panics() {
        let data = b"ab";
        let col = |offsets: &'static [i64]| StrInput {
            offsets,
            data,
            valid: Validity::ALL,
            utf8: false,
        };
        assert!(col(&[0, 1, 2]).check(2, "x").is_ok());
        assert!(col(&[0, 1, 9]).check(2, "x").is_err()); // past the buffer
        assert!(col(&[0, 2, 1]).check(2, "x").is_err()); // decreasing
        assert!(col(&[0, 1]).check(2, "x").is_err()); // too few offsets
        let short = NumInput {
            values: &[1.0f64],
            valid: Validity::ALL,
        };
        assert!(short.check(2, "amount").is_err());
        let bits = Validity {
            bitmap: &[0xff],
            offset: 4,
        };
        assert!(bits.check(4, "lat").is_ok());
        assert!(bits.check(5, "lat").is_err());
    }

    #[test]
    fn invalid_utf8_in_a_column_is_a_reject() {
        let mut s = StrInput {
            offsets: &[0, 2, 4, 6],
            data: "ab\u{e9}cd".as_bytes(), // é is two bytes: rows "ab", "\u{e9}", "cd"
            valid: Validity::ALL,
            utf8: false,
        };
        s.check(3, "card_id").unwrap();
        assert!(s.utf8);
        assert_eq!(s.get(1, "card_id").unwrap(), Some("\u{e9}"));
        s.offsets = &[0, 3, 4, 6]; // splits é: both rows are invalid
        assert_eq!(s.get(0, "card_id").unwrap_err().0, Reason::InvalidUtf8);
        assert_eq!(s.get(1, "card_id").unwrap_err().0, Reason::InvalidUtf8);
        s.offsets = &[0, 2, 4, 6];
        s.data = b"ab\xff\xfecd";
        s.check(3, "card_id").unwrap();
        assert!(!s.utf8);
        assert_eq!(s.get(0, "card_id").unwrap(), Some("ab"));
        assert_eq!(s.get(1, "card_id").unwrap_err().0, Reason::InvalidUtf8);
    }
}
