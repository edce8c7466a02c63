//! Card state and the card columns.
//!
//! # State layout
//!
//! A card is 48 bytes in its shard's slab (key, last location as two `f64` plus its event
//! time, and one boxed buffer of `u64` words):
//!
//! ```text
//! word 0         header: n_records (bits 0..32) | n_combos (32..56) | code bits k (56..64)
//! word 1         base: event time of the first retained event (i64)
//! 3 words each   combos: (merchant, category, country) combinations used by retained events
//! 1 word each    records, in ascending (ts, arrival) order:
//!                  bits 0..32   amount as f32 bits
//!                  bits 32..32+k  combo index, or all ones for a spacer
//!                  bits 32+k..64  delta: ms since the previous record
//! ```
//!
//! A spacer advances time without being an event: its delta is `(high bits << 32) | low 32
//! bits`. Spacers are only written when a gap does not fit the `32 - k` delta bits (about six
//! days with up to three combos, 37 hours with up to 31). `k` is the smallest width for the
//! number of combos plus the spacer code, and combos no retained event uses are dropped, so a
//! card that keeps reusing a few merchants pays 8 bytes per retained event plus 24 bytes per
//! combination.

use crate::engine::config::CARD_TAIL_COLUMNS;
use crate::engine::store::{heap_bytes, prefetch, resize_exact, size_class, Keyed};

/// Mean Earth radius used by the haversine distance, km.
pub const EARTH_RADIUS_KM: f64 = 6371.0088;
/// Smallest time difference used to turn a distance into a speed, ms.
pub const MIN_TRAVEL_MS: i64 = 1000;
/// Standard deviations below this make the z-score undefined (reported as 0).
pub const MIN_SIGMA: f64 = 1e-6;

const HEADER_WORDS: usize = 2;
const COMBO_WORDS: usize = 3;
const MAX_COMBOS: usize = (1 << 24) - 1;

/// Great-circle distance in km (haversine on a sphere of radius [`EARTH_RADIUS_KM`]).
pub fn haversine_km(lat1: f64, lon1: f64, lat2: f64, lon2: f64) -> f64 {
    let phi1 = lat1.to_radians();
    let phi2 = lat2.to_radians();
    let d_phi = (lat2 - lat1).to_radians();
    let d_lambda = (lon2 - lon1).to_radians();
    let a = (d_phi / 2.0).sin().powi(2) + phi1.cos() * phi2.cos() * (d_lambda / 2.0).sin().powi(2);
    2.0 * EARTH_RADIUS_KM * a.clamp(0.0, 1.0).sqrt().asin()
}

/// Smallest number of code bits that can name `n` combos plus the spacer code.
#[inline]
fn code_bits(n: usize) -> u32 {
    (usize::BITS - n.leading_zeros()).max(1)
}

/// Card windows and retention.
#[derive(Debug, Clone)]
pub(crate) struct CardParams {
    pub windows: Vec<i64>,
    pub longest: usize,
    pub retention: i64,
}

/// One event as the card shard sees it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct CardEvent {
    pub t: i64,
    pub amount: f32,
    pub merchant: u64,
    pub category: u64,
    pub country: u64,
    pub lat: f64,
    pub lon: f64,
}

/// State of one card.
pub(crate) struct Card {
    key: u64,
    lat: f64,
    lon: f64,
    t_loc: i64,
    buf: Box<[u64]>,
}

impl Keyed for Card {
    #[inline]
    fn key(&self) -> u64 {
        self.key
    }

    #[inline]
    fn prefetch_data(&self) {
        let p = self.buf.as_ptr();
        prefetch(p);
        if self.buf.len() > 8 {
            prefetch(p.wrapping_add(8));
            prefetch(p.wrapping_add(self.buf.len() - 1));
        }
    }
}

/// Decoded card state, reused between events (one per worker thread).
#[derive(Default)]
pub(crate) struct CardScratch {
    ts: Vec<i64>,
    amt: Vec<f32>,
    code: Vec<u32>,
    combos: Vec<[u64; 3]>,
    starts: Vec<usize>,
    flags: Vec<u8>,
    live: Vec<u32>,
    words: Vec<u64>,
}

