//! A collection's writes made but not yet applied to sled.
//!
//! sled 0.34 pays for every `apply_batch` with two writes of its log
//! buffers, each waited for with `sync_file_range` on its I/O threads: the
//! batch first seals the buffer in use (writing out whatever it holds), then
//! writes a buffer holding its manifest alone. A page written as its own
//! batch therefore cost two disk writes on top of the flush that made it
//! durable. So a collection's writes gather here, in its key directory, and
//! go to sled as one atomic batch when something needs them there: the
//! flush that will make them durable ([`Store::flush`]), a reader of the
//! collection's tree, or the directory being forgotten. Between a write and
//! that batch, the writes that read the tree (an item read back, the log and
//! change records past their retention) read through these.
//!
//! Nothing is acknowledged before a flush, and a flush applies every
//! collection's writes before it asks sled for durability, so this adds no
//! way to lose an acknowledged write; a crash loses what was never
//! acknowledged, as before. One batch still writes a whole page or nothing:
//! it now writes several pages or none of them.

use std::collections::BTreeMap;
use std::ops::Bound;

use super::Result;

/// Keys to values (`None`: removed), later writes over earlier ones.
#[derive(Default)]
pub(super) struct Writes(BTreeMap<Vec<u8>, Option<Vec<u8>>>);

/// No writes: what readers of an applied tree read through.
pub(super) static NONE: Writes = Writes(BTreeMap::new());

impl Writes {
    pub fn insert(&mut self, key: impl AsRef<[u8]>, value: impl Into<Vec<u8>>) {
        self.0.insert(key.as_ref().to_vec(), Some(value.into()));
    }

    pub fn remove(&mut self, key: impl AsRef<[u8]>) {
        self.0.insert(key.as_ref().to_vec(), None);
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Adds `later`, made after these.
    pub fn append(&mut self, later: Writes) {
        if self.0.is_empty() {
            self.0 = later.0;
        } else {
            self.0.extend(later.0);
        }
    }

    /// Takes the writes out, as one sled batch.
    pub fn take_batch(&mut self) -> sled::Batch {
        let mut batch = sled::Batch::default();
        for (k, v) in std::mem::take(&mut self.0) {
            match v {
                Some(v) => batch.insert(k, v),
                None => batch.remove(k),
            }
        }
        batch
    }

    /// The value under `key` once these writes are applied to `tree`.
    pub fn get(&self, tree: &sled::Tree, key: &[u8]) -> Result<Option<sled::IVec>> {
        match self.0.get(key) {
            Some(v) => Ok(v.as_deref().map(sled::IVec::from)),
            None => Ok(tree.get(key)?),
        }
    }

    /// The keys from `first` to `last` (both included), in order, once these
    /// writes are applied to `tree`: the tree's keys and these writes',
    /// merged as they are read, so a caller that stops early reads no
    /// further.
    pub fn keys<'a>(
        &'a self,
        tree: &sled::Tree,
        first: &[u8],
        last: &[u8],
    ) -> impl Iterator<Item = Result<Vec<u8>>> + 'a {
        let mut stored = tree.range(first..=last).keys().peekable();
        let range = (Bound::Included(first), Bound::Included(last));
        let mut written = self.0.range::<[u8], _>(range).peekable();
        std::iter::from_fn(move || loop {
            let next_written = written.peek().map(|(k, _)| k.as_slice());
            let from_tree = match stored.peek() {
                None => None,
                Some(Err(_)) => Some(true),
                Some(Ok(k)) => match next_written {
                    None => Some(true),
                    Some(w) if k.as_ref() < w => Some(true),
                    // The write decides what becomes of a stored key.
                    Some(w) if k.as_ref() == w => Some(false),
                    Some(_) => None,
                },
            };
            match from_tree {
                Some(true) => {
                    let k = stored.next().expect("peeked");
                    return Some(k.map(|k| k.to_vec()).map_err(Into::into));
                }
                Some(false) => {
                    stored.next();
                }
                None => {}
            }
            match written.next()? {
                (k, Some(_)) => return Some(Ok(k.clone())),
                (_, None) => continue,
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_see_the_writes_over_the_tree_and_the_batch_applies_them() {
        let db = sled::Config::new().temporary(true).open().unwrap();
        let tree = db.open_tree("t").unwrap();
        for k in [b"a", b"b", b"c"] {
            tree.insert(k, &b"old"[..]).unwrap();
        }
        let mut w = Writes::default();
        w.insert(b"b", b"new".to_vec());
        w.remove(b"c");
        let mut later = Writes::default();
        later.insert(b"d", b"added".to_vec());
        later.insert(b"c", b"back".to_vec());
        w.append(later);
        assert_eq!(w.get(&tree, b"a").unwrap().as_deref(), Some(&b"old"[..]));
        assert_eq!(w.get(&tree, b"b").unwrap().as_deref(), Some(&b"new"[..]));
        assert_eq!(w.get(&tree, b"c").unwrap().as_deref(), Some(&b"back"[..]));
        w.remove(b"a");
        assert_eq!(w.get(&tree, b"a").unwrap(), None);
        let keys = |w: &Writes, first: &[u8], last: &[u8]| {
            w.keys(&tree, first, last)
                .collect::<Result<Vec<_>>>()
                .unwrap()
        };
        assert_eq!(keys(&w, b"a", b"c"), vec![b"b".to_vec(), b"c".to_vec()]);
        assert_eq!(
            keys(&w, b"a", b"z"),
            vec![b"b".to_vec(), b"c".to_vec(), b"d".to_vec()]
        );
        assert_eq!(keys(&w, b"c", b"d"), vec![b"c".to_vec(), b"d".to_vec()]);
        assert_eq!(keys(&w, b"d", b"z"), vec![b"d".to_vec()]);
        assert_eq!(keys(&Writes::default(), b"a", b"z").len(), 3);
        tree.apply_batch(w.take_batch()).unwrap();
        assert!(w.is_empty());
        let all: Vec<_> = tree.iter().map(|e| e.unwrap()).collect();
        let all: Vec<(&[u8], &[u8])> = all.iter().map(|(k, v)| (&k[..], &v[..])).collect();
        assert_eq!(
            all,
            vec![(&b"b"[..], &b"new"[..]), (b"c", b"back"), (b"d", b"added")]
        );
    }
}
