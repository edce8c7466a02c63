//! Card state and the card columns.
//!
//! # State layout
//!
//! A card is 48 bytes in its shard's slab (key, last location as two `f64` plus its event
//! time, and one boxed buffer of `u64` words):
//!
//! ```text
//! word 0         header: n_records (bits 0..32) | n_combos (32..56) | m (56..62)
//! word 1         base: event time of the first retained event (i64)
//! combos         (merchant, category, country) combinations used by retained events, named
//!                  by a merchant symbol and a (category, country) pair symbol (see
//!                  `symbols.rs`): with m = 0 one word each, merchant symbol in
//!                  bits 0..32 and pair symbol in 32..64; with 0 < m < 32, two per word
//!                  (the first in the low half), merchant symbol in the low m bits of a
//!                  half and pair symbol in the others
//! 1 word each    records, in ascending (ts, arrival) order:
//!                  bits 0..32   amount as f32 bits
//!                  bits 32..32+k  combo index, or all ones for a spacer
//!                  bits 32+k..64  delta: ms since the previous record
//! ```
//!
//! A spacer advances time without being an event: its delta is `(high bits << 32) | low 32
//! bits`. Spacers are only written when a gap does not fit the `32 - k` delta bits (about six
//! days with up to three combos, 37 hours with up to 31). `k` is the smallest width for the
//! number of combos plus the spacer code, and combos no retained event uses are dropped. `m`
//! is the bit width of the largest merchant symbol when every combo fits in 32 bits that
//! way, else 0. So a card that keeps reusing a few merchants pays 8 bytes per retained event
//! plus 4 bytes per combination (8 when its largest merchant and pair symbols need more than
//! 32 bits together, e.g. beyond ~2^20 merchants and ~2^12 pairs).

use crate::engine::config::CARD_TAIL_COLUMNS;
use crate::engine::store::{fit_class, heap_bytes, prefetch_lines, resize_exact, Keyed};
use crate::engine::symbols::Symbols;

/// (category, country) pair symbols of all cards.
pub(crate) type Pairs = Symbols<[u64; 2]>;

/// Mean Earth radius used by the haversine distance, km.
pub const EARTH_RADIUS_KM: f64 = 6371.0088;
/// Smallest time difference used to turn a distance into a speed, ms.
pub const MIN_TRAVEL_MS: i64 = 1000;
/// Standard deviations below this make the z-score undefined (reported as 0).
pub const MIN_SIGMA: f64 = 1e-6;

const HEADER_WORDS: usize = 2;
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

/// Bits needed for `x` (0 for 0).
#[inline]
fn bit_width(x: u32) -> u32 {
    u32::BITS - x.leading_zeros()
}

/// Decoded header word of a card buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Header {
    n_rec: usize,
    nc: usize,
    /// Merchant symbol bits of packed combos, 0 for one combo per word.
    m: u32,
}

impl Header {
    #[inline]
    fn parse(word: u64) -> Self {
        Header {
            n_rec: (word & 0xFFFF_FFFF) as usize,
            nc: ((word >> 32) & 0xFF_FFFF) as usize,
            m: (word >> 56) as u32,
        }
    }

    #[inline]
    fn word(self) -> u64 {
        self.n_rec as u64 | ((self.nc as u64) << 32) | (u64::from(self.m) << 56)
    }

    /// Code bits of the records.
    #[inline]
    fn k(self) -> u32 {
        code_bits(self.nc)
    }

    /// Index of the first record word.
    #[inline]
    fn first(self) -> usize {
        HEADER_WORDS
            + if self.m == 0 {
                self.nc
            } else {
                self.nc.div_ceil(2)
            }
    }

    /// Words in use.
    #[inline]
    fn used(self) -> usize {
        self.first() + self.n_rec
    }

    /// Combo `i` (merchant symbol | pair symbol << 32) of `buf`.
    #[inline]
    fn combo(self, buf: &[u64], i: usize) -> u64 {
        if self.m == 0 {
            buf[HEADER_WORDS + i]
        } else {
            let half = (buf[HEADER_WORDS + i / 2] >> (32 * (i % 2))) as u32;
            combo_word(half & ((1 << self.m) - 1), half >> self.m)
        }
    }
}

