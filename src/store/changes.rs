//! Each collection's change feed, in the collection's tree
//! ([`super::items`]) under keys tagged [`CHANGE_TAG`]: one record per
//! write that changed items, keyed by its first change sequence (big-endian
//! u64, from 1), whose value lists each change's op byte, key length (u32,
//! big-endian) and item key. The changes of one write take the sequences
//! that follow the previous record's, in key order, so sequences are
//! strictly increasing and contiguous across records. A record is written
//! in the same sled batch as the items it records, so it exists exactly
//! when they do. Whole records are dropped once all their changes are
//! older than the newest [`CHANGES_KEPT`]. Served bodies are read from the
//! items, so a change shows the item's newest version.
//!
//! Long-polling readers wait on a `tokio::sync::watch` per collection,
//! bumped by [`Store::flush`] once the collection's writes are durable.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use serde::Serialize;
use tokio::sync::watch;

use super::items::CHANGE_TAG;
use super::writes::Writes;
use super::{Result, Store};
use crate::domain::StoredItem;

/// Changes kept per collection: older ones are dropped.
pub const CHANGES_KEPT: u64 = 100_000;

/// What a change did to its item.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ChangeOp {
    Inserted,
    Changed,
}

impl ChangeOp {
    pub(super) fn byte(self) -> u8 {
        match self {
            ChangeOp::Inserted => b'i',
            ChangeOp::Changed => b'c',
        }
    }

    pub(super) fn from_byte(b: u8) -> Option<ChangeOp> {
        match b {
            b'i' => Some(ChangeOp::Inserted),
            b'c' => Some(ChangeOp::Changed),
            _ => None,
        }
    }
}

/// One recorded change, with the item as it is now.
#[derive(Debug, Clone)]
pub struct Change {
    pub seq: u64,
    pub op: ChangeOp,
    pub item: StoredItem,
}

/// Per collection: bumped when its writes become durable.
pub(super) type ChangeWatches = Arc<Mutex<HashMap<String, watch::Sender<u64>>>>;

/// A change record's key: the tag, then its first sequence.
pub(super) fn change_key(first: u64) -> [u8; 9] {
    let mut k = [CHANGE_TAG; 9];
    k[1..].copy_from_slice(&first.to_be_bytes());
    k
}

/// A change record's value.
pub(super) fn encode_changes(changes: &[(ChangeOp, Vec<u8>)]) -> Vec<u8> {
    let len = changes.iter().map(|(_, k)| 5 + k.len()).sum();
    let mut v = Vec::with_capacity(len);
    for (op, key) in changes {
        v.push(op.byte());
        v.extend_from_slice(&(key.len() as u32).to_be_bytes());
        v.extend_from_slice(key);
    }
    v
}

/// A change record's changes, in sequence order (a corrupt tail ends it).
pub(super) fn decode_changes(mut v: &[u8]) -> impl Iterator<Item = (ChangeOp, &[u8])> {
    std::iter::from_fn(move || {
        let op = ChangeOp::from_byte(*v.first()?)?;
        let len = u32::from_be_bytes(v.get(1..5)?.try_into().ok()?) as usize;
        let key = v.get(5..5 + len)?;
        v = &v[5 + len..];
        Some((op, key))
    })
}

/// The change records' key range.
fn change_range() -> std::ops::RangeInclusive<[u8; 9]> {
    change_key(0)..=change_key(u64::MAX)
}

impl Store {
    /// The last change sequence recorded in a collection's tree.
    pub(super) fn last_change_in(tree: &sled::Tree) -> Result<Option<u64>> {
        let Some((k, v)) = tree.range(change_range()).next_back().transpose()? else {
            return Ok(None);
        };
        let n = decode_changes(&v).count() as u64;
        Ok(Some((seq_of(&k[1..]) + n).saturating_sub(1)))
    }

    /// Adds to `writes` the removal of every record whose changes are all
    /// older than the newest [`CHANGES_KEPT`], once the newest change is
    /// `newest`; `stored_last` is the last change the tree holds.
    pub(super) fn trim_changes(
        &self,
        tree: &sled::Tree,
        pending: &Writes,
        stored_last: u64,
        newest: u64,
        writes: &mut Writes,
    ) -> Result<()> {
        let Some(cut) = newest.checked_sub(self.changes_kept).filter(|c| *c > 0) else {
            return Ok(());
        };
        // A record's last change is the next record's first minus one.
        let mut previous: Option<Vec<u8>> = None;
        let range = change_range();
        for k in pending.keys(tree, range.start(), range.end()) {
            let k = k?;
            let first = seq_of(&k[1..]);
            if let Some(p) = previous.take() {
                if first - 1 > cut {
                    return Ok(());
                }
                writes.remove(p);
            }
            if first > cut {
                return Ok(());
            }
            previous = Some(k);
        }
        if let Some(p) = previous {
            if stored_last <= cut {
                writes.remove(p);
            }
        }
        Ok(())
    }

    /// Up to `limit` changes of `collection` with a sequence above `since`,
    /// in order, each with its item's current version.
    pub fn changes_after(&self, collection: &str, since: u64, limit: usize) -> Result<Vec<Change>> {
        self.read(|| {
            let tree = self.applied_tree(collection)?;
            let from = since.saturating_add(1);
            // The record holding `from`, if one began before it.
            let start = match tree.range(change_key(0)..=change_key(from)).next_back() {
                Some(entry) => entry?.0.to_vec(),
                None => change_key(from).to_vec(),
            };
            let mut out = Vec::new();
            'records: for entry in tree.range(start..=change_key(u64::MAX).to_vec()) {
                let (k, v) = entry?;
                let first = seq_of(&k[1..]);
                for (seq, (op, key)) in (first..).zip(decode_changes(&v)) {
                    if seq < from {
                        continue;
                    }
                    if out.len() >= limit {
                        break 'records;
                    }
                    // Items are never deleted; a missing one is skipped.
                    let key = std::str::from_utf8(key).unwrap_or_default();
                    if let Some((bytes, seen)) = self.stored_item(collection, key)? {
                        let item = super::items::decode_item(&bytes, seen)?;
                        out.push(Change { seq, op, item });
                    }
                }
            }
            Ok(out)
        })
    }

    /// A receiver that sees a new value each time writes to `collection`
    /// become durable.
    pub fn watch_changes(&self, collection: &str) -> watch::Receiver<u64> {
        let mut watches = self
            .change_watches
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        match watches.get(collection) {
            Some(tx) => tx.subscribe(),
            None => {
                let (tx, rx) = watch::channel(0);
                watches.insert(collection.to_owned(), tx);
                rx
            }
        }
    }

    /// Wakes the readers waiting on these collections' changes.
    pub(super) fn changes_durable<'a>(&self, collections: impl IntoIterator<Item = &'a str>) {
        let watches = self
            .change_watches
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        for name in collections {
            if let Some(tx) = watches.get(name) {
                tx.send_modify(|n| *n += 1);
            }
        }
    }

    /// Keeps `n` changes per collection (at least 1).
    pub fn with_changes_kept(mut self, n: u64) -> Store {
        self.changes_kept = n.max(1);
        self
    }
}

pub(super) fn seq_of(key: &[u8]) -> u64 {
    let mut b = [0u8; 8];
    let n = key.len().min(8);
    b[..n].copy_from_slice(&key[..n]);
    u64::from_be_bytes(b)
}
