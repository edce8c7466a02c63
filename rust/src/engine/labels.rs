//! Label state (`merchant_fraud_labels_<W>`, `merchant_fraud_rate_<W>`,
//! `card_fraud_labels_<W>`; see docs/features.md, "Label features").
//!
//! A label event says that a transaction of card `c` at merchant `m` was fraud (1) or
//! legitimate (0), and carries the time `known_ms` at which the label became known. Labels
//! are kept per merchant and per card as sorted deques of known times (all labels and fraud
//! labels for merchants, fraud labels only for cards). A transaction at `t` counts the labels
//! with `known_ms` in `(t − W, t]`: two binary searches per deque and window. Transactions
//! never change label state, so the label columns of a batch are read-only queries computed
//! in parallel; only [`LabelState::add`] and [`LabelState::evict`] write.

use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasherDefault, Hasher};

use crate::engine::snapshot::{Reader, Writer};
use crate::engine::store::{heap_bytes, key_hash};
use crate::error::{TxError, TxResult};

/// Hasher of already well-mixed `u64` entity keys (one `mix64`).
#[derive(Default)]
pub(crate) struct KeyHasher(u64);

impl Hasher for KeyHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = key_hash(self.0 ^ u64::from(b));
        }
    }
    fn write_u64(&mut self, v: u64) {
        self.0 = key_hash(v);
    }
}

type KeyMap<V> = HashMap<u64, V, BuildHasherDefault<KeyHasher>>;

/// Number of `known_ms` values of a sorted deque that are `<= x`.
#[inline]
fn at_or_before(v: &VecDeque<i64>, x: i64) -> usize {
    let (a, b) = v.as_slices();
    match a.last() {
        Some(&last) if last <= x => a.len() + count_le(b, x),
        _ => count_le(a, x),
    }
}

/// Number of values `<= x` of a sorted slice. Known times are spread fairly evenly over
/// time, so the answer is first guessed by interpolation, then bracketed by a gallop from the
/// guess and found by a binary search inside the bracket. A plain binary search over a busy
/// merchant's thousands of labels took a cache miss at nearly every halving; the label
/// columns of a long history were a quarter of its replay.
fn count_le(s: &[i64], x: i64) -> usize {
    let n = s.len();
    if n == 0 || s[0] > x {
        return 0;
    }
    if s[n - 1] <= x {
        return n;
    }
    // s[0] <= x < s[n - 1]: the answer is in 1..n, and n >= 2.
    let span = (i128::from(s[n - 1]) - i128::from(s[0])) as u128;
    let offset = (i128::from(x) - i128::from(s[0])) as u128;
    // In 1..=n - 1.
    let guess = 1 + (offset * (n as u128 - 2) / span) as usize;
    // Bracket: s[lo] <= x < s[hi].
    let (lo, hi) = if s[guess] <= x {
        let (mut lo, mut step) = (guess, 1);
        loop {
            let next = lo + step;
            if next >= n - 1 {
                break (lo, n - 1);
            }
            if s[next] > x {
                break (lo, next);
            }
            lo = next;
            step *= 2;
        }
    } else {
        let (mut hi, mut step) = (guess, 1);
        loop {
            if hi <= step {
                break (0, hi);
            }
            let next = hi - step;
            if s[next] <= x {
                break (next, hi);
            }
            hi = next;
            step *= 2;
        }
    };
    lo + 1 + s[lo + 1..hi].partition_point(|&k| k <= x)
}

/// Number of values of a sorted deque in `(t − w, t]`.
#[inline]
pub(crate) fn count_in_window(v: &VecDeque<i64>, t: i64, w: i64) -> usize {
    at_or_before(v, t) - at_or_before(v, t.saturating_sub(w))
}

/// Insert `k` into a sorted deque (after equal values).
#[inline]
fn insert_sorted(v: &mut VecDeque<i64>, k: i64) {
    if v.back().is_none_or(|&b| b <= k) {
        v.push_back(k);
    } else {
        let at = at_or_before(v, k);
        v.insert(at, k);
    }
}

/// Drop the values `<= cutoff` from the front of a sorted deque.
#[inline]
fn prune(v: &mut VecDeque<i64>, cutoff: i64) {
    while v.front().is_some_and(|&k| k <= cutoff) {
        v.pop_front();
    }
}

