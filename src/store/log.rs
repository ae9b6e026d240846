//! Each collection's replication log, in the collection's tree
//! ([`super::items`]) under keys tagged [`LOG_TAG`]: `tag, origin node id,
//! \0, sequence (big-endian)` -> [`ReplicatedBatch`], every batch applied to
//! the collection, kept so that peers can pull what they missed (the newest
//! [`Store::log_retained`] per origin); and the heads (last sequence applied
//! per origin) they compare, in the collection's summary. A batch's log
//! entry and heads are written in the same sled batch as its items.

use std::collections::BTreeMap;

use super::items::LOG_TAG;
use super::{decode, BatchOutcome, Result, Store};
use crate::domain::ReplicatedBatch;

/// Batches kept in the log per collection and origin, by default.
pub const LOG_RETAINED: u64 = 10_000;

/// What the log holds after a sequence number.
#[derive(Debug, Clone, PartialEq)]
pub enum LogSlice {
    Batches(Vec<ReplicatedBatch>),
    /// Batches asked for are gone; the oldest kept is `first`.
    Truncated {
        first: u64,
    },
}

pub(super) fn log_key(origin: &str, seq: u64) -> Vec<u8> {
    let mut key = Vec::with_capacity(origin.len() + 10);
    key.push(LOG_TAG);
    key.extend_from_slice(origin.as_bytes());
    key.push(0);
    key.extend_from_slice(&seq.to_be_bytes());
    key
}

impl Store {
    /// Applies a batch from `origin` with sequence number `seq`: upserts its
    /// items, appends it to the collection's log (dropping the oldest beyond
    /// the retention) and records the collection's head for the origin, all
    /// in one atomic sled batch. Applying the same batch twice changes
    /// nothing.
    pub fn apply_replicated(&self, rb: &ReplicatedBatch) -> Result<BatchOutcome> {
        self.write(|| self.apply_replicated_unguarded(rb))
    }

    fn apply_replicated_unguarded(&self, rb: &ReplicatedBatch) -> Result<BatchOutcome> {
        // A batch fetched before its collection was deleted only moves the
        // head: its items stay deleted.
        if self.deleted_since(&rb.batch.collection, rb.batch.fetched_at) {
            self.raise_dropped_head(&rb.batch.collection, &rb.origin, rb.seq)?;
            return Ok(BatchOutcome {
                unchanged: rb.batch.items.len() as u64,
                ..BatchOutcome::default()
            });
        }
        self.upsert_items(&rb.batch, Some(rb))
    }

    /// Every collection's heads (a deleted collection's included: its
    /// numbering goes on).
    pub fn heads(&self) -> Result<BTreeMap<String, BTreeMap<String, u64>>> {
        let mut all: BTreeMap<String, BTreeMap<String, u64>> = BTreeMap::new();
        for tombstone in self.tombstones()? {
            let heads = self.heads_of(&tombstone.name)?;
            all.insert(tombstone.name, heads);
        }
        for (name, meta) in self.collections()? {
            let heads = all.entry(name).or_default();
            for (origin, seq) in meta.heads {
                let h = heads.entry(origin).or_default();
                *h = (*h).max(seq);
            }
        }
        Ok(all)
    }

    /// One collection's heads (empty if it never existed here).
    pub fn heads_of(&self, collection: &str) -> Result<BTreeMap<String, u64>> {
        let mut heads = self
            .dropped_record(collection)?
            .map(|d| d.heads)
            .unwrap_or_default();
        for (origin, seq) in self
            .collection(collection)?
            .map(|m| m.heads)
            .unwrap_or_default()
        {
            let h = heads.entry(origin).or_default();
            *h = (*h).max(seq);
        }
        Ok(heads)
    }

    /// Up to `max` logged batches (and about `max_bytes`, at least one) of
    /// `origin` in `collection` after `after`, in order; or where the log now
    /// starts if batches after `after` are gone.
    pub fn log_after(
        &self,
        collection: &str,
        origin: &str,
        after: u64,
        max: usize,
        max_bytes: usize,
    ) -> Result<LogSlice> {
        let log = self.items_tree(collection)?;
        let mut out = Vec::new();
        let mut bytes = 0;
        let range = log_key(origin, after.saturating_add(1))..=log_key(origin, u64::MAX);
        for entry in log.range(range) {
            let (_, v) = entry?;
            if !out.is_empty() && bytes + v.len() > max_bytes {
                break;
            }
            bytes += v.len();
            let rb: ReplicatedBatch = decode("log entry", &v)?;
            if out.is_empty() && rb.seq != after + 1 {
                return Ok(LogSlice::Truncated { first: rb.seq });
            }
            out.push(rb);
            if out.len() >= max {
                break;
            }
        }
        if out.is_empty() {
            let head = self.heads_of(collection)?.get(origin).copied().unwrap_or(0);
            if head > after {
                // The head moved past `after` but nothing is logged: all truncated.
                return Ok(LogSlice::Truncated { first: head + 1 });
            }
        }
        Ok(LogSlice::Batches(out))
    }
}
