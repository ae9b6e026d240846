//! The node's local database: one sled database under the data directory. This
//! is the only module that touches sled, so the engine could be swapped.
//!
//! One file per tree, each an `impl Store` block:
//! - `meta` (here): node identity (a node id that survives restarts);
//! - `sources`: the replicated source registry's records;
//! - `hosts`: the replicated host policy overrides;
//! - `runs`: each source's bounded run history;
//! - `items`: each collection's tree, `items:{collection}`, holding all a
//!   write to it makes, so that one atomic sled batch writes a page (or
//!   all the pages one flush covers, see `writes`): its items, and under
//!   tagged keys its change feed (`changes`), its applied batches kept for
//!   peers (`log`), its seen records (`keydir`) and its summary with the
//!   heads; and the `collections` list;
//! - `webhooks`: the replicated webhook registry and each webhook's
//!   delivery state.
//! - `dropped`: deleted collections' tombstones.
//!
//! Around them: [`Flusher`] (group commit) and [`guard`] (the disk reserve,
//! a failed store, stalled flushes).
//!
//! Every method blocks (sled does disk I/O): async callers run them on
//! `spawn_blocking`. Writes are durable only after [`Store::flush`], which
//! callers do before acknowledging anything, and readers of items check
//! [`Store::durable`] before they answer, so nothing unflushed is served.
//!
//! A full or failing disk never reaches sled unannounced: writes are refused
//! below a free-space reserve, and an I/O error fails the store for good
//! ([`guard`]).

mod changes;
mod compact;
mod dropped;
mod flusher;
pub mod guard;
mod hosts;
mod items;
mod keydir;
mod log;
mod migrate;
mod packs;
mod pages;
mod runs;
mod sources;
mod webhooks;
mod writes;

pub use changes::{Change, ChangeOp, CHANGES_KEPT};
pub use flusher::Flusher;
pub use guard::StorageStatus;
pub use items::{BatchOutcome, CollectionMeta, ItemBytes};
pub use log::{LogSlice, LOG_RETAINED};
pub use pages::PageMemo;
pub use runs::RUNS_KEPT;
pub use webhooks::{ACKS_KEPT, LOG_KEPT};

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex, RwLock};

use serde::{Deserialize, Serialize};

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

/// The sled handle and its trees; cheap to clone.
#[derive(Clone)]
pub struct Store {
    db: sled::Db,
    meta: sled::Tree,
    sources: sled::Tree,
    hosts: sled::Tree,
    runs: sled::Tree,
    pages: sled::Tree,
    collections: sled::Tree,
    webhooks: sled::Tree,
    hooks: sled::Tree,
    dropped: sled::Tree,
    /// Each deleted collection's deletion time, for the per-batch check.
    dropped_at: dropped::DroppedAt,
    log_retained: u64,
    changes_kept: u64,
    change_watches: changes::ChangeWatches,
    /// Per collection: the in-memory index of its items.
    keydirs: keydir::Keydirs,
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
    // Room for a typical item at once: growing from empty reallocates a
    // handful of times per value.
    let mut out = Vec::with_capacity(512);
    serde_json::to_writer(&mut out, value).expect("stored types always serialise");
    out
}