/// Merchant symbol bits `m` of the packed layout for `combos`, or 0 when one of them does not
/// fit in 32 bits that way.
fn packed_bits(combos: &[u64]) -> u32 {
    let (mut merchant, mut pair) = (0u32, 0u32);
    for &c in combos {
        merchant |= c as u32;
        pair |= (c >> 32) as u32;
    }
    let m = bit_width(merchant).max(1);
    if m < 32 && bit_width(pair) <= 32 - m {
        m
    } else {
        0
    }
}

/// Half-word of a packed combo.
#[inline]
fn packed(combo: u64, m: u32) -> u64 {
    (combo & 0xFFFF_FFFF) | ((combo >> 32) << m)
}

/// Card windows and retention.
#[derive(Debug, Clone)]
pub(crate) struct CardParams {
    pub windows: Vec<i64>,
    pub longest: usize,
    pub retention: i64,
    /// Window indices from the longest to the shortest.
    by_length: Vec<usize>,
}

impl CardParams {
    /// Windows in column order (distinct, validated) and the allowed lateness.
    pub(crate) fn new(windows: &[i64], lateness: i64) -> Self {
        let mut by_length: Vec<usize> = (0..windows.len()).collect();
        by_length.sort_by_key(|&i| std::cmp::Reverse(windows[i]));
        let longest = by_length[0];
        CardParams {
            windows: windows.to_vec(),
            longest,
            retention: windows[longest] + lateness,
            by_length,
        }
    }
}

/// One event as the card shard sees it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct CardEvent {
    pub t: i64,
    pub amount: f32,
    /// Global merchant symbol.
    pub merchant: u32,
    /// Pair symbol of (category, country).
    pub pair: u32,
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
        prefetch_lines(&self.buf, 8);
    }
}

/// Decoded card state, reused between events (one per worker thread).
#[derive(Default)]
pub(crate) struct CardScratch {
    ts: Vec<i64>,
    amt: Vec<f32>,
    code: Vec<u32>,
    combos: Vec<u64>,
    starts: Vec<usize>,
    lo: Vec<i64>,
    sums: Vec<f64>,
    flags: Vec<u8>,
    live: Vec<u32>,
    words: Vec<u64>,
}

const SAME_MERCHANT: u8 = 1;
const SAME_COUNTRY: u8 = 2;
const SAME_CATEGORY: u8 = 4;
const SAME_COMBO: u8 = 8;

