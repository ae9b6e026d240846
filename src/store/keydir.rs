//! Each collection's key directory: an in-memory index of its items (key ->
//! content hash, version, first and last seen, source), loaded on the
//! collection's first use by one scan of the collection's tree (its items and
//! seen records), and kept up to date by every write. With it an upsert
//! reads nothing from sled (what an item was is in memory) and an unchanged
//! item is not rewritten: only its `last_seen` and source move, and those
//! go, for a whole page at once, into one seen record. The directory also
//! holds what a write needs besides: the collection's summary and its last
//! change sequence.
//!
//! Seen records, in the collection's tree under keys tagged [`SEEN_TAG`]:
//! the tag and the record number (big-endian u64, from 1) -> the time
//! seen (i64 nanoseconds, big-endian), the source's length (u16) and name,
//! then the 16-byte keys of the unchanged items seen. An item's last_seen is
//! the later of its stored one and the newest record naming it. Each record
//! counts the keys for which it is still that newest word; a record no key
//! needs any more (a later pass over the same page, or the items rewritten)
//! is removed, so the tree holds about one record per page, not one per pass.
//! Readers ([`Store::each_item`] and the others) show the directory's
//! last_seen and source where a record holds them.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};

use chrono::{DateTime, Utc};
use serde::Deserialize;

use super::items::{CollectionMeta, ITEMS_END, SEEN_TAG};
use super::packs::{pack_key, UNDER_KEY};
use super::writes::Writes;
use super::{decode, Result, Store};

/// A seen record's key.
pub(super) fn seen_key(record: u64) -> [u8; 9] {
    let mut k = [SEEN_TAG; 9];
    k[1..].copy_from_slice(&record.to_be_bytes());
    k
}

/// 16 bytes standing for a 32-hex key or hash (or a hash of any other string).
pub(super) type Id = [u8; 16];

pub(super) fn id_of(s: &str) -> Id {
    hex_id(s).unwrap_or_else(|| {
        let mut out = [0u8; 16];
        out.copy_from_slice(&blake3::hash(s.as_bytes()).as_bytes()[..16]);
        out
    })
}

/// The 16 bytes a string of 32 lowercase hex characters spells.
pub(super) fn hex_id(s: &str) -> Option<Id> {
    let b: &[u8; 32] = s.as_bytes().try_into().ok()?;
    let mut out = [0u8; 16];
    // Every pair is decoded and the misses gathered, without a branch a
    // character: this runs for each key and hash of every page.
    let mut bad = 0u8;
    for (o, pair) in out.iter_mut().zip(b.chunks_exact(2)) {
        let (h, l) = (NIBBLE[usize::from(pair[0])], NIBBLE[usize::from(pair[1])]);
        bad |= h | l;
        *o = h << 4 | (l & 15);
    }
    (bad & 0x80 == 0).then_some(out)
}

/// Each byte's value as a lowercase hex digit, or 0x80 when it is none.
static NIBBLE: [u8; 256] = {
    let mut t = [0x80u8; 256];
    let mut i = 0;
    while i < 10 {
        t[b'0' as usize + i] = i as u8;
        i += 1;
    }
    let mut i = 0;
    while i < 6 {
        t[b'a' as usize + i] = 10 + i as u8;
        i += 1;
    }
    t
};

/// The 32 lowercase hex characters of an id ([`hex_id`]'s inverse).
pub(super) fn hex_of(id: &Id) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut out = [0u8; 32];
    for (pair, b) in out.chunks_exact_mut(2).zip(id) {
        pair[0] = HEX[usize::from(b >> 4)];
        pair[1] = HEX[usize::from(b & 15)];
    }
    String::from_utf8(out.to_vec()).expect("hex digits are ASCII")
}

/// What the directory knows of one item.
#[derive(Debug, Clone)]
pub(super) struct Entry {
    pub hash: Id,
    pub version: u64,
    pub first_seen: DateTime<Utc>,
    pub last_seen: DateTime<Utc>,
    pub source: Arc<str>,
    /// The seen record holding a newer last_seen and source than the stored
    /// item (0: the stored item is current).
    pub record: u64,
    /// The pack holding the stored item (see `packs`).
    pub pack: u64,
}

