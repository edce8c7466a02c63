//! Symbol tables: small stable ids for keys that many entities repeat.
//!
//! Cards name the merchant and the (category, country) pair of each combination they keep
//! with 32-bit symbols instead of three 64-bit hashes. Merchant symbols live in the merchant
//! shards (one table per shard, interned by the merchant shard's task when a merchant entity
//! is created); a merchant's global symbol is `local id × shards + shard`. Pair symbols are
//! engine-wide (few distinct values, so the table stays in cache): each batch row's pair is
//! interned while the batch is partitioned, before the card shards run.
//!
//! A table is an array of keys indexed by id, an occupancy bitset and an open-addressing
//! index of `id + 1` slots. A new key takes the lowest free id, so the ids and the footprint
//! depend only on the set of live keys and the order they were added in; ids are only
//! freed by [`Symbols::retain`] (idle eviction collects the ids no entity uses any more),
//! which also trims trailing free ids. Capacities follow [`size_class`] and [`index_slots`]
//! of the lengths, so a restored table has the same footprint as the one written.

use crate::engine::snapshot::{Reader, Writer};
use crate::engine::store::{heap_bytes, index_slots, size_class};
use crate::error::{TxError, TxResult};
use crate::hash::mix64;

/// A key of a symbol table.
pub(crate) trait SymbolKey: Copy + Eq + Default {
    /// Well-mixed 64-bit hash.
    fn hash(&self) -> u64;
    /// Append the snapshot form.
    fn write(&self, w: &mut Writer);
    /// Read the snapshot form.
    fn read(r: &mut Reader<'_>) -> TxResult<Self>;
}

impl SymbolKey for u64 {
    #[inline]
    fn hash(&self) -> u64 {
        mix64(*self ^ 0x5851_f42d_4c95_7f2d)
    }
    fn write(&self, w: &mut Writer) {
        w.u64(*self);
    }
    fn read(r: &mut Reader<'_>) -> TxResult<Self> {
        r.u64()
    }
}

impl SymbolKey for [u64; 2] {
    #[inline]
    fn hash(&self) -> u64 {
        mix64(self[0] ^ self[1].rotate_left(29) ^ 0x5851_f42d_4c95_7f2d)
    }
    fn write(&self, w: &mut Writer) {
        w.u64(self[0]);
        w.u64(self[1]);
    }
    fn read(r: &mut Reader<'_>) -> TxResult<Self> {
        Ok([r.u64()?, r.u64()?])
    }
}

/// Ids of keys; see the module documentation.
pub(crate) struct Symbols<K> {
    /// Key of each id (`K::default()` for free ids).
    keys: Vec<K>,
    /// Occupancy bitset over ids.
    used: Vec<u64>,
    /// Open-addressing index: `id + 1`, 0 for empty.
    slots: Vec<u32>,
    /// Number of used ids.
    live: usize,
    /// Every bitset word below this one is full.
    full_words: usize,
}

impl<K> Default for Symbols<K> {
    fn default() -> Self {
        Symbols {
            keys: Vec::new(),
            used: Vec::new(),
            slots: Vec::new(),
            live: 0,
            full_words: 0,
        }
    }
}

#[inline]
fn home(hash: u64, n: usize) -> usize {
    ((hash & 0xFFFF_FFFF).wrapping_mul(n as u64) >> 32) as usize
}

/// Grow `v` to hold `len` elements, capacity following [`size_class`].
fn grow_to<T: Copy + Default>(v: &mut Vec<T>, len: usize) {
    if len > v.capacity() {
        v.reserve_exact(size_class(len) - v.len());
    }
    v.resize(len, T::default());
}

impl<K: SymbolKey> Symbols<K> {
    /// Id of `key`, if it has one.
    #[inline]
    pub(crate) fn get(&self, key: &K) -> Option<u32> {
        let n = self.slots.len();
        if n == 0 {
            return None;
        }
        let mut i = home(key.hash(), n);
        loop {
            let s = self.slots[i];
            if s == 0 {
                return None;
            }
            if self.keys[(s - 1) as usize] == *key {
                return Some(s - 1);
            }
            i += 1;
            if i == n {
                i = 0;
            }
        }
    }

    /// Id of `key`, taking the lowest free id when it has none.
    pub(crate) fn intern(&mut self, key: K) -> u32 {
        if let Some(id) = self.get(&key) {
            return id;
        }
        let len = self.keys.len();
        let mut id = len;
        while self.full_words < self.used.len() {
            let w = self.used[self.full_words];
            if w != u64::MAX {
                let candidate = self.full_words * 64 + (!w).trailing_zeros() as usize;
                if candidate < len {
                    id = candidate;
                }
                break;
            }
            self.full_words += 1;
        }
        assert!(id < u32::MAX as usize - 1, "more than 2^32 - 2 symbols");
        if id == len {
            grow_to(&mut self.keys, len + 1);
            grow_to(&mut self.used, (len + 1).div_ceil(64));
        }
        self.keys[id] = key;
        self.used[id / 64] |= 1 << (id % 64);
        self.live += 1;
        let n = self.slots.len();
        if index_slots(self.live) != n {
            self.rebuild_index();
        } else {
            self.place(id, n);
        }
        id as u32
    }

    fn place(&mut self, id: usize, n: usize) {
        let mut i = home(self.keys[id].hash(), n);
        while self.slots[i] != 0 {
            i += 1;
            if i == n {
                i = 0;
            }
        }
        self.slots[i] = id as u32 + 1;
    }

