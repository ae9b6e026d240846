//! The node's local database: one sled database under the data directory. This
//! is the only module that touches sled, so the engine could be swapped.
//!
//! Trees:
//! - `meta`: node identity (a node id that survives restarts);
//! - `sources`: source id -> [`SourceRecord`] (tombstones included);
//! - `runs`: `source id \0 start time (big-endian micros)` -> [`RunRecord`], bounded per source;
//! - `collections`: collection name -> [`CollectionMeta`];
//! - `items:{collection}`: item key -> [`StoredItem`];
//! - `log:{collection}`: `origin node id \0 sequence (big-endian)` -> [`ReplicatedBatch`],
//!   the batches applied to the collection, kept so peers can pull what they
//!   missed (the newest [`Store::log_retained`] per origin).
//!
//! Every method blocks (sled does disk I/O): async callers run them on
//! `spawn_blocking`. Writes are durable only after [`Store::flush`], which
//! callers do before acknowledging anything, and readers of items check
//! [`Store::durable`] before they answer, so nothing unflushed is served.
//!
//! A full or failing disk never reaches sled unannounced: writes are refused
//! below a free-space reserve, and an I/O error fails the store for good
//! ([`guard`]).

mod flusher;
pub mod guard;

pub use flusher::Flusher;
pub use guard::StorageStatus;

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::{Arc, Mutex, RwLock};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::domain::{
    ItemBatch, ItemRef, ReplicatedBatch, RunRecord, SourceRecord, StoredItem, Upsert,
};

/// Runs kept per source; older ones are dropped. About one run in 16 trims
/// its source's history, and [`Store::runs`] shows the newest RUNS_KEPT.
pub const RUNS_KEPT: usize = 100;

const ITEMS_PREFIX: &str = "items:";
const LOG_PREFIX: &str = "log:";

/// Batches kept in the log per collection and origin, by default.
pub const LOG_RETAINED: u64 = 10_000;

/// A storage failure.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error: {0}")]
    Sled(#[from] sled::Error),
    #[error("stored {what} is unreadable: {source}")]
    Corrupt {
        what: &'static str,
        source: serde_json::Error,
    },
    #[error("the storage task failed: {0}")]
    Task(String),
    #[error("the disk is full: {free} bytes free in {dir}, below the reserve of {reserve} bytes; writes resume once space is freed")]
    DiskFull {
        dir: String,
        free: u64,
        reserve: u64,
    },
    #[error("storage unavailable: {0}")]
    Unavailable(String),
}

pub type Result<T> = std::result::Result<T, StoreError>;

impl StoreError {
    /// The same failure for another waiter: the kinds callers act on are
    /// kept, any other one is told as unavailable storage.
    pub fn shared(&self) -> StoreError {
        match self {
            StoreError::DiskFull { dir, free, reserve } => StoreError::DiskFull {
                dir: dir.clone(),
                free: *free,
                reserve: *reserve,
            },
            StoreError::Unavailable(m) => StoreError::Unavailable(m.clone()),
            other => StoreError::Unavailable(other.to_string()),
        }
    }
}

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

/// What the log holds after a sequence number.
#[derive(Debug, Clone, PartialEq)]
pub enum LogSlice {
    Batches(Vec<ReplicatedBatch>),
    /// Batches asked for are gone; the oldest kept is `first`.
    Truncated {
        first: u64,
    },
}

/// The sled handle and its trees; cheap to clone.
#[derive(Clone)]
pub struct Store {
    db: sled::Db,
    meta: sled::Tree,
    sources: sled::Tree,
    runs: sled::Tree,
    collections: sled::Tree,
    log_retained: u64,
    /// Per collection: how far its item writes have gone and been flushed.
    generations: Arc<Mutex<HashMap<String, Generations>>>,
    /// Held shared by each item write from its start to its end, and
    /// exclusively by a flush while it notes which writes it covers.
    writing: Arc<RwLock<()>>,
    guard: Arc<guard::Guard>,
}

/// One collection's write counters.
#[derive(Debug, Clone, Copy, Default)]
struct Generations {
    /// Item writes begun.
    begun: u64,
    /// Bumped after every change to the items: a reader that saw the same
    /// number before and after knows its page is still current.
    changed: u64,
    /// Item writes (counted as `begun`) that a finished flush covers.
    durable: u64,
}

