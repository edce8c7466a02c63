//! Entity storage shared by the three kinds: a slab of entities plus an open-addressing
//! index of slab positions, with capacities that are a pure function of the length.
//!
//! Every growable buffer of the state (slabs, indexes, per-entity buffers, merchant deques,
//! symbol tables) has a capacity determined by its length alone ([`size_class`],
//! [`index_slots`], [`fit_class`]), so the memory footprint depends only on the logical
//! state: a restored snapshot reports the same `state_bytes` as the engine that wrote it.
//!
//! Keys are hashed once per batch row with [`key_hash`]: the high bits pick the shard
//! ([`shard_of_hash`]), the low 32 bits the home slot in the shard's index and the bits above
//! them a fingerprint. The index is a flat array of `u32` slots, each holding the slab
//! position plus one in its low bits (as many as the slot count needs) and the fingerprint in
//! the others, probed linearly. Its size is not a power of two but about 1.5 slots per
//! entity, ~6 bytes per entity. Because a slot's address is known from the hash alone, batch
//! loops can prefetch the slot, then the slab entry, then the entity's own buffer several
//! events ahead ([`EntityTable::prefetch_slot`], [`EntityTable::guess`],
//! [`EntityTable::find`]); random state access is what bounds throughput.

use crate::hash::mix64;

/// Capacity used for a buffer holding `n` elements: `n` rounded up to a granule of 1/16 of
/// the largest power of two not above it, at least 4 (slack at most 1/16, ~3 % on average,
/// within malloc's own rounding for small buffers).
#[inline]
pub(crate) fn size_class(n: usize) -> usize {
    if n == 0 {
        return 0;
    }
    let granule = ((1usize << n.ilog2()) / 16).max(4);
    n.div_ceil(granule) * granule
}

/// Capacity, in elements of `unit` bytes (4 or 8), for a buffer holding `n` elements such
/// that the malloc chunk (8-byte header, 16-byte alignment) has no padding: the size class
/// of `n` plus the header, minus the header, the size class rounding to at least
/// `min_granule` elements (a multiple of 4; larger means fewer reallocations while a buffer
/// grows). Deterministic in `n`, never below `n`.
#[inline]
pub(crate) fn fit_class(n: usize, unit: usize, min_granule: usize) -> usize {
    if n == 0 {
        return 0;
    }
    let header = 8 / unit;
    let m = (n + header).max(32 / unit);
    let granule = ((1usize << m.ilog2()) / 16).max(min_granule);
    m.div_ceil(granule) * granule - header
}

/// Index slots for `len` entities: about 1.5 to 1.9 per entity, rounded up to a granule of
/// 1/4 of a power of two so that growth rebuilds the index every ~len/6 inserts.
#[inline]
pub(crate) fn index_slots(len: usize) -> usize {
    if len == 0 {
        return 0;
    }
    let target = (len + len / 2 + 1).max(8);
    let granule = ((1usize << target.ilog2()) / 4).max(1);
    target.div_ceil(granule) * granule
}

/// Bytes a heap allocation of `n` bytes really takes with glibc malloc on 64-bit targets
/// (8-byte chunk header, 16-byte alignment, 32-byte minimum chunk).
#[inline]
pub(crate) fn heap_bytes(n: usize) -> usize {
    if n == 0 {
        0
    } else {
        ((n + 8 + 15) & !15).max(32)
    }
}

/// Hash of an entity key: shard (high bits), index home slot (low 32 bits), fingerprint.
#[inline]
pub(crate) fn key_hash(key: u64) -> u64 {
    mix64(key)
}

/// Shard of a key hash among `shards`.
#[inline]
pub(crate) fn shard_of_hash(hash: u64, shards: usize) -> usize {
    ((u128::from(hash) * shards as u128) >> 64) as usize
}

/// Shard of an entity key among `shards`.
#[inline]
pub(crate) fn shard_of(key: u64, shards: usize) -> usize {
    shard_of_hash(key_hash(key), shards)
}