impl Store {
    /// Opens (or creates) the database in `dir`, with sled's page cache
    /// bounded to `cache_bytes`.
    pub fn open(dir: &Path, cache_bytes: u64) -> Result<Store> {
        let db = sled::Config::new()
            .path(dir.join("db"))
            .cache_capacity(cache_bytes)
            .open()?;
        migrate::migrate(&db)?;
        let dropped = db.open_tree("dropped")?;
        Ok(Store {
            dropped_at: dropped::load(&dropped)?,
            dropped,
            meta: db.open_tree("meta")?,
            sources: db.open_tree("sources")?,
            hosts: db.open_tree("hosts")?,
            runs: db.open_tree("runs")?,
            pages: db.open_tree("pages")?,
            collections: db.open_tree("collections")?,
            webhooks: db.open_tree("webhooks")?,
            hooks: db.open_tree("hooks")?,
            db,
            log_retained: LOG_RETAINED,
            changes_kept: CHANGES_KEPT,
            change_watches: Arc::default(),
            keydirs: Arc::default(),
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
        // Every collection's writes go to sled first (see `writes`).
        self.apply_all_pending()?;
        self.db
            .flush()
            .map_err(StoreError::from)
            .inspect_err(|e| self.guard.note(e))?;
        {
            let mut generations = self.generations.lock().unwrap_or_else(|e| e.into_inner());
            for (name, begun) in &covered {
                if let Some(g) = generations.get_mut(name) {
                    g.durable = g.durable.max(*begun);
                }
            }
        }
        self.changes_durable(covered.iter().map(|(name, _)| name.as_str()));
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

    /// A small key in the meta tree.
    pub fn meta_get(&self, key: &str) -> Result<Option<Vec<u8>>> {
        self.read(|| Ok(self.meta.get(key)?.map(|v| v.to_vec())))
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
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use chrono::Utc;

    use super::items::HASH_PREFIX;
    use super::runs::run_prefix;
    use super::*;
    use crate::domain::Item;
    use crate::domain::{ItemBatch, ItemName, ReplicatedBatch, RunRecord, SeenBatch, StoredItem};
    use serde_json::json;

    /// Opens the store in `dir`, which a store dropped a moment ago may
    /// still lock: sled frees a dropped database's structures, and with them
    /// its file, when its epoch-based collector gets to them, which another
    /// thread may do a little later. So the lock is waited for (bounded).
    fn open(dir: &std::path::Path) -> Store {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            match Store::open(dir, 1 << 20) {
                Err(StoreError::Sled(sled::Error::Io(e)))
                    if e.to_string().contains("could not acquire lock")
                        && std::time::Instant::now() < deadline =>
                {
                    std::thread::sleep(std::time::Duration::from_millis(5));
                }
                other => return other.unwrap(),
            }
        }
    }

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
        let store = open(dir.path());
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
                seen: None,
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
    fn a_newer_last_seen_is_written_into_the_copied_item_as_re_encoding_would() {
        let mut hostile = serde_json::Map::new();
        hostile.insert("url".into(), json!("u\",\"first_seen\":\"x"));
        hostile.insert(
            "nested".into(),
            json!({"first_seen": "1999-01-01T00:00:00Z", "version": 7, "source": "q"}),
        );
        hostile.insert("text".into(), json!("a \"quoted\" \\ line\nand é"));
        let item = Item::new(hostile, &["url".into()]);
        let stored = StoredItem {
            hash: item.content_hash(),
            key: item.key.clone(),
            data: item.data.clone(),
            first_seen: Utc::now() - chrono::Duration::days(3),
            last_seen: Utc::now() - chrono::Duration::days(2),
            version: 4,
            source: "old".into(),
        };
        let bytes = serde_json::to_vec(&stored).unwrap();
        assert!(bytes.starts_with(HASH_PREFIX));
        let at = Utc::now();
        let view = ItemBytes {
            key: stored.key.as_bytes(),
            bytes: &bytes,
            seen: Some((at, "new-source".into())),
        };
        let mut copied = Vec::new();
        view.write_view(&mut copied).unwrap();
        let re_encoded = serde_json::to_vec(&view.item_ref().unwrap()).unwrap();
        assert_eq!(
            String::from_utf8(copied.clone()).unwrap(),
            String::from_utf8(re_encoded).unwrap()
        );
        let shown: serde_json::Value = serde_json::from_slice(&copied).unwrap();
        assert_eq!(shown["last_seen"], json!(at));
        assert_eq!(shown["source"], "new-source");
        assert_eq!(shown["version"], 4);
        assert_eq!(
            shown["data"]["nested"]["first_seen"],
            "1999-01-01T00:00:00Z"
        );
        // A trailer not as the store writes it is re-encoded, not spliced.
        let odd = String::from_utf8(bytes)
            .unwrap()
            .replace(",\"version\":4", ",\"version\":4,\"x\":1");
        let mut out = Vec::new();
        ItemBytes {
            key: stored.key.as_bytes(),
            bytes: odd.as_bytes(),
            seen: Some((at, "new-source".into())),
        }
        .write_view(&mut out)
        .unwrap();
        let shown: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(shown["source"], "new-source");
        assert!(shown.get("x").is_none());
    }

    #[test]
    fn writes_wait_in_memory_until_a_flush_or_a_reader_needs_them() {
        let dir = tempfile::tempdir().unwrap();
        let stored = |store: &Store| {
            let tree = store.items_tree("books").unwrap();
            let packs = tree.range(packs::pack_key(0)..=packs::pack_key(u64::MAX));
            packs
                .map(|p| packs::entries(&p.unwrap().1).count())
                .sum::<usize>()
        };
        {
            let store = open(dir.path());
            store.apply_batch(&batch("a", &[("u1", 1)])).unwrap();
            store.apply_batch(&batch("a", &[("u2", 2)])).unwrap();
            assert_eq!(stored(&store), 0, "two pages, nothing in sled yet");
            // A reader sees every write made, and sled then holds them.
            let (items, _) = store.items("books", None, 10, |_| true).unwrap();
            assert_eq!(items.len(), 2);
            assert_eq!(stored(&store), 2);
            assert!(!store.durable("books"), "applied is not flushed");
            store.apply_batch(&batch("a", &[("u3", 3)])).unwrap();
            // A failed write forgets the key directory; what was made before goes to sled.
            store.drop_keydir("books");
            assert_eq!(stored(&store), 3);
            store.apply_batch(&batch("a", &[("u4", 4)])).unwrap();
            assert_eq!(stored(&store), 3);
            store.flush().unwrap();
            assert_eq!(stored(&store), 4, "a flush applies first");
            assert!(store.durable("books"));
        }
        let store = open(dir.path());
        let (items, _) = store.items("books", None, 10, |_| true).unwrap();
        assert_eq!(items.len(), 4, "everything flushed survives a reopen");
    }

    #[test]
    fn upserts_never_duplicate_and_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = open(dir.path());
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
        let store = open(dir.path());
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
        let store = open(dir.path()).with_log_retained(3);
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
        // Past the retention, each batch removes the oldest entry by its
        // key; a directory loaded again finds the oldest one by a scan, and
        // a jump in the numbering (a snapshot raised the head) is scanned too.
        let log_keys = |store: &Store| {
            let tree = store.applied_tree("books").unwrap();
            let range = log::log_key("A", 0)..=log::log_key("A", u64::MAX);
            tree.range(range).keys().count()
        };
        for seq in (6..=9).chain(200..=202) {
            if seq == 8 {
                store.drop_keydir("books");
            }
            let url = format!("u{seq}");
            store
                .apply_replicated(&numbered("A", seq, batch("a", &[(url.as_str(), 1)])))
                .unwrap();
            let kept = if seq < 200 { 3 } else { seq - 199 };
            assert_eq!(log_keys(&store) as u64, kept, "after batch {seq}");
        }
        assert_eq!(
            store.log_after("books", "A", 0, 10, usize::MAX).unwrap(),
            LogSlice::Truncated { first: 200 }
        );
    }

    #[test]
    fn unchanged_items_are_logged_by_name_and_pulled_whole() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
        let first = numbered("A", 1, batch("a", &[("u1", 1), ("u2", 2), ("u3", 3)]));
        store.apply_replicated(&first).unwrap();
        // The same page again, one item changed and one new.
        let mut again = batch("a", &[("u1", 1), ("u2", 5), ("u3", 3), ("u4", 4)]);
        again.fetched_at = first.batch.fetched_at + chrono::Duration::seconds(1);
        let second = numbered("A", 2, again);
        let out = store.apply_replicated(&second).unwrap();
        assert_eq!((out.inserted, out.changed, out.unchanged), (1, 1, 2));
        // Stored: the unchanged items by their hashes, the others with data.
        let tree = store.applied_tree("books").unwrap();
        let raw = tree.get(log::log_key("A", 2)).unwrap().unwrap();
        let logged: serde_json::Value = serde_json::from_slice(&raw).unwrap();
        let items = logged["batch"]["items"].as_array().unwrap();
        let named: Vec<bool> = items.iter().map(|i| i.get("data").is_none()).collect();
        assert_eq!(named, [true, false, true, false]);
        assert_eq!(items[0]["hash"], second.batch.items[0].content_hash());
        // Pulled whole: the same batch as applied.
        let pulled = |after| match store
            .log_after("books", "A", after, 10, usize::MAX)
            .unwrap()
        {
            LogSlice::Batches(b) => b,
            other => panic!("{other:?}"),
        };
        assert_eq!(pulled(0), [first.clone(), second.clone()]);
        // Once a later observation changes a named item, the entry leaves it
        // out: the later one decides what peers keep of it.
        let mut later = batch("b", &[("u1", 9)]);
        later.fetched_at = second.batch.fetched_at + chrono::Duration::seconds(1);
        store.apply_replicated(&numbered("B", 1, later)).unwrap();
        let entry = &pulled(1)[0];
        let keys: Vec<&str> = entry.batch.items.iter().map(|i| &*i.key).collect();
        let want: Vec<&str> = second.batch.items[1..].iter().map(|i| &*i.key).collect();
        assert_eq!(keys, want);
        // A peer applying the pulled log ends as this store is.
        let peer_dir = tempfile::tempdir().unwrap();
        let peer = open(peer_dir.path());
        for rb in pulled(0) {
            peer.apply_replicated(&rb).unwrap();
        }
        match store.log_after("books", "B", 0, 10, usize::MAX).unwrap() {
            LogSlice::Batches(b) => {
                for rb in b {
                    peer.apply_replicated(&rb).unwrap();
                }
            }
            other => panic!("{other:?}"),
        }
        let all = |s: &Store| s.items("books", None, 10, |_| true).unwrap().0;
        assert_eq!(all(&peer), all(&store));
    }

    #[test]
    fn items_seen_by_name_move_last_seen_only_if_stored_as_named() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
        let first = numbered("A", 1, batch("a", &[("u1", 1), ("u2", 2)]));
        store.apply_replicated(&first).unwrap();
        let later = first.batch.fetched_at + chrono::Duration::seconds(1);
        let seen = |names: Vec<ItemName>| SeenBatch {
            source: "b".into(),
            collection: "books".into(),
            fetched_at: later,
            names,
        };
        let names: Vec<ItemName> = first.batch.items.iter().map(ItemName::from).collect();
        // One hash that is not the stored one: nothing is written.
        let mut wrong = names.clone();
        wrong[1].hash = Item::new(
            json!({"url": "u2", "price": 3})
                .as_object()
                .unwrap()
                .clone(),
            &["url".into()],
        )
        .content_hash();
        assert_eq!(store.apply_seen("A", 2, &seen(wrong), true).unwrap(), None);
        assert_eq!(store.heads_of("books").unwrap()["A"], 1);
        let missing = vec![ItemName {
            key: "00000000000000000000000000000000".into(),
            hash: names[0].hash.clone(),
        }];
        assert_eq!(
            store.apply_seen("A", 2, &seen(missing), true).unwrap(),
            None
        );
        // As named: last_seen and source move, the items come back whole.
        let (out, items) = store
            .apply_seen("A", 2, &seen(names.clone()), true)
            .unwrap()
            .unwrap();
        assert_eq!((out.unchanged, out.taken_from.get("a")), (2, Some(&2)));
        assert_eq!(items, first.batch.items);
        assert_eq!(store.heads_of("books").unwrap()["A"], 2);
        for item in &first.batch.items {
            let stored = store.item("books", &item.key).unwrap().unwrap();
            assert_eq!((stored.last_seen, stored.source.as_str()), (later, "b"));
            assert_eq!(stored.version, 1);
        }
        // Logged by name, pulled whole; seen again no later than stored: refused.
        match store.log_after("books", "A", 1, 10, usize::MAX).unwrap() {
            LogSlice::Batches(b) => {
                let pulled = (
                    &b[0].origin,
                    b[0].seq,
                    &b[0].batch.source,
                    b[0].batch.fetched_at,
                );
                assert_eq!(pulled, (&"A".to_owned(), 2, &"b".to_owned(), later));
                assert_eq!(b[0].batch.collection, "books");
                assert_eq!(b[0].batch.items, first.batch.items);
            }
            other => panic!("{other:?}"),
        }
        // The seen batch is logged compactly: about 34 bytes an item, its
        // origin and number left to its key.
        let tree = store.applied_tree("books").unwrap();
        let raw = tree.get(log::log_key("A", 2)).unwrap().unwrap();
        assert!(
            raw[0] != b'{' && raw.len() < 24 + 2 * 34,
            "{} bytes",
            raw.len()
        );
        let mut earlier = seen(names.clone());
        earlier.fetched_at = first.batch.fetched_at;
        assert_eq!(store.apply_seen("A", 3, &earlier, false).unwrap(), None);
        // An entry in the first compact form, which held its origin, number
        // and collection, is pulled as it was written.
        let mut v1 = vec![1];
        compact::put_str(&mut v1, "A");
        compact::put_u64(&mut v1, 3);
        compact::put_str(&mut v1, "c");
        compact::put_str(&mut v1, "books");
        compact::put_time(&mut v1, later);
        compact::put_names(&mut v1, &names);
        tree.insert(log::log_key("A", 3), v1).unwrap();
        match store.log_after("books", "A", 2, 10, usize::MAX).unwrap() {
            LogSlice::Batches(b) => {
                assert_eq!((b[0].origin.as_str(), b[0].seq), ("A", 3));
                assert_eq!(
                    (b[0].batch.source.as_str(), b[0].batch.fetched_at),
                    ("c", later)
                );
                assert_eq!(b[0].batch.items, first.batch.items);
            }
            other => panic!("{other:?}"),
        }
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
            let store = open(dir.path());
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
        let store = open(dir.path());
        store.apply_batch(&newer).unwrap();
        let (mine, _) = store.items("books", None, 10, |_| true).unwrap();
        let other = tempfile::tempdir().unwrap();
        let peer = open(other.path());
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
    fn the_change_feed_records_inserts_and_changes_in_order_and_is_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path()).with_changes_kept(4);
        let mut watch = store.watch_changes("books");
        store
            .apply_batch(&batch("a", &[("u1", 1), ("u2", 2)]))
            .unwrap();
        // Unchanged items are not changes; a changed one is, with its newest body.
        store
            .apply_batch(&batch("a", &[("u1", 1), ("u2", 3)]))
            .unwrap();
        assert!(!watch.has_changed().unwrap(), "not durable yet");
        store.flush().unwrap();
        assert!(watch.has_changed().unwrap(), "a flush wakes the watchers");
        watch.mark_unchanged();
        let feed = store.changes_after("books", 0, 10).unwrap();
        let mut seen: Vec<_> = feed
            .iter()
            .map(|c| (c.seq, c.op, c.item.data["url"].as_str().unwrap()))
            .collect();
        // Within a batch, changes are in key order.
        seen[..2].sort_by_key(|c| c.2);
        seen[..2].iter_mut().zip(1..).for_each(|(c, n)| c.0 = n);
        assert_eq!(
            seen,
            [
                (1, ChangeOp::Inserted, "u1"),
                (2, ChangeOp::Inserted, "u2"),
                (3, ChangeOp::Changed, "u2")
            ]
        );
        let u2 = feed.iter().find(|c| c.item.data["url"] == "u2").unwrap();
        assert_eq!(u2.item.data["price"], 3, "bodies are the newest");
        assert_eq!(store.changes_after("books", 1, 1).unwrap()[0].seq, 2);
        // A page of the feed starts inside one write's record and ends in the next.
        let across: Vec<u64> = store
            .changes_after("books", 1, 2)
            .unwrap()
            .iter()
            .map(|c| c.seq)
            .collect();
        assert_eq!(across, [2, 3]);
        assert!(store.changes_after("books", 3, 10).unwrap().is_empty());
        // Sequences survive a reopen, and only the newest are kept, by
        // whole records (one per write).
        drop(store);
        let store = open(dir.path()).with_changes_kept(4);
        let seqs = |store: &Store| -> Vec<u64> {
            let feed = store.changes_after("books", 0, 10).unwrap();
            feed.iter().map(|c| c.seq).collect()
        };
        store
            .apply_batch(&batch("a", &[("u3", 1), ("u4", 1)]))
            .unwrap();
        assert_eq!(seqs(&store), [1, 2, 3, 4, 5], "the first record holds 2");
        store.apply_batch(&batch("a", &[("u5", 1)])).unwrap();
        assert_eq!(seqs(&store), [3, 4, 5, 6]);
        store
            .apply_batch(&batch("a", &[("u6", 1), ("u7", 1), ("u8", 1), ("u9", 1)]))
            .unwrap();
        assert_eq!(seqs(&store), [7, 8, 9, 10], "every older record went");
        assert_eq!(store.changes_after("books", 8, 10).unwrap()[0].seq, 9);
    }

    #[test]
    fn a_store_written_with_a_tree_per_kind_opens_and_goes_on() {
        let dir = tempfile::tempdir().unwrap();
        let t0 = Utc::now();
        let items: Vec<StoredItem> = ["u1", "u2"]
            .iter()
            .map(|url| {
                let item = Item::new(
                    json!({"url": url, "price": 1}).as_object().unwrap().clone(),
                    &["url".into()],
                );
                StoredItem {
                    key: item.key.clone(),
                    hash: item.content_hash(),
                    data: item.data,
                    first_seen: t0,
                    last_seen: t0,
                    version: 1,
                    source: "a".into(),
                }
            })
            .collect();
        let logged = numbered("A", 2, batch("a", &[("u1", 1), ("u2", 1)]));
        {
            // The layout before: items, changes, log and seen trees apart,
            // and the summary in the collections tree.
            let db = sled::Config::new()
                .path(dir.path().join("db"))
                .open()
                .unwrap();
            let tree = db.open_tree("items:books").unwrap();
            for item in &items {
                tree.insert(item.key.as_bytes(), encode(item)).unwrap();
            }
            let changes = db.open_tree("changes:books").unwrap();
            for (n, item) in (1u64..).zip(&items) {
                let mut v = vec![b'i'];
                v.extend_from_slice(item.key.as_bytes());
                changes.insert(n.to_be_bytes(), v).unwrap();
            }
            let mut log_key = b"A\0".to_vec();
            log_key.extend_from_slice(&2u64.to_be_bytes());
            db.open_tree("log:books")
                .unwrap()
                .insert(log_key, encode(&logged))
                .unwrap();
            let later = t0 + chrono::Duration::seconds(5);
            let seen = keydir::encode_seen(later, "b", &[keydir::id_of(&items[0].key)]);
            db.open_tree("seen:books")
                .unwrap()
                .insert(7u64.to_be_bytes(), seen)
                .unwrap();
            let meta = CollectionMeta {
                last_update: t0,
                heads: BTreeMap::from([("A".to_string(), 2)]),
            };
            db.open_tree("collections")
                .unwrap()
                .insert("books", encode(&meta))
                .unwrap();
            db.flush().unwrap();
        }
        let check = |store: &Store, changes: &[u64], head: u64, count: u64| {
            assert!(store.old_layout_trees().is_empty());
            let feed = store.changes_after("books", 0, 10).unwrap();
            assert_eq!(feed.iter().map(|c| c.seq).collect::<Vec<_>>(), changes);
            assert_eq!(store.heads_of("books").unwrap()["A"], head);
            assert_eq!(store.count_items("books").unwrap().0, count);
            let u1 = store.item("books", &items[0].key).unwrap().unwrap();
            assert_eq!((u1.source.as_str(), u1.version), ("b", 1));
            match store.log_after("books", "A", 1, 10, usize::MAX).unwrap() {
                LogSlice::Batches(b) => assert_eq!(b[0], logged),
                other => panic!("{other:?}"),
            }
        };
        let store = open(dir.path());
        check(&store, &[1, 2], 2, 2);
        assert_eq!(store.collections().unwrap().len(), 1);
        let out = store
            .apply_replicated(&numbered("A", 3, batch("a", &[("u2", 5), ("u3", 1)])))
            .unwrap();
        assert_eq!((out.inserted, out.changed), (1, 1));
        check(&store, &[1, 2, 3, 4], 3, 3);
        store.flush().unwrap();
        drop(store);
        let store = open(dir.path());
        assert_eq!(store.count_items("books").unwrap().0, 3);
        let feed = store.changes_after("books", 2, 10).unwrap();
        assert_eq!(feed.len(), 2);
        assert_eq!(store.heads_of("books").unwrap()["A"], 3);
    }

    #[test]
    fn items_written_together_share_a_pack_that_goes_once_no_item_needs_it() {
        let dir = tempfile::tempdir().unwrap();
        let t0 = Utc::now();
        let at = |secs: i64, b: ItemBatch| ItemBatch {
            fetched_at: t0 + chrono::Duration::seconds(secs),
            ..b
        };
        let packed = |store: &Store| -> Vec<usize> {
            let tree = store.applied_tree("books").unwrap();
            let packs = tree.range(packs::pack_key(0)..=packs::pack_key(u64::MAX));
            packs
                .map(|p| packs::entries(&p.unwrap().1).count())
                .collect()
        };
        let prices = |store: &Store| -> Vec<(String, i64)> {
            let (items, _) = store.items("books", None, 10, |_| true).unwrap();
            let price = |i: &StoredItem| i.data["price"].as_i64().unwrap();
            items
                .iter()
                .map(|i| (i.data["url"].to_string(), price(i)))
                .collect()
        };
        {
            // An item written before packs, under its own key.
            let old = Item::new(
                json!({"url": "u0", "price": 7})
                    .as_object()
                    .unwrap()
                    .clone(),
                &["url".into()],
            );
            let stored = StoredItem {
                key: old.key.clone(),
                hash: old.content_hash(),
                data: old.data,
                first_seen: t0,
                last_seen: t0,
                version: 1,
                source: "a".into(),
            };
            let store = open(dir.path());
            let tree = store.items_tree("books").unwrap();
            tree.insert(stored.key.as_bytes(), encode(&stored)).unwrap();
            let page = batch("a", &[("u1", 1), ("u2", 2), ("u3", 3)]);
            store.apply_batch(&at(1, page)).unwrap();
            assert_eq!(packed(&store), [3], "a page's items, one pack");
            // Two of the three change: the first pack keeps the third.
            let page = batch("a", &[("u1", 10), ("u2", 20), ("u0", 70)]);
            store.apply_batch(&at(2, page)).unwrap();
            assert_eq!(packed(&store), [3, 3]);
            assert!(
                tree.get(stored.key.as_bytes()).unwrap().is_none(),
                "moved into the pack"
            );
            // The third changes too: nothing needs the first pack any more.
            store
                .apply_batch(&at(3, batch("a", &[("u3", 30)])))
                .unwrap();
            assert_eq!(packed(&store), [3, 1]);
            let want = [("u0", 70), ("u1", 10), ("u2", 20), ("u3", 30)];
            let want: Vec<(String, i64)> =
                want.iter().map(|(u, p)| (format!("{u:?}"), *p)).collect();
            let mut got = prices(&store);
            got.sort();
            assert_eq!(got, want);
            let one = store.item("books", &batch("a", &[("u2", 0)]).items[0].key);
            assert_eq!(one.unwrap().unwrap().version, 2);
            store.flush().unwrap();
        }
        // The key directory is rebuilt from the packs, a later one winning.
        let store = open(dir.path());
        let mut got = prices(&store);
        got.sort();
        assert_eq!(got.len(), 4);
        assert_eq!(got[0].1, 70);
        assert_eq!(store.count_items("books").unwrap().0, 4);
        assert_eq!(packed(&store), [3, 1]);
        let page = batch("b", &[("u1", 10), ("u2", 20), ("u0", 70), ("u3", 30)]);
        let out = store.apply_batch(&at(4, page)).unwrap();
        assert_eq!((out.unchanged, out.changed, out.inserted), (4, 0, 0));
    }

    #[test]
    fn unchanged_items_move_last_seen_through_seen_records_that_stay_bounded_and_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let t0 = Utc::now();
        let at = |secs: i64, b: ItemBatch| ItemBatch {
            fetched_at: t0 + chrono::Duration::seconds(secs),
            ..b
        };
        let seen_records = |store: &Store| {
            let tree = store.applied_tree("books").unwrap();
            tree.range(keydir::seen_key(0)..=keydir::seen_key(u64::MAX))
                .count()
        };
        {
            let store = open(dir.path());
            store
                .apply_batch(&at(0, batch("a", &[("u1", 1), ("u2", 2)])))
                .unwrap();
            assert_eq!(seen_records(&store), 0, "nothing unchanged yet");
            for pass in 1..=3 {
                let out = store
                    .apply_batch(&at(pass, batch("b", &[("u1", 1), ("u2", 2)])))
                    .unwrap();
                assert_eq!((out.unchanged, out.changed), (2, 0));
                assert_eq!(seen_records(&store), 1, "one record a page, not a pass");
            }
            let (items, _) = store.items("books", None, 10, |_| true).unwrap();
            for item in &items {
                assert_eq!(item.version, 1);
                assert_eq!(item.first_seen, t0);
                assert_eq!(item.last_seen, t0 + chrono::Duration::seconds(3));
                assert_eq!(item.source, "b");
            }
            let one = store.item("books", &items[0].key).unwrap().unwrap();
            assert_eq!(&one, &items[0]);
            let mut view = Vec::new();
            store
                .each_item("books", None, |i| {
                    i.write_view(&mut view)?;
                    Ok(false)
                })
                .unwrap();
            let view: serde_json::Value = serde_json::from_slice(&view).unwrap();
            assert_eq!(view["last_seen"], json!(items[0].last_seen));
            assert_eq!(view["source"], "b");
            assert_eq!(store.count_items("books").unwrap().1.get("b"), Some(&2));
            store.flush().unwrap();
        }
        // Reopened: the directory is loaded again, seen records included.
        let store = open(dir.path());
        let (items, _) = store.items("books", None, 10, |_| true).unwrap();
        assert!(items
            .iter()
            .all(|i| i.last_seen == t0 + chrono::Duration::seconds(3) && i.source == "b"));
        let out = store
            .apply_batch(&at(4, batch("b", &[("u1", 1), ("u2", 5)])))
            .unwrap();
        assert_eq!((out.unchanged, out.changed), (1, 1));
        let u2 = store
            .items("books", None, 10, |i| i.data["url"] == "u2")
            .unwrap()
            .0
            .remove(0);
        assert_eq!((u2.version, u2.first_seen), (2, t0));
        // A late observation changes nothing but can move first_seen back.
        let out = store
            .apply_batch(&at(-5, batch("c", &[("u1", 9)])))
            .unwrap();
        assert_eq!(out.unchanged, 1);
        let u1 = store
            .items("books", None, 10, |i| i.data["url"] == "u1")
            .unwrap()
            .0
            .remove(0);
        assert_eq!(u1.data["price"], 1);
        assert_eq!(u1.first_seen, t0 - chrono::Duration::seconds(5));
        assert_eq!(u1.last_seen, t0 + chrono::Duration::seconds(4));
        assert_eq!(u1.source, "b");
        assert_eq!(seen_records(&store), 0, "every key was rewritten since");
    }

    #[test]
    fn paging_walks_every_item_once() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
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
        let store = open(dir.path());
        let t0 = Utc::now();
        let n = 2000;
        for i in 0..n {
            let at = t0 + chrono::Duration::milliseconds(i * 1001);
            let run = RunRecord {
                started_at: at,
                finished_at: at,
                pages: 1,
                items: i as u64,
                ..RunRecord::default()
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