fn decode<'a, T: Deserialize<'a>>(what: &'static str, bytes: &'a [u8]) -> Result<T> {
    serde_json::from_slice(bytes).map_err(|source| StoreError::Corrupt { what, source })
}

fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    serde_json::to_vec(value).expect("stored types always serialise")
}

impl Store {
    /// Opens (or creates) the database in `dir`, with sled's page cache
    /// bounded to `cache_bytes`.
    pub fn open(dir: &Path, cache_bytes: u64) -> Result<Store> {
        let db = sled::Config::new()
            .path(dir.join("db"))
            .cache_capacity(cache_bytes)
            .open()?;
        Ok(Store {
            meta: db.open_tree("meta")?,
            sources: db.open_tree("sources")?,
            runs: db.open_tree("runs")?,
            collections: db.open_tree("collections")?,
            db,
            log_retained: LOG_RETAINED,
            generations: Arc::default(),
            writing: Arc::default(),
            guard: Arc::new(guard::Guard::new(dir, guard::DEFAULT_RESERVE)),
        })
    }

    /// Refuses writes while the data directory's filesystem has fewer than
    /// `bytes` free.
    pub fn with_disk_reserve(mut self, bytes: u64) -> Store {
        self.guard = Arc::new(guard::Guard::new(self.guard.dir(), bytes));
        self
    }

    /// The disk's state; `fresh` looks at the free space now.
    pub fn storage_status(&self, fresh: bool) -> StorageStatus {
        self.guard.status(fresh)
    }

    /// Why the store failed, if it did: it then refuses every call until
    /// the process opens it again.
    pub fn failed(&self) -> Option<String> {
        self.guard.failed().map(str::to_owned)
    }

    /// Marks the store failed (a flush that never returns, say).
    pub fn fail(&self, reason: String) {
        self.guard.fail(reason);
    }

    /// How long the oldest flush in progress has been running.
    pub fn oldest_flush(&self) -> Option<std::time::Duration> {
        self.guard.oldest_flush()
    }

    /// Runs a write: refused up front on a full disk or a failed store, and
    /// an I/O error from it fails the store.
    fn write<T>(&self, f: impl FnOnce() -> Result<T>) -> Result<T> {
        self.guard.writable()?;
        f().inspect_err(|e| self.guard.note(e))
    }

    /// Runs a read, refused once the store has failed (sled may then hold
    /// writes that never reached the disk).
    fn read<T>(&self, f: impl FnOnce() -> Result<T>) -> Result<T> {
        self.guard.readable()?;
        f().inspect_err(|e| self.guard.note(e))
    }

    /// Keeps `n` batches per collection and origin in the log (at least 1).
    pub fn with_log_retained(mut self, n: u64) -> Store {
        self.log_retained = n.max(1);
        self
    }

    /// Makes every write so far durable.
    pub fn flush(&self) -> Result<()> {
        self.guard.readable()?;
        let _timer = self.guard.flush_started();
        let covered: Vec<(String, u64)> = {
            let _no_write_in_progress = self.writing.write().unwrap_or_else(|e| e.into_inner());
            let generations = self.generations.lock().unwrap_or_else(|e| e.into_inner());
            generations
                .iter()
                .filter(|(_, g)| g.durable < g.begun)
                .map(|(name, g)| (name.clone(), g.begun))
                .collect()
        };
        self.db
            .flush()
            .map_err(StoreError::from)
            .inspect_err(|e| self.guard.note(e))?;
        let mut generations = self.generations.lock().unwrap_or_else(|e| e.into_inner());
        for (name, begun) in covered {
            if let Some(g) = generations.get_mut(&name) {
                g.durable = g.durable.max(begun);
            }
        }
        Ok(())
    }

    /// True when every item write to `collection` begun so far is flushed.
    /// A reader that checks this after reading (and flushes otherwise)
    /// never serves an item that a crash could take back.
    pub fn durable(&self, collection: &str) -> bool {
        let generations = self.generations.lock().unwrap_or_else(|e| e.into_inner());
        generations
            .get(collection)
            .is_none_or(|g| g.durable >= g.begun)
    }

