//! The `items:{collection}` trees (item key -> [`StoredItem`], written with
//! its hash first so a page copies it as stored) and the `collections` tree
//! (name -> [`CollectionMeta`]): upserts by key, snapshot copies from peers,
//! and the reads behind queries.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::{decode, encode, ChangeOp, Generations, Result, Store, StoreError};
use crate::domain::{ItemBatch, ItemRef, StoredItem, Upsert};

const ITEMS_PREFIX: &str = "items:";

/// What one batch did to a collection.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BatchOutcome {
    pub inserted: u64,
    pub changed: u64,
    pub unchanged: u64,
    /// Items that moved from another source to this one (for per-source counts).
    pub taken_from: BTreeMap<String, u64>,
}

/// A collection's summary row.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CollectionMeta {
    pub last_update: DateTime<Utc>,
    /// The last batch applied from each origin node (by sequence number).
    #[serde(default)]
    pub heads: BTreeMap<String, u64>,
}

/// One stored item, as the store holds it.
pub struct ItemBytes<'a> {
    pub(super) key: &'a [u8],
    pub(super) bytes: &'a [u8],
}

/// `{"hash":"` + 32 hex characters + `",`: how every item written since
/// [`StoredItem`] put its hash first begins.
pub(super) const HASH_PREFIX: &[u8] = b"{\"hash\":\"";

const HASH_MEMBER_LEN: usize = HASH_PREFIX.len() + 32 + 2;

impl ItemBytes<'_> {
    /// The item's key.
    pub fn key(&self) -> &str {
        std::str::from_utf8(self.key).unwrap_or_default()
    }

    /// Reads the item in place.
    pub fn item_ref(&self) -> Result<ItemRef<'_>> {
        decode("item", self.bytes)
    }

    /// Appends the item as the API shows it (the stored object without its
    /// hash). Items written with the hash first are copied as they are;
    /// older ones are re-encoded.
    pub fn write_view(&self, out: &mut Vec<u8>) -> Result<()> {
        let b = self.bytes;
        let hash_first = b.len() > HASH_MEMBER_LEN
            && b.starts_with(HASH_PREFIX)
            && b[HASH_PREFIX.len()..HASH_MEMBER_LEN - 2]
                .iter()
                .all(u8::is_ascii_hexdigit)
            && &b[HASH_MEMBER_LEN - 2..HASH_MEMBER_LEN] == b"\",";
        if hash_first {
            out.push(b'{');
            out.extend_from_slice(&b[HASH_MEMBER_LEN..]);
        } else {
            serde_json::to_writer(out, &self.item_ref()?).map_err(|source| {
                StoreError::Corrupt {
                    what: "item",
                    source,
                }
            })?;
        }
        Ok(())
    }
}

/// The items of `tree` whose key sorts after `after` (all without it).
fn items_after(tree: &sled::Tree, after: Option<&str>) -> sled::Iter {
    match after {
        Some(k) => {
            let mut start = k.as_bytes().to_vec();
            start.push(0);
            tree.range(start..)
        }
        None => tree.iter(),
    }
}

impl Store {
    /// Upserts a batch into its collection (no log entry, no heads): for
    /// tests and tools; nodes use [`Store::apply_replicated`].
    pub fn apply_batch(&self, batch: &ItemBatch) -> Result<BatchOutcome> {
        self.write(|| {
            let outcome = self.upsert_items(batch)?;
            self.update_meta(&batch.collection, batch.fetched_at, None)?;
            Ok(outcome)
        })
    }

    pub(super) fn update_meta(
        &self,
        collection: &str,
        fetched_at: DateTime<Utc>,
        head: Option<(&str, u64)>,
    ) -> Result<()> {
        let mut meta = self.collection(collection)?.unwrap_or(CollectionMeta {
            last_update: fetched_at,
            heads: BTreeMap::new(),
        });
        meta.last_update = meta.last_update.max(fetched_at);
        if let Some((origin, seq)) = head {
            let h = meta.heads.entry(origin.to_owned()).or_default();
            *h = (*h).max(seq);
        }
        self.collections
            .insert(collection.as_bytes(), encode(&meta))?;
        Ok(())
    }