/// Home slot of a hash in an index of `n` slots (multiply-shift on the low 32 bits).
#[inline]
fn home(hash: u64, n: usize) -> usize {
    ((hash & 0xFFFF_FFFF).wrapping_mul(n as u64) >> 32) as usize
}

/// Bits of a slot that hold the position (+1) in an index of `n` slots.
#[inline]
fn position_bits(n: usize) -> u32 {
    usize::BITS - n.leading_zeros()
}

/// Slot value of `position` with the fingerprint of `hash`, in an index of `n` slots.
#[inline]
fn slot_value(hash: u64, position: usize, n: usize) -> u32 {
    let bits = position_bits(n);
    (((hash >> 32) << bits) | (position as u64 + 1)) as u32
}

/// Resize a boxed buffer to exactly `len` elements (with `realloc`, so often in place).
pub(crate) fn resize_exact<T: Copy + Default>(buf: &mut Box<[T]>, len: usize) {
    if buf.len() == len {
        return;
    }
    let mut v = std::mem::take(buf).into_vec();
    if len > v.len() {
        v.reserve_exact(len - v.len());
        v.resize(len, T::default());
    } else {
        v.truncate(len);
    }
    *buf = v.into_boxed_slice();
}

/// Hint the CPU to load the cache line at `p` (no effect on other architectures).
#[inline(always)]
pub(crate) fn prefetch<T>(p: *const T) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: prefetching never faults and has no observable effect besides caching.
    unsafe {
        std::arch::x86_64::_mm_prefetch(p.cast::<i8>(), std::arch::x86_64::_MM_HINT_T0);
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}

/// Prefetch the cache lines of `data`: all of them up to `max_lines`, else the first
/// `max_lines - 1` and the last.
#[inline(always)]
pub(crate) fn prefetch_lines<T>(data: &[T], max_lines: usize) {
    let bytes = std::mem::size_of_val(data);
    if bytes == 0 {
        return;
    }
    let p = data.as_ptr().cast::<u8>();
    let lines = bytes.div_ceil(64).min(max_lines);
    for i in 0..lines {
        prefetch(p.wrapping_add(i * 64));
    }
    prefetch(p.wrapping_add(bytes - 1));
}

/// Something stored in an [`EntityTable`].
pub(crate) trait Keyed {
    /// The entity key (`hash_id` of its identifier).
    fn key(&self) -> u64;
    /// Prefetch the entity's own heap data that processing reads first.
    fn prefetch_data(&self) {}
}

/// Entities of one kind in one shard.
pub(crate) struct EntityTable<E> {
    slots: Vec<u32>,
    slab: Vec<E>,
}

impl<E> Default for EntityTable<E> {
    fn default() -> Self {
        EntityTable {
            slots: Vec::new(),
            slab: Vec::new(),
        }
    }
}

impl<E: Keyed> EntityTable<E> {
    /// Build a table from entities (restore); `None` if two share a key.
    pub(crate) fn from_entities(entities: Vec<E>) -> Option<Self> {
        let mut slab = Vec::with_capacity(size_class(entities.len()));
        slab.extend(entities);
        let mut table = EntityTable {
            slots: Vec::new(),
            slab,
        };
        table.rebuild_index();
        for (i, e) in table.slab.iter().enumerate() {
            if table.find(e.key(), key_hash(e.key())) != Some(i) {
                return None;
            }
        }
        Some(table)
    }

    fn rebuild_index(&mut self) {
        let n = index_slots(self.slab.len());
        let mut slots = vec![0u32; n];
        for (position, e) in self.slab.iter().enumerate() {
            let hash = key_hash(e.key());
            let mut i = home(hash, n);
            while slots[i] != 0 {
                i += 1;
                if i == n {
                    i = 0;
                }
            }
            slots[i] = slot_value(hash, position, n);
        }
        self.slots = slots;
    }