    /// A small key in the meta tree (not flushed).
    pub fn meta_put(&self, key: &str, value: &[u8]) -> Result<()> {
        self.write(|| {
            self.meta.insert(key, value)?;
            Ok(())
        })
    }

    /// This node's id, created (and flushed) on first use.
    pub fn node_id(&self) -> Result<String> {
        if let Some(id) = self.meta.get("node_id")? {
            return Ok(String::from_utf8_lossy(&id).into_owned());
        }
        let id = uuid::Uuid::new_v4().simple().to_string();
        self.write(|| Ok(self.meta.insert("node_id", id.as_bytes())?))?;
        self.flush()?;
        Ok(id)
    }

    pub fn put_source(&self, record: &SourceRecord) -> Result<()> {
        self.write(|| {
            self.sources
                .insert(record.spec.id.as_bytes(), encode(record))?;
            Ok(())
        })
    }

    pub fn source(&self, id: &str) -> Result<Option<SourceRecord>> {
        self.sources
            .get(id.as_bytes())?
            .map(|b| decode("source", &b))
            .transpose()
    }

    /// Every source record, tombstones included, in id order.
    pub fn sources(&self) -> Result<Vec<SourceRecord>> {
        self.sources
            .iter()
            .values()
            .map(|v| decode("source", &v?))
            .collect()
    }

    /// Appends a run to a source's history, dropping the oldest beyond [`RUNS_KEPT`].
    pub fn record_run(&self, source: &str, run: &RunRecord) -> Result<()> {
        self.write(|| self.record_run_unguarded(source, run))
    }

    fn record_run_unguarded(&self, source: &str, run: &RunRecord) -> Result<()> {
        let mut key = run_prefix(source);
        let micros = run.started_at.timestamp_micros().max(0) as u64;
        key.extend_from_slice(&micros.to_be_bytes());
        self.runs.insert(key, encode(run))?;
        // Trimming reads the whole history: do it for about one run in
        // 16, picked by a hash of its start time (whatever the
        // clock's resolution, and never the same sources every time).
        if micros.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 60 == 0 {
            let keys: Vec<sled::IVec> = self
                .runs
                .scan_prefix(run_prefix(source))
                .keys()
                .collect::<std::result::Result<_, _>>()?;
            if keys.len() > RUNS_KEPT {
                for k in &keys[..keys.len() - RUNS_KEPT] {
                    self.runs.remove(k)?;
                }
            }
        }
        Ok(())
    }

    /// The newest `limit` runs of a source, newest first.
    pub fn runs(&self, source: &str, limit: usize) -> Result<Vec<RunRecord>> {
        self.runs
            .scan_prefix(run_prefix(source))
            .values()
            .rev()
            .take(limit.min(RUNS_KEPT))
            .map(|v| decode("run", &v?))
            .collect()
    }

    /// Upserts a batch into its collection (no log entry, no heads): for
    /// tests and tools; nodes use [`Store::apply_replicated`].
    pub fn apply_batch(&self, batch: &ItemBatch) -> Result<BatchOutcome> {
        self.write(|| {
            let outcome = self.upsert_items(batch)?;
            self.update_meta(&batch.collection, batch.fetched_at, None)?;
            Ok(outcome)
        })
    }

    /// Applies a batch from `origin` with sequence number `seq`: upserts its
    /// items atomically, appends it to the collection's log (dropping the
    /// oldest beyond the retention) and records the collection's head for
    /// the origin. Applying the same batch twice changes nothing.
    pub fn apply_replicated(&self, rb: &ReplicatedBatch) -> Result<BatchOutcome> {
        self.write(|| self.apply_replicated_unguarded(rb))
    }

    fn apply_replicated_unguarded(&self, rb: &ReplicatedBatch) -> Result<BatchOutcome> {
        let outcome = self.upsert_items(&rb.batch)?;
        let log = self.log_tree(&rb.batch.collection)?;
        log.insert(log_key(&rb.origin, rb.seq), encode(rb))?;
        if rb.seq > self.log_retained {
            let cut = rb.seq - self.log_retained;
            let stale: Vec<sled::IVec> = log
                .range(log_key(&rb.origin, 0)..=log_key(&rb.origin, cut))
                .keys()
                .collect::<std::result::Result<_, _>>()?;
            for k in stale {
                log.remove(k)?;
            }
        }
        self.update_meta(
            &rb.batch.collection,
            rb.batch.fetched_at,
            Some((&rb.origin, rb.seq)),
        )?;
        Ok(outcome)
    }

