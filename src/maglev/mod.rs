//! Maglev consistent hashing (NSDI 2016, section 3.4).
//!
//! Every node builds the same table from the same backend set and key, so
//! any node forwards a flow to the same backend, and a change to the set
//! moves few flows that were not on the changed backend.

use std::fmt;
use std::net::IpAddr;

mod populate;
mod prime;
#[cfg(test)]
mod tests;

pub use prime::is_prime;

/// The paper's default: prime, and ≥ 100·N for up to 655 backends.
pub const DEFAULT_SIZE: usize = 65537;
/// Smallest size accepted; below it shares get too coarse to balance.
pub const MIN_SIZE: usize = 251;
/// Largest prime below 2^24, keeping slot arithmetic in u32.
pub const MAX_SIZE: usize = 16_777_213;
/// Most backends a table lists: slot entries are u16 indices.
pub const MAX_BACKENDS: usize = u16::MAX as usize;

/// The SipHash key, shared by every node so their tables agree.
pub type Key = [u8; 16];

/// A backend and its relative share of new flows; weight 0 drains it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Backend {
    pub addr: IpAddr,
    pub weight: u32,
}

/// Why a table could not be built.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    #[error("table size {0} is not prime (Maglev permutations need a prime size)")]
    SizeNotPrime(usize),
    #[error("table size {0} is out of range {MIN_SIZE}..={MAX_SIZE}")]
    SizeOutOfRange(usize),
    #[error("backend address {0} is listed more than once")]
    DuplicateBackend(IpAddr),
    #[error("{0} backends listed, but slot indices are u16 so at most {MAX_BACKENDS} fit")]
    TooManyBackends(usize),
    #[error("{count} backends with weight > 0 need a table larger than {size} slots")]
    TooManyForSize { count: usize, size: usize },
}

/// A built lookup table: `size` slots, each naming one backend.
#[derive(Clone, PartialEq, Eq)]
pub struct Table {
    size: usize,
    backends: Vec<Backend>,
    slots: Vec<u16>,
}

impl Table {
    /// Pure function of (backends, weights, key, size). Input order does
    /// not matter: backends are sorted by address first, and each one's
    /// permutation comes from its address, never from its position.
    pub fn build(backends: &[Backend], key: &Key, size: usize) -> Result<Table, Error> {
        if !(MIN_SIZE..=MAX_SIZE).contains(&size) {
            return Err(Error::SizeOutOfRange(size));
        }
        if !is_prime(size as u64) {
            return Err(Error::SizeNotPrime(size));
        }
        if backends.len() > MAX_BACKENDS {
            return Err(Error::TooManyBackends(backends.len()));
        }
        let mut sorted = backends.to_vec();
        sorted.sort_unstable();
        if let Some(pair) = sorted.windows(2).find(|p| p[0].addr == p[1].addr) {
            return Err(Error::DuplicateBackend(pair[0].addr));
        }
        let count = sorted.iter().filter(|b| b.weight > 0).count();
        if count >= size {
            return Err(Error::TooManyForSize { count, size });
        }
        let slots = populate::populate(&sorted, key, size);
        Ok(Table {
            size,
            backends: sorted,
            slots,
        })
    }

    /// The backend for a flow hash; None when no backend has weight > 0.
    ///
    /// Lemire's fast range maps the hash onto the slots without a division.
    /// With no slots the first `get` is the empty check; otherwise both
    /// bounds checks always pass (the index is < len by construction), so
    /// they cost a predictable branch each and keep this free of panics.
    #[inline]
    pub fn lookup(&self, hash: u64) -> Option<&Backend> {
        self.pick(hash).map(|(_, b)| b)
    }

    /// `lookup`, plus the backend's index in `backends()`.
    #[inline]
    pub fn pick(&self, hash: u64) -> Option<(usize, &Backend)> {
        let slot = fast_range(hash, self.slots.len());
        let index = usize::from(*self.slots.get(slot)?);
        Some((index, self.backends.get(index)?))
    }

    /// M, the number of slots the table was built for.
    pub fn size(&self) -> usize {
        self.size
    }

    /// All backends listed, including weight 0, sorted by address.
    pub fn backends(&self) -> &[Backend] {
        &self.backends
    }

    /// Slot → index into `backends()`; empty when no backend has weight > 0.
    pub fn slots(&self) -> &[u16] {
        &self.slots
    }

    /// Slots held per backend, indexed like `backends()`.
    pub fn slot_counts(&self) -> Vec<usize> {
        let mut counts = vec![0; self.backends.len()];
        for &index in &self.slots {
            if let Some(count) = counts.get_mut(usize::from(index)) {
                *count += 1;
            }
        }
        counts
    }
}

/// Maps a uniform u64 onto 0..len as `⌊hash·len / 2^64⌋`.
#[inline]
fn fast_range(hash: u64, len: usize) -> usize {
    // The result is < len, so it fits usize.
    ((u128::from(hash) * len as u128) >> 64) as usize
}

/// Leaves out the slots: at 65537 entries they would drown any log line.
impl fmt::Debug for Table {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Table")
            .field("size", &self.size)
            .field("backends", &self.backends)
            .field("filled_slots", &self.slots.len())
            .finish()
    }
}