/// One collection's directory.
#[derive(Default)]
pub(super) struct Keydir {
    pub entries: HashMap<Id, Entry>,
    /// Per seen record: how many keys it is the newest word for.
    live: HashMap<u64, u32>,
    /// The last record number used.
    last_record: u64,
    /// Source names, shared by the entries.
    names: HashMap<Arc<str>, ()>,
    /// The collection's summary (`None`: never written).
    pub meta: Option<CollectionMeta>,
    /// Whether the `collections` tree lists the collection.
    pub listed: bool,
    /// The last change sequence used (numbering goes on past a deletion).
    pub last_change: u64,
    /// Writes made to the collection and not yet applied to sled.
    pub pending: Writes,
    /// Per pack: how many items it holds for which it is the newest word.
    pub(super) packs: HashMap<u64, u32>,
    /// The last pack number used.
    pub(super) last_pack: u64,
    /// Every key, in order: what queries walk.
    pub(super) order: BTreeSet<Box<str>>,
    /// Per origin, the oldest log entry that may still be stored (every
    /// one before it was removed); unknown until the origin's first trim.
    pub(super) log_low: HashMap<String, u64>,
}

/// A collection's directory, loaded on first use.
pub(super) type Slot = Arc<Mutex<Option<Keydir>>>;

/// Per collection.
pub(super) type Keydirs = Arc<Mutex<HashMap<String, Slot>>>;

impl Keydir {
    pub fn name(&mut self, source: &str) -> Arc<str> {
        if let Some((k, _)) = self.names.get_key_value(source) {
            return k.clone();
        }
        let k: Arc<str> = source.into();
        self.names.insert(k.clone(), ());
        k
    }

    /// The number of the next seen record.
    pub fn next_record(&self) -> u64 {
        self.last_record + 1
    }

    /// Points an entry at `record` (0: the stored item); returns a record
    /// that no key needs any more, to be removed.
    pub fn point(&mut self, id: &Id, record: u64) -> Option<u64> {
        let e = self.entries.get_mut(id)?;
        let old = std::mem::replace(&mut e.record, record);
        if old == record {
            return None;
        }
        if record != 0 {
            *self.live.entry(record).or_default() += 1;
            self.last_record = self.last_record.max(record);
        }
        if old == 0 {
            return None;
        }
        let n = self.live.get_mut(&old)?;
        *n -= 1;
        if *n == 0 {
            self.live.remove(&old);
            return Some(old);
        }
        None
    }

    /// Adds a stored item, found in `pack`, to the directory (over what it
    /// said of the key before: a later pack says more).
    fn load_item(&mut self, key: &str, bytes: &[u8], pack: u64) -> Result<()> {
        let head: Head = decode("item", bytes)?;
        let source = self.name(&head.source);
        let entry = Entry {
            hash: id_of(&head.hash),
            version: head.version,
            first_seen: head.first_seen,
            last_seen: head.last_seen,
            source,
            record: 0,
            pack,
        };
        if self.entries.insert(id_of(key), entry).is_none() {
            self.order.insert(key.into());
        }
        Ok(())
    }

    /// Per source, how many items it last wrote.
    pub fn per_source(&self) -> std::collections::BTreeMap<String, u64> {
        let mut out = std::collections::BTreeMap::new();
        for e in self.entries.values() {
            *out.entry(e.source.to_string()).or_default() += 1;
        }
        out
    }
}

/// A seen record's bytes.
pub(super) fn encode_seen(at: DateTime<Utc>, source: &str, keys: &[Id]) -> Vec<u8> {
    let nanos = at.timestamp_nanos_opt().unwrap_or(i64::MAX);
    let name = &source.as_bytes()[..source.len().min(u16::MAX as usize)];
    let mut v = Vec::with_capacity(10 + name.len() + 16 * keys.len());
    v.extend_from_slice(&nanos.to_be_bytes());
    v.extend_from_slice(&(name.len() as u16).to_be_bytes());
    v.extend_from_slice(name);
    for k in keys {
        v.extend_from_slice(k);
    }
    v
}

/// Adds to `writes` seen record `record` for `keys`, seen unchanged at `at`
/// by `source` (none when no key was), and the removal of the `stale`
/// records, which no key needs any more.
pub(super) fn write_seen(
    writes: &mut Writes,
    record: u64,
    (at, source): (DateTime<Utc>, &str),
    keys: &[Id],
    stale: Vec<u64>,
) {
    if !keys.is_empty() {
        writes.insert(seen_key(record), encode_seen(at, source, keys));
    }
    for n in stale {
        writes.remove(seen_key(n));
    }
}

