//! User state (`user_distinct_cards_<W>`).
//!
//! A user is 24 bytes in its shard's slab (key and one boxed buffer of `u32` words):
//!
//! ```text
//! word 0         number of records
//! word 1         n_cards (bits 0..24) | code bits k (24..32)
//! words 2, 3     base: event time of the first retained event (i64, low word first)
//! 2 words each   cards used by retained events (u64, low word first)
//! 1 word each    records, ascending (ts, arrival): card index in the low k bits (all ones:
//!                spacer), ms since the previous record in the other 32 - k bits
//! ```

use crate::engine::snapshot::{Reader, Writer};
use crate::engine::store::{fit_class, heap_bytes, prefetch_lines, resize_exact, Keyed};
use crate::error::{TxError, TxResult};

const HEADER_WORDS: usize = 4;
const MAX_CARDS: usize = (1 << 24) - 1;

/// User windows and retention.
#[derive(Debug, Clone)]
pub(crate) struct UserParams {
    pub windows: Vec<i64>,
    pub retention: i64,
}

/// State of one user.
pub(crate) struct User {
    key: u64,
    buf: Box<[u32]>,
}

impl Keyed for User {
    #[inline]
    fn key(&self) -> u64 {
        self.key
    }

    #[inline]
    fn prefetch_data(&self) {
        prefetch_lines(&self.buf, 4);
    }
}

/// Decoded user state, reused between events (one per worker thread).
#[derive(Default)]
pub(crate) struct UserScratch {
    ts: Vec<i64>,
    code: Vec<u32>,
    cards: Vec<u64>,
    marks: Vec<bool>,
    live: Vec<u32>,
    lo: Vec<i64>,
    masks: Vec<u64>,
    words: Vec<u32>,
}

/// Capacity (words) of a user buffer using `n` words: at least 14 (one event of up to five
/// cards, or a few events of one or two, without reallocating), growing 8 words at a time or
/// more, no malloc padding.
#[inline]
fn capacity(n: usize) -> usize {
    fit_class(n.max(14), 4, 8)
}

#[inline]
fn code_bits(n: usize) -> u32 {
    (usize::BITS - n.leading_zeros()).max(1)
}

fn used_words(buf: &[u32]) -> usize {
    if buf.len() < HEADER_WORDS {
        return 0;
    }
    HEADER_WORDS + 2 * (buf[1] & 0xFF_FFFF) as usize + buf[0] as usize
}

fn decode(buf: &[u32], s: &mut UserScratch) -> Result<(), &'static str> {
    s.ts.clear();
    s.code.clear();
    s.cards.clear();
    if buf.is_empty() {
        return Ok(());
    }
    if buf.len() < HEADER_WORDS {
        return Err("truncated header");
    }
    let n_rec = buf[0] as usize;
    let nc = (buf[1] & 0xFF_FFFF) as usize;
    let k = buf[1] >> 24;
    let first = HEADER_WORDS + 2 * nc;
    if buf.len() < first + n_rec {
        return Err("truncated records");
    }
    if k != code_bits(nc) {
        return Err("bad code width");
    }
    s.cards.extend(
        buf[HEADER_WORDS..first]
            .chunks_exact(2)
            .map(|c| u64::from(c[0]) | (u64::from(c[1]) << 32)),
    );
    let mask = (1u32 << k) - 1;
    let mut ts = (u64::from(buf[2]) | (u64::from(buf[3]) << 32)) as i64;
    for &tag in &buf[first..first + n_rec] {
        let code = tag & mask;
        ts = ts.checked_add(i64::from(tag >> k)).ok_or("time overflow")?;
        if code != mask {
            if code as usize >= nc {
                return Err("bad card index");
            }
            s.ts.push(ts);
            s.code.push(code);
        }
    }
    Ok(())
}

fn encode(s: &mut UserScratch) {
    let UserScratch {
        ts,
        code,
        cards,
        words,
        ..
    } = s;
    debug_assert!(!ts.is_empty() && cards.len() <= MAX_CARDS);
    words.clear();
    let nc = cards.len();
    let k = code_bits(nc);
    let spacer = (1u32 << k) - 1;
    let max_delta = (1u64 << (32 - k)) - 1;
    let base = ts[0] as u64;
    words.extend_from_slice(&[0, nc as u32 | (k << 24), base as u32, (base >> 32) as u32]);
    for &c in cards.iter() {
        words.extend_from_slice(&[c as u32, (c >> 32) as u32]);
    }
    let mut prev = ts[0];
    let mut n_rec = 0u32;
    for i in 0..ts.len() {
        let mut gap = ts[i].wrapping_sub(prev) as u64;
        while gap > max_delta {
            words.push(((max_delta as u32) << k) | spacer);
            gap -= max_delta;
            n_rec += 1;
        }
        words.push(((gap as u32) << k) | code[i]);
        n_rec += 1;
        prev = ts[i];
    }
    words[0] = n_rec;
}