    fn rebuild_index(&mut self) {
        let n = index_slots(self.live);
        self.slots = vec![0u32; n];
        for id in 0..self.keys.len() {
            if self.is_used(id as u32) {
                self.place(id, n);
            }
        }
    }

    /// Key of a used id.
    #[inline]
    pub(crate) fn key(&self, id: u32) -> K {
        self.keys[id as usize]
    }

    /// Whether `id` is in use.
    #[inline]
    pub(crate) fn is_used(&self, id: u32) -> bool {
        let id = id as usize;
        id < self.keys.len() && self.used[id / 64] & (1 << (id % 64)) != 0
    }

    /// One more than the largest used id (0 when empty).
    pub(crate) fn id_bound(&self) -> usize {
        self.keys.len()
    }

    /// Number of used ids.
    #[cfg(test)]
    pub(crate) fn live(&self) -> usize {
        self.live
    }

    /// Free every used id for which `keep` is false; returns how many were freed.
    pub(crate) fn retain(&mut self, mut keep: impl FnMut(u32) -> bool) -> usize {
        let mut freed = 0;
        for id in 0..self.keys.len() {
            if self.is_used(id as u32) && !keep(id as u32) {
                self.used[id / 64] &= !(1 << (id % 64));
                self.keys[id] = K::default();
                freed += 1;
            }
        }
        if freed == 0 {
            return 0;
        }
        self.live -= freed;
        let mut len = self.keys.len();
        while len > 0 && !self.is_used(len as u32 - 1) {
            len -= 1;
        }
        self.keys.truncate(len);
        self.keys.shrink_to(size_class(len));
        self.used.truncate(len.div_ceil(64));
        self.used.shrink_to(size_class(self.used.len()));
        self.full_words = 0;
        self.rebuild_index();
        freed
    }

    /// Heap bytes of the keys, the bitset and the index.
    pub(crate) fn heap_bytes(&self) -> usize {
        heap_bytes(self.keys.capacity() * std::mem::size_of::<K>())
            + heap_bytes(self.used.capacity() * 8)
            + heap_bytes(self.slots.capacity() * 4)
    }

    /// Append the snapshot form: `u32 n`, `n` keys (free ids as zeros), the bitset words.
    pub(crate) fn write_to(&self, w: &mut Writer) {
        w.u32(self.keys.len() as u32);
        for k in &self.keys {
            k.write(w);
        }
        for &word in &self.used {
            w.u64(word);
        }
    }

    /// Read and validate a table written by [`Symbols::write_to`].
    pub(crate) fn read_from(r: &mut Reader<'_>, what: &str) -> TxResult<Self> {
        let bad = |why: &str| TxError::Snapshot(format!("{what} symbols: {why}"));
        let len = r.u32()? as usize;
        let key_bytes = std::mem::size_of::<K>();
        if r.remaining() < len.saturating_mul(key_bytes) {
            return Err(TxError::Snapshot("truncated data".into()));
        }
        let mut keys = Vec::with_capacity(size_class(len));
        for _ in 0..len {
            keys.push(K::read(r)?);
        }
        let words = len.div_ceil(64);
        let mut used = Vec::with_capacity(size_class(words));
        for _ in 0..words {
            used.push(r.u64()?);
        }
        if !len.is_multiple_of(64) && used[words - 1] >> (len % 64) != 0 {
            return Err(bad("id beyond the table"));
        }
        let mut table = Symbols {
            keys,
            used,
            slots: Vec::new(),
            live: 0,
            full_words: 0,
        };
        if len > 0 && !table.is_used(len as u32 - 1) {
            return Err(bad("trailing free id"));
        }
        for id in 0..len {
            if table.is_used(id as u32) {
                table.live += 1;
            } else if table.keys[id] != K::default() {
                return Err(bad("key on a free id"));
            }
        }
        table.rebuild_index();
        for id in 0..len as u32 {
            if table.is_used(id) && table.get(&table.key(id)) != Some(id) {
                return Err(bad("duplicate key"));
            }
        }
        Ok(table)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_stable_reused_lowest_first_and_trimmed() {
        let mut s: Symbols<u64> = Symbols::default();
        for k in 0..200u64 {
            assert_eq!(s.intern(k * 3), k as u32);
        }
        assert_eq!(s.intern(30), 10);
        assert_eq!(s.retain(|id| id % 2 == 0 && id < 150), 125);
        assert_eq!(s.live(), 75);
        assert_eq!(s.id_bound(), 149);
        assert_eq!(s.get(&3), None);
        assert_eq!(s.get(&6), Some(2));
        assert_eq!(s.intern(1), 1);
        assert_eq!(s.intern(2), 3);
        let mut w = Writer::default();
        s.write_to(&mut w);
        let mut r = Reader::new(&w.buf);
        let back = Symbols::<u64>::read_from(&mut r, "test").unwrap();
        assert!(r.is_at_end());
        assert_eq!(back.heap_bytes(), s.heap_bytes());
        for id in 0..s.id_bound() as u32 {
            assert_eq!(back.is_used(id), s.is_used(id));
            if s.is_used(id) {
                assert_eq!(back.key(id), s.key(id));
                assert_eq!(back.get(&s.key(id)), Some(id));
            }
        }
        assert_eq!(s.retain(|_| false), 77);
        assert_eq!(s.heap_bytes(), 0);
    }

    #[test]
    fn duplicate_keys_are_refused() {
        let mut w = Writer::default();
        w.u32(2);
        w.u64(7);
        w.u64(7);
        w.u64(0b11);
        let mut r = Reader::new(&w.buf);
        assert!(Symbols::<u64>::read_from(&mut r, "test").is_err());
    }
}