    pub(super) fn upsert_items(&self, batch: &ItemBatch) -> Result<BatchOutcome> {
        let tree = self.items_tree(&batch.collection)?;
        let mut outcome = BatchOutcome::default();
        let mut writes = sled::Batch::default();
        // Later duplicates within one batch see the earlier ones.
        let mut pending: BTreeMap<&str, StoredItem> = BTreeMap::new();
        // Each key's change (an unchanged key has none), recorded in key order.
        let mut ops: BTreeMap<&str, ChangeOp> = BTreeMap::new();
        for item in &batch.items {
            let old = match pending.remove(item.key.as_str()) {
                Some(p) => Some(p),
                None => tree
                    .get(item.key.as_bytes())?
                    .map(|b| decode::<StoredItem>("item", &b))
                    .transpose()?,
            };
            let old_source = old.as_ref().map(|o| o.source.clone());
            let (stored, how) = StoredItem::merge(old, item, &batch.source, batch.fetched_at);
            if let Some(from) = old_source.filter(|s| *s != stored.source) {
                *outcome.taken_from.entry(from).or_default() += 1;
            }
            match how {
                Upsert::Inserted => {
                    outcome.inserted += 1;
                    ops.insert(item.key.as_str(), ChangeOp::Inserted);
                }
                Upsert::Changed => {
                    outcome.changed += 1;
                    // Inserted earlier in this batch stays inserted.
                    ops.entry(item.key.as_str()).or_insert(ChangeOp::Changed);
                }
                Upsert::Unchanged => outcome.unchanged += 1,
            }
            pending.insert(item.key.as_str(), stored);
        }
        for (key, stored) in &pending {
            writes.insert(key.as_bytes(), encode(stored));
        }
        let changes: Vec<(ChangeOp, Vec<u8>)> = ops
            .into_iter()
            .map(|(key, op)| (op, key.as_bytes().to_vec()))
            .collect();
        self.write_items(&batch.collection, &tree, writes, &changes)?;
        Ok(outcome)
    }

    /// Applies a write to a collection's items, counted so that readers
    /// know whether a flush covers it and whether their page is current.
    /// `changes` (op, item key) are recorded in the collection's change
    /// feed in the same transaction.
    fn write_items(
        &self,
        collection: &str,
        tree: &sled::Tree,
        writes: sled::Batch,
        changes: &[(ChangeOp, Vec<u8>)],
    ) -> Result<()> {
        let _writing = self.writing.read().unwrap_or_else(|e| e.into_inner());
        self.with_generations(collection, |g| g.begun += 1);
        let applied = self.apply_with_changes(collection, tree, writes, changes);
        self.with_generations(collection, |g| g.changed += 1);
        applied
    }

    pub(super) fn with_generations(&self, collection: &str, f: impl FnOnce(&mut Generations)) {
        let mut generations = self.generations.lock().unwrap_or_else(|e| e.into_inner());
        match generations.get_mut(collection) {
            Some(g) => f(g),
            None => f(generations.entry(collection.to_owned()).or_default()),
        }
    }

    /// The collection's generation: it changes whenever its items do.
    pub fn items_generation(&self, collection: &str) -> u64 {
        let generations = self.generations.lock().unwrap_or_else(|e| e.into_inner());
        generations.get(collection).map_or(0, |g| g.changed)
    }

    /// Merges copies of items from a peer's snapshot (the later observation
    /// of each wins) and raises the collection's heads to at least `heads`.
    /// Returns how many items were new here.
    pub fn restore(
        &self,
        collection: &str,
        items: &[StoredItem],
        heads: Option<&BTreeMap<String, u64>>,
    ) -> Result<u64> {
        self.write(|| self.restore_unguarded(collection, items, heads))
    }