impl User {
    /// A user that has seen nothing yet.
    pub(crate) fn new(key: u64) -> Self {
        User {
            key,
            buf: Box::default(),
        }
    }

    /// Heap bytes owned by this user.
    pub(crate) fn heap_bytes(&self) -> usize {
        heap_bytes(self.buf.len() * 4)
    }

    /// Number of retained events and the newest event time.
    pub(crate) fn summary(&self) -> (usize, i64) {
        if self.buf.len() < HEADER_WORDS {
            return (0, i64::MIN);
        }
        let k = self.buf[1] >> 24;
        let mask = (1u32 << k) - 1;
        let first = HEADER_WORDS + 2 * (self.buf[1] & 0xFF_FFFF) as usize;
        let mut ts = (u64::from(self.buf[2]) | (u64::from(self.buf[3]) << 32)) as i64;
        let mut events = 0;
        for &tag in &self.buf[first..used_words(&self.buf)] {
            ts = ts.wrapping_add(i64::from(tag >> k));
            events += usize::from(tag & mask != mask);
        }
        (events, ts)
    }

    /// Write `user_distinct_cards_<W>` of an event of `card` at `t` into `out`, then record it.
    pub(crate) fn process(
        &mut self,
        t: i64,
        card: u64,
        p: &UserParams,
        s: &mut UserScratch,
        out: &mut [f32],
    ) {
        if !self.process_on_time(t, card, p, s, out) {
            self.process_any(t, card, p, s, out);
        }
    }

    /// [`User::process`] for an event at or after every event of a user with at most 64
    /// cards (the usual case): one pass over the records, cards in a bitmask. False, with
    /// nothing changed, otherwise.
    fn process_on_time(
        &mut self,
        t: i64,
        card: u64,
        p: &UserParams,
        s: &mut UserScratch,
        out: &mut [f32],
    ) -> bool {
        let buf = &self.buf;
        if buf.len() < HEADER_WORDS {
            return false;
        }
        let n_rec = buf[0] as usize;
        let nc = (buf[1] & 0xFF_FFFF) as usize;
        let k = buf[1] >> 24;
        if nc == 0 || nc > 64 {
            return false;
        }
        let first = HEADER_WORDS + 2 * nc;
        let current = buf[HEADER_WORDS..first]
            .chunks_exact(2)
            .position(|c| u64::from(c[0]) | (u64::from(c[1]) << 32) == card);
        let cutoff = t.saturating_sub(p.retention);
        s.lo.clear();
        s.lo.extend(p.windows.iter().map(|&w| t.saturating_sub(w)));
        s.masks.clear();
        s.masks.resize(p.windows.len(), 0);
        let mask = (1u32 << k) - 1;
        let mut ts = (u64::from(buf[2]) | (u64::from(buf[3]) << 32)) as i64;
        let (mut p0, mut last, mut kept, mut skip, mut used) = (0usize, None, 0i64, 0usize, 0u64);
        for (i, &tag) in buf[first..first + n_rec].iter().enumerate() {
            let code = tag & mask;
            ts = ts.wrapping_add(i64::from(tag >> k));
            if code == mask {
                continue;
            }
            if ts > t {
                return false;
            }
            if ts <= cutoff {
                p0 += 1;
                continue;
            }
            if last.is_none() {
                (skip, kept) = (i, ts);
            }
            last = Some(ts);
            used |= 1 << code;
            for (m, &lo) in s.masks.iter_mut().zip(&s.lo) {
                if ts > lo {
                    *m |= 1 << code;
                }
            }
        }
        let (current_bit, new_card) = match current {
            Some(c) => (1u64 << c, 0),
            None => (0, 1),
        };
        for (slot, &m) in out.iter_mut().zip(&s.masks) {
            *slot = ((m | current_bit).count_ones() + new_card) as f32;
        }
        // The event is kept (t > t - retention). In place when every card stays in use.
        if let Some(last) = last {
            let all = u64::MAX >> (64 - nc);
            if (p0 == 0 || (used | current_bit) == all)
                && self.try_slide(t, card, current, last, if p0 == 0 { 0 } else { skip }, kept)
            {
                return true;
            }
        }
        decode(&self.buf, s).expect("user state is well-formed");
        let pos = s.ts.len();
        self.update(t, card, s, p0, pos, true, current);
        true
    }

