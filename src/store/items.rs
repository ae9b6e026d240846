//! Each collection's tree, `items:{collection}`, holds everything a write
//! to the collection makes, so that one sled `apply_batch` (atomic within a
//! tree) writes a page without a transaction; the pages a flush covers go
//! together, in one batch ([`super::writes`]):
//! - [`PACK_TAG`]: the items, a write's together ([`super::packs`]), each
//!   a [`StoredItem`] written with its hash first so a page copies it as
//!   stored;
//! - item key (UTF-8) -> [`StoredItem`]: items written before packs;
//! - [`CHANGE_TAG`]: the change feed ([`super::changes`]);
//! - [`LOG_TAG`]: the replication log ([`super::log`]);
//! - [`SEEN_TAG`]: the seen records ([`super::keydir`]);
//! - [`META_KEY`]: the collection's [`CollectionMeta`] (last update, heads).
//!
//! The tags are bytes that never begin a UTF-8 string (0xF8 to 0xFF), so
//! items sort before every tagged key and `..ITEMS_END` ranges over the
//! items alone.
//!
//! The `collections` tree lists each collection (name -> the summary it had
//! when first written, or, in stores written before the summary moved into
//! the collection's tree, its summary): it is written once per collection.
//!
//! Upserts by key, snapshot copies from peers, and the reads behind queries.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::ops::Bound;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::changes::{change_key, encode_changes};
use super::keydir::{id_of, seen_key, write_seen, Entry, Id, Keydir};
use super::log::log_key;
use super::packs::{self, Stored, UNSTORED};
use super::writes::{self, Writes};
use super::{decode, encode, ChangeOp, Generations, Result, Store, StoreError};
use serde_json::value::RawValue;

use crate::domain::item::{Logged, ReplicatedBatchOut, StoredItemOut};
use crate::domain::{Item, ItemBatch, ItemRef, ReplicatedBatch, SeenBatch, StoredItem};

const ITEMS_PREFIX: &str = "items:";

/// Keys at and above this are not items (no UTF-8 string begins with 0xF8).
pub(super) const ITEMS_END: &[u8] = &[0xF8];
/// Change records' keys begin with this byte.
pub(super) const CHANGE_TAG: u8 = 0xF9;
/// Log entries' keys begin with this byte.
pub(super) const LOG_TAG: u8 = 0xFA;
/// Seen records' keys begin with this byte.
pub(super) const SEEN_TAG: u8 = 0xFB;
/// The collection's summary.
pub(super) const META_KEY: &[u8] = &[0xFC];
/// Packs' keys begin with this byte.
pub(super) const PACK_TAG: u8 = 0xFD;
/// Log entries past the retention are removed by their keys when at most
/// this many are due (a batch makes one due); more (after a snapshot raised
/// the heads, say) are found by a scan of the origin's oldest entries.
const TRIM_BY_KEY: u64 = 64;

/// What one batch did to a collection.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BatchOutcome {
    pub inserted: u64,
    pub changed: u64,
    pub unchanged: u64,
    /// Items that moved from another source to this one (for per-source counts).
    pub taken_from: BTreeMap<String, u64>,
}

/// An item a batch writes in full: new or changed (its data borrowed from
/// the batch), or, rarely, read back to move its `first_seen`.
enum Pending<'a> {
    New(StoredItemOut<'a>),
    Read(StoredItem),
}

impl Pending<'_> {
    /// Seen again at `last_seen` by `source` (and first at `first_seen`).
    fn seen(&mut self, first_seen: Option<DateTime<Utc>>, last_seen: DateTime<Utc>, source: &str) {
        match self {
            Pending::New(p) => {
                p.first_seen = first_seen.unwrap_or(p.first_seen);
                p.last_seen = last_seen;
                p.source = Cow::Owned(source.to_owned());
            }
            Pending::Read(p) => {
                p.first_seen = first_seen.unwrap_or(p.first_seen);
                p.last_seen = last_seen;
                p.source = source.to_owned();
            }
        }
    }

    fn encode(&self) -> Vec<u8> {
        match self {
            Pending::New(p) => encode(p),
            Pending::Read(p) => encode(p),
        }
    }
}