fn deque_bytes(v: &VecDeque<i64>) -> usize {
    heap_bytes(v.capacity() * 8)
}

/// Labels of one entity: known times of all its labels (merchants only) and of its fraud
/// labels, each sorted ascending.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct LabelTimes {
    all: VecDeque<i64>,
    fraud: VecDeque<i64>,
}

impl LabelTimes {
    fn is_empty(&self) -> bool {
        self.all.is_empty() && self.fraud.is_empty()
    }

    fn len(&self) -> usize {
        self.all.len().max(self.fraud.len())
    }

    fn prune(&mut self, cutoff: i64) {
        prune(&mut self.all, cutoff);
        prune(&mut self.fraud, cutoff);
    }

    fn heap_bytes(&self) -> usize {
        deque_bytes(&self.all) + deque_bytes(&self.fraud)
    }

    fn write_to(&self, key: u64, w: &mut Writer) {
        w.u64(key);
        for v in [&self.all, &self.fraud] {
            w.u32(v.len() as u32);
            for &k in v {
                w.i64(k);
            }
        }
    }

    fn read_from(r: &mut Reader<'_>, kind: &str) -> TxResult<(u64, Self)> {
        let key = r.u64()?;
        let read = |r: &mut Reader<'_>| -> TxResult<VecDeque<i64>> {
            let n = r.u32()? as usize;
            if n.saturating_mul(8) > r.remaining() {
                return Err(TxError::Snapshot("truncated data".into()));
            }
            let v: VecDeque<i64> = r.u64_vec(n)?.into_iter().map(|x| x as i64).collect();
            if !v.iter().zip(v.iter().skip(1)).all(|(a, b)| a <= b) {
                return Err(TxError::Snapshot(format!(
                    "{kind} labels {key}: known times not sorted"
                )));
            }
            Ok(v)
        };
        let all = read(r)?;
        let fraud = read(r)?;
        let e = LabelTimes { all, fraud };
        if e.is_empty() || (kind == "card" && !e.all.is_empty()) {
            return Err(TxError::Snapshot(format!("{kind} labels {key}: bad entry")));
        }
        Ok((key, e))
    }
}

/// Label windows (column order) and retention.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct LabelParams {
    pub merchant_windows: Vec<i64>,
    pub card_windows: Vec<i64>,
    pub lateness: i64,
}

impl LabelParams {
    /// Number of label columns: count and rate per merchant window, count per card window.
    pub(crate) fn columns(&self) -> usize {
        2 * self.merchant_windows.len() + self.card_windows.len()
    }

    pub(crate) fn enabled(&self) -> bool {
        self.columns() > 0
    }

    fn merchant_retention(&self) -> Option<i64> {
        self.merchant_windows
            .iter()
            .max()
            .map(|w| w + self.lateness)
    }

    fn card_retention(&self) -> Option<i64> {
        self.card_windows.iter().max().map(|w| w + self.lateness)
    }
}

/// One batch of label events, all of the same length.
#[derive(Debug, Clone, Copy)]
pub struct LabelColumns<'a> {
    /// Time at which each label became known, epoch milliseconds UTC.
    pub known_ms: &'a [i64],
    /// `hash_id(card_id)` of the labelled transaction, 0 when unknown.
    pub card: &'a [u64],
    /// `hash_id(merchant_id)` of the labelled transaction, 0 when unknown.
    pub merchant: &'a [u64],
    /// 1 fraud, 0 legitimate.
    pub label: &'a [u8],
}

impl LabelColumns<'_> {
    /// Number of rows; an input error if the columns differ in length or a label is not 0/1.
    pub fn validate(&self) -> TxResult<usize> {
        let n = self.known_ms.len();
        for (name, len) in [
            ("card", self.card.len()),
            ("merchant", self.merchant.len()),
            ("label", self.label.len()),
        ] {
            if len != n {
                return Err(TxError::Input(format!(
                    "column {name} has {len} rows, known_ms has {n}"
                )));
            }
        }
        if let Some(i) = self.label.iter().position(|&l| l > 1) {
            return Err(TxError::Input(format!(
                "row {i}: label must be 0 or 1, got {}",
                self.label[i]
            )));
        }
        Ok(n)
    }
}

/// Label state of every merchant and card.
#[derive(Debug, Default)]
pub(crate) struct LabelState {
    merchants: KeyMap<LabelTimes>,
    cards: KeyMap<LabelTimes>,
}