const SAME_MERCHANT: u8 = 1;
const SAME_COUNTRY: u8 = 2;
const SAME_CATEGORY: u8 = 4;

impl Card {
    /// A card that has seen nothing yet.
    pub(crate) fn new(key: u64) -> Self {
        Card {
            key,
            lat: f64::NAN,
            lon: f64::NAN,
            t_loc: 0,
            buf: Box::default(),
        }
    }

    fn used_words(&self) -> usize {
        match self.buf.first() {
            None => 0,
            Some(&hdr) => {
                let n_rec = (hdr & 0xFFFF_FFFF) as usize;
                let nc = ((hdr >> 32) & 0xFF_FFFF) as usize;
                HEADER_WORDS + COMBO_WORDS * nc + n_rec
            }
        }
    }

    /// Heap bytes owned by this card.
    pub(crate) fn heap_bytes(&self) -> usize {
        heap_bytes(self.buf.len() * 8)
    }

    /// Number of retained events and the newest event time.
    pub(crate) fn summary(&self) -> (usize, i64) {
        let Some(&hdr) = self.buf.first() else {
            return (0, i64::MIN);
        };
        let nc = ((hdr >> 32) & 0xFF_FFFF) as usize;
        let k = (hdr >> 56) as u32;
        let mask = (1u32 << k) - 1;
        let first = HEADER_WORDS + COMBO_WORDS * nc;
        let mut ts = self.buf[1] as i64;
        let mut events = 0;
        for &w in &self.buf[first..self.used_words()] {
            let tag = (w >> 32) as u32;
            let d = u64::from(tag >> k);
            if tag & mask == mask {
                ts = ts.wrapping_add(((d << 32) | (w & 0xFFFF_FFFF)) as i64);
            } else {
                ts = ts.wrapping_add(d as i64);
                events += 1;
            }
        }
        (events, ts)
    }

    /// Append the snapshot form: key, location, used buffer words.
    pub(crate) fn write_to(&self, w: &mut crate::engine::snapshot::Writer) {
        w.u64(self.key);
        w.f64(self.lat);
        w.f64(self.lon);
        w.i64(self.t_loc);
        let used = &self.buf[..self.used_words()];
        w.u32(used.len() as u32);
        for &word in used {
            w.u64(word);
        }
    }

    /// Read and validate one card written by [`Card::write_to`].
    pub(crate) fn read_from(
        r: &mut crate::engine::snapshot::Reader<'_>,
        scratch: &mut CardScratch,
    ) -> crate::error::TxResult<Self> {
        let key = r.u64()?;
        let lat = r.f64()?;
        let lon = r.f64()?;
        let t_loc = r.i64()?;
        let n = r.u32()? as usize;
        let words = r.u64_vec(n)?;
        let bad = |why: &str| crate::error::TxError::Snapshot(format!("card {key}: {why}"));
        if lat.is_nan() != lon.is_nan() {
            return Err(bad("half a location"));
        }
        decode(&words, scratch).map_err(bad)?;
        if scratch.ts.is_empty() {
            return Err(bad("no events"));
        }
        let mut card = Card {
            key,
            lat,
            lon,
            t_loc,
            buf: Box::default(),
        };
        if card_words(&words) != Some(n) {
            return Err(bad("length does not match its header"));
        }
        let mut used = vec![false; scratch.combos.len()];
        for &c in &scratch.code {
            used[c as usize] = true;
        }
        if used.contains(&false) {
            return Err(bad("unused combination"));
        }
        let mut buf = vec![0u64; card_capacity(n)].into_boxed_slice();
        buf[..n].copy_from_slice(&words);
        card.buf = buf;
        Ok(card)
    }
}

fn card_words(words: &[u64]) -> Option<usize> {
    let hdr = *words.first()?;
    let n_rec = (hdr & 0xFFFF_FFFF) as usize;
    let nc = ((hdr >> 32) & 0xFF_FFFF) as usize;
    Some(HEADER_WORDS + COMBO_WORDS * nc + n_rec)
}