fn decode_seen(v: &[u8]) -> Option<(DateTime<Utc>, &str, impl Iterator<Item = Id> + '_)> {
    let nanos = i64::from_be_bytes(v.get(..8)?.try_into().ok()?);
    let len = u16::from_be_bytes(v.get(8..10)?.try_into().ok()?) as usize;
    let source = std::str::from_utf8(v.get(10..10 + len)?).ok()?;
    let keys = v.get(10 + len..)?.chunks_exact(16).map(|c| {
        let mut id = [0u8; 16];
        id.copy_from_slice(c);
        id
    });
    Some((DateTime::from_timestamp_nanos(nanos), source, keys))
}

/// The fields of a stored item the directory keeps (its data is skipped).
#[derive(Deserialize)]
struct Head<'a> {
    #[serde(borrow)]
    hash: std::borrow::Cow<'a, str>,
    version: u64,
    first_seen: DateTime<Utc>,
    last_seen: DateTime<Utc>,
    #[serde(borrow)]
    source: std::borrow::Cow<'a, str>,
}

impl Store {
    /// The collection's directory slot, loaded if it was not.
    pub(super) fn keydir(&self, collection: &str) -> Result<Slot> {
        let slot = {
            let mut all = self.keydirs.lock().unwrap_or_else(|e| e.into_inner());
            all.entry(collection.to_owned()).or_default().clone()
        };
        {
            let mut kd = slot.lock().unwrap_or_else(|e| e.into_inner());
            if kd.is_none() {
                *kd = Some(self.load_keydir(collection)?);
            }
        }
        Ok(slot)
    }

    /// Forgets a collection's directory (after a failed write): the next use
    /// loads it again from what sled holds. The writes made before the
    /// failure go to sled first.
    pub(super) fn drop_keydir(&self, collection: &str) {
        let Some(slot) = self.slot(collection) else {
            return;
        };
        let mut kd = slot.lock().unwrap_or_else(|e| e.into_inner());
        if let Err(e) = self.apply_pending(collection, &mut kd) {
            tracing::error!(%collection, error = %e, "writes made before a failed write not applied");
        }
        *kd = None;
    }

    fn slot(&self, collection: &str) -> Option<Slot> {
        let all = self.keydirs.lock().unwrap_or_else(|e| e.into_inner());
        all.get(collection).cloned()
    }

    /// Applies a collection's pending writes to its tree in one sled batch
    /// (see `writes`). On failure the directory is forgotten, as it says
    /// more than sled holds.
    pub(super) fn apply_pending(&self, collection: &str, slot: &mut Option<Keydir>) -> Result<()> {
        let Some(kd) = slot.as_mut().filter(|kd| !kd.pending.is_empty()) else {
            return Ok(());
        };
        let batch = kd.pending.take_batch();
        let applied = self
            .items_tree(collection)
            .and_then(|tree| Ok(tree.apply_batch(batch)?));
        if let Err(e) = &applied {
            self.guard.note(e);
            *slot = None;
        }
        applied
    }

    /// A collection's tree with every write made to it applied: what its
    /// readers read (whether it is durable yet is theirs to check, see
    /// [`Store::durable`]).
    pub(super) fn applied_tree(&self, collection: &str) -> Result<sled::Tree> {
        if let Some(slot) = self.slot(collection) {
            let mut kd = slot.lock().unwrap_or_else(|e| e.into_inner());
            self.apply_pending(collection, &mut kd)?;
        }
        self.items_tree(collection)
    }

    /// Applies every collection's pending writes (a flush comes next).
    pub(super) fn apply_all_pending(&self) -> Result<()> {
        let slots: Vec<(String, Slot)> = {
            let all = self.keydirs.lock().unwrap_or_else(|e| e.into_inner());
            all.iter()
                .map(|(name, slot)| (name.clone(), slot.clone()))
                .collect()
        };
        let mut failed = None;
        for (name, slot) in slots {
            let mut kd = slot.lock().unwrap_or_else(|e| e.into_inner());
            if let Err(e) = self.apply_pending(&name, &mut kd) {
                failed.get_or_insert(e);
            }
        }
        failed.map_or(Ok(()), Err)
    }