    /// Slab position of `key` (whose [`key_hash`] is `hash`).
    #[inline]
    pub(crate) fn find(&self, key: u64, hash: u64) -> Option<usize> {
        let n = self.slots.len();
        if n == 0 {
            return None;
        }
        let bits = position_bits(n);
        let mask = ((1u64 << bits) - 1) as u32;
        let fp = slot_value(hash, 0, n) & !mask;
        let mut i = home(hash, n);
        loop {
            let s = self.slots[i];
            if s == 0 {
                return None;
            }
            if s & !mask == fp {
                let position = (s & mask) as usize - 1;
                if self.slab[position].key() == key {
                    return Some(position);
                }
            }
            i += 1;
            if i == n {
                i = 0;
            }
        }
    }

    /// Prefetch the index slot where a lookup of `hash` starts.
    #[inline]
    pub(crate) fn prefetch_slot(&self, hash: u64) {
        let n = self.slots.len();
        if n != 0 {
            prefetch(&self.slots[home(hash, n)]);
        }
    }

    /// Slab position the index names for `hash`'s fingerprint, without reading the slab (a
    /// guess: the entity there may have another key).
    #[inline]
    pub(crate) fn guess(&self, hash: u64) -> Option<usize> {
        let n = self.slots.len();
        if n == 0 {
            return None;
        }
        let bits = position_bits(n);
        let mask = ((1u64 << bits) - 1) as u32;
        let fp = slot_value(hash, 0, n) & !mask;
        let mut i = home(hash, n);
        loop {
            let s = self.slots[i];
            if s == 0 {
                return None;
            }
            if s & !mask == fp {
                return Some((s & mask) as usize - 1);
            }
            i += 1;
            if i == n {
                i = 0;
            }
        }
    }

    /// Number of entities.
    pub(crate) fn len(&self) -> usize {
        self.slab.len()
    }

