//! Entity storage shared by the three kinds: a slab of entities plus an open-addressing
//! index of slab positions, with capacities that are a pure function of the length.
//!
//! Every growable buffer of the state (slabs, indexes, per-entity buffers, merchant deques)
//! has a capacity determined by its length alone ([`size_class`], [`index_slots`]), so the
//! memory footprint depends only on the logical state: a restored snapshot reports the same
//! `state_bytes` as the engine that wrote it.
//!
//! The index is a flat array of `u64` slots, `fingerprint (high 32 bits of the hash) |
//! slab position + 1`, probed linearly from the low bits of the hash. Because a slot's address
//! is known from the key alone, batch loops can prefetch the slot, then the slab entry, then
//! the entity's own buffer several events ahead ([`EntityTable::prefetch_slot`],
//! [`EntityTable::peek`]); random state access is what bounds throughput.

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

/// Index slots for `len` entities: the smallest power of two (at least 8) at most 3/4 full.
#[inline]
pub(crate) fn index_slots(len: usize) -> usize {
    if len == 0 {
        return 0;
    }
    let mut slots = 8;
    while len * 4 > slots * 3 {
        slots *= 2;
    }
    slots
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

/// Hash of an entity key inside its shard's index; independent of the shard choice, which
/// uses the high bits of `mix64(key)`.
#[inline]
pub(crate) fn index_hash(key: u64) -> u64 {
    mix64(key ^ 0x5851_f42d_4c95_7f2d)
}

/// Shard of an entity key among `shards`.
#[inline]
pub(crate) fn shard_of(key: u64, shards: usize) -> usize {
    ((u128::from(mix64(key)) * shards as u128) >> 64) as usize
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

/// Something stored in an [`EntityTable`].
pub(crate) trait Keyed {
    /// The entity key (`hash_id` of its identifier).
    fn key(&self) -> u64;
    /// Prefetch the entity's own heap data that processing reads first.
    fn prefetch_data(&self) {}
}

/// Entities of one kind in one shard.
pub(crate) struct EntityTable<E> {
    slots: Vec<u64>,
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

#[inline]
fn slot_of(hash: u64, position: usize) -> u64 {
    (hash & 0xFFFF_FFFF_0000_0000) | (position as u64 + 1)
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
        for e in &table.slab {
            let i = table.find(e.key())?;
            if !std::ptr::eq(&table.slab[i], e) {
                return None;
            }
        }
        Some(table)
    }

    fn rebuild_index(&mut self) {
        let n = index_slots(self.slab.len());
        let mut slots = vec![0u64; n];
        let mask = n.wrapping_sub(1);
        for (position, e) in self.slab.iter().enumerate() {
            let hash = index_hash(e.key());
            let mut i = hash as usize & mask;
            while slots[i] != 0 {
                i = (i + 1) & mask;
            }
            slots[i] = slot_of(hash, position);
        }
        self.slots = slots;
    }

    /// Slab position of `key`.
    #[inline]
    fn find(&self, key: u64) -> Option<usize> {
        if self.slots.is_empty() {
            return None;
        }
        let hash = index_hash(key);
        let mask = self.slots.len() - 1;
        let mut i = hash as usize & mask;
        loop {
            let s = self.slots[i];
            if s == 0 {
                return None;
            }
            if (s ^ hash) >> 32 == 0 {
                let position = (s as u32 - 1) as usize;
                if self.slab[position].key() == key {
                    return Some(position);
                }
            }
            i = (i + 1) & mask;
        }
    }

    /// Prefetch the index slot where a lookup of `key` starts.
    #[inline]
    pub(crate) fn prefetch_slot(&self, key: u64) {
        if !self.slots.is_empty() {
            let i = index_hash(key) as usize & (self.slots.len() - 1);
            prefetch(&self.slots[i]);
        }
    }

    /// Slab entry the index names for `key`'s fingerprint, without reading the slab (a guess,
    /// for prefetching only).
    #[inline]
    pub(crate) fn guess(&self, key: u64) -> Option<*const E> {
        if self.slots.is_empty() {
            return None;
        }
        let hash = index_hash(key);
        let mask = self.slots.len() - 1;
        let mut i = hash as usize & mask;
        loop {
            let s = self.slots[i];
            if s == 0 {
                return None;
            }
            if (s ^ hash) >> 32 == 0 {
                return Some(self.slab.as_ptr().wrapping_add((s as u32 - 1) as usize));
            }
            i = (i + 1) & mask;
        }
    }

    /// The entity with `key`, if present (read-only, for prefetching).
    #[inline]
    pub(crate) fn peek(&self, key: u64) -> Option<&E> {
        self.find(key).map(|i| &self.slab[i])
    }

    /// Number of entities.
    pub(crate) fn len(&self) -> usize {
        self.slab.len()
    }

    /// All entities, in slab order.
    pub(crate) fn iter(&self) -> std::slice::Iter<'_, E> {
        self.slab.iter()
    }

    /// The entity with `key`, created with `make` when absent.
    #[inline]
    pub(crate) fn get_or_insert_with(&mut self, key: u64, make: impl FnOnce() -> E) -> &mut E {
        if let Some(i) = self.find(key) {
            return &mut self.slab[i];
        }
        let position = self.slab.len();
        if position == self.slab.capacity() {
            self.slab.reserve_exact(size_class(position + 1) - position);
        }
        self.slab.push(make());
        if index_slots(self.slab.len()) != self.slots.len() {
            self.rebuild_index();
        } else {
            let hash = index_hash(key);
            let mask = self.slots.len() - 1;
            let mut i = hash as usize & mask;
            while self.slots[i] != 0 {
                i = (i + 1) & mask;
            }
            self.slots[i] = slot_of(hash, position);
        }
        &mut self.slab[position]
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
            + heap_bytes(self.slots.capacity() * 8)
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
