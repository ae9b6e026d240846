//! Each collection's replication log, in the collection's tree
//! ([`super::items`]) under keys tagged [`LOG_TAG`]: `tag, origin node id,
//! \0, sequence (big-endian)` -> [`ReplicatedBatch`], every batch applied to
//! the collection, kept so that peers can pull what they missed (the newest
//! [`Store::log_retained`] per origin); and the heads (last sequence applied
//! per origin) they compare, in the collection's summary. A batch's log
//! entry and heads are written in the same sled batch as its items.
//!
//! An entry holds the data of the items its batch inserted or changed, and
//! names the items the batch found unchanged by their content hash alone
//! (`{"key":…,"hash":…}` in place of `{"key":…,"data":…}`): a second pass
//! over an unchanged page logs about 50 bytes an item instead of its data.
//! A peer pulling the entry gets it whole: each named item's data is read
//! from the collection when its stored hash is still the named one. When it
//! is not, a later observation has changed the item since, and that
//! observation (in the log, or in a snapshot) decides every field a peer
//! keeps of it: content, `last_seen` and source are the later one's, and
//! `first_seen` was set by an observation before this one (an item is found
//! unchanged only once seen before). So the named item is left out of the
//! pulled batch, and peers converge as if it had been sent.
//!
//! A batch of items seen again unchanged (a page answered 304) names every
//! item, and is logged in the store's compact form (see `compact` and
//! [`encode_seen`]), not as JSON: it is written for every such page. It
//! leaves its origin and number to its key and its collection to the tree.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::{Map, Value};

use super::compact::{put_names, put_str, put_time, read_all};
use super::items::LOG_TAG;
use super::packs::Stored;
use super::{decode, BatchOutcome, Result, Store};
use crate::domain::{Item, ItemBatch, ReplicatedBatch, SeenBatch};

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

/// The origin and number a log key names (see [`log_key`]).
fn origin_seq(key: &[u8]) -> Option<(String, u64)> {
    let (head, seq) = key.split_last_chunk::<8>()?;
    let origin = head.strip_prefix(&[LOG_TAG])?.strip_suffix(&[0])?;
    Some((
        std::str::from_utf8(origin).ok()?.to_owned(),
        u64::from_be_bytes(*seq),
    ))
}

/// A log entry as stored: a [`ReplicatedBatch`] whose items may be named.
#[derive(Deserialize)]
struct Logged {
    origin: String,
    seq: u64,
    batch: LoggedBatch,
}

#[derive(Deserialize)]
struct LoggedBatch {
    source: String,
    collection: String,
    fetched_at: chrono::DateTime<chrono::Utc>,
    items: Vec<LoggedItem>,
}

#[derive(Deserialize)]
struct LoggedItem {
    key: String,
    #[serde(default)]
    data: Option<Map<String, Value>>,
    /// Named by its content hash, its data left in the collection.
    #[serde(default)]
    hash: Option<String>,
}

/// The first byte of a seen batch's log entry in its first compact form,
/// which repeated the origin, number and collection its key and tree give
/// (an entry stored as JSON starts with `{`).
const SEEN_V1: u8 = 1;
/// The first byte of a seen batch's log entry as written now.
const SEEN_V2: u8 = 2;

/// A seen batch's log entry: [`SEEN_V2`], the source, the time it was
/// fetched, the number of items and each item's key and hash. Its origin
/// and number are its key's ([`log_key`]), its collection the tree's.
pub(super) fn encode_seen(batch: &SeenBatch) -> Vec<u8> {
    let mut out = Vec::with_capacity(24 + batch.source.len() + batch.names.len() * 34);
    out.push(SEEN_V2);
    put_str(&mut out, &batch.source);
    put_time(&mut out, batch.fetched_at);
    put_names(&mut out, &batch.names);
    out
}

/// A log entry of `collection`, JSON or compact, stored under `key`.
fn decode_logged(collection: &str, key: &[u8], bytes: &[u8]) -> Result<Logged> {
    let version = bytes.first().copied();
    if version != Some(SEEN_V1) && version != Some(SEEN_V2) {
        return decode("log entry", bytes);
    }
    read_all("log entry", bytes, |r| {
        let (origin, seq, source, collection) = if version == Some(SEEN_V1) {
            let (origin, seq) = (r.str()?, r.u64()?);
            (origin, seq, r.str()?, r.str()?)
        } else {
            let (origin, seq) = origin_seq(key)?;
            (origin, seq, r.str()?, collection.to_owned())
        };
        let fetched_at = r.time()?;
        let items = (r.names()?.into_iter())
            .map(|n| LoggedItem {
                key: n.key,
                data: None,
                hash: Some(n.hash),
            })
            .collect();
        Some(Logged {
            origin,
            seq,
            batch: LoggedBatch {
                source,
                collection,
                fetched_at,
                items,
            },
        })
    })
}

/// A stored item's data (its other members skipped).
#[derive(Deserialize)]
struct StoredData {
    hash: String,
    data: Map<String, Value>,
}

impl Store {
    /// Applies a batch from `origin` with sequence number `seq`: upserts its
    /// items, appends it to the collection's log (dropping the oldest beyond
    /// the retention) and records the collection's head for the origin, all
    /// in one atomic sled batch (with the other writes the next flush
    /// covers, see `writes`). Applying the same batch twice changes
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
        let log = self.applied_tree(collection)?;
        let mut out = Vec::new();
        let mut bytes = 0;
        let range = log_key(origin, after.saturating_add(1))..=log_key(origin, u64::MAX);
        for entry in log.range(range) {
            let (k, v) = entry?;
            let logged = decode_logged(collection, &k, &v)?;
            if out.is_empty() && logged.seq != after + 1 {
                return Ok(LogSlice::Truncated { first: logged.seq });
            }
            let read = |key: &str| Ok(self.stored_item(collection, key)?.map(|(b, _)| b));
            let (rb, size) = whole(read, logged, v.len())?;
            if !out.is_empty() && bytes + size > max_bytes {
                break;
            }
            bytes += size;
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

/// The data of a stored item, and its stored length, if it is stored with
/// content hash `hash`.
pub(super) fn stored_data(
    stored: Option<Stored>,
    hash: &str,
) -> Result<Option<(Map<String, Value>, usize)>> {
    let Some(bytes) = stored else {
        return Ok(None);
    };
    let stored: StoredData = decode("item", &bytes)?;
    Ok((stored.hash == hash).then_some((stored.data, bytes.len())))
}

/// A log entry with its named items' data read from the collection's tree
/// (those whose stored hash is no longer the named one left out, see the
/// module's notes), and about how many bytes it takes whole.
fn whole(
    read: impl Fn(&str) -> Result<Option<Stored>>,
    logged: Logged,
    stored_len: usize,
) -> Result<(ReplicatedBatch, usize)> {
    let mut size = stored_len;
    let mut items = Vec::with_capacity(logged.batch.items.len());
    for item in logged.batch.items {
        let data = match (item.data, item.hash) {
            (Some(data), _) => data,
            (None, Some(hash)) => match stored_data(read(&item.key)?, &hash)? {
                Some((data, len)) => {
                    size += len;
                    data
                }
                None => continue,
            },
            (None, None) => continue,
        };
        items.push(Item {
            key: item.key,
            data,
        });
    }
    let rb = ReplicatedBatch {
        origin: logged.origin,
        seq: logged.seq,
        batch: ItemBatch {
            source: logged.batch.source,
            collection: logged.batch.collection,
            fetched_at: logged.batch.fetched_at,
            items,
        },
    };
    Ok((rb, size))
}