/// What a batch will write, worked out from the key directory.
struct Plan {
    outcome: BatchOutcome,
    /// Items and seen records.
    writes: Writes,
    changes: Vec<(ChangeOp, Vec<u8>)>,
    /// Per item of the batch, in order: found unchanged and not written in
    /// full by the batch, so its log entry names it by its hash.
    named: Vec<bool>,
}

/// A collection's summary row.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CollectionMeta {
    pub last_update: DateTime<Utc>,
    /// The last batch applied from each origin node (by sequence number).
    #[serde(default)]
    pub heads: BTreeMap<String, u64>,
}

/// A newer last_seen and source than an item's stored ones, from the key
/// directory.
pub(super) type Seen = Option<(DateTime<Utc>, std::sync::Arc<str>)>;

/// What the key directory says of `e`'s last_seen and source, if it says
/// more than the stored item.
fn seen_of(e: &Entry) -> Seen {
    (e.record != 0).then(|| (e.last_seen, e.source.clone()))
}

/// A stored item read from its bytes, with the key directory's newer
/// last_seen and source.
pub(super) fn decode_item(bytes: &[u8], seen: Seen) -> Result<StoredItem> {
    let mut item: StoredItem = decode("item", bytes)?;
    if let Some((at, source)) = seen {
        item.last_seen = at;
        item.source = source.to_string();
    }
    Ok(item)
}

/// One stored item, as the store holds it.
pub struct ItemBytes<'a> {
    pub(super) key: &'a [u8],
    pub(super) bytes: &'a [u8],
    /// A newer last_seen and source than stored (see the key directory).
    pub(super) seen: Seen,
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
        let mut item: ItemRef<'_> = decode("item", self.bytes)?;
        if let Some((at, source)) = &self.seen {
            item.last_seen = crate::domain::timestamp::text(at).into();
            item.source = source.to_string().into();
        }
        Ok(item)
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
        if hash_first && self.seen.is_none() {
            out.push(b'{');
            out.extend_from_slice(&b[HASH_MEMBER_LEN..]);
        } else if hash_first && self.write_seen(&b[HASH_MEMBER_LEN..], out) {
            // Copied up to its trailer, which was written anew.
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

/// The members a stored item ends with, after its `data`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Trailer<'a> {
    #[serde(borrow)]
    first_seen: Cow<'a, str>,
    version: u64,
    #[serde(borrow, rename = "last_seen")]
    _last_seen: Cow<'a, str>,
    #[serde(borrow, rename = "source")]
    _source: Cow<'a, str>,
}

/// How a stored item's trailer begins. A JSON string escapes its quotes,
/// so these bytes only occur as members; `data` comes before the trailer,
/// so the last occurrence is the trailer's.
const TRAILER: &[u8] = b",\"first_seen\":\"";

impl ItemBytes<'_> {
    /// Appends `{` + `members` (a stored item after its hash member) with
    /// the directory's newer `last_seen` and `source` in place of the
    /// stored ones: the key and data are copied, only the trailer is
    /// written. False (nothing written) when the trailer is not as
    /// [`StoredItem`] writes it; the caller then re-encodes the item.
    fn write_seen(&self, members: &[u8], out: &mut Vec<u8>) -> bool {
        let Some((at, source)) = &self.seen else {
            return false;
        };
        let Some(start) = members.windows(TRAILER.len()).rposition(|w| w == TRAILER) else {
            return false;
        };
        let mut object = Vec::with_capacity(members.len() - start + 1);
        object.push(b'{');
        object.extend_from_slice(&members[start + 1..]);
        let Ok(trailer) = serde_json::from_slice::<Trailer<'_>>(&object) else {
            return false;
        };
        let before = out.len();
        out.push(b'{');
        out.extend_from_slice(&members[..start]);
        let written = (|| {
            out.extend_from_slice(b",\"first_seen\":");
            serde_json::to_writer(&mut *out, &trailer.first_seen)?;
            out.extend_from_slice(b",\"last_seen\":");
            crate::domain::timestamp::write_json(at, out);
            out.extend_from_slice(b",\"version\":");
            serde_json::to_writer(&mut *out, &trailer.version)?;
            out.extend_from_slice(b",\"source\":");
            serde_json::to_writer(&mut *out, &**source)?;
            out.push(b'}');
            Ok::<(), serde_json::Error>(())
        })();
        if written.is_err() {
            out.truncate(before);
            return false;
        }
        true
    }
}