/// Capacity (words) of a card buffer using `n` words: small cards reallocate every 8 words
/// (a new card with a new merchant per event grows by 4 words an event), larger ones follow
/// [`size_class`].
#[inline]
fn card_capacity(n: usize) -> usize {
    if n <= 64 {
        n.div_ceil(8) * 8
    } else {
        size_class(n)
    }
}

/// Decode a card buffer into `s` (events only; spacers folded into the times).
fn decode(buf: &[u64], s: &mut CardScratch) -> Result<(), &'static str> {
    s.ts.clear();
    s.amt.clear();
    s.code.clear();
    s.combos.clear();
    let Some(&hdr) = buf.first() else {
        return Ok(());
    };
    if buf.len() < HEADER_WORDS {
        return Err("truncated header");
    }
    let n_rec = (hdr & 0xFFFF_FFFF) as usize;
    let nc = ((hdr >> 32) & 0xFF_FFFF) as usize;
    let k = (hdr >> 56) as u32;
    let first = HEADER_WORDS + COMBO_WORDS * nc;
    if buf.len() < first + n_rec {
        return Err("truncated records");
    }
    if k != code_bits(nc) {
        return Err("bad code width");
    }
    s.combos.extend(
        buf[HEADER_WORDS..first]
            .chunks_exact(COMBO_WORDS)
            .map(|c| [c[0], c[1], c[2]]),
    );
    s.ts.reserve(n_rec);
    s.amt.reserve(n_rec);
    s.code.reserve(n_rec);
    let mask = (1u32 << k) - 1;
    let mut ts = buf[1] as i64;
    for &w in &buf[first..first + n_rec] {
        let tag = (w >> 32) as u32;
        let code = tag & mask;
        let d = u64::from(tag >> k);
        if code == mask {
            let gap = (d << 32) | (w & 0xFFFF_FFFF);
            ts = ts.checked_add(gap as i64).ok_or("time overflow")?;
        } else {
            if code as usize >= nc {
                return Err("bad combination index");
            }
            ts = ts.checked_add(d as i64).ok_or("time overflow")?;
            s.ts.push(ts);
            s.amt.push(f32::from_bits(w as u32));
            s.code.push(code);
        }
    }
    Ok(())
}

/// Encode the events and combos of `s` into `s.words` (at least one event).
fn encode(s: &mut CardScratch) {
    let CardScratch {
        ts,
        amt,
        code,
        combos,
        words,
        ..
    } = s;
    debug_assert!(!ts.is_empty() && combos.len() <= MAX_COMBOS);
    words.clear();
    let nc = combos.len();
    let k = code_bits(nc);
    let spacer = (1u64 << k) - 1;
    let max_delta = (1u64 << (32 - k)) - 1;
    let max_gap = (1u64 << (64 - k)) - 1;
    words.push(0);
    words.push(ts[0] as u64);
    for c in combos.iter() {
        words.extend_from_slice(c);
    }
    let mut prev = ts[0];
    let mut n_rec = 0u64;
    for i in 0..ts.len() {
        let mut gap = ts[i].wrapping_sub(prev) as u64;
        while gap > max_delta {
            let g = gap.min(max_gap);
            words.push(((((g >> 32) << k) | spacer) << 32) | (g & 0xFFFF_FFFF));
            gap -= g;
            n_rec += 1;
        }
        words.push((((gap << k) | u64::from(code[i])) << 32) | u64::from(amt[i].to_bits()));
        n_rec += 1;
        prev = ts[i];
    }
    words[0] = n_rec | ((nc as u64) << 32) | (u64::from(k) << 56);
}

