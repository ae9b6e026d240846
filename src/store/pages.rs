//! The `pages` tree: `source id \0 page URL` -> [`PageMemo`], what the last
//! full answer for a page of a source said: its validators (`ETag`,
//! `Last-Modified`), its next page and the items it yielded, by name (key
//! and content hash, and how many filled each field). The next run asks the
//! site with `If-None-Match` / `If-Modified-Since`; on a 304 the named
//! items are handed to the aggregator again, which moves their `last_seen`
//! exactly as if the page had been parsed, provided the collection still
//! holds each of them with its named hash (otherwise the page is asked for
//! again in full), and pagination goes on from the remembered next page.
//! The memo also holds a hash of the answer (final URL, status and body):
//! a page answered in full again with the very same body (a site without
//! validators) is treated as a 304, not parsed again. Sources that follow
//! detail pages keep no body hash: their items depend on more than the
//! page. Pages remembered before items were named hold the items
//! themselves, which a 304 hands over as they are.

use serde::{Deserialize, Serialize};

use super::{decode, encode, Result, Store};
use crate::domain::item::NamedItems;
use crate::domain::Item;

/// What a page's last full answer said.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PageMemo {
    /// The rules the items were made under (see the Pager's memory).
    pub fingerprint: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub etag: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_modified: Option<String>,
    /// A hash of the answer (final URL, status, body): the same answer
    /// again, even without validators, is not parsed again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<String>,
    /// The next page's URL the page pointed to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next: Option<String>,
    /// The items the page yielded, by name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub named: Option<NamedItems>,
    /// The items themselves, in pages remembered before items were named.
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
            body: None,
            next: Some("http://example.org/2".into()),
            named: Some(NamedItems::default()),
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
}