/// The collection's summary after a write of an observation made at `at`.
fn next_meta(kd: &Keydir, at: DateTime<Utc>) -> CollectionMeta {
    let mut meta = kd.meta.clone().unwrap_or(CollectionMeta {
        last_update: at,
        heads: BTreeMap::new(),
    });
    meta.last_update = meta.last_update.max(at);
    meta
}

impl Store {
    /// Upserts a batch into its collection (no log entry, no heads): for
    /// tests and tools; nodes use [`Store::apply_replicated`].
    pub fn apply_batch(&self, batch: &ItemBatch) -> Result<BatchOutcome> {
        self.write(|| self.upsert_items(batch, None))
    }

    /// Upserts a batch's items and, for a replicated batch, appends it to
    /// the log and raises its origin's head: one atomic sled batch. Each
    /// item's data is serialised once, for its hash, its stored bytes and
    /// the log entry.
    pub(super) fn upsert_items(
        &self,
        batch: &ItemBatch,
        replicated: Option<&ReplicatedBatch>,
    ) -> Result<BatchOutcome> {
        let collection = &batch.collection;
        self.in_keydir(collection, |kd, tree| {
            let json: Vec<(Box<RawValue>, String)> =
                batch.items.iter().map(Item::data_json).collect();
            let mut plan = self.plan_upsert(batch, &json, kd, tree)?;
            let mut meta = next_meta(kd, batch.fetched_at);
            if let Some(rb) = replicated {
                let logged = json.iter().zip(&plan.named).map(|((data, hash), named)| {
                    if *named {
                        Logged::Named(hash)
                    } else {
                        Logged::Data(data)
                    }
                });
                let entry = encode(&ReplicatedBatchOut::of(rb, logged));
                let log = (tree, &kd.pending, &mut kd.log_low);
                let at = (rb.origin.as_str(), rb.seq);
                self.log_batch(log, &mut plan.writes, &mut meta, at, entry)?;
            }
            let changes = &plan.changes;
            self.commit(collection, tree, kd, plan.writes, changes, Some(meta))?;
            Ok(plan.outcome)
        })
    }

    /// Runs `f` on a collection's key directory (loaded if it was not) and
    /// tree, under the directory's lock, which orders the collection's
    /// writes. When `f` fails, the directory may say more than sled holds:
    /// it is forgotten, and loaded again on its next use.
    fn in_keydir<T>(
        &self,
        collection: &str,
        f: impl FnOnce(&mut Keydir, &sled::Tree) -> Result<T>,
    ) -> Result<T> {
        let slot = self.keydir(collection)?;
        let mut guard = slot.lock().unwrap_or_else(|e| e.into_inner());
        let kd = guard.as_mut().ok_or_else(|| {
            StoreError::Unavailable(format!("collection {collection}: no key directory"))
        })?;
        let result = self.items_tree(collection).and_then(|tree| f(kd, &tree));
        if result.is_err() {
            drop(guard);
            self.drop_keydir(collection);
        }
        result
    }

    /// Adds a batch's log entry to `writes` (and the removal of the
    /// origin's entries past the retention), and raises the origin's head
    /// in `meta`. The tree is read through the collection's `pending`
    /// writes; `low` holds, per origin, the oldest entry that may be left.
    fn log_batch(
        &self,
        (tree, pending, low): (&sled::Tree, &Writes, &mut HashMap<String, u64>),
        writes: &mut Writes,
        meta: &mut CollectionMeta,
        (origin, seq): (&str, u64),
        entry: Vec<u8>,
    ) -> Result<()> {
        let h = meta.heads.entry(origin.to_owned()).or_default();
        *h = (*h).max(seq);
        writes.insert(log_key(origin, seq), entry);
        let Some(cut) = seq.checked_sub(self.log_retained).filter(|c| *c > 0) else {
            return Ok(());
        };
        // Entries up to `cut` go. Once the oldest one left is known, the
        // next are removed by their keys (one a batch): a scan from the
        // origin's first key would read the log's oldest leaf, long out of
        // sled's cache, for every batch of a node that has logged more than
        // the retention.
        match low.get(origin) {
            Some(&from) if from > cut => {}
            Some(&from) if cut - from < TRIM_BY_KEY => {
                for s in from..=cut {
                    writes.remove(log_key(origin, s));
                }
            }
            _ => {
                for k in pending.keys(tree, &log_key(origin, 0), &log_key(origin, cut)) {
                    writes.remove(k?);
                }
            }
        }
        match low.get_mut(origin) {
            Some(from) => *from = cut + 1,
            None => {
                low.insert(origin.to_owned(), cut + 1);
            }
        }
        Ok(())
    }