/// Compute the card columns of one event (after the row-local ones) into `out`, then add the
/// event to the card's state.
pub(crate) fn process(
    card: &mut Card,
    ev: &CardEvent,
    p: &CardParams,
    s: &mut CardScratch,
    out: &mut [f32],
) {
    decode(&card.buf, s).expect("card state is well-formed");
    let t = ev.t;
    let newest = s.ts.last().map_or(t, |&x| x.max(t));
    let cutoff = newest.saturating_sub(p.retention);
    let p0 = s.ts.partition_point(|&x| x <= cutoff);
    let pos = s.ts.partition_point(|&x| x <= t).max(p0);
    let nw = p.windows.len();
    s.starts.clear();
    for &w in &p.windows {
        let lo = t.saturating_sub(w);
        s.starts
            .push(p0 + s.ts[p0..pos].partition_point(|&x| x <= lo));
    }

    let a = ev.amount;
    let a64 = f64::from(a);
    let mut sum_l = 0.0;
    let mut count_l = 0.0;
    for (k, &start) in s.starts.iter().enumerate() {
        let mut sum = 0.0f64;
        let mut max = a;
        for &x in &s.amt[start..pos] {
            sum += f64::from(x);
            max = max.max(x);
        }
        sum += a64;
        let count = (pos - start + 1) as f64;
        out[k] = count as f32;
        out[nw + k] = sum as f32;
        out[2 * nw + k] = (sum / count) as f32;
        out[3 * nw + k] = max;
        if k == p.longest {
            sum_l = sum;
            count_l = count;
        }
    }
    let tail = &mut out[4 * nw..4 * nw + CARD_TAIL_COLUMNS];
    let start_l = s.starts[p.longest];
    let others = &s.amt[start_l..pos];

    // card_amount_ratio, card_amount_z
    tail[0] = (a64 / (sum_l / count_l)) as f32;
    tail[1] = if others.len() < 2 {
        0.0
    } else {
        let n = others.len() as f64;
        let mut total = 0.0f64;
        for &x in others {
            total += f64::from(x);
        }
        let mean = total / n;
        let mut sq = 0.0f64;
        for &x in others {
            let d = f64::from(x) - mean;
            sq += d * d;
        }
        let sigma = (sq / n).sqrt();
        if sigma < MIN_SIGMA {
            0.0
        } else {
            ((a64 - mean) / sigma) as f32
        }
    };

    // card_secs_since_prev
    tail[2] = if pos > p0 {
        ((t - s.ts[pos - 1]) as f64 / 1000.0) as f32
    } else {
        -1.0
    };

    // card_km_from_prev, card_kmh_from_prev (processing order; location survives pruning)
    let located = !ev.lat.is_nan();
    if located && !card.lat.is_nan() {
        let km = haversine_km(card.lat, card.lon, ev.lat, ev.lon);
        let hours = (t
            .wrapping_sub(card.t_loc)
            .unsigned_abs()
            .max(MIN_TRAVEL_MS as u64)) as f64
            / 3.6e6;
        tail[3] = km as f32;
        tail[4] = (km / hours) as f32;
    } else {
        tail[3] = -1.0;
        tail[4] = -1.0;
    }
    if located {
        card.lat = ev.lat;
        card.lon = ev.lon;
        card.t_loc = t;
    }

    // card_new_country, card_new_merchant, card_category_share
    s.flags.clear();
    s.flags.extend(s.combos.iter().map(|c| {
        (u8::from(c[0] == ev.merchant) * SAME_MERCHANT)
            | (u8::from(ev.country != 0 && c[2] == ev.country) * SAME_COUNTRY)
            | (u8::from(ev.category != 0 && c[1] == ev.category) * SAME_CATEGORY)
    }));
    let mut seen = 0u8;
    let mut same_category = 0.0f64;
    for i in start_l..pos {
        let f = s.flags[s.code[i] as usize];
        seen |= f;
        if f & SAME_CATEGORY != 0 {
            same_category += f64::from(s.amt[i]);
        }
    }
    tail[5] = if ev.country == 0 || seen & SAME_COUNTRY != 0 {
        0.0
    } else {
        1.0
    };
    tail[6] = if seen & SAME_MERCHANT != 0 { 0.0 } else { 1.0 };
    tail[7] = if ev.category == 0 {
        -1.0
    } else {
        ((same_category + a64) / sum_l) as f32
    };

    update_state(card, ev, s, p0, pos, t > cutoff);
}