    fn load_keydir(&self, collection: &str) -> Result<Keydir> {
        let mut kd = Keydir::default();
        let tree = self.items_tree(collection)?;
        // Items under their own keys (written before packs), then the
        // packs in order: a later pack says more.
        for entry in tree.range(..ITEMS_END) {
            let (k, v) = entry?;
            kd.load_item(std::str::from_utf8(&k).unwrap_or_default(), &v, UNDER_KEY)?;
        }
        let mut packs = Vec::new();
        for entry in tree.range(pack_key(0)..=pack_key(u64::MAX)) {
            let (k, v) = entry?;
            let n = super::changes::seq_of(&k[1..]);
            packs.push(n);
            for (key, at) in super::packs::entries(&v) {
                kd.load_item(std::str::from_utf8(key).unwrap_or_default(), &v[at], n)?;
            }
        }
        let stale_packs = kd.count_packs(&packs);
        let mut records = Vec::new();
        for entry in tree.range(seen_key(0)..=seen_key(u64::MAX)) {
            let (k, v) = entry?;
            let n = super::changes::seq_of(&k[1..]);
            records.push(n);
            kd.last_record = kd.last_record.max(n);
            let Some((at, source, keys)) = decode_seen(&v) else {
                continue;
            };
            let source = kd.name(source);
            for id in keys {
                let Some(e) = kd.entries.get_mut(&id) else {
                    continue;
                };
                // The newest word wins; an item rewritten later says more.
                if at < e.last_seen {
                    continue;
                }
                e.last_seen = at;
                e.source = source.clone();
                kd.point(&id, n);
            }
        }
        let listed = self.collections.get(collection.as_bytes())?;
        kd.listed = listed.is_some();
        kd.meta = match listed {
            Some(listed) => Some(Store::stored_meta(&tree, &listed)?),
            None => None,
        };
        kd.last_change = match Store::last_change_in(&tree)? {
            Some(n) => n,
            None => self
                .dropped_record(collection)?
                .map_or(0, |d| d.last_change),
        };
        // Records no key needs any more (stores written before a page's
        // writes became one batch may hold some).
        let mut stale = sled::Batch::default();
        let mut any = false;
        for n in records {
            if !kd.live.contains_key(&n) {
                stale.remove(&seen_key(n));
                any = true;
            }
        }
        // Packs no item needs (none, unless a write of an earlier version failed half way).
        for n in stale_packs {
            stale.remove(&pack_key(n));
            any = true;
        }
        if any && self.guard.writable().is_ok() {
            tree.apply_batch(stale)?;
        }
        Ok(kd)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_the_hex_bytes_or_a_hash() {
        let hex = "00112233445566778899aabbccddeeff";
        assert_eq!(id_of(hex)[..3], [0x00, 0x11, 0x22]);
        assert_ne!(id_of("not hex"), id_of("not hex either"));
        assert_eq!(id_of("not hex"), id_of("not hex"));
        assert_eq!(hex_of(&id_of(hex)), hex);
        assert_eq!(
            hex_id("0123456789abcdef0123456789abcdef")
                .map(|id| hex_of(&id))
                .as_deref(),
            Some("0123456789abcdef0123456789abcdef")
        );
        // Upper case, other letters, a byte past 0x7f or the wrong length:
        // not hex, so hashed.
        for not in [
            "00112233445566778899AABBCCDDEEFF",
            "00112233445566778899aabbccddeefg",
            "0011223344556677889\u{e9}aabbccddeef",
            "00112233445566778899aabbccddeef",
            "00112233445566778899aabbccddeeff0",
        ] {
            assert_eq!(hex_id(not), None, "{not}");
            assert_eq!(id_of(not), id_of(not));
            assert_ne!(id_of(not), id_of(hex));
        }
    }

    #[test]
    fn seen_records_read_back() {
        let at = Utc::now();
        let keys = [id_of("00112233445566778899aabbccddeeff"), [7u8; 16]];
        let v = encode_seen(at, "src-1", &keys);
        let (t, s, k) = decode_seen(&v).unwrap();
        assert_eq!((t, s), (at, "src-1"));
        assert_eq!(k.collect::<Vec<_>>(), keys);
    }
}