    /// Applies a page's items seen again unchanged, named by key and hash
    /// (a 304 answered from a remembered page), as batch `seq` of `origin`:
    /// their `last_seen` and source move (one seen record), the batch is
    /// logged with every item named, and the origin's head is raised, in
    /// one atomic sled batch. Nothing is written, and `None` returned,
    /// unless every item is stored with its named hash and seen no later
    /// than `fetched_at`: the caller then asks for the page in full. With
    /// `expand`, also returns the items with their data (for peers).
    pub fn apply_seen(
        &self,
        origin: &str,
        seq: u64,
        batch: &SeenBatch,
        expand: bool,
    ) -> Result<Option<(BatchOutcome, Vec<Item>)>> {
        let seen = batch.fetched_at;
        self.write(|| {
            self.in_keydir(&batch.collection, |kd, tree| {
                let ids: Vec<(Id, Id)> = (batch.names.iter())
                    .map(|n| (id_of(&n.key), id_of(&n.hash)))
                    .collect();
                let current = |(key, hash): &(Id, Id)| {
                    (kd.entries.get(key)).is_some_and(|e| e.hash == *hash && e.last_seen <= seen)
                };
                if !ids.iter().all(current) {
                    return Ok(None);
                }
                let source = kd.name(&batch.source);
                let record = kd.next_record();
                let mut outcome = BatchOutcome::default();
                let mut seen_keys = Vec::with_capacity(batch.names.len());
                let mut stale_records = Vec::new();
                for &(id, _) in &ids {
                    let e = kd.entries.get_mut(&id).expect("checked above");
                    if e.source != source {
                        *outcome.taken_from.entry(e.source.to_string()).or_default() += 1;
                    }
                    e.last_seen = seen;
                    e.source = source.clone();
                    outcome.unchanged += 1;
                    seen_keys.push(id);
                    stale_records.extend(kd.point(&id, record));
                }
                let mut writes = Writes::default();
                let by = (seen, batch.source.as_str());
                write_seen(&mut writes, record, by, &seen_keys, stale_records);
                let mut meta = next_meta(kd, seen);
                let entry = super::log::encode_seen(batch);
                let log = (tree, &kd.pending, &mut kd.log_low);
                self.log_batch(log, &mut writes, &mut meta, (origin, seq), entry)?;
                self.commit(&batch.collection, tree, kd, writes, &[], Some(meta))?;
                let mut items = Vec::new();
                for name in batch.names.iter().filter(|_| expand) {
                    let stored = super::log::stored_data(kd.stored(tree, &name.key)?, &name.hash)?;
                    if let Some((data, _)) = stored {
                        items.push(Item {
                            key: name.key.clone(),
                            data,
                        });
                    }
                }
                Ok(Some((outcome, items)))
            })
        })
    }

