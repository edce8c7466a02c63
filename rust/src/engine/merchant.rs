//! Merchant state (`merchant_count_<W>`).
//!
//! A merchant keeps the event times of its retained events as sorted `u32` millisecond
//! offsets from a per-merchant base in a deque (4 bytes per event): on-time events are pushed
//! at the back, pruning pops at the front, and window counts are two binary searches, so a
//! busy merchant costs `O(log n)` per event. The base moves only when an offset would not
//! fit; configuration keeps `W_max + L` of merchants within `u32` range. A merchant also
//! holds its global merchant symbol (see `symbols.rs`), which cards use to name it.

use std::collections::VecDeque;

use crate::engine::snapshot::{Reader, Writer};
use crate::engine::store::{fit_class, heap_bytes, prefetch_lines, Keyed};

use crate::error::{TxError, TxResult};

/// Capacity of a merchant deque holding `n` times: [`fit_class`] rounding to at least 16
/// (fewer reallocations while a merchant grows).
#[inline]
fn capacity(n: usize) -> usize {
    if n == 0 {
        0
    } else {
        fit_class(n, 4, 16)
    }
}

/// Merchant windows and retention.
#[derive(Debug, Clone)]
pub(crate) struct MerchantParams {
    pub windows: Vec<i64>,
    pub retention: i64,
}

/// State of one merchant.
pub(crate) struct Merchant {
    key: u64,
    base: i64,
    times: VecDeque<u32>,
    sym: u32,
}

impl Keyed for Merchant {
    #[inline]
    fn key(&self) -> u64 {
        self.key
    }

    #[inline]
    fn prefetch_data(&self) {
        // The binary searches of the windows touch lines across the whole deque.
        let (front, back) = self.times.as_slices();
        prefetch_lines(front, 8);
        prefetch_lines(back, 8);
    }
}

impl Merchant {
    /// A merchant that has seen nothing yet, named `sym` by cards.
    pub(crate) fn new(key: u64, sym: u32) -> Self {
        Merchant {
            key,
            base: 0,
            times: VecDeque::new(),
            sym,
        }
    }

    /// Global merchant symbol.
    #[inline]
    pub(crate) fn sym(&self) -> u32 {
        self.sym
    }

    /// Number of retained events with event time `<= t`.
    #[inline]
    fn count_le(&self, t: i64) -> usize {
        let rel = t.saturating_sub(self.base);
        if rel < 0 {
            0
        } else if rel > i64::from(u32::MAX) {
            self.times.len()
        } else {
            self.times.partition_point(|&o| i64::from(o) <= rel)
        }
    }

    /// Newest retained event time (`None` when empty).
    pub(crate) fn newest(&self) -> Option<i64> {
        self.times.back().map(|&o| self.base + i64::from(o))
    }

    /// Number of retained events.
    pub(crate) fn len(&self) -> usize {
        self.times.len()
    }

    /// Heap bytes owned by this merchant.
    pub(crate) fn heap_bytes(&self) -> usize {
        heap_bytes(self.times.capacity() * 4)
    }

    /// Write `merchant_count_<W>` of an event at `t` into `out`, then record the event.
    pub(crate) fn process(&mut self, t: i64, p: &MerchantParams, out: &mut [f32]) {
        let newest = self.newest().map_or(t, |n| n.max(t));
        let cutoff = newest.saturating_sub(p.retention);
        let before = self.times.len();
        let rel_cut = cutoff.saturating_sub(self.base);
        while let Some(&o) = self.times.front() {
            if i64::from(o) <= rel_cut {
                self.times.pop_front();
            } else {
                break;
            }
        }
        let pos = match self.times.back() {
            Some(&o) if self.base + i64::from(o) > t => self.count_le(t),
            _ => self.times.len(),
        };
        for (slot, &w) in out.iter_mut().zip(&p.windows) {
            let lo = self.count_le(t.saturating_sub(w)).min(pos);
            *slot = (pos - lo + 1) as f32;
        }
        if t > cutoff {
            self.insert(pos, t);
        }
        if self.times.len() < before && self.times.capacity() > capacity(self.times.len()) {
            self.times.shrink_to(capacity(self.times.len()));
        }
    }

    fn insert(&mut self, pos: usize, t: i64) {
        if self.times.is_empty() {
            self.base = t;
        } else if t < self.base {
            // Retained span < retention <= u32::MAX, so shifted offsets still fit.
            let shift = (self.base - t) as u32;
            for o in self.times.iter_mut() {
                *o += shift;
            }
            self.base = t;
        } else if t - self.base > i64::from(u32::MAX) {
            let shift = self.times[0];
            for o in self.times.iter_mut() {
                *o -= shift;
            }
            self.base += i64::from(shift);
        }
        let len = self.times.len();
        if len == self.times.capacity() {
            self.times.reserve_exact(capacity(len + 1) - len);
        }
        self.times.insert(pos, (t - self.base) as u32);
    }

    /// Append the snapshot form: key, symbol, base, offsets.
    pub(crate) fn write_to(&self, w: &mut Writer) {
        w.u64(self.key);
        w.u32(self.sym);
        w.i64(self.base);
        w.u32(self.times.len() as u32);
        for &o in &self.times {
            w.u32(o);
        }
    }

    /// Read and validate one merchant written by [`Merchant::write_to`].
    pub(crate) fn read_from(r: &mut Reader<'_>) -> TxResult<Self> {
        let key = r.u64()?;
        let sym = r.u32()?;
        let base = r.i64()?;
        let n = r.u32()? as usize;
        let offsets = r.u32_vec(n)?;
        if n == 0
            || offsets.windows(2).any(|p| p[0] > p[1])
            || base.checked_add(i64::from(offsets[n - 1])).is_none()
        {
            return Err(TxError::Snapshot(format!(
                "merchant {key}: bad event times"
            )));
        }
        let mut times = VecDeque::with_capacity(capacity(n));
        times.extend(offsets);
        Ok(Merchant {
            key,
            base,
            times,
            sym,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_edges_late_and_rebase() {
        let p = MerchantParams {
            windows: vec![5_000, 10_000],
            retention: 12_000,
        };
        let mut m = Merchant::new(1, 0);
        let mut out = [0f32; 2];
        m.process(0, &p, &mut out);
        assert_eq!(out, [1.0, 1.0]);
        m.process(4_999, &p, &mut out);
        assert_eq!(out, [2.0, 2.0]);
        m.process(5_000, &p, &mut out);
        assert_eq!(out, [2.0, 3.0]);
        m.process(-1_000, &p, &mut out); // late, before the base
        assert_eq!(out, [1.0, 1.0]);
        assert_eq!(m.len(), 4);
        m.process(12_000, &p, &mut out); // prunes -1_000 and 0 (<= 12_000 - 12_000)
        assert_eq!(m.len(), 3);
        assert_eq!(out, [1.0, 3.0]);
        // Jump far ahead: forces a rebase, everything old is pruned.
        m.process(10_000_000_000, &p, &mut out);
        assert_eq!(out, [1.0, 1.0]);
        assert_eq!(m.len(), 1);
        assert_eq!(m.newest(), Some(10_000_000_000));
        assert_eq!(m.times.capacity(), capacity(m.len()));
    }

    #[test]
    fn capacity_tracks_size_class() {
        let p = MerchantParams {
            windows: vec![1_000_000],
            retention: 1_000_000,
        };
        let mut m = Merchant::new(1, 0);
        let mut out = [0f32; 1];
        for i in 0..5_000i64 {
            m.process(i * 500, &p, &mut out);
            assert_eq!(m.times.capacity(), capacity(m.len()), "i={i}");
        }
    }
}
