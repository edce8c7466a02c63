//! Little-endian byte writer and bounds-checked reader for snapshots.
//!
//! Format (version [`FORMAT_VERSION`]; version 2, without the label parts, is still read and
//! restores an engine with label features off):
//!
//! ```text
//! b"TXFS"  u32 format version
//! config   u32 n + n × i64 card windows, same for merchant and user windows,
//!          i64 allowed lateness, u8 has TTL + i64 TTL, u32 shards,
//!          (version 3) u32 n + n × i64 merchant label windows, same for card label windows
//! engine   u8 has newest + i64 newest event time seen
//! symbols  per merchant shard, its merchant symbols; then the (category, country) pair
//!          symbols: u32 n, n keys (u64 merchant key, or u64 category + u64 country; zeros
//!          for free ids), ceil(n / 64) × u64 occupancy bits (see `symbols.rs`)
//! cards    u64 n, then per card: u64 key, f64 lat, f64 lon, i64 t_loc,
//!          u32 n_words, n_words × u64 (the card buffer, see `card.rs`)
//! merchants u64 n, then per merchant: u64 key, u32 global merchant symbol, i64 base,
//!          u32 n, n × u32 offsets
//! users    u64 n, then per user: u64 key, u32 n_words, n_words × u32 (see `user.rs`)
//! labels   (version 3) merchants then cards: u64 n, then per entity: u64 key, u32 n_all,
//!          n_all × i64 known times of all labels, u32 n_fraud, n_fraud × i64 of the fraud
//!          labels, both sorted (see `labels.rs`)
//! trailer  u64 checksum of every byte before it
//! ```

use crate::error::{TxError, TxResult};

/// Magic bytes at the start of every snapshot.
pub const MAGIC: &[u8; 4] = b"TXFS";
/// Version of the snapshot layout written by this build.
pub const FORMAT_VERSION: u32 = 3;
/// Versions [`super::FeatureEngine::restore`] reads.
pub const READABLE_VERSIONS: [u32; 2] = [2, FORMAT_VERSION];

/// Checksum of a byte string (64-bit multiply-xor over 8-byte words, then `mix64`).
pub(crate) fn checksum(bytes: &[u8]) -> u64 {
    let mut h = 0x243f_6a88_85a3_08d3u64 ^ bytes.len() as u64;
    let mut chunks = bytes.chunks_exact(8);
    for c in &mut chunks {
        let w = u64::from_le_bytes(c.try_into().expect("8 bytes"));
        h = (h ^ w).wrapping_mul(0x9e37_79b9_7f4a_7c15).rotate_left(29);
    }
    let mut last = [0u8; 8];
    last[..chunks.remainder().len()].copy_from_slice(chunks.remainder());
    h = (h ^ u64::from_le_bytes(last)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    crate::hash::mix64(h)
}

/// Appends little-endian values to a byte vector.
#[derive(Default)]
pub(crate) struct Writer {
    pub buf: Vec<u8>,
}

impl Writer {
    pub(crate) fn u8(&mut self, v: u8) {
        self.buf.push(v);
    }
    pub(crate) fn u32(&mut self, v: u32) {
        self.buf.extend_from_slice(&v.to_le_bytes());
    }
    pub(crate) fn u64(&mut self, v: u64) {
        self.buf.extend_from_slice(&v.to_le_bytes());
    }
    pub(crate) fn i64(&mut self, v: i64) {
        self.buf.extend_from_slice(&v.to_le_bytes());
    }
    pub(crate) fn f64(&mut self, v: f64) {
        self.buf.extend_from_slice(&v.to_le_bytes());
    }
    pub(crate) fn i64_list(&mut self, v: &[i64]) {
        self.u32(v.len() as u32);
        for &x in v {
            self.i64(x);
        }
    }
}

/// Reads little-endian values; every read fails with a snapshot error past the end.
pub(crate) struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

fn truncated() -> TxError {
    TxError::Snapshot("truncated data".into())
}

impl<'a> Reader<'a> {
    pub(crate) fn new(bytes: &'a [u8]) -> Self {
        Reader { bytes, pos: 0 }
    }
    pub(crate) fn take(&mut self, n: usize) -> TxResult<&'a [u8]> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.bytes.len())
            .ok_or_else(truncated)?;
        let s = &self.bytes[self.pos..end];
        self.pos = end;
        Ok(s)
    }
    fn array<const N: usize>(&mut self) -> TxResult<[u8; N]> {
        Ok(self.take(N)?.try_into().expect("length checked"))
    }
    pub(crate) fn u8(&mut self) -> TxResult<u8> {
        Ok(self.array::<1>()?[0])
    }
    pub(crate) fn u32(&mut self) -> TxResult<u32> {
        Ok(u32::from_le_bytes(self.array()?))
    }
    pub(crate) fn u64(&mut self) -> TxResult<u64> {
        Ok(u64::from_le_bytes(self.array()?))
    }
    pub(crate) fn i64(&mut self) -> TxResult<i64> {
        Ok(i64::from_le_bytes(self.array()?))
    }
    pub(crate) fn f64(&mut self) -> TxResult<f64> {
        Ok(f64::from_le_bytes(self.array()?))
    }
    pub(crate) fn u32_vec(&mut self, n: usize) -> TxResult<Vec<u32>> {
        let raw = self.take(n.checked_mul(4).ok_or_else(truncated)?)?;
        Ok(raw
            .chunks_exact(4)
            .map(|c| u32::from_le_bytes(c.try_into().expect("4 bytes")))
            .collect())
    }
    pub(crate) fn u64_vec(&mut self, n: usize) -> TxResult<Vec<u64>> {
        let raw = self.take(n.checked_mul(8).ok_or_else(truncated)?)?;
        Ok(raw
            .chunks_exact(8)
            .map(|c| u64::from_le_bytes(c.try_into().expect("8 bytes")))
            .collect())
    }
    pub(crate) fn i64_list(&mut self) -> TxResult<Vec<i64>> {
        let n = self.u32()? as usize;
        Ok(self.u64_vec(n)?.into_iter().map(|x| x as i64).collect())
    }
    /// Number of entities that follow; refuses counts the remaining bytes cannot hold.
    pub(crate) fn count(&mut self, min_entity_bytes: usize) -> TxResult<usize> {
        let n = self.u64()?;
        let left = (self.bytes.len() - self.pos) as u64;
        if n.saturating_mul(min_entity_bytes as u64) > left {
            return Err(truncated());
        }
        Ok(n as usize)
    }
    /// Bytes left.
    pub(crate) fn remaining(&self) -> usize {
        self.bytes.len() - self.pos
    }
    pub(crate) fn is_at_end(&self) -> bool {
        self.pos == self.bytes.len()
    }
}
