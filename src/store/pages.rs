//! The `pages` tree: `source id \0 page URL` -> [`PageMemo`], what the last
//! full answer for a page of a source said: its validators (`ETag`,
//! `Last-Modified`), its next page and the keys and content hashes of the
//! items it yielded. The next run asks the site with `If-None-Match` /
//! `If-Modified-Since`; on a 304 the items are read back from the collection
//! ([`Store::items_unchanged`]: only when every one is there with the
//! remembered content) and handed to the aggregator again (so their
//! `last_seen` moves, exactly as if the page had been parsed), and
//! pagination goes on from the remembered next page; when one is gone or
//! changed, the page is asked for again in full. Only pages that came with a
//! validator are remembered. The items themselves are not kept again: they
//! are in the collection already, and a memo of keys is a tenth of the size.

use serde::{Deserialize, Serialize};

use super::{decode, encode, Result, Store};
use crate::domain::{Item, StoredItem};

/// What a page's last full answer said.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PageMemo {
    /// The rules the items were made under (see the Pager's memory).
    pub fingerprint: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub etag: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_modified: Option<String>,
    /// The next page's URL the page pointed to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next: Option<String>,
    /// The items the page yielded, as (key, content hash), in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub keys: Vec<(String, String)>,
    /// The items themselves, as memos written before keys were kept say
    /// them (read as they are; never written now).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub items: Vec<Item>,
}

fn page_key(source: &str, url: &str) -> Vec<u8> {
    let mut key = super::runs::run_prefix(source);
    key.extend_from_slice(url.as_bytes());
    key
}

impl Store {
    /// What the last full answer for `url` of `source` said, if kept.
    pub fn page_memo(&self, source: &str, url: &str) -> Result<Option<PageMemo>> {
        self.pages
            .get(page_key(source, url))?
            .map(|v| decode("page memo", &v))
            .transpose()
    }

    /// Keeps what a full answer for `url` of `source` said.
    pub fn remember_page(&self, source: &str, url: &str, memo: &PageMemo) -> Result<()> {
        self.write(|| {
            self.pages.insert(page_key(source, url), encode(memo))?;
            Ok(())
        })
    }

    /// The items of `keys` (key, content hash) as `collection` holds them,
    /// if every one is there with that content; `None` when one is gone or
    /// changed (another source wrote it, the collection was deleted).
    pub fn items_unchanged(
        &self,
        collection: &str,
        keys: &[(String, String)],
    ) -> Result<Option<Vec<Item>>> {
        self.read(|| {
            // Only a listed collection has a tree: looking does not create one.
            if self.collections.get(collection.as_bytes())?.is_none() {
                return Ok(None);
            }
            let tree = self.items_tree(collection)?;
            let mut items = Vec::with_capacity(keys.len());
            for (key, hash) in keys {
                let Some(bytes) = tree.get(key.as_bytes())? else {
                    return Ok(None);
                };
                let stored: StoredItem = decode("item", &bytes)?;
                if stored.hash != *hash {
                    return Ok(None);
                }
                items.push(Item {
                    key: stored.key,
                    data: stored.data,
                });
            }
            Ok(Some(items))
        })
    }

    /// Forgets every page of `source` (its spec changed or it was deleted).
    pub fn forget_pages(&self, source: &str) -> Result<()> {
        self.write(|| {
            for key in self
                .pages
                .scan_prefix(super::runs::run_prefix(source))
                .keys()
            {
                self.pages.remove(key?)?;
            }
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_are_kept_per_source_and_forgotten() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), 1 << 20).unwrap();
        let memo = PageMemo {
            fingerprint: "f".into(),
            etag: Some("\"v1\"".into()),
            last_modified: None,
            next: Some("http://example.org/2".into()),
            keys: vec![("k".into(), "h".into())],
            items: Vec::new(),
        };
        store
            .remember_page("a", "http://example.org/1", &memo)
            .unwrap();
        assert_eq!(
            store.page_memo("a", "http://example.org/1").unwrap(),
            Some(memo)
        );
        assert_eq!(store.page_memo("ab", "http://example.org/1").unwrap(), None);
        assert_eq!(store.page_memo("a", "http://example.org/2").unwrap(), None);
        store.forget_pages("a").unwrap();
        assert_eq!(store.page_memo("a", "http://example.org/1").unwrap(), None);
    }

    #[test]
    fn remembered_items_are_read_back_only_while_all_are_unchanged() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), 1 << 20).unwrap();
        let item = |url: &str, price: i64| {
            Item::new(
                serde_json::json!({"url": url, "price": price})
                    .as_object()
                    .unwrap()
                    .clone(),
                &["url".into()],
            )
        };
        let page = vec![item("u1", 1), item("u2", 2)];
        let batch = |items: Vec<Item>| crate::domain::ItemBatch {
            source: "s".into(),
            collection: "c".into(),
            fetched_at: chrono::Utc::now(),
            items,
        };
        store.apply_batch(&batch(page.clone())).unwrap();
        let keys: Vec<(String, String)> = page
            .iter()
            .map(|i| (i.key.clone(), i.content_hash()))
            .collect();
        assert_eq!(store.items_unchanged("c", &keys).unwrap(), Some(page));
        assert_eq!(store.items_unchanged("c", &[]).unwrap(), Some(vec![]));
        // Changed by another write: the page must be asked for again.
        store.apply_batch(&batch(vec![item("u2", 3)])).unwrap();
        assert_eq!(store.items_unchanged("c", &keys).unwrap(), None);
        // Gone.
        assert_eq!(store.items_unchanged("other", &keys[..1]).unwrap(), None);
    }

    #[test]
    fn a_memo_written_with_its_items_still_reads() {
        let old = br#"{"fingerprint":"f","etag":"\"v1\"","items":[{"key":"k1","data":{"a":1}}]}"#;
        let memo: PageMemo = decode("page memo", old).unwrap();
        assert_eq!(memo.items.len(), 1);
        assert!(memo.keys.is_empty());
    }
}