    /// Works out a batch's writes from the key directory alone (sled is read
    /// only for an observation older than the stored one), and updates the
    /// directory as if they were made. `json` holds each item's data as
    /// serialised JSON and its content hash, in the batch's order.
    fn plan_upsert(
        &self,
        batch: &ItemBatch,
        json: &[(Box<RawValue>, String)],
        kd: &mut Keydir,
        tree: &sled::Tree,
    ) -> Result<Plan> {
        let mut outcome = BatchOutcome::default();
        let seen = batch.fetched_at;
        let source = kd.name(&batch.source);
        // Items written in full, by key: later duplicates within one batch
        // see the earlier ones.
        let mut full: BTreeMap<&str, Pending> = BTreeMap::new();
        // Each key's change (an unchanged key has none), recorded in key order.
        let mut ops: BTreeMap<&str, ChangeOp> = BTreeMap::new();
        // Unchanged items seen now: one seen record for them all.
        let record = kd.next_record();
        let mut seen_keys: Vec<Id> = Vec::new();
        let mut stale_records = Vec::new();
        let mut named = vec![false; batch.items.len()];
        for (i, (item, (data, hash))) in batch.items.iter().zip(json).enumerate() {
            let id = id_of(&item.key);
            let Some(e) = kd.entries.get(&id) else {
                let stored = StoredItemOut {
                    hash,
                    key: &item.key,
                    data,
                    first_seen: seen,
                    last_seen: seen,
                    version: 1,
                    source: Cow::Borrowed(&batch.source),
                };
                kd.entries.insert(
                    id,
                    Entry {
                        hash: id_of(hash),
                        version: 1,
                        first_seen: seen,
                        last_seen: seen,
                        source: source.clone(),
                        record: 0,
                        pack: UNSTORED,
                    },
                );
                outcome.inserted += 1;
                ops.insert(item.key.as_str(), ChangeOp::Inserted);
                full.insert(item.key.as_str(), Pending::New(stored));
                continue;
            };
            if seen < e.last_seen {
                // An older observation arriving late never overwrites newer
                // content; it can only move first_seen back (rare: read it).
                outcome.unchanged += 1;
                if seen < e.first_seen {
                    let mut old = match full.remove(item.key.as_str()) {
                        Some(p) => p,
                        None => match kd.stored(tree, &item.key)? {
                            Some(b) => Pending::Read(decode::<StoredItem>("item", &b)?),
                            None => continue,
                        },
                    };
                    let e = kd.entries.get_mut(&id).expect("looked up above");
                    old.seen(Some(seen), e.last_seen, &e.source);
                    e.first_seen = seen;
                    full.insert(item.key.as_str(), old);
                    stale_records.extend(kd.point(&id, 0));
                }
                continue;
            }
            if e.source != source {
                *outcome.taken_from.entry(e.source.to_string()).or_default() += 1;
            }
            if e.hash == id_of(hash) {
                outcome.unchanged += 1;
                let e = kd.entries.get_mut(&id).expect("looked up above");
                e.last_seen = seen;
                e.source = source.clone();
                if let Some(p) = full.get_mut(item.key.as_str()) {
                    // Written in full by this batch already: say it there.
                    p.seen(None, seen, &batch.source);
                } else {
                    seen_keys.push(id);
                    stale_records.extend(kd.point(&id, record));
                    named[i] = true;
                }
                continue;
            }
            outcome.changed += 1;
            // Inserted earlier in this batch stays inserted.
            ops.entry(item.key.as_str()).or_insert(ChangeOp::Changed);
            let e = kd.entries.get_mut(&id).expect("looked up above");
            e.hash = id_of(hash);
            e.version += 1;
            e.last_seen = seen;
            e.source = source.clone();
            let stored = StoredItemOut {
                hash,
                key: &item.key,
                data,
                first_seen: e.first_seen,
                last_seen: seen,
                version: e.version,
                source: Cow::Borrowed(&batch.source),
            };
            full.insert(item.key.as_str(), Pending::New(stored));
            stale_records.extend(kd.point(&id, 0));
        }
        let mut writes = Writes::default();
        let full: Vec<(&str, Vec<u8>)> = full.iter().map(|(k, p)| (*k, p.encode())).collect();
        kd.pack(&mut writes, &full);
        let changes = ops
            .into_iter()
            .map(|(key, op)| (op, key.as_bytes().to_vec()))
            .collect();
        let by = (seen, batch.source.as_str());
        write_seen(&mut writes, record, by, &seen_keys, stale_records);
        Ok(Plan {
            outcome,
            writes,
            changes,
            named,
        })
    }

