//! The `dropped` tree: collection name -> the tombstone of its deletion, with
//! the sequence numbers the collection had reached (batch heads per origin,
//! and its last change), so that numbering goes on where it stopped if the
//! collection is fed again: peers then neither pull the deleted batches back
//! nor take new batches for ones they already applied.
//!
//! Deleting a collection empties its tree (items, changes, log, seen
//! records, summary) and removes it from the `collections` list. A batch or snapshot copy observed at or before
//! the deletion ([`CollectionTombstone::covers`]) is not applied afterwards:
//! its sequence number still counts (heads move), its items are skipped.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, RwLock};

use serde::{Deserialize, Serialize};

use super::{decode, encode, Result, Store};
use crate::domain::CollectionTombstone;

/// What the `dropped` tree keeps per collection.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct Dropped {
    pub tombstone: CollectionTombstone,
    /// The heads the collection had when it was deleted.
    pub heads: BTreeMap<String, u64>,
    /// Its last change sequence number then.
    pub last_change: u64,
}

/// Each deleted collection's deletion time (ms), read at open.
pub(super) type DroppedAt = Arc<RwLock<HashMap<String, i64>>>;

pub(super) fn load(tree: &sled::Tree) -> Result<DroppedAt> {
    let mut at = HashMap::new();
    for value in tree.iter().values() {
        let d: Dropped = decode("dropped collection", &value?)?;
        at.insert(d.tombstone.name.clone(), d.tombstone.version.millis);
    }
    Ok(Arc::new(RwLock::new(at)))
}

impl Store {
    /// The tombstone of a deleted collection, if it was ever deleted.
    pub fn tombstone(&self, name: &str) -> Result<Option<CollectionTombstone>> {
        Ok(self.dropped_record(name)?.map(|d| d.tombstone))
    }

    /// Every collection tombstone.
    pub fn tombstones(&self) -> Result<Vec<CollectionTombstone>> {
        self.read(|| {
            self.dropped
                .iter()
                .values()
                .map(|v| Ok(decode::<Dropped>("dropped collection", &v?)?.tombstone))
                .collect()
        })
    }

    pub(super) fn dropped_record(&self, name: &str) -> Result<Option<Dropped>> {
        self.dropped
            .get(name.as_bytes())?
            .map(|b| decode("dropped collection", &b))
            .transpose()
    }

    /// Records that the batch `seq` of `origin` was applied to a deleted
    /// collection (its items skipped): numbering goes on past it.
    pub(super) fn raise_dropped_head(
        &self,
        collection: &str,
        origin: &str,
        seq: u64,
    ) -> Result<()> {
        if let Some(mut d) = self.dropped_record(collection)? {
            let h = d.heads.entry(origin.to_owned()).or_default();
            if *h < seq {
                *h = seq;
                self.dropped.insert(collection.as_bytes(), encode(&d))?;
            }
        }
        Ok(())
    }

    /// Was something of `collection` observed at `at` deleted since?
    pub fn deleted_since(&self, collection: &str, at: chrono::DateTime<chrono::Utc>) -> bool {
        let dropped = self.dropped_at.read().unwrap_or_else(|e| e.into_inner());
        dropped
            .get(collection)
            .is_some_and(|millis| at.timestamp_millis() <= *millis)
    }

    /// Deletes everything stored for the collection (items, changes, log,
    /// summary) and records `tombstone`, unless an equal or later deletion
    /// is already recorded. Returns whether it deleted. Not flushed: the
    /// caller flushes before acknowledging.
    pub fn drop_collection(&self, tombstone: &CollectionTombstone) -> Result<bool> {
        self.write(|| {
            let name = tombstone.name.as_str();
            let previous = self.dropped_record(name)?;
            if previous
                .as_ref()
                .is_some_and(|p| p.tombstone.version >= tombstone.version)
            {
                return Ok(false);
            }
            // Sequence numbers go on from where they are: heads and the
            // change feed's last number.
            let heads = self.heads_of(name)?;
            let tree = self.applied_tree(name)?;
            let last_change = match Store::last_change_in(&tree)? {
                Some(n) => n,
                None => previous.as_ref().map_or(0, |p| p.last_change),
            };
            let record = Dropped {
                tombstone: tombstone.clone(),
                heads,
                last_change,
            };
            // First the tombstone (batches older than it are skipped from
            // now on), then the data.
            self.dropped.insert(name.as_bytes(), encode(&record))?;
            self.dropped_at
                .write()
                .unwrap_or_else(|e| e.into_inner())
                .insert(name.to_owned(), tombstone.version.millis);
            {
                let _writing = self.writing.read().unwrap_or_else(|e| e.into_inner());
                // The key directory goes with the items, under its lock, so
                // no upsert works from the items being deleted.
                let slot = self
                    .keydirs
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .get(name)
                    .cloned();
                let mut keydir = slot
                    .as_ref()
                    .map(|s| s.lock().unwrap_or_else(|e| e.into_inner()));
                tree.clear()?;
                if let Some(kd) = keydir.as_mut() {
                    **kd = None;
                }
                self.collections.remove(name.as_bytes())?;
                self.with_generations(name, |g| {
                    g.begun += 1;
                    g.changed += 1;
                });
            }
            Ok(true)
        })
    }
}