    /// [`User::process`] for any event, late ones included.
    fn process_any(
        &mut self,
        t: i64,
        card: u64,
        p: &UserParams,
        s: &mut UserScratch,
        out: &mut [f32],
    ) {
        decode(&self.buf, s).expect("user state is well-formed");
        let newest = s.ts.last().map_or(t, |&x| x.max(t));
        let cutoff = newest.saturating_sub(p.retention);
        let p0 = s.ts.partition_point(|&x| x <= cutoff);
        let pos = s.ts.partition_point(|&x| x <= t).max(p0);
        let current = s.cards.iter().position(|&c| c == card);
        for (slot, &w) in out.iter_mut().zip(&p.windows) {
            let lo = t.saturating_sub(w);
            let start = p0 + s.ts[p0..pos].partition_point(|&x| x <= lo);
            s.marks.clear();
            s.marks.resize(s.cards.len(), false);
            let mut distinct = 0usize;
            for &c in &s.code[start..pos] {
                let m = &mut s.marks[c as usize];
                distinct += usize::from(!*m);
                *m = true;
            }
            distinct += usize::from(current.is_none_or(|c| !s.marks[c]));
            *slot = distinct as f32;
        }

        let store = t > cutoff;
        if p0 == 0 && !store {
            return;
        }
        if p0 == 0
            && pos == s.ts.len()
            && !s.ts.is_empty()
            && self.try_append(t, card, current, s.ts[pos - 1])
        {
            return;
        }
        self.update(t, card, s, p0, pos, store, current);
    }

    /// The general update (`s` holds the decoded state): drop the first `p0` events, insert
    /// the current one at `pos` when `store`, drop unused cards, re-encode.
    #[allow(clippy::too_many_arguments)]
    fn update(
        &mut self,
        t: i64,
        card: u64,
        s: &mut UserScratch,
        p0: usize,
        pos: usize,
        store: bool,
        current: Option<usize>,
    ) {
        if p0 > 0 {
            s.ts.drain(..p0);
            s.code.drain(..p0);
        }
        if store {
            let c = current.unwrap_or_else(|| {
                s.cards.push(card);
                s.cards.len() - 1
            });
            s.ts.insert(pos - p0, t);
            s.code.insert(pos - p0, c as u32);
        }
        if p0 > 0 {
            let nc = s.cards.len();
            s.live.clear();
            s.live.resize(nc, 0);
            for &c in &s.code {
                s.live[c as usize] += 1;
            }
            if s.live.contains(&0) {
                let mut next = 0;
                for c in 0..nc {
                    if s.live[c] > 0 {
                        s.cards[next] = s.cards[c];
                        s.live[c] = next as u32;
                        next += 1;
                    }
                }
                s.cards.truncate(next);
                for c in s.code.iter_mut() {
                    *c = s.live[*c as usize];
                }
            }
        }
        encode(s);
        let n = s.words.len();
        resize_exact(&mut self.buf, capacity(n));
        self.buf[..n].copy_from_slice(&s.words);
    }

    /// Append an on-time event in place (no pruning, no change of code width, no spacer
    /// needed); false when the general path must re-encode instead. `current` is the index
    /// of `card` among the user's cards, if it has it, `last` the time of the user's last
    /// event (it has one).
    fn try_append(&mut self, t: i64, card: u64, current: Option<usize>, last: i64) -> bool {
        self.try_slide(t, card, current, last, 0, 0)
    }