    /// Applies a write to a collection's tree in one sled batch: `writes`,
    /// then `changes` (op, item key) as one change record under the next
    /// sequence numbers (dropping records past the retention), and `meta`.
    /// The write is counted so that readers know whether a flush covers it
    /// and whether their page is current. Called under the key directory's
    /// lock, which orders the collection's writes and so its sequences.
    fn commit(
        &self,
        collection: &str,
        tree: &sled::Tree,
        kd: &mut Keydir,
        mut writes: Writes,
        changes: &[(ChangeOp, Vec<u8>)],
        meta: Option<CollectionMeta>,
    ) -> Result<()> {
        let _writing = self.writing.read().unwrap_or_else(|e| e.into_inner());
        self.with_generations(collection, |g| g.begun += 1);
        let applied = (|| {
            let newest = kd.last_change + changes.len() as u64;
            if !changes.is_empty() {
                writes.insert(change_key(kd.last_change + 1), encode_changes(changes));
                self.trim_changes(tree, &kd.pending, kd.last_change, newest, &mut writes)?;
            }
            if let Some(meta) = &meta {
                if !kd.listed {
                    // Listed first: a crash before the batch leaves an
                    // empty collection listed, never a hidden one.
                    self.collections
                        .insert(collection.as_bytes(), encode(meta))?;
                    kd.listed = true;
                }
                writes.insert(META_KEY, encode(meta));
            }
            kd.pending.append(writes);
            kd.last_change = newest;
            if meta.is_some() {
                kd.meta = meta;
            }
            Ok(())
        })();
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
        self.in_keydir(collection, |kd, tree| {
            let mut writes = Writes::default();
            // The copies to store, by key (a later copy of a key wins).
            let mut full = BTreeMap::new();
            let mut changes = Vec::new();
            let mut stale_records = Vec::new();
            let mut inserted = 0;
            let mut last = None;
            for copy in items {
                // Observed before the collection was deleted: it stays deleted.
                if self.deleted_since(collection, copy.last_seen) {
                    continue;
                }
                let id = id_of(&copy.key);
                let mut old = kd
                    .stored(tree, &copy.key)?
                    .map(|b| decode::<StoredItem>("item", &b))
                    .transpose()?;
                if let (Some(old), Some(e)) = (old.as_mut(), kd.entries.get(&id)) {
                    if e.record != 0 {
                        old.last_seen = e.last_seen;
                        old.source = e.source.to_string();
                    }
                }
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
                let source = kd.name(&merged.source);
                stale_records.extend(kd.point(&id, 0));
                let pack = kd.entries.get(&id).map_or(UNSTORED, |e| e.pack);
                kd.entries.insert(
                    id,
                    Entry {
                        hash: id_of(&merged.hash),
                        version: merged.version,
                        first_seen: merged.first_seen,
                        last_seen: merged.last_seen,
                        source,
                        record: 0,
                        pack,
                    },
                );
                full.insert(copy.key.as_str(), encode(&merged));
            }
            let full: Vec<(&str, Vec<u8>)> = full.into_iter().collect();
            kd.pack(&mut writes, &full);
            for n in stale_records {
                writes.remove(seen_key(n));
            }
            let meta = if kd.meta.is_none() && last.is_none() && heads.is_none() {
                None
            } else {
                let mut m = next_meta(kd, last.unwrap_or_else(Utc::now));
                for (origin, seq) in heads.into_iter().flatten() {
                    let h = m.heads.entry(origin.clone()).or_default();
                    *h = (*h).max(*seq);
                }
                Some(m)
            };
            self.commit(collection, tree, kd, writes, &changes, meta)?;
            Ok(inserted)
        })
    }

    /// Names of every collection that has received a batch, with their
    /// summaries.
    pub fn collections(&self) -> Result<Vec<(String, CollectionMeta)>> {
        let names: Vec<(String, sled::IVec)> = self
            .collections
            .iter()
            .map(|kv| {
                let (k, v) = kv?;
                Ok((String::from_utf8_lossy(&k).into_owned(), v))
            })
            .collect::<Result<_>>()?;
        names
            .into_iter()
            .map(|(name, listed)| {
                let meta = Store::stored_meta(&self.applied_tree(&name)?, &listed)?;
                Ok((name, meta))
            })
            .collect()
    }

    pub fn collection(&self, name: &str) -> Result<Option<CollectionMeta>> {
        self.read(|| {
            // Only a listed collection has a tree: looking does not create one.
            match self.collections.get(name.as_bytes())? {
                Some(listed) => Ok(Some(Store::stored_meta(
                    &self.applied_tree(name)?,
                    &listed,
                )?)),
                None => Ok(None),
            }
        })
    }