/// Drop pruned events, insert the current one (when retained), drop unused combos, re-encode.
fn update_state(
    card: &mut Card,
    ev: &CardEvent,
    s: &mut CardScratch,
    p0: usize,
    pos: usize,
    store: bool,
) {
    if p0 == 0 && !store {
        return;
    }
    if p0 == 0 && store && pos == s.ts.len() && !s.ts.is_empty() && try_append(card, ev, s) {
        return;
    }
    if p0 > 0 {
        s.ts.drain(..p0);
        s.amt.drain(..p0);
        s.code.drain(..p0);
    }
    if store {
        let combo = [ev.merchant, ev.category, ev.country];
        let c = match s.combos.iter().position(|x| *x == combo) {
            Some(c) => c,
            None => {
                s.combos.push(combo);
                s.combos.len() - 1
            }
        };
        let at = pos - p0;
        s.ts.insert(at, ev.t);
        s.amt.insert(at, ev.amount);
        s.code.insert(at, c as u32);
    }
    if p0 > 0 {
        let nc = s.combos.len();
        s.live.clear();
        s.live.resize(nc, 0);
        for &c in &s.code {
            s.live[c as usize] += 1;
        }
        if s.live.contains(&0) {
            let mut next = 0;
            for c in 0..nc {
                if s.live[c] > 0 {
                    s.combos[next] = s.combos[c];
                    s.live[c] = next as u32;
                    next += 1;
                }
            }
            s.combos.truncate(next);
            for c in s.code.iter_mut() {
                *c = s.live[*c as usize];
            }
        }
    }
    encode(s);
    let n = s.words.len();
    resize_exact(&mut card.buf, card_capacity(n));
    card.buf[..n].copy_from_slice(&s.words);
}