    /// All entities, in slab order.
    pub(crate) fn iter(&self) -> std::slice::Iter<'_, E> {
        self.slab.iter()
    }

    /// The entity at a slab position.
    #[inline]
    pub(crate) fn at(&self, position: usize) -> &E {
        &self.slab[position]
    }

    /// Prefetch the slab entry at a position, both cache lines when it straddles two (no
    /// effect if out of range).
    #[inline]
    pub(crate) fn prefetch_entry(&self, position: usize) {
        let p = self.slab.as_ptr().wrapping_add(position).cast::<u8>();
        prefetch(p);
        prefetch(p.wrapping_add(std::mem::size_of::<E>().max(1) - 1));
    }

    /// The entity at a slab position, mutably (its key must not change).
    #[inline]
    pub(crate) fn at_mut(&mut self, position: usize) -> &mut E {
        &mut self.slab[position]
    }

    /// Slab position of `key`, inserting `make()` when absent.
    #[inline]
    pub(crate) fn position_or_insert(
        &mut self,
        key: u64,
        hash: u64,
        make: impl FnOnce() -> E,
    ) -> usize {
        if let Some(i) = self.find(key, hash) {
            return i;
        }
        let position = self.slab.len();
        assert!(
            position < u32::MAX as usize - 1,
            "more than {} entities in one shard",
            u32::MAX - 2
        );
        if position == self.slab.capacity() {
            self.slab.reserve_exact(size_class(position + 1) - position);
        }
        self.slab.push(make());
        let n = self.slots.len();
        if index_slots(self.slab.len()) != n {
            self.rebuild_index();
        } else {
            let mut i = home(hash, n);
            while self.slots[i] != 0 {
                i += 1;
                if i == n {
                    i = 0;
                }
            }
            self.slots[i] = slot_value(hash, position, n);
        }
        position
    }

    /// The entity with `key`, created with `make` when absent.
    #[cfg(test)]
    pub(crate) fn get_or_insert_with(&mut self, key: u64, make: impl FnOnce() -> E) -> &mut E {
        let i = self.position_or_insert(key, key_hash(key), make);
        &mut self.slab[i]
    }

    /// Drop the entities for which `evict` is true; returns how many were dropped.
    pub(crate) fn evict(&mut self, mut evict: impl FnMut(&E) -> bool) -> usize {
        let before = self.slab.len();
        self.slab.retain(|e| !evict(e));
        let removed = before - self.slab.len();
        if removed > 0 {
            self.slab.shrink_to(size_class(self.slab.len()));
            self.rebuild_index();
        }
        removed
    }

    /// Heap bytes of the slab and the index (not of what the entities own).
    pub(crate) fn own_heap_bytes(&self) -> usize {
        heap_bytes(self.slab.capacity() * std::mem::size_of::<E>())
            + heap_bytes(self.slots.capacity() * 4)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct K(u64);
    impl Keyed for K {
        fn key(&self) -> u64 {
            self.0
        }
    }

    #[test]
    fn size_class_is_idempotent_and_tight() {
        for n in 0..5000 {
            let c = size_class(n);
            assert!(c >= n);
            assert_eq!(size_class(c), c, "n={n}");
            assert!(c - n <= (n / 16).max(3), "n={n} c={c}");
            if n > 0 {
                assert!(size_class(n - 1) <= c);
            }
        }
    }

    #[test]
    fn fit_class_fills_malloc_chunks() {
        for n in 1..5000 {
            for unit in [4, 8] {
                for g in [4, 8, 16] {
                    let c = fit_class(n, unit, g);
                    assert!(c >= n);
                    assert_eq!(fit_class(c, unit, g), c, "n={n}");
                    assert_eq!(heap_bytes(c * unit), c * unit + 8, "n={n} unit={unit}");
                    assert!(fit_class(n - 1, unit, g) <= c);
                }
            }
        }
    }

    #[test]
    fn index_slots_keep_load_below_two_thirds() {
        for len in 1..100_000 {
            let n = index_slots(len);
            assert!(n * 2 >= len * 3, "len={len} n={n}");
            assert!(len >= 8 || n >= 8);
        }
    }

    #[test]
    fn footprint_depends_only_on_the_length() {
        // Grown one insert at a time, with evictions, versus built from scratch.
        let mut grown: EntityTable<K> = EntityTable::default();
        for k in 0..3000u64 {
            grown.get_or_insert_with(k * 7919, || K(k * 7919));
            if k % 500 == 499 {
                grown.evict(|e| e.0 % 3 == 0);
            }
            let rebuilt =
                EntityTable::from_entities(grown.iter().map(|e| K(e.0)).collect()).unwrap();
            assert_eq!(grown.own_heap_bytes(), rebuilt.own_heap_bytes(), "k={k}");
        }
        for e in grown.iter() {
            assert_eq!(grown.at(grown.find(e.0, key_hash(e.0)).unwrap()).0, e.0);
        }
        assert_eq!(grown.find(5, key_hash(5)), None);
    }

    #[test]
    fn duplicates_are_refused_and_lookups_find() {
        assert!(EntityTable::from_entities(vec![K(1), K(2), K(1)]).is_none());
        let mut t = EntityTable::from_entities(vec![K(1), K(2)]).unwrap();
        assert_eq!(t.get_or_insert_with(2, || K(99)).0, 2);
        assert_eq!(t.len(), 2);
        assert_eq!(t.evict(|e| e.0 == 1), 1);
        assert_eq!(t.get_or_insert_with(2, || K(99)).0, 2);
        assert_eq!(t.get_or_insert_with(3, || K(3)).0, 3);
        assert_eq!(t.len(), 2);
    }

    #[test]
    fn heap_bytes_matches_glibc_chunks() {
        assert_eq!(heap_bytes(0), 0);
        assert_eq!(heap_bytes(1), 32);
        assert_eq!(heap_bytes(24), 32);
        assert_eq!(heap_bytes(25), 48);
        assert_eq!(heap_bytes(720), 736);
    }
}