    fn update_meta(
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

    fn upsert_items(&self, batch: &ItemBatch) -> Result<BatchOutcome> {
        let tree = self.items_tree(&batch.collection)?;
        let mut outcome = BatchOutcome::default();
        let mut writes = sled::Batch::default();
        // Later duplicates within one batch see the earlier ones.
        let mut pending: BTreeMap<&str, StoredItem> = BTreeMap::new();
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
                Upsert::Inserted => outcome.inserted += 1,
                Upsert::Changed => outcome.changed += 1,
                Upsert::Unchanged => outcome.unchanged += 1,
            }
            pending.insert(item.key.as_str(), stored);
        }
        for (key, stored) in &pending {
            writes.insert(key.as_bytes(), encode(stored));
        }
        self.write_items(&batch.collection, &tree, writes)?;
        Ok(outcome)
    }

    /// Applies a write to a collection's items, counted so that readers
    /// know whether a flush covers it and whether their page is current.
    fn write_items(&self, collection: &str, tree: &sled::Tree, writes: sled::Batch) -> Result<()> {
        let _writing = self.writing.read().unwrap_or_else(|e| e.into_inner());
        self.with_generations(collection, |g| g.begun += 1);
        let applied = tree.apply_batch(writes);
        self.with_generations(collection, |g| g.changed += 1);
        Ok(applied?)
    }

    fn with_generations(&self, collection: &str, f: impl FnOnce(&mut Generations)) {
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
        let mut inserted = 0;
        let mut last = None;
        for copy in items {
            let old = tree
                .get(copy.key.as_bytes())?
                .map(|b| decode::<StoredItem>("item", &b))
                .transpose()?;
            inserted += u64::from(old.is_none());
            last = last.max(Some(copy.last_seen));
            let merged = StoredItem::merge_copy(old, copy.clone());
            writes.insert(copy.key.as_bytes(), encode(&merged));
        }
        self.write_items(collection, &tree, writes)?;
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

    /// Every collection's heads.
    pub fn heads(&self) -> Result<BTreeMap<String, BTreeMap<String, u64>>> {
        Ok(self
            .collections()?
            .into_iter()
            .map(|(name, meta)| (name, meta.heads))
            .collect())
    }

    /// One collection's heads (empty if it does not exist here).
    pub fn heads_of(&self, collection: &str) -> Result<BTreeMap<String, u64>> {
        Ok(self
            .collection(collection)?
            .map(|m| m.heads)
            .unwrap_or_default())
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
        let log = self.log_tree(collection)?;
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

    fn log_tree(&self, collection: &str) -> Result<sled::Tree> {
        Ok(self.db.open_tree(format!("{LOG_PREFIX}{collection}"))?)
    }

    fn items_tree(&self, collection: &str) -> Result<sled::Tree> {
        Ok(self.db.open_tree(format!("{ITEMS_PREFIX}{collection}"))?)
    }
}

/// One stored item, as the store holds it.
pub struct ItemBytes<'a> {
    key: &'a [u8],
    bytes: &'a [u8],
}

/// `{"hash":"` + 32 hex characters + `",`: how every item written since
/// [`StoredItem`] put its hash first begins.
const HASH_PREFIX: &[u8] = b"{\"hash\":\"";
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

fn log_key(origin: &str, seq: u64) -> Vec<u8> {
    let mut key = origin.as_bytes().to_vec();
    key.push(0);
    key.extend_from_slice(&seq.to_be_bytes());
    key
}

