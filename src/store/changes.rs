//! The `changes:{collection}` trees: this node's change sequence for the
//! collection (big-endian u64, from 1, strictly increasing) -> one op byte
//! and the item's key. A change is written in the same sled transaction as
//! the item it records ([`Store::write_items`]), so it exists exactly when
//! the item write does. Only the newest [`CHANGES_KEPT`] are kept per
//! collection. Served bodies are read from the items tree, so a change shows
//! the item's newest version.
//!
//! Long-polling readers wait on a `tokio::sync::watch` per collection,
//! bumped by [`Store::flush`] once the collection's writes are durable.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use serde::Serialize;
use sled::transaction::{ConflictableTransactionError, TransactionError, Transactional};
use tokio::sync::watch;

use super::{decode, Result, Store, StoreError};
use crate::domain::StoredItem;

const CHANGES_PREFIX: &str = "changes:";

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
    fn byte(self) -> u8 {
        match self {
            ChangeOp::Inserted => b'i',
            ChangeOp::Changed => b'c',
        }
    }

    fn from_byte(b: u8) -> Option<ChangeOp> {
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

/// Per collection: the last change sequence used (`None` until read from
/// the tree), locked across a write so sequences commit in order.
pub(super) type ChangeSeqs = Arc<Mutex<HashMap<String, Arc<Mutex<Option<u64>>>>>>;

/// Per collection: bumped when its writes become durable.
pub(super) type ChangeWatches = Arc<Mutex<HashMap<String, watch::Sender<u64>>>>;

impl Store {
    /// Applies `writes` to a collection's items tree and records `changes`
    /// (op, item key) under the next sequence numbers, in one transaction;
    /// then drops changes beyond [`CHANGES_KEPT`].
    pub(super) fn apply_with_changes(
        &self,
        collection: &str,
        items: &sled::Tree,
        writes: sled::Batch,
        changes: &[(ChangeOp, Vec<u8>)],
    ) -> Result<()> {
        if changes.is_empty() {
            items.apply_batch(writes)?;
            return Ok(());
        }
        let log = self.changes_tree(collection)?;
        let seq_lock = {
            let mut seqs = self.change_seqs.lock().unwrap_or_else(|e| e.into_inner());
            seqs.entry(collection.to_owned()).or_default().clone()
        };
        let mut last = seq_lock.lock().unwrap_or_else(|e| e.into_inner());
        let first = match *last {
            Some(n) => n,
            None => match log.last()? {
                Some((k, _)) => seq_of(&k),
                // Empty: new, or deleted (numbering goes on past the deletion).
                None => self
                    .dropped_record(collection)?
                    .map_or(0, |d| d.last_change),
            },
        } + 1;
        (items, &log)
            .transaction(|(items, log)| {
                items.apply_batch(&writes)?;
                for (i, (op, key)) in changes.iter().enumerate() {
                    let mut value = Vec::with_capacity(key.len() + 1);
                    value.push(op.byte());
                    value.extend_from_slice(key);
                    log.insert(&(first + i as u64).to_be_bytes(), value)?;
                }
                Ok::<_, ConflictableTransactionError<()>>(())
            })
            .map_err(|e| match e {
                TransactionError::Storage(e) => StoreError::Sled(e),
                TransactionError::Abort(()) => {
                    StoreError::Unavailable("the change transaction aborted".into())
                }
            })?;
        let newest = first + changes.len() as u64 - 1;
        *last = Some(newest);
        drop(last);
        if newest > self.changes_kept {
            let cut = (newest - self.changes_kept).to_be_bytes();
            let stale: Vec<sled::IVec> = log
                .range(..=cut)
                .keys()
                .collect::<std::result::Result<_, _>>()?;
            for k in stale {
                log.remove(k)?;
            }
        }
        Ok(())
    }

    /// Up to `limit` changes of `collection` with a sequence above `since`,
    /// in order, each with its item's current version.
    pub fn changes_after(&self, collection: &str, since: u64, limit: usize) -> Result<Vec<Change>> {
        self.read(|| {
            let log = self.changes_tree(collection)?;
            let items = self.items_tree(collection)?;
            let mut out = Vec::new();
            for entry in log.range(since.saturating_add(1).to_be_bytes()..) {
                if out.len() >= limit {
                    break;
                }
                let (k, v) = entry?;
                let Some((&op, key)) = v.split_first() else {
                    continue;
                };
                let Some(op) = ChangeOp::from_byte(op) else {
                    continue;
                };
                // Items are never deleted; a missing one is skipped.
                if let Some(bytes) = items.get(key)? {
                    let mut item: StoredItem = decode("item", &bytes)?;
                    self.fresh(collection, &mut item)?;
                    out.push(Change {
                        seq: seq_of(&k),
                        op,
                        item,
                    });
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

    pub(super) fn changes_tree(&self, collection: &str) -> Result<sled::Tree> {
        Ok(self.db.open_tree(format!("{CHANGES_PREFIX}{collection}"))?)
    }
}

pub(super) fn seq_of(key: &[u8]) -> u64 {
    let mut b = [0u8; 8];
    let n = key.len().min(8);
    b[..n].copy_from_slice(&key[..n]);
    u64::from_be_bytes(b)
}
