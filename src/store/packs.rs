//! A write's items, stored together: one sled value a page, not one an item.
//!
//! sled's cost is per key, not per byte: every insert walks the tree,
//! copies the leaf it lands in, reserves a log record, and every sixteen
//! keys splits a leaf, so a page's twenty items cost about three times what
//! the same bytes cost as one value. So the items a write makes new or
//! changed go into one pack, in the collection's tree under [`PACK_TAG`]
//! and the pack's number (big-endian u64, from 1): each item's key and its
//! stored bytes ([`crate::domain::StoredItem`] as JSON, as an item stored
//! under its own key holds them), each with its length.
//!
//! The key directory says where each item is: in which pack, or under its
//! own key (stores written before packs; such an item moves into a pack the
//! next time it is written). A pack is never rewritten: it is removed, in
//! the batch that writes the last of its items somewhere newer, once the
//! directory counts no item in it. When the directory is loaded, the packs
//! are read in order and a later pack wins; packs no item needs are removed.
//! Since queries list items in key order and the keys are no longer sled's
//! keys, the directory also keeps the keys in order.

use std::ops::{Deref, Range};

use super::items::PACK_TAG;
use super::keydir::{id_of, Keydir};
use super::writes::Writes;
use super::Result;

/// Where an item's stored bytes are, in [`super::keydir::Entry::pack`]:
/// under its own key (written before packs).
pub(super) const UNDER_KEY: u64 = 0;
/// Not stored yet: a key the write being worked out makes new.
pub(super) const UNSTORED: u64 = u64::MAX;

/// A pack's key.
pub(super) fn pack_key(n: u64) -> [u8; 9] {
    let mut k = [PACK_TAG; 9];
    k[1..].copy_from_slice(&n.to_be_bytes());
    k
}

/// A pack's bytes: per item, its key's length (u32, big-endian), the key,
/// its stored bytes' length (u32) and the bytes.
fn encode(items: &[(&str, Vec<u8>)]) -> Vec<u8> {
    let len = items.iter().map(|(k, v)| 8 + k.len() + v.len()).sum();
    let mut out = Vec::with_capacity(len);
    for (key, bytes) in items {
        out.extend_from_slice(&(key.len() as u32).to_be_bytes());
        out.extend_from_slice(key.as_bytes());
        out.extend_from_slice(&(bytes.len() as u32).to_be_bytes());
        out.extend_from_slice(bytes);
    }
    out
}

/// A pack's items, in order: each key and where its bytes are in `pack`.
/// A truncated pack ends early.
pub(super) fn entries(pack: &[u8]) -> impl Iterator<Item = (&[u8], Range<usize>)> + '_ {
    let mut at = 0;
    std::iter::from_fn(move || {
        let len = |at: usize| -> Option<usize> {
            Some(u32::from_be_bytes(pack.get(at..at + 4)?.try_into().ok()?) as usize)
        };
        let key_len = len(at)?;
        let key = pack.get(at + 4..at + 4 + key_len)?;
        let start = at + 8 + key_len;
        let end = start.checked_add(len(at + 4 + key_len)?)?;
        pack.get(start..end)?;
        at = end;
        Some((key, start..end))
    })
}

/// An item's stored bytes, as read from sled (a pack, or a value of its own).
pub(super) struct Stored {
    value: sled::IVec,
    range: Range<usize>,
}

impl Stored {
    /// `key`'s bytes in `pack`, if it holds them.
    fn in_pack(pack: sled::IVec, key: &str) -> Option<Stored> {
        let range = entries(&pack).find(|(k, _)| *k == key.as_bytes())?.1;
        Some(Stored { value: pack, range })
    }
}

impl Deref for Stored {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        &self.value[self.range.clone()]
    }
}

impl Keydir {
    /// Adds to `writes` one new pack holding `items` (each key's stored
    /// bytes; each key has its entry, new ones with [`UNSTORED`]), points
    /// their entries at it, and removes what they were stored in before
    /// where no item needs it any more.
    pub fn pack(&mut self, writes: &mut Writes, items: &[(&str, Vec<u8>)]) {
        if items.is_empty() {
            return;
        }
        self.last_pack += 1;
        let n = self.last_pack;
        let mut live = 0;
        for (key, _) in items {
            let Some(e) = self.entries.get_mut(&id_of(key)) else {
                continue;
            };
            let before = std::mem::replace(&mut e.pack, n);
            live += 1;
            match before {
                UNSTORED => {
                    self.order.insert((*key).into());
                }
                UNDER_KEY => writes.remove(key.as_bytes()),
                old => self.unpack(writes, old),
            }
        }
        self.packs.insert(n, live);
        writes.insert(pack_key(n), encode(items));
    }

    /// One item fewer in pack `n`: removed from `writes` once none is left.
    fn unpack(&mut self, writes: &mut Writes, n: u64) {
        let Some(live) = self.packs.get_mut(&n) else {
            return;
        };
        *live -= 1;
        if *live == 0 {
            self.packs.remove(&n);
            writes.remove(pack_key(n));
        }
    }

    /// Counts the items in each pack from the entries (after a load), and
    /// returns the packs of `found` (every pack in the tree) that no item
    /// needs. Numbering goes on past all of `found`, so a new pack never
    /// takes the number of one still in the tree.
    pub fn count_packs(&mut self, found: &[u64]) -> Vec<u64> {
        self.packs.clear();
        for e in self.entries.values() {
            if e.pack != UNDER_KEY && e.pack != UNSTORED {
                *self.packs.entry(e.pack).or_default() += 1;
            }
        }
        self.last_pack = found.iter().copied().max().unwrap_or(0);
        found
            .iter()
            .copied()
            .filter(|n| !self.packs.contains_key(n))
            .collect()
    }

    /// `key`'s stored bytes, read from `tree` through the pending writes.
    pub fn stored(&self, tree: &sled::Tree, key: &str) -> Result<Option<Stored>> {
        let Some(e) = self.entries.get(&id_of(key)) else {
            return Ok(None);
        };
        read(tree, &self.pending, key, e.pack)
    }
}

/// `key`'s stored bytes, where `pack` says they are, read from `tree`
/// through `pending`.
pub(super) fn read(
    tree: &sled::Tree,
    pending: &Writes,
    key: &str,
    pack: u64,
) -> Result<Option<Stored>> {
    Ok(match pack {
        UNSTORED => None,
        UNDER_KEY => pending.get(tree, key.as_bytes())?.map(|value| Stored {
            range: 0..value.len(),
            value,
        }),
        n => pending
            .get(tree, &pack_key(n))?
            .and_then(|p| Stored::in_pack(p, key)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packs_read_back_and_a_truncated_one_ends_early() {
        let items = [("a", b"{\"x\":1}".to_vec()), ("bé", Vec::new())];
        let pack = encode(&items);
        let read: Vec<(&[u8], &[u8])> = entries(&pack).map(|(k, r)| (k, &pack[r])).collect();
        assert_eq!(
            read,
            [(&b"a"[..], &b"{\"x\":1}"[..]), ("bé".as_bytes(), &b""[..])]
        );
        let found = Stored::in_pack(sled::IVec::from(pack.clone()), "bé").unwrap();
        assert!(found.is_empty());
        assert_eq!(
            &*Stored::in_pack(pack.clone().into(), "a").unwrap(),
            b"{\"x\":1}"
        );
        assert!(Stored::in_pack(pack.clone().into(), "c").is_none());
        assert_eq!(entries(&pack[..pack.len() - 1]).count(), 1);
        assert_eq!(entries(&[0, 0, 0, 9, b'k']).count(), 0);
    }
}