fn run_prefix(source: &str) -> Vec<u8> {
    let mut key = source.as_bytes().to_vec();
    key.push(0);
    key
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::Item;
    use serde_json::json;

    fn batch(source: &str, prices: &[(&str, i64)]) -> ItemBatch {
        ItemBatch {
            source: source.into(),
            collection: "books".into(),
            fetched_at: Utc::now(),
            items: prices
                .iter()
                .map(|(url, p)| {
                    Item::new(
                        json!({"url": url, "price": p}).as_object().unwrap().clone(),
                        &["url".into()],
                    )
                })
                .collect(),
        }
    }

    #[test]
    fn pages_copy_stored_items_and_re_encode_older_ones_the_same() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), 1 << 20).unwrap();
        let gen0 = store.items_generation("books");
        store
            .apply_batch(&batch("s", &[("a", 1), ("b", 2)]))
            .unwrap();
        assert!(
            store.items_generation("books") > gen0,
            "a write moves the generation"
        );
        let mut views = Vec::new();
        store
            .each_item("books", None, |item| {
                let mut out = Vec::new();
                item.write_view(&mut out)?;
                views.push(serde_json::from_slice::<serde_json::Value>(&out).unwrap());
                Ok(true)
            })
            .unwrap();
        let stored: Vec<StoredItem> = store.items("books", None, 10, |_| true).unwrap().0;
        for (view, item) in views.iter().zip(&stored) {
            let mut expected = serde_json::to_value(item).unwrap();
            expected.as_object_mut().unwrap().remove("hash");
            assert_eq!(view, &expected);
            // An item written before the hash came first reads the same.
            let mut legacy = serde_json::to_value(item).unwrap();
            let hash = legacy.as_object_mut().unwrap().remove("hash").unwrap();
            legacy["hash"] = hash;
            let legacy = serde_json::to_vec(&legacy).unwrap();
            assert!(!legacy.starts_with(HASH_PREFIX));
            let mut out = Vec::new();
            ItemBytes {
                key: item.key.as_bytes(),
                bytes: &legacy,
            }
            .write_view(&mut out)
            .unwrap();
            assert_eq!(
                &serde_json::from_slice::<serde_json::Value>(&out).unwrap(),
                view
            );
        }
        assert_eq!(views.len(), 2);
    }

    #[test]
    fn upserts_never_duplicate_and_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = Store::open(dir.path(), 1 << 20).unwrap();
            let out = store
                .apply_batch(&batch("a", &[("u1", 1), ("u2", 2), ("u1", 1)]))
                .unwrap();
            assert_eq!((out.inserted, out.unchanged), (2, 1));
            let out = store
                .apply_batch(&batch("a", &[("u1", 1), ("u2", 3)]))
                .unwrap();
            assert_eq!((out.inserted, out.changed, out.unchanged), (0, 1, 1));
            let out = store.apply_batch(&batch("b", &[("u1", 1)])).unwrap();
            assert_eq!(out.taken_from.get("a"), Some(&1));
            store.flush().unwrap();
        }
        let store = Store::open(dir.path(), 1 << 20).unwrap();
        let (total, per_source) = store.count_items("books").unwrap();
        assert_eq!(total, 2);
        assert_eq!(per_source.get("a"), Some(&1));
        assert_eq!(per_source.get("b"), Some(&1));
        let (items, more) = store.items("books", None, 10, |_| true).unwrap();
        assert_eq!((items.len(), more), (2, false));
        let changed = items.iter().find(|i| i.data["url"] == "u2").unwrap();
        assert_eq!(changed.version, 2);
    }

    fn numbered(origin: &str, seq: u64, b: ItemBatch) -> ReplicatedBatch {
        ReplicatedBatch {
            origin: origin.into(),
            seq,
            batch: b,
        }
    }

    #[test]
    fn the_log_serves_what_it_keeps_and_says_when_it_is_truncated() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), 1 << 20)
            .unwrap()
            .with_log_retained(3);
        for seq in 1..=5 {
            let url = format!("u{seq}");
            store
                .apply_replicated(&numbered("A", seq, batch("a", &[(url.as_str(), 1)])))
                .unwrap();
        }
        // Applying a batch again changes nothing.
        let again = store
            .apply_replicated(&numbered("A", 5, batch("a", &[("u5", 1)])))
            .unwrap();
        assert_eq!((again.inserted, again.changed), (0, 0));
        assert_eq!(store.heads_of("books").unwrap()["A"], 5);
        match store.log_after("books", "A", 2, 10, usize::MAX).unwrap() {
            LogSlice::Batches(b) => {
                assert_eq!(b.iter().map(|b| b.seq).collect::<Vec<_>>(), [3, 4, 5])
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            store.log_after("books", "A", 0, 10, usize::MAX).unwrap(),
            LogSlice::Truncated { first: 3 }
        );
        // The byte budget cuts the answer, but never below one batch.
        match store.log_after("books", "A", 2, 10, 1).unwrap() {
            LogSlice::Batches(b) => assert_eq!(b.len(), 1),
            other => panic!("{other:?}"),
        }
        assert_eq!(
            store.log_after("books", "A", 5, 10, usize::MAX).unwrap(),
            LogSlice::Batches(Vec::new())
        );
    }

    #[test]
    fn replicas_converge_whatever_order_batches_and_copies_arrive_in() {
        let t0 = Utc::now();
        let mut older = batch("a", &[("u1", 1)]);
        older.fetched_at = t0;
        let mut newer = batch("b", &[("u1", 2)]);
        newer.fetched_at = t0 + chrono::Duration::seconds(1);
        let read = |first: &ItemBatch, second: &ItemBatch| {
            let dir = tempfile::tempdir().unwrap();
            let store = Store::open(dir.path(), 1 << 20).unwrap();
            store.apply_batch(first).unwrap();
            store.apply_batch(second).unwrap();
            let (items, _) = store.items("books", None, 10, |_| true).unwrap();
            (
                items[0].data.clone(),
                items[0].first_seen,
                items[0].last_seen,
            )
        };
        assert_eq!(read(&older, &newer), read(&newer, &older));
        // A snapshot copy merges the same way: the later observation wins.
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), 1 << 20).unwrap();
        store.apply_batch(&newer).unwrap();
        let (mine, _) = store.items("books", None, 10, |_| true).unwrap();
        let other = tempfile::tempdir().unwrap();
        let peer = Store::open(other.path(), 1 << 20).unwrap();
        peer.apply_batch(&older).unwrap();
        let (theirs, _) = peer.items("books", None, 10, |_| true).unwrap();
        let heads = BTreeMap::from([("A".to_string(), 7)]);
        assert_eq!(store.restore("books", &theirs, Some(&heads)).unwrap(), 0);
        let (merged, _) = store.items("books", None, 10, |_| true).unwrap();
        assert_eq!(merged[0].data, mine[0].data);
        assert_eq!(merged[0].first_seen, t0);
        assert_eq!(store.heads_of("books").unwrap()["A"], 7);
    }

    #[test]
    fn paging_walks_every_item_once() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), 1 << 20).unwrap();
        let urls: Vec<String> = (0..25).map(|i| format!("u{i}")).collect();
        let pairs: Vec<(&str, i64)> = urls.iter().map(|u| (u.as_str(), 1)).collect();
        store.apply_batch(&batch("a", &pairs)).unwrap();
        let mut seen = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let (page, more) = store
                .items("books", after.as_deref(), 10, |_| true)
                .unwrap();
            after = page.last().map(|i| i.key.clone());
            seen.extend(page);
            if !more {
                break;
            }
        }
        assert_eq!(seen.len(), 25);
    }

    #[test]
    fn run_history_is_bounded_and_newest_first() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), 1 << 20).unwrap();
        let t0 = Utc::now();
        let n = 2000;
        for i in 0..n {
            let at = t0 + chrono::Duration::milliseconds(i * 1001);
            let run = RunRecord {
                started_at: at,
                finished_at: at,
                duration_ms: 0,
                pages: 1,
                items: i as u64,
                inserted: 0,
                changed: 0,
                error: None,
                code: None,
            };
            store.record_run("s", &run).unwrap();
        }
        // Another source's runs share the tree but not the history.
        store
            .record_run("s2", &store.runs("s", 1).unwrap()[0])
            .unwrap();
        let runs = store.runs("s", 1000).unwrap();
        assert_eq!(runs.len(), RUNS_KEPT);
        assert_eq!(runs[0].items, n as u64 - 1);
        let kept = store.runs.scan_prefix(run_prefix("s")).count();
        assert!(kept < RUNS_KEPT + 200, "{kept} runs kept");
        assert_eq!(store.runs("s2", 10).unwrap().len(), 1);
    }
}
