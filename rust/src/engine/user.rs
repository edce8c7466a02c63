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
use crate::engine::store::{heap_bytes, prefetch, resize_exact, size_class, Keyed};
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
        prefetch(self.buf.as_ptr());
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
    words: Vec<u32>,
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
        let cap = size_class(n);
        resize_exact(&mut self.buf, cap);
        self.buf[..n].copy_from_slice(&s.words);
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
        let mut buf = vec![0u32; size_class(n)].into_boxed_slice();
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
