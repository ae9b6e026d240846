//! Opening a store written before a collection's writes went into one tree:
//! its `changes:{c}`, `log:{c}` and `seen:{c}` trees are moved into the
//! collection's `items:{c}` tree under their tags ([`super::items`]), once,
//! when the store opens. Each old change (one record per item) becomes a
//! change record of one change, so sequences stay as they were. A summary
//! still in the `collections` tree is read from there until the collection
//! is written again ([`Store::stored_meta`]).
//!
//! Each old tree is copied in one batch, flushed, and only then dropped: a
//! crash in between copies it again on the next open, which writes the same
//! keys and values.

use super::changes::{change_key, encode_changes, ChangeOp};
use super::items::{LOG_TAG, SEEN_TAG};
use super::{Result, Store};

/// The old trees' name prefixes, with the tag their keys move under.
const OLD_TREES: [(&str, u8); 3] = [("changes:", 0), ("log:", LOG_TAG), ("seen:", SEEN_TAG)];

pub(super) fn migrate(db: &sled::Db) -> Result<()> {
    for name in db.tree_names() {
        let Ok(name) = std::str::from_utf8(&name) else {
            continue;
        };
        let Some((prefix, tag, collection)) = OLD_TREES
            .iter()
            .find_map(|(prefix, tag)| name.strip_prefix(prefix).map(|c| (*prefix, *tag, c)))
        else {
            continue;
        };
        let old = db.open_tree(name)?;
        let target = db.open_tree(format!("items:{collection}"))?;
        let mut batch = sled::Batch::default();
        let mut moved = 0u64;
        for entry in old.iter() {
            let (k, v) = entry?;
            if prefix == "changes:" {
                // One op byte and the item's key.
                let Some((&op, key)) = v.split_first() else {
                    continue;
                };
                let Some(op) = ChangeOp::from_byte(op) else {
                    continue;
                };
                let seq = super::changes::seq_of(&k);
                batch.insert(&change_key(seq), encode_changes(&[(op, key.to_vec())]));
            } else {
                let mut key = Vec::with_capacity(k.len() + 1);
                key.push(tag);
                key.extend_from_slice(&k);
                batch.insert(key, v);
            }
            moved += 1;
        }
        target.apply_batch(batch)?;
        db.flush()?;
        db.drop_tree(name)?;
        tracing::info!(tree = name, %collection, records = moved, "moved into the collection's tree");
    }
    Ok(())
}

impl Store {
    /// The names of the trees still in the old layout (for tests).
    #[cfg(test)]
    pub(super) fn old_layout_trees(&self) -> Vec<String> {
        self.db
            .tree_names()
            .iter()
            .filter_map(|n| std::str::from_utf8(n).ok().map(str::to_owned))
            .filter(|n| OLD_TREES.iter().any(|(p, _)| n.starts_with(p)))
            .collect()
    }
}