/// Counts and memory of the label state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct LabelStats {
    pub entities: usize,
    pub labels: usize,
    pub bytes: usize,
}

impl LabelState {
    /// Add label events in order. `newest` is the largest transaction time processed so far:
    /// each touched entity then drops its labels with `known_ms <= newest − W_max − L` (of
    /// its kind), the new one included. Kinds without windows keep nothing.
    pub(crate) fn add(&mut self, cols: &LabelColumns<'_>, p: &LabelParams, newest: Option<i64>) {
        let m_ret = p.merchant_retention();
        let c_ret = p.card_retention();
        for i in 0..cols.known_ms.len() {
            let k = cols.known_ms[i];
            let fraud = cols.label[i] == 1;
            if let (Some(ret), m) = (m_ret, cols.merchant[i]) {
                if m != 0 {
                    let e = self.merchants.entry(m).or_default();
                    insert_sorted(&mut e.all, k);
                    if fraud {
                        insert_sorted(&mut e.fraud, k);
                    }
                    if let Some(n) = newest {
                        e.prune(n.saturating_sub(ret));
                    }
                    if e.is_empty() {
                        self.merchants.remove(&m);
                    }
                }
            }
            if let (Some(ret), c) = (c_ret, cols.card[i]) {
                if c != 0 && fraud {
                    let e = self.cards.entry(c).or_default();
                    insert_sorted(&mut e.fraud, k);
                    if let Some(n) = newest {
                        e.prune(n.saturating_sub(ret));
                    }
                    if e.is_empty() {
                        self.cards.remove(&c);
                    }
                }
            }
        }
    }

    /// Label columns of a transaction at `t` of `card` at `merchant`, written to `out`
    /// (`p.columns()` values): merchant fraud counts, merchant fraud rates, card fraud counts.
    pub(crate) fn features(
        &self,
        t: i64,
        card: u64,
        merchant: u64,
        p: &LabelParams,
        out: &mut [f32],
    ) {
        let nm = p.merchant_windows.len();
        let m = self.merchants.get(&merchant);
        for (j, &w) in p.merchant_windows.iter().enumerate() {
            let (fraud, all) = match m {
                Some(e) => (
                    count_in_window(&e.fraud, t, w),
                    count_in_window(&e.all, t, w),
                ),
                None => (0, 0),
            };
            out[j] = fraud as f32;
            out[nm + j] = if all == 0 {
                -1.0
            } else {
                (fraud as f64 / all as f64) as f32
            };
        }
        let c = self.cards.get(&card);
        for (j, &w) in p.card_windows.iter().enumerate() {
            out[2 * nm + j] = c.map_or(0, |e| count_in_window(&e.fraud, t, w)) as f32;
        }
    }

    /// Drop every label with `known_ms < watermark − TTL` (TTL of its kind, `ttl(W_max)`);
    /// returns how many entities were left without labels and dropped.
    pub(crate) fn evict(
        &mut self,
        watermark: i64,
        p: &LabelParams,
        ttl: impl Fn(i64) -> i64,
    ) -> usize {
        let mut dropped = 0;
        for (map, windows) in [
            (&mut self.merchants, &p.merchant_windows),
            (&mut self.cards, &p.card_windows),
        ] {
            let Some(&w_max) = windows.iter().max() else {
                continue;
            };
            // Labels with known_ms < before are dropped: known_ms <= before − 1.
            let before = watermark.saturating_sub(ttl(w_max));
            let n = map.len();
            map.retain(|_, e| {
                e.prune(before.saturating_sub(1));
                !e.is_empty()
            });
            dropped += n - map.len();
        }
        dropped
    }

    pub(crate) fn stats(&self) -> LabelStats {
        let mut s = LabelStats::default();
        for map in [&self.merchants, &self.cards] {
            s.entities += map.len();
            s.bytes += heap_bytes(map.capacity() * (std::mem::size_of::<(u64, LabelTimes)>() + 1));
            for e in map.values() {
                s.labels += e.len();
                s.bytes += e.heap_bytes();
            }
        }
        s
    }