    fn restore_unguarded(
        &self,
        collection: &str,
        items: &[StoredItem],
        heads: Option<&BTreeMap<String, u64>>,
    ) -> Result<u64> {
        let tree = self.items_tree(collection)?;
        let mut writes = sled::Batch::default();
        let mut changes = Vec::new();
        let mut inserted = 0;
        let mut last = None;
        for copy in items {
            // Observed before the collection was deleted: it stays deleted.
            if self.deleted_since(collection, copy.last_seen) {
                continue;
            }
            let old = tree
                .get(copy.key.as_bytes())?
                .map(|b| decode::<StoredItem>("item", &b))
                .transpose()?;
            inserted += u64::from(old.is_none());
            last = last.max(Some(copy.last_seen));
            let old_hash = old.as_ref().map(|o| o.hash.clone());
            let merged = StoredItem::merge_copy(old, copy.clone());
            let op = match old_hash {
                None => Some(ChangeOp::Inserted),
                Some(h) => (h != merged.hash).then_some(ChangeOp::Changed),
            };
            if let Some(op) = op {
                changes.push((op, copy.key.as_bytes().to_vec()));
            }
            writes.insert(copy.key.as_bytes(), encode(&merged));
        }
        self.write_items(collection, &tree, writes, &changes)?;
        let mut meta = self.collection(collection)?;
        if meta.is_none() && last.is_none() && heads.is_none() {
            return Ok(0);
        }
        let now = last.unwrap_or_else(Utc::now);
        let m = meta.get_or_insert_with(|| CollectionMeta {
            last_update: now,
            heads: BTreeMap::new(),
        });
        m.last_update = m.last_update.max(now);
        for (origin, seq) in heads.into_iter().flatten() {
            let h = m.heads.entry(origin.clone()).or_default();
            *h = (*h).max(*seq);
        }
        self.collections.insert(collection.as_bytes(), encode(m))?;
        Ok(inserted)
    }

    /// Names of every collection that has received a batch.
    pub fn collections(&self) -> Result<Vec<(String, CollectionMeta)>> {
        self.collections
            .iter()
            .map(|kv| {
                let (k, v) = kv?;
                Ok((
                    String::from_utf8_lossy(&k).into_owned(),
                    decode("collection", &v)?,
                ))
            })
            .collect()
    }

    pub fn collection(&self, name: &str) -> Result<Option<CollectionMeta>> {
        self.read(|| {
            self.collections
                .get(name.as_bytes())?
                .map(|b| decode("collection", &b))
                .transpose()
        })
    }

    /// Counts a collection's items, in total and per source (a full scan: done
    /// once when the collection's aggregator starts).
    pub fn count_items(&self, collection: &str) -> Result<(u64, BTreeMap<String, u64>)> {
        #[derive(Deserialize)]
        struct SourceOnly {
            source: String,
        }
        let tree = self.items_tree(collection)?;
        let mut total = 0;
        let mut per_source = BTreeMap::new();
        for v in tree.iter().values() {
            let item: SourceOnly = decode("item", &v?)?;
            total += 1;
            *per_source.entry(item.source).or_default() += 1;
        }
        Ok((total, per_source))
    }

    pub fn item(&self, collection: &str, key: &str) -> Result<Option<StoredItem>> {
        self.read(|| {
            self.items_tree(collection)?
                .get(key.as_bytes())?
                .map(|b| decode("item", &b))
                .transpose()
        })
    }

    /// Visits the items in key order after `after`, as stored, until
    /// `visit` returns false.
    pub fn each_item(
        &self,
        collection: &str,
        after: Option<&str>,
        mut visit: impl FnMut(ItemBytes<'_>) -> Result<bool>,
    ) -> Result<()> {
        self.guard.readable()?;
        for entry in items_after(&self.items_tree(collection)?, after) {
            let (key, bytes) = entry?;
            if !visit(ItemBytes {
                key: &key,
                bytes: &bytes,
            })? {
                break;
            }
        }
        Ok(())
    }

    /// Up to `limit` items in key order after `after`, keeping those `keep`
    /// accepts; also says whether more items remain past the last one returned.
    pub fn items(
        &self,
        collection: &str,
        after: Option<&str>,
        limit: usize,
        keep: impl Fn(&StoredItem) -> bool,
    ) -> Result<(Vec<StoredItem>, bool)> {
        let (mut out, mut more) = (Vec::with_capacity(limit.min(1024)), false);
        self.each_item(collection, after, |item| {
            let item: StoredItem = decode("item", item.bytes)?;
            if !keep(&item) {
                return Ok(true);
            }
            if out.len() == limit {
                more = true;
                return Ok(false);
            }
            out.push(item);
            Ok(true)
        })?;
        Ok((out, more))
    }

    pub(super) fn items_tree(&self, collection: &str) -> Result<sled::Tree> {
        Ok(self.db.open_tree(format!("{ITEMS_PREFIX}{collection}"))?)
    }
}