/// Append an on-time event in place (no pruning, no change of code width, no spacer needed);
/// false when the general path must re-encode instead.
fn try_append(card: &mut Card, ev: &CardEvent, s: &CardScratch) -> bool {
    let hdr = card.buf[0];
    let n_rec = (hdr & 0xFFFF_FFFF) as usize;
    let nc = ((hdr >> 32) & 0xFF_FFFF) as usize;
    let k = (hdr >> 56) as u32;
    let combo = [ev.merchant, ev.category, ev.country];
    let (c, new) = match s.combos.iter().position(|x| *x == combo) {
        Some(c) => (c, false),
        None => (nc, true),
    };
    let nc2 = nc + usize::from(new);
    let gap = ev.t.wrapping_sub(s.ts[s.ts.len() - 1]) as u64;
    if nc2 > MAX_COMBOS
        || code_bits(nc2) != k
        || gap > (1u64 << (32 - k)) - 1
        || n_rec >= u32::MAX as usize
    {
        return false;
    }
    let first = HEADER_WORDS + COMBO_WORDS * nc;
    let needed = first + n_rec + 1 + if new { COMBO_WORDS } else { 0 };
    resize_exact(&mut card.buf, card_capacity(needed));
    if new {
        card.buf
            .copy_within(first..first + n_rec, first + COMBO_WORDS);
        card.buf[first..first + COMBO_WORDS].copy_from_slice(&combo);
    }
    let first2 = HEADER_WORDS + COMBO_WORDS * nc2;
    card.buf[first2 + n_rec] = (((gap << k) | c as u64) << 32) | u64::from(ev.amount.to_bits());
    card.buf[0] = (n_rec as u64 + 1) | ((nc2 as u64) << 32) | (u64::from(k) << 56);
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(windows: &[i64], lateness: i64) -> CardParams {
        let longest = (0..windows.len()).max_by_key(|&i| windows[i]).unwrap();
        CardParams {
            windows: windows.to_vec(),
            longest,
            retention: windows[longest] + lateness,
        }
    }

    fn ev(t: i64, amount: f32, merchant: u64) -> CardEvent {
        CardEvent {
            t,
            amount,
            merchant,
            category: 0,
            country: 0,
            lat: f64::NAN,
            lon: f64::NAN,
        }
    }

    #[test]
    fn encode_decode_round_trip_with_spacers_and_many_combos() {
        let mut s = CardScratch::default();
        let mut expected = Vec::new();
        let mut t = -5_000_000_000_000i64;
        for i in 0..300u64 {
            t += [0, 1, 999, 1 << 27, 1 << 33, 86_400_000 * 400][(i % 6) as usize];
            expected.push((t, i as f32 * 0.25, (i % 40) as u32));
        }
        s.combos = (0..40).map(|c| [c, c + 1, c + 2]).collect();
        s.ts = expected.iter().map(|e| e.0).collect();
        s.amt = expected.iter().map(|e| e.1).collect();
        s.code = expected.iter().map(|e| e.2).collect();
        encode(&mut s);
        let words = s.words.clone();
        let mut d = CardScratch::default();
        decode(&words, &mut d).unwrap();
        assert_eq!(d.ts, s.ts);
        assert_eq!(d.amt, s.amt);
        assert_eq!(d.code, s.code);
        assert_eq!(d.combos, s.combos);
        let card = Card {
            key: 1,
            lat: f64::NAN,
            lon: 0.0,
            t_loc: 0,
            buf: words.into_boxed_slice(),
        };
        assert_eq!(card.summary(), (300, *s.ts.last().unwrap()));
    }

    #[test]
    fn window_edges_and_retention() {
        let p = params(&[5_000, 60_000], 10_000);
        let mut s = CardScratch::default();
        let mut out = vec![0f32; 4 * 2 + CARD_TAIL_COLUMNS];
        let mut card = Card::new(7);
        process(&mut card, &ev(0, 10.0, 1), &p, &mut s, &mut out);
        // W - 1 ms later: inside both windows.
        process(&mut card, &ev(4_999, 30.0, 1), &p, &mut s, &mut out);
        assert_eq!(&out[0..2], &[2.0, 2.0]);
        // Exactly W after the first: the 5 s window excludes it, the 60 s one keeps it.
        process(&mut card, &ev(5_000, 1.0, 2), &p, &mut s, &mut out);
        assert_eq!(&out[0..2], &[2.0, 3.0]);
        assert_eq!(&out[2..4], &[31.0, 41.0]);
        assert_eq!(out[8 + 2], 0.001); // secs since prev
        assert_eq!(out[8 + 6], 1.0); // new merchant
                                     // Retention: W_max + L = 70 s; at t = 75 s the first event (t = 0) is gone.
        process(&mut card, &ev(75_000, 1.0, 1), &p, &mut s, &mut out);
        assert_eq!(card.summary(), (1, 75_000));
        assert_eq!(out[1], 1.0);
        // Combination of merchant 2 is no longer used: dropped from the dictionary.
        decode(&card.buf, &mut s).unwrap();
        assert_eq!(s.combos.len(), 1);
    }

    #[test]
    fn late_events_and_ties() {
        let p = params(&[5_000, 60_000], 10_000);
        let mut s = CardScratch::default();
        let mut out = vec![0f32; 4 * 2 + CARD_TAIL_COLUMNS];
        let mut card = Card::new(7);
        process(&mut card, &ev(4_000, 50.0, 1), &p, &mut s, &mut out);
        // Late: does not see the later event.
        process(&mut card, &ev(0, 10.0, 1), &p, &mut s, &mut out);
        assert_eq!(&out[0..2], &[1.0, 1.0]);
        assert_eq!(out[8 + 2], -1.0);
        assert_eq!(out[8 + 6], 1.0);
        // Tie with the first event: sees both.
        process(&mut card, &ev(4_000, 5.0, 1), &p, &mut s, &mut out);
        assert_eq!(&out[0..2], &[3.0, 3.0]);
        assert_eq!(out[2], 65.0);
        assert_eq!(out[8 + 2], 0.0);
        assert_eq!(out[8 + 6], 0.0);
        // Far too late (beyond retention): only itself, not stored.
        process(&mut card, &ev(-100_000, 7.0, 1), &p, &mut s, &mut out);
        assert_eq!(&out[0..2], &[1.0, 1.0]);
        assert_eq!(card.summary(), (3, 4_000));
    }

    #[test]
    fn haversine_paris_new_york() {
        let km = haversine_km(48.8566, 2.3522, 40.7128, -74.0060);
        assert!((km - 5837.25).abs() < 0.01, "{km}");
    }
}