    /// A listed collection's summary: in its tree, or (written before the
    /// summary moved there, or never written since) as listed.
    pub(super) fn stored_meta(tree: &sled::Tree, listed: &[u8]) -> Result<CollectionMeta> {
        match tree.get(META_KEY)? {
            Some(b) => decode("collection", &b),
            None => decode("collection", listed),
        }
    }

    /// Counts a collection's items, in total and per source (from its key
    /// directory, loaded by a full scan on the collection's first use).
    pub fn count_items(&self, collection: &str) -> Result<(u64, BTreeMap<String, u64>)> {
        self.read(|| {
            let slot = self.keydir(collection)?;
            let kd = slot.lock().unwrap_or_else(|e| e.into_inner());
            Ok(kd.as_ref().map_or((0, BTreeMap::new()), |kd| {
                (kd.entries.len() as u64, kd.per_source())
            }))
        })
    }

    pub fn item(&self, collection: &str, key: &str) -> Result<Option<StoredItem>> {
        self.read(|| match self.stored_item(collection, key)? {
            Some((bytes, seen)) => Ok(Some(decode_item(&bytes, seen)?)),
            None => Ok(None),
        })
    }

    /// An item's stored bytes, and the newer last_seen and source than
    /// stored that the key directory holds, if any.
    pub(super) fn stored_item(
        &self,
        collection: &str,
        key: &str,
    ) -> Result<Option<(Stored, Seen)>> {
        let slot = self.keydir(collection)?;
        let mut guard = slot.lock().unwrap_or_else(|e| e.into_inner());
        self.apply_pending(collection, &mut guard)?;
        let Some(kd) = guard.as_ref() else {
            return Ok(None);
        };
        let Some(e) = kd.entries.get(&id_of(key)) else {
            return Ok(None);
        };
        let tree = self.items_tree(collection)?;
        let stored = packs::read(&tree, &writes::NONE, key, e.pack)?;
        Ok(stored.map(|b| (b, seen_of(e))))
    }

    /// Visits the items in key order after `after`, as stored, until
    /// `visit` returns false. The key directory says which keys come next
    /// and where their items are, a few hundred at a time, and is not held
    /// while they are read and visited.
    pub fn each_item(
        &self,
        collection: &str,
        after: Option<&str>,
        mut visit: impl FnMut(ItemBytes<'_>) -> Result<bool>,
    ) -> Result<()> {
        const KEYS_AT_ONCE: usize = 256;
        self.guard.readable()?;
        let slot = self.keydir(collection)?;
        let tree = self.items_tree(collection)?;
        let mut after: Option<Box<str>> = after.map(Into::into);
        loop {
            let next: Vec<(Box<str>, u64, Seen)> = {
                let mut guard = slot.lock().unwrap_or_else(|e| e.into_inner());
                self.apply_pending(collection, &mut guard)?;
                let Some(kd) = guard.as_ref() else {
                    return Ok(());
                };
                let from = after.as_deref().map_or(Bound::Unbounded, Bound::Excluded);
                kd.order
                    .range::<str, _>((from, Bound::Unbounded))
                    .take(KEYS_AT_ONCE)
                    .filter_map(|k| {
                        let e = kd.entries.get(&id_of(k))?;
                        Some((k.clone(), e.pack, seen_of(e)))
                    })
                    .collect()
            };
            let Some((last, _, _)) = next.last() else {
                return Ok(());
            };
            after = Some(last.clone());
            for (key, pack, seen) in next {
                let (bytes, seen) = match packs::read(&tree, &writes::NONE, &key, pack)? {
                    Some(bytes) => (bytes, seen),
                    // Written again since, and its pack gone: where it is now.
                    None => match self.stored_item(collection, &key)? {
                        Some(found) => found,
                        None => continue,
                    },
                };
                let item = ItemBytes {
                    key: key.as_bytes(),
                    bytes: &bytes,
                    seen,
                };
                if !visit(item)? {
                    return Ok(());
                }
            }
        }
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
        self.each_item(collection, after, |bytes| {
            let item = decode_item(bytes.bytes, bytes.seen)?;
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