    /// [`User::try_append`] after dropping the first `skip` records, when `skip > 0` the
    /// first kept one being an event at `kept` and every card staying in use.
    fn try_slide(
        &mut self,
        t: i64,
        card: u64,
        current: Option<usize>,
        last: i64,
        skip: usize,
        kept: i64,
    ) -> bool {
        let n_rec = self.buf[0] as usize;
        let nc = (self.buf[1] & 0xFF_FFFF) as usize;
        let k = self.buf[1] >> 24;
        let (c, new) = match current {
            Some(c) => (c, false),
            None => (nc, true),
        };
        let nc2 = nc + usize::from(new);
        let gap = t.wrapping_sub(last) as u64;
        if nc2 > MAX_CARDS
            || code_bits(nc2) != k
            || gap > (1u64 << (32 - k)) - 1
            || n_rec >= u32::MAX as usize
        {
            return false;
        }
        let first = HEADER_WORDS + 2 * nc;
        if skip > 0 {
            self.buf.copy_within(first + skip..first + n_rec, first);
            self.buf[first] &= (1 << k) - 1;
            self.buf[2] = kept as u32;
            self.buf[3] = (kept as u64 >> 32) as u32;
        }
        let n_keep = n_rec - skip;
        let needed = first + n_keep + 1 + if new { 2 } else { 0 };
        resize_exact(&mut self.buf, capacity(needed));
        if new {
            self.buf.copy_within(first..first + n_keep, first + 2);
            self.buf[first] = card as u32;
            self.buf[first + 1] = (card >> 32) as u32;
        }
        let first2 = HEADER_WORDS + 2 * nc2;
        self.buf[first2 + n_keep] = ((gap as u32) << k) | c as u32;
        self.buf[0] = n_keep as u32 + 1;
        self.buf[1] = nc2 as u32 | (k << 24);
        true
    }

    /// Append the snapshot form: key, used buffer words.
    pub(crate) fn write_to(&self, w: &mut Writer) {
        w.u64(self.key);
        let used = &self.buf[..used_words(&self.buf)];
        w.u32(used.len() as u32);
        for &word in used {
            w.u32(word);
        }
    }

    /// Read and validate one user written by [`User::write_to`].
    pub(crate) fn read_from(r: &mut Reader<'_>, s: &mut UserScratch) -> TxResult<Self> {
        let key = r.u64()?;
        let n = r.u32()? as usize;
        let words = r.u32_vec(n)?;
        let bad = |why: &str| TxError::Snapshot(format!("user {key}: {why}"));
        decode(&words, s).map_err(bad)?;
        if s.ts.is_empty() || used_words(&words) != n {
            return Err(bad("inconsistent buffer"));
        }
        let mut used = vec![false; s.cards.len()];
        for &c in &s.code {
            used[c as usize] = true;
        }
        if used.contains(&false) {
            return Err(bad("unused card"));
        }
        let mut buf = vec![0u32; capacity(n)].into_boxed_slice();
        buf[..n].copy_from_slice(&words);
        Ok(User { key, buf })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn distinct_cards_edges_ties_late_and_spacers() {
        let p = UserParams {
            windows: vec![5_000],
            retention: 15_000,
        };
        let mut s = UserScratch::default();
        let mut u = User::new(1);
        let mut out = [0f32; 1];
        u.process(0, 10, &p, &mut s, &mut out);
        assert_eq!(out, [1.0]);
        u.process(4_999, 20, &p, &mut s, &mut out);
        assert_eq!(out, [2.0]);
        u.process(5_000, 10, &p, &mut s, &mut out); // window (0, 5000]: 20 and 10
        assert_eq!(out, [2.0]);
        u.process(5_000, 30, &p, &mut s, &mut out); // tie
        assert_eq!(out, [3.0]);
        u.process(1_000, 40, &p, &mut s, &mut out); // late: (-4000, 1000] has card 10 only
        assert_eq!(out, [2.0]);
        assert_eq!(u.summary(), (5, 5_000));
        // A gap wider than the delta field: spacers, and old cards are dropped.
        u.process(1 << 40, 10, &p, &mut s, &mut out);
        assert_eq!(out, [1.0]);
        assert_eq!(u.summary(), (1, 1 << 40));
        decode(&u.buf, &mut s).unwrap();
        assert_eq!(s.cards, vec![10]);
    }

    #[test]
    fn long_gaps_round_trip() {
        let mut s = UserScratch {
            cards: vec![1, 2, 3, 4, 5],
            ts: vec![-(1 << 36), 0, 1, 1 << 31, (1 << 31) + 5, 1 << 36],
            code: vec![0, 1, 2, 3, 4, 0],
            ..UserScratch::default()
        };
        encode(&mut s);
        let words = s.words.clone();
        let mut d = UserScratch::default();
        decode(&words, &mut d).unwrap();
        assert_eq!(
            (d.ts, d.code, d.cards),
            (s.ts.clone(), s.code.clone(), s.cards.clone())
        );
    }
}