/// Combo word of a merchant symbol and a pair symbol.
#[inline]
fn combo_word(merchant: u32, pair: u32) -> u64 {
    u64::from(merchant) | (u64::from(pair) << 32)
}

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
        self.buf.first().map_or(0, |&hdr| Header::parse(hdr).used())
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
        let h = Header::parse(hdr);
        let k = h.k();
        let mask = (1u32 << k) - 1;
        let mut ts = self.buf[1] as i64;
        let mut events = 0;
        for &w in &self.buf[h.first()..h.used()] {
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

    /// Call `f` with each combo of the card (merchant symbol | pair symbol << 32).
    pub(crate) fn for_each_combo(&self, mut f: impl FnMut(u64)) {
        if let Some(&hdr) = self.buf.first() {
            let h = Header::parse(hdr);
            for i in 0..h.nc {
                f(h.combo(&self.buf, i));
            }
        }
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

    /// Read and validate one card written by [`Card::write_to`]; `merchant_ok` tells
    /// whether a merchant symbol is in use, `pairs` are the pair symbols of its shard.
    pub(crate) fn read_from(
        r: &mut crate::engine::snapshot::Reader<'_>,
        scratch: &mut CardScratch,
        merchant_ok: &dyn Fn(u32) -> bool,
        pairs: &Pairs,
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
        for &c in &scratch.combos {
            if !merchant_ok(c as u32) || !pairs.is_used((c >> 32) as u32) {
                return Err(bad("unknown symbol"));
            }
        }
        let mut buf = vec![0u64; card_capacity(n)].into_boxed_slice();
        buf[..n].copy_from_slice(&words);
        card.buf = buf;
        Ok(card)
    }
}

fn card_words(words: &[u64]) -> Option<usize> {
    Some(Header::parse(*words.first()?).used())
}

/// Capacity (words) of a card buffer using `n` words: small cards reallocate every 16 words
/// (a new card with a new merchant per event grows by 1.5 words an event), larger ones follow
/// [`fit_class`]; either way the malloc chunk has no padding.
#[inline]
fn card_capacity(n: usize) -> usize {
    if n < 64 {
        (n + 1).div_ceil(16) * 16 - 1
    } else {
        fit_class(n, 8, 4)
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
    let h = Header::parse(hdr);
    if h.m >= 32 {
        return Err("bad combination layout");
    }
    let (n_rec, nc, k, first) = (h.n_rec, h.nc, h.k(), h.first());
    if buf.len() < first + n_rec {
        return Err("truncated records");
    }
    s.combos.extend((0..nc).map(|i| h.combo(buf, i)));
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
    let m = packed_bits(combos);
    if m == 0 {
        words.extend_from_slice(combos);
    } else {
        words.extend(
            combos
                .chunks(2)
                .map(|p| packed(p[0], m) | p.get(1).map_or(0, |&c| packed(c, m) << 32)),
        );
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
    words[0] = Header {
        n_rec: n_rec as usize,
        nc,
        m,
    }
    .word();
}

/// Compute the card columns of one event (after the row-local ones) into `out`, then add the
/// event to the card's state.
pub(crate) fn process(
    card: &mut Card,
    ev: &CardEvent,
    p: &CardParams,
    s: &mut CardScratch,
    pairs: &Pairs,
    out: &mut [f32],
) {
    if !process_on_time(card, ev, p, s, pairs, out) {
        process_any(card, ev, p, s, pairs, out);
    }
}

/// Flags of every combo of the card against the current event, into `s.flags`.
fn combo_flags(card: &Card, ev: &CardEvent, s: &mut CardScratch, pairs: &Pairs) {
    s.flags.clear();
    let Some(&hdr) = card.buf.first() else {
        return;
    };
    let h = Header::parse(hdr);
    let current = combo_word(ev.merchant, ev.pair);
    let pair_flags =
        (u8::from(ev.country != 0) * SAME_COUNTRY) | (u8::from(ev.category != 0) * SAME_CATEGORY);
    let flag = |c: u64| {
        let merchant = u8::from(c as u32 == ev.merchant) * SAME_MERCHANT;
        if c == current {
            return merchant | pair_flags | SAME_COMBO;
        }
        let pair = (c >> 32) as u32;
        if pair == ev.pair {
            return merchant | pair_flags;
        }
        let [category, country] = pairs.key(pair);
        merchant
            | (u8::from(ev.country != 0 && country == ev.country) * SAME_COUNTRY)
            | (u8::from(ev.category != 0 && category == ev.category) * SAME_CATEGORY)
    };
    let words = &card.buf[HEADER_WORDS..h.first()];
    if h.m == 0 {
        s.flags.extend(words.iter().map(|&c| flag(c)));
    } else {
        let unpack = |half: u32| combo_word(half & ((1 << h.m) - 1), half >> h.m);
        for &w in words {
            s.flags.push(flag(unpack(w as u32)));
            s.flags.push(flag(unpack((w >> 32) as u32)));
        }
        s.flags.truncate(h.nc);
    }
}

/// Write the columns of window `k`: `count` and `sum` (in order) of the earlier events in
/// it, their largest amount (or the current one); returns the window's sum and count.
#[inline(always)]
fn window_columns(
    out: &mut [f32],
    nw: usize,
    k: usize,
    count: usize,
    sum: f64,
    max: f32,
    a: f32,
) -> (f64, f64) {
    let sum = sum + f64::from(a);
    let count = (count + 1) as f64;
    out[k] = count as f32;
    out[nw + k] = sum as f32;
    out[2 * nw + k] = (sum / count) as f32;
    out[3 * nw + k] = max;
    (sum, count)
}

/// What the columns after the window aggregates need to know about the earlier events.
struct Earlier<'a> {
    /// Sum (in order, current included) and count of the longest window.
    sum_l: f64,
    count_l: f64,
    /// Sum (in order) of the earlier events of the longest window, and their amounts.
    sum_others_l: f64,
    others: &'a [f32],
    /// Time of the latest retained earlier event at or before the current one.
    prev: Option<i64>,
    /// Union of the combo flags of the earlier events of the longest window.
    seen: u8,
    /// Sum (in order) of their amounts with the current event's category.
    same_category: f64,
}

/// Ratio, z-score, time since previous, distance and speed, "new" flags and category share;
/// also moves the card's last location to the event's.
fn tail_columns(card: &mut Card, ev: &CardEvent, e: &Earlier<'_>, tail: &mut [f32]) {
    let t = ev.t;
    let a64 = f64::from(ev.amount);
    // card_amount_ratio, card_amount_z
    tail[0] = (a64 / (e.sum_l / e.count_l)) as f32;
    tail[1] = if e.others.len() < 2 {
        0.0
    } else {
        let n = e.others.len() as f64;
        let mean = e.sum_others_l / n;
        // Four partial sums: one chain of dependent additions was the slowest part of a
        // card with a long history.
        let mut part = [0.0f64; 4];
        let chunks = e.others.chunks_exact(4);
        let rest = chunks.remainder();
        for c in chunks {
            for (p, &x) in part.iter_mut().zip(c) {
                let d = f64::from(x) - mean;
                *p += d * d;
            }
        }
        for (p, &x) in part.iter_mut().zip(rest) {
            let d = f64::from(x) - mean;
            *p += d * d;
        }
        let sq = (part[0] + part[1]) + (part[2] + part[3]);
        let sigma = (sq / n).sqrt();
        if sigma < MIN_SIGMA {
            0.0
        } else {
            ((a64 - mean) / sigma) as f32
        }
    };

    // card_secs_since_prev
    tail[2] = match e.prev {
        Some(prev) => ((t - prev) as f64 / 1000.0) as f32,
        None => -1.0,
    };

    // card_km_from_prev, card_kmh_from_prev (processing order; location survives pruning)
    let located = !ev.lat.is_nan();
    if located && !card.lat.is_nan() {
        // Same finite point: what the haversine formula gives exactly, without the libm calls.
        let same =
            ev.lat == card.lat && ev.lon == card.lon && ev.lat.is_finite() && ev.lon.is_finite();
        let km = if same {
            0.0
        } else {
            haversine_km(card.lat, card.lon, ev.lat, ev.lon)
        };
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
    tail[5] = if ev.country == 0 || e.seen & SAME_COUNTRY != 0 {
        0.0
    } else {
        1.0
    };
    tail[6] = if e.seen & SAME_MERCHANT != 0 {
        0.0
    } else {
        1.0
    };
    tail[7] = if ev.category == 0 {
        -1.0
    } else {
        ((e.same_category + a64) / e.sum_l) as f32
    };
}

/// Decode the events of a well-formed card buffer into `s.ts`, `s.amt` and `s.code`
/// (spacers folded into the times; the combos are not read). Written by index into vectors
/// sized beforehand: with `push`, each event stored the three lengths back to memory.
#[inline]
fn decode_events(buf: &[u64], s: &mut CardScratch) {
    let words = match buf.first() {
        Some(&hdr) => {
            let h = Header::parse(hdr);
            &buf[h.first()..h.used()]
        }
        None => &[],
    };
    let n = words.len();
    // Only grown here (truncated below), so a card never costs more than its own events.
    s.ts.resize(n.max(s.ts.len()), 0);
    s.amt.resize(n.max(s.amt.len()), 0.0);
    s.code.resize(n.max(s.code.len()), 0);
    let (ts, amt, code) = (&mut s.ts[..n], &mut s.amt[..n], &mut s.code[..n]);
    let mut events = 0;
    if n > 0 {
        let h = Header::parse(buf[0]);
        let k = h.k();
        let mask = (1u32 << k) - 1;
        let mut t = buf[1] as i64;
        for &w in words {
            let tag = (w >> 32) as u32;
            let c = tag & mask;
            let d = u64::from(tag >> k);
            if c == mask {
                t = t.wrapping_add(((d << 32) | (w & 0xFFFF_FFFF)) as i64);
                continue;
            }
            t = t.wrapping_add(d as i64);
            ts[events] = t;
            amt[events] = f32::from_bits(w as u32);
            code[events] = c;
            events += 1;
        }
    }
    s.ts.truncate(events);
    s.amt.truncate(events);
    s.code.truncate(events);
}

/// One pass over the earlier events of the longest window (see [`longest_pair`]).
struct LongestPair {
    /// Sum (in order) of every amount, and of those from `mid` on.
    sum: f64,
    suffix: f64,
    /// Union of the events' combo flags.
    seen: u8,
    /// Sum (in order) of the amounts with the current event's category.
    same_category: f64,
}

/// Largest of `init` and the amounts `xs` (finite), in eight independent lanes: a maximum
/// does not depend on the order, and one chain of comparisons waited on each other.
#[inline]
fn max_of(xs: &[f32], init: f32) -> f32 {
    if xs.len() < 16 {
        return xs.iter().fold(init, |m, &x| if x > m { x } else { m });
    }
    let mut lanes = [init; 8];
    let chunks = xs.chunks_exact(8);
    let rest = chunks.remainder();
    for c in chunks {
        for (m, &x) in lanes.iter_mut().zip(c) {
            *m = if x > *m { x } else { *m };
        }
    }
    for (m, &x) in lanes.iter_mut().zip(rest) {
        *m = if x > *m { x } else { *m };
    }
    lanes
        .into_iter()
        .fold(init, |m, x| if x > m { x } else { m })
}

/// `x` when `keep`, else +0.0, without a branch.
#[inline(always)]
fn masked(x: f64, keep: bool) -> f64 {
    f64::from_bits(x.to_bits() & u64::from(keep).wrapping_neg())
}

/// Four independent chains in one pass over `amt` (and the events' combo indices `code`).
/// Not inlined: inside the caller its sums were kept in memory, one store and load per event.
#[inline(never)]
fn longest_pair(amt: &[f32], code: &[u32], flags: &[u8], mid: usize) -> LongestPair {
    let (mut sum, mut suffix, mut seen, mut same_category) = (0.0f64, 0.0f64, 0u8, 0.0f64);
    let mid = mid.min(amt.len());
    for (i, (&x, &c)) in amt.iter().zip(code).enumerate() {
        let f = flags[c as usize];
        let x = f64::from(x);
        seen |= f;
        sum += x;
        // Masked rather than branched on (the category test is data, often mispredicted);
        // adding +0.0 leaves a sum of positive amounts unchanged.
        suffix += masked(x, i >= mid);
        same_category += masked(x, f & SAME_CATEGORY != 0);
    }
    LongestPair {
        sum,
        suffix,
        seen,
        same_category,
    }
}

/// [`process`] for an event at or after every event of the card (the usual case). False,
/// with nothing changed, when the event is late; then [`process_any`] must handle it.
fn process_on_time(
    card: &mut Card,
    ev: &CardEvent,
    p: &CardParams,
    s: &mut CardScratch,
    pairs: &Pairs,
    out: &mut [f32],
) -> bool {
    let t = ev.t;
    let a = ev.amount;
    let nw = p.windows.len();
    let cutoff = t.saturating_sub(p.retention);
    // Window j of `by_length` covers (lo[j], t]; lo increases with j, so each window's
    // earlier events are a suffix of the longest window's.
    s.lo.clear();
    s.lo.extend(p.by_length.iter().map(|&k| t.saturating_sub(p.windows[k])));
    combo_flags(card, ev, s, pairs);
    // The retained events, in order, then tight passes with their accumulators in registers
    // (one loop doing everything kept its sums and vector lengths in memory). The times are
    // ascending, so the pruned events, those before the longest window and each window's
    // earlier events are found by binary search; window j of `by_length` holds the events
    // of `win` from `starts[j]` on.
    decode_events(&card.buf, s);
    let n = s.ts.len();
    if s.ts.last().is_some_and(|&last| last > t) {
        return false;
    }
    let p0 = s.ts.partition_point(|&x| x <= cutoff);
    let prev = (n > p0).then(|| s.ts[n - 1]);
    let first_l = s.ts.partition_point(|&x| x <= s.lo[0]);
    s.starts.clear();
    s.starts.extend(
        s.lo.iter()
            .map(|&lo| s.ts[first_l..].partition_point(|&x| x <= lo)),
    );
    let win = &s.amt[first_l..];
    let n_l = win.len();
    // Sums in order, two windows at a time (independent additions overlap): window j over
    // amt[starts[j]..], j + 1 over the suffix amt[starts[j + 1]..]. The longest pair also
    // takes the combo flags and the category sum, two more independent chains.
    s.sums.clear();
    let mid = s.starts.get(1).copied().unwrap_or(n_l);
    let l = longest_pair(win, &s.code[first_l..], &s.flags, mid);
    s.sums.push(l.sum);
    if nw > 1 {
        s.sums.push(l.suffix);
    }
    for j in (2..nw).step_by(2) {
        let start = s.starts[j];
        let mut sum = 0.0f64;
        if j + 1 < nw {
            let mid = s.starts[j + 1];
            for &x in &win[start..mid] {
                sum += f64::from(x);
            }
            let mut sum2 = 0.0f64;
            for &x in &win[mid..] {
                sum += f64::from(x);
                sum2 += f64::from(x);
            }
            s.sums.extend([sum, sum2]);
        } else {
            for &x in &win[start..] {
                sum += f64::from(x);
            }
            s.sums.push(sum);
        }
    }
    let (seen, same_category) = (l.seen, l.same_category);
    // Shortest window first: each longer one extends the previous suffix (for the maxima).
    let (mut sum_l, mut count_l, mut sum_others_l) = (0.0, 0.0, 0.0);
    let (mut max, mut from) = (a, n_l);
    for j in (0..nw).rev() {
        let start = s.starts[j];
        max = max_of(&win[start..from], max);
        from = start;
        let sum = s.sums[j];
        let (total, n) = window_columns(out, nw, p.by_length[j], n_l - start, sum, max, a);
        if j == 0 {
            (sum_l, count_l, sum_others_l) = (total, n, sum);
        }
    }
    let earlier = Earlier {
        sum_l,
        count_l,
        sum_others_l,
        others: win,
        prev,
        seen,
        same_category,
    };
    tail_columns(
        card,
        ev,
        &earlier,
        &mut out[4 * nw..4 * nw + CARD_TAIL_COLUMNS],
    );

    // The event is kept (t > t - retention); nothing is pruned unless p0 > 0.
    let existing = current_combo(s);
    if p0 == 0 {
        if let Some(prev) = prev {
            if try_append(card, ev, prev, existing) {
                return true;
            }
        }
    }
    decode(&card.buf, s).expect("card state is well-formed");
    let pos = s.ts.len();
    rebuild(card, ev, s, p0, pos, true, existing);
    true
}

/// [`process`] for any event, late ones included.
fn process_any(
    card: &mut Card,
    ev: &CardEvent,
    p: &CardParams,
    s: &mut CardScratch,
    pairs: &Pairs,
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
    let (mut sum_l, mut count_l, mut sum_others_l) = (0.0, 0.0, 0.0);
    for (k, &start) in s.starts.iter().enumerate() {
        let mut sum = 0.0f64;
        let mut max = a;
        for &x in &s.amt[start..pos] {
            sum += f64::from(x);
            max = max.max(x);
        }
        let (total, n) = window_columns(out, nw, k, pos - start, sum, max, a);
        if k == p.longest {
            (sum_l, count_l, sum_others_l) = (total, n, sum);
        }
    }
    combo_flags(card, ev, s, pairs);
    let start_l = s.starts[p.longest];
    let mut seen = 0u8;
    let mut same_category = 0.0f64;
    for i in start_l..pos {
        let f = s.flags[s.code[i] as usize];
        seen |= f;
        if f & SAME_CATEGORY != 0 {
            same_category += f64::from(s.amt[i]);
        }
    }
    let earlier = Earlier {
        sum_l,
        count_l,
        sum_others_l,
        others: &s.amt[start_l..pos],
        prev: (pos > p0).then(|| s.ts[pos - 1]),
        seen,
        same_category,
    };
    tail_columns(
        card,
        ev,
        &earlier,
        &mut out[4 * nw..4 * nw + CARD_TAIL_COLUMNS],
    );

    update_state(card, ev, s, p0, pos, t > cutoff);
}

/// Combo index of the current event among the card's combos (from the flags), if any.
#[inline]
fn current_combo(s: &CardScratch) -> Option<usize> {
    s.flags.iter().position(|&f| f & SAME_COMBO != 0)
}

/// Drop pruned events, insert the current one (when retained), drop unused combos, re-encode
/// (`s` holds the decoded state and the combo flags).
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
    let existing = if store { current_combo(s) } else { None };
    if p0 == 0
        && store
        && pos == s.ts.len()
        && !s.ts.is_empty()
        && try_append(card, ev, s.ts[pos - 1], existing)
    {
        return;
    }
    rebuild(card, ev, s, p0, pos, store, existing);
}

/// The general update: drop the first `p0` decoded events, insert the current one at `pos`
/// when `store` (with combo `existing`, or a new one), drop unused combos, re-encode.
fn rebuild(
    card: &mut Card,
    ev: &CardEvent,
    s: &mut CardScratch,
    p0: usize,
    pos: usize,
    store: bool,
    existing: Option<usize>,
) {
    if p0 > 0 {
        s.ts.drain(..p0);
        s.amt.drain(..p0);
        s.code.drain(..p0);
    }
    if store {
        let c = match existing {
            Some(c) => c,
            None => {
                s.combos.push(combo_word(ev.merchant, ev.pair));
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
/// false when the general path must re-encode instead. `last` is the time of the card's last
/// event (it has one), `existing` the event's combo index when the card already has its
/// combination.
fn try_append(card: &mut Card, ev: &CardEvent, last: i64, existing: Option<usize>) -> bool {
    let h = Header::parse(card.buf[0]);
    let k = h.k();
    let gap = ev.t.wrapping_sub(last) as u64;
    if gap > (1u64 << (32 - k)) - 1 || h.n_rec >= u32::MAX as usize {
        return false;
    }
    let first = h.first();
    let (c, h2) = match existing {
        Some(c) => (c, h),
        None => {
            let h2 = Header { nc: h.nc + 1, ..h };
            if h2.nc > MAX_COMBOS || h2.k() != k {
                return false;
            }
            let combo = combo_word(ev.merchant, ev.pair);
            // The layout must stay the one `encode` would choose.
            let fits = bit_width(ev.merchant) <= h.m && bit_width(ev.pair) <= 32 - h.m;
            if h.m != 0 && !fits {
                return false;
            }
            let needed = h2.used() + 1;
            resize_exact(&mut card.buf, card_capacity(needed));
            let first2 = h2.first();
            if first2 != first {
                card.buf.copy_within(first..first + h.n_rec, first2);
            }
            if h.m == 0 {
                card.buf[first] = combo;
            } else if h.nc.is_multiple_of(2) {
                card.buf[first] = packed(combo, h.m);
            } else {
                card.buf[first - 1] |= packed(combo, h.m) << 32;
            }
            (h.nc, h2)
        }
    };
    if h2.nc == h.nc {
        resize_exact(&mut card.buf, card_capacity(h.used() + 1));
    }
    card.buf[h2.first() + h.n_rec] =
        (((gap << k) | c as u64) << 32) | u64::from(ev.amount.to_bits());
    card.buf[0] = Header {
        n_rec: h.n_rec + 1,
        ..h2
    }
    .word();
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(windows: &[i64], lateness: i64) -> CardParams {
        CardParams::new(windows, lateness)
    }

    fn ev(t: i64, amount: f32, merchant: u32) -> CardEvent {
        CardEvent {
            t,
            amount,
            merchant,
            pair: 0,
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
        s.combos = (0..40).map(|c| combo_word(c, c + 1)).collect();
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
        // One combo per word when a symbol does not fit the packed layout.
        s.combos[7] = combo_word(1 << 31, 3);
        encode(&mut s);
        assert_eq!(Header::parse(s.words[0]).m, 0);
        decode(&s.words.clone(), &mut d).unwrap();
        assert_eq!(d.combos, s.combos);
        assert_eq!(d.ts, s.ts);
    }

    #[test]
    fn window_edges_and_retention() {
        let p = params(&[5_000, 60_000], 10_000);
        let mut s = CardScratch::default();
        let mut pairs = Pairs::default();
        assert_eq!(pairs.intern([0, 0]), 0);
        let mut out = vec![0f32; 4 * 2 + CARD_TAIL_COLUMNS];
        let mut card = Card::new(7);
        process(&mut card, &ev(0, 10.0, 1), &p, &mut s, &pairs, &mut out);
        // W - 1 ms later: inside both windows.
        process(&mut card, &ev(4_999, 30.0, 1), &p, &mut s, &pairs, &mut out);
        assert_eq!(&out[0..2], &[2.0, 2.0]);
        // Exactly W after the first: the 5 s window excludes it, the 60 s one keeps it.
        process(&mut card, &ev(5_000, 1.0, 2), &p, &mut s, &pairs, &mut out);
        assert_eq!(&out[0..2], &[2.0, 3.0]);
        assert_eq!(&out[2..4], &[31.0, 41.0]);
        assert_eq!(out[8 + 2], 0.001); // secs since prev
        assert_eq!(out[8 + 6], 1.0); // new merchant
                                     // Retention: W_max + L = 70 s; at t = 75 s the first event (t = 0) is gone.
        process(&mut card, &ev(75_000, 1.0, 1), &p, &mut s, &pairs, &mut out);
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
        let mut pairs = Pairs::default();
        assert_eq!(pairs.intern([0, 0]), 0);
        let mut out = vec![0f32; 4 * 2 + CARD_TAIL_COLUMNS];
        let mut card = Card::new(7);
        process(&mut card, &ev(4_000, 50.0, 1), &p, &mut s, &pairs, &mut out);
        // Late: does not see the later event.
        process(&mut card, &ev(0, 10.0, 1), &p, &mut s, &pairs, &mut out);
        assert_eq!(&out[0..2], &[1.0, 1.0]);
        assert_eq!(out[8 + 2], -1.0);
        assert_eq!(out[8 + 6], 1.0);
        // Tie with the first event: sees both.
        process(&mut card, &ev(4_000, 5.0, 1), &p, &mut s, &pairs, &mut out);
        assert_eq!(&out[0..2], &[3.0, 3.0]);
        assert_eq!(out[2], 65.0);
        assert_eq!(out[8 + 2], 0.0);
        assert_eq!(out[8 + 6], 0.0);
        // Far too late (beyond retention): only itself, not stored.
        process(
            &mut card,
            &ev(-100_000, 7.0, 1),
            &p,
            &mut s,
            &pairs,
            &mut out,
        );
        assert_eq!(&out[0..2], &[1.0, 1.0]);
        assert_eq!(card.summary(), (3, 4_000));
    }

    #[test]
    fn combo_layouts_do_not_change_features() {
        // The same stream with small merchant symbols (packed combos) and with symbols that
        // force, or switch to, one combo per word.
        let p = params(&[5_000, 60_000], 10_000);
        let maps: [fn(u32) -> u32; 3] = [
            |m| m,
            |m| m | (1 << 31),
            |m| if m < 5 { m } else { m << 22 },
        ];
        let mut outs: Vec<Vec<f32>> = Vec::new();
        for map in maps {
            let mut s = CardScratch::default();
            let mut pairs = Pairs::default();
            let mut card = Card::new(7);
            let mut out = vec![0f32; 4 * 2 + CARD_TAIL_COLUMNS];
            let mut all = Vec::new();
            let mut x = 12345u64;
            for i in 0..2_000i64 {
                x = crate::hash::mix64(x);
                let late = if x.is_multiple_of(7) {
                    (x % 20_000) as i64
                } else {
                    0
                };
                let (category, country) = (x % 3, (x >> 8) % 4);
                let e = CardEvent {
                    pair: pairs.intern([category, country]),
                    category,
                    country,
                    ..ev(
                        i * 700 - late,
                        (x % 1000 + 1) as f32,
                        map(((x >> 16) % 9) as u32),
                    )
                };
                process(&mut card, &e, &p, &mut s, &pairs, &mut out);
                all.extend_from_slice(&out);
                let mut d = CardScratch::default();
                decode(&card.buf, &mut d).unwrap();
                assert_eq!(card.used_words(), {
                    encode(&mut d);
                    d.words.len()
                });
            }
            outs.push(all);
        }
        assert_eq!(outs[0], outs[1]);
        assert_eq!(outs[0], outs[2]);
    }

    #[test]
    fn haversine_paris_new_york() {
        let km = haversine_km(48.8566, 2.3522, 40.7128, -74.0060);
        assert!((km - 5837.25).abs() < 0.01, "{km}");
        for (lat, lon) in [
            (48.8566, 2.3522),
            (-90.0, 180.0),
            (120.0, -400.0),
            (0.0, -0.0),
        ] {
            assert_eq!(haversine_km(lat, lon, lat, lon).to_bits(), 0.0f64.to_bits());
        }
    }
}