    /// Serialise: per kind (merchants, then cards) `u64 n`, then per entity `u64 key`,
    /// `u32 n_all`, `n_all × i64`, `u32 n_fraud`, `n_fraud × i64`, sorted by key.
    pub(crate) fn write_to(&self, w: &mut Writer) {
        for map in [&self.merchants, &self.cards] {
            let mut keys: Vec<u64> = map.keys().copied().collect();
            keys.sort_unstable();
            w.u64(keys.len() as u64);
            for k in keys {
                map[&k].write_to(k, w);
            }
        }
    }

    pub(crate) fn read_from(r: &mut Reader<'_>) -> TxResult<Self> {
        let mut s = LabelState::default();
        for (map, kind) in [(&mut s.merchants, "merchant"), (&mut s.cards, "card")] {
            let n = r.count(16)?;
            for _ in 0..n {
                let (key, e) = LabelTimes::read_from(r, kind)?;
                if key == 0 || map.insert(key, e).is_some() {
                    return Err(TxError::Snapshot(format!("duplicate or zero {kind} key")));
                }
            }
        }
        Ok(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: i64 = 86_400_000;

    fn params() -> LabelParams {
        LabelParams {
            merchant_windows: vec![7 * DAY, 30 * DAY],
            card_windows: vec![30 * DAY],
            lateness: 3_600_000,
        }
    }

    fn add(s: &mut LabelState, known: i64, card: u64, merchant: u64, label: u8) {
        let cols = LabelColumns {
            known_ms: &[known],
            card: &[card],
            merchant: &[merchant],
            label: &[label],
        };
        cols.validate().unwrap();
        s.add(&cols, &params(), None);
    }

    fn row(s: &LabelState, t: i64, card: u64, merchant: u64) -> Vec<f32> {
        let mut out = vec![0.0; params().columns()];
        s.features(t, card, merchant, &params(), &mut out);
        out
    }

    #[test]
    fn count_le_agrees_with_a_binary_search() {
        // Sorted slices of every shape: even, clustered, duplicated, extreme values.
        let mut seed = 0x9E37_79B9_7F4A_7C15u64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for case in 0..2000 {
            let n = (next() % 70) as usize;
            let mut v: Vec<i64> = (0..n)
                .map(|_| match case % 4 {
                    0 => (next() % 1000) as i64,
                    1 => (next() % 5) as i64 * 1_000_000 + (next() % 3) as i64,
                    2 => ((next() % 1000) as i64).pow(3),
                    _ => [i64::MIN, -1, 0, 1, i64::MAX][(next() % 5) as usize],
                })
                .collect();
            v.sort_unstable();
            let mut probes: Vec<i64> = v
                .iter()
                .flat_map(|&k| [k.saturating_sub(1), k, k.saturating_add(1)])
                .collect();
            probes.extend([i64::MIN, i64::MAX, 0, (next() % 2000) as i64 - 500]);
            for x in probes {
                let expected = v.partition_point(|&k| k <= x);
                assert_eq!(count_le(&v, x), expected, "{v:?} <= {x}");
                // The same through a wrapped deque.
                // Head moved near the end of the buffer: the values wrap around it.
                let mut d: VecDeque<i64> = VecDeque::with_capacity(v.len() + 8);
                for _ in 0..d.capacity().saturating_sub(case % 7 + 1) {
                    d.push_back(i64::MIN);
                    d.pop_front();
                }
                d.extend(v.iter().copied());
                if v.len() > case % 7 + 1 {
                    assert!(!d.as_slices().1.is_empty(), "the deque wraps");
                }
                assert_eq!(at_or_before(&d, x), expected, "{v:?} <= {x}, deque");
            }
        }
    }

    #[test]
    fn window_is_half_open_on_known_time() {
        let t = 1_700_000_000_000;
        let mut s = LabelState::default();
        add(&mut s, t, 7, 9, 1);
        // Known exactly at t counts; a transaction one ms earlier does not see it.
        assert_eq!(row(&s, t, 7, 9), vec![1.0, 1.0, 1.0, 1.0, 1.0]);
        assert_eq!(row(&s, t - 1, 7, 9), vec![0.0, 0.0, -1.0, -1.0, 0.0]);
        // Still inside at t + W − 1 ms, gone at t + W (window (t' − W, t']).
        assert_eq!(row(&s, t + 7 * DAY - 1, 7, 9)[0], 1.0);
        assert_eq!(row(&s, t + 7 * DAY, 7, 9), vec![0.0, 1.0, -1.0, 1.0, 1.0]);
        assert_eq!(row(&s, t + 30 * DAY, 7, 9), vec![0.0, 0.0, -1.0, -1.0, 0.0]);
    }

    #[test]
    fn label_known_after_t_is_never_counted() {
        let t = 1_700_000_000_000;
        let mut s = LabelState::default();
        add(&mut s, t + 1, 7, 9, 1);
        add(&mut s, t + 1, 7, 9, 0);
        assert_eq!(row(&s, t, 7, 9), vec![0.0, 0.0, -1.0, -1.0, 0.0]);
        assert_eq!(row(&s, t + 1, 7, 9), vec![1.0, 1.0, 0.5, 0.5, 1.0]);
    }

    #[test]
    fn rates_counts_and_out_of_order_inserts() {
        let t = 1_700_000_000_000;
        let mut s = LabelState::default();
        for (k, l) in [
            (t - DAY, 0),
            (t - 10 * DAY, 1),
            (t - 2 * DAY, 1),
            (t - 3 * DAY, 0),
        ] {
            add(&mut s, k, 7, 9, l);
        }
        // 7d: labels at t−1d (0), t−2d (1), t−3d (0): 1 fraud of 3. 30d: 2 of 4.
        let r = row(&s, t, 7, 9);
        assert_eq!(r, vec![1.0, 2.0, (1.0f64 / 3.0) as f32, 0.5, 2.0]);
        // Other card, other merchant: nothing.
        assert_eq!(row(&s, t, 8, 10), vec![0.0, 0.0, -1.0, -1.0, 0.0]);
        // Zero keys are not stored.
        add(&mut s, t, 0, 0, 1);
        assert_eq!(s.stats().entities, 2);
    }

    #[test]
    fn retention_and_eviction() {
        let t = 1_700_000_000_000;
        let p = params();
        let mut s = LabelState::default();
        add(&mut s, t - 40 * DAY, 7, 9, 1);
        add(&mut s, t, 7, 9, 1);
        // Adding with newest = t prunes known <= t − 30d − 1h, the new label kept.
        let cols = LabelColumns {
            known_ms: &[t + DAY],
            card: &[7],
            merchant: &[9],
            label: &[0],
        };
        s.add(&cols, &p, Some(t));
        assert_eq!(s.stats().labels, 2 + 2);
        // A label already out of retention is dropped at once.
        let cols = LabelColumns {
            known_ms: &[t - 31 * DAY],
            card: &[5],
            merchant: &[6],
            label: &[1],
        };
        s.add(&cols, &p, Some(t));
        assert_eq!(s.stats().entities, 2);
        let ttl = |w: i64| w + p.lateness;
        assert_eq!(s.evict(t + 30 * DAY + p.lateness, &p, ttl), 0);
        assert_eq!(s.evict(t + DAY + 30 * DAY + p.lateness + 1, &p, ttl), 2);
        assert_eq!(s.stats(), LabelStats::default().with_bytes(s.stats().bytes));
    }

    impl LabelStats {
        fn with_bytes(mut self, bytes: usize) -> Self {
            self.bytes = bytes;
            self
        }
    }

    #[test]
    fn snapshot_round_trip() {
        let t = 1_700_000_000_000;
        let mut s = LabelState::default();
        add(&mut s, t, 7, 9, 1);
        add(&mut s, t - 5, 8, 9, 0);
        let mut w = Writer::default();
        s.write_to(&mut w);
        let mut r = Reader::new(&w.buf);
        let back = LabelState::read_from(&mut r).unwrap();
        assert!(r.is_at_end());
        assert_eq!(back.merchants, s.merchants);
        assert_eq!(back.cards, s.cards);
        assert!(LabelState::read_from(&mut Reader::new(&w.buf[..w.buf.len() - 1])).is_err());
    }

    #[test]
    fn bad_label_columns_are_refused() {
        let cols = LabelColumns {
            known_ms: &[1],
            card: &[1],
            merchant: &[1, 2],
            label: &[1],
        };
        assert!(matches!(cols.validate(), Err(TxError::Input(_))));
        let cols = LabelColumns {
            known_ms: &[1],
            card: &[1],
            merchant: &[1],
            label: &[2],
        };
        assert!(matches!(cols.validate(), Err(TxError::Input(_))));
    }
}
