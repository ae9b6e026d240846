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
//!
//! A memo is read on every request of a page that has one, so it is stored
//! in the store's compact form (see `compact` and [`encode_memo`]) rather
//! than as JSON. Memos stored as JSON (before that form, or holding items)
//! are read as before.

use serde::{Deserialize, Serialize};

use super::compact::{put_len, put_names, put_opt, put_str, put_u64, read_all};
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

/// The first byte of a memo in its compact form (see `compact`; a JSON
/// memo starts with `{`).
const MEMO_V1: u8 = 1;

/// A memo's stored bytes: compact, unless it holds items (written before
/// items were named), which stay JSON.
///
/// The compact form: [`MEMO_V1`]; the fingerprint; etag, last_modified,
/// body and next, each optional; then, if named (a presence byte), the
/// number of items, each item's key and hash, and the number of filled
/// fields, each name and count (u64).
fn encode_memo(memo: &PageMemo) -> Vec<u8> {
    if !memo.items.is_empty() {
        return encode(memo);
    }
    let names = memo.named.as_ref().map_or(0, |n| n.names.len());
    let mut out = Vec::with_capacity(128 + names * 34);
    out.push(MEMO_V1);
    put_str(&mut out, &memo.fingerprint);
    for field in [&memo.etag, &memo.last_modified, &memo.body, &memo.next] {
        put_opt(&mut out, field.as_deref());
    }
    match &memo.named {
        None => out.push(0),
        Some(named) => {
            out.push(1);
            put_names(&mut out, &named.names);
            put_len(&mut out, named.filled.len());
            for (field, n) in &named.filled {
                put_str(&mut out, field);
                put_u64(&mut out, *n);
            }
        }
    }
    out
}

fn decode_memo(bytes: &[u8]) -> Result<PageMemo> {
    if bytes.first() != Some(&MEMO_V1) {
        return decode("page memo", bytes);
    }
    read_all("page memo", bytes, |r| {
        let fingerprint = r.str()?;
        let (etag, last_modified, body, next) = (r.opt()?, r.opt()?, r.opt()?, r.opt()?);
        let named = match r.byte()? {
            0 => None,
            1 => {
                let names = r.names()?;
                let mut filled = std::collections::BTreeMap::new();
                for _ in 0..r.len()? {
                    let field = r.str()?;
                    filled.insert(field, r.u64()?);
                }
                Some(NamedItems { names, filled })
            }
            _ => return None,
        };
        Some(PageMemo {
            fingerprint,
            etag,
            last_modified,
            body,
            next,
            named,
            items: Vec::new(),
        })
    })
}

impl Store {
    /// What the last full answer for `url` of `source` said, if kept.
    pub fn page_memo(&self, source: &str, url: &str) -> Result<Option<PageMemo>> {
        self.pages
            .get(page_key(source, url))?
            .map(|v| decode_memo(&v))
            .transpose()
    }

    /// Keeps what a full answer for `url` of `source` said.
    pub fn remember_page(&self, source: &str, url: &str, memo: &PageMemo) -> Result<()> {
        self.write(|| {
            self.pages
                .insert(page_key(source, url), encode_memo(memo))?;
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
    use crate::domain::ItemName;
    use crate::store::StoreError;

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

    #[test]
    fn a_memo_is_stored_compactly_and_read_back_whole() {
        let hex = "0123456789abcdef0123456789abcdef";
        let name = |key: &str, hash: &str| ItemName {
            key: key.into(),
            hash: hash.into(),
        };
        let memo = PageMemo {
            fingerprint: "rules".into(),
            etag: Some("\"v1\"".into()),
            last_modified: None,
            body: Some("ffffffffffffffffffffffffffffffff".into()),
            next: Some("http://example.org/2?é".into()),
            named: Some(NamedItems {
                // Keys that are not 32 lowercase hex are kept as strings.
                names: vec![
                    name(hex, hex),
                    name("0123456789ABCDEF0123456789ABCDEF", hex),
                    name("", "short"),
                ],
                filled: [("title".to_owned(), 2), ("price".to_owned(), 1)].into(),
            }),
            items: Vec::new(),
        };
        let bytes = encode_memo(&memo);
        assert_eq!(bytes[0], MEMO_V1);
        assert!(bytes.len() < serde_json::to_vec(&memo).unwrap().len());
        assert_eq!(decode_memo(&bytes).unwrap(), memo);
        // Not named at all.
        let bare = PageMemo {
            named: None,
            ..memo.clone()
        };
        assert_eq!(decode_memo(&encode_memo(&bare)).unwrap(), bare);
        // A memo stored as JSON (by an earlier version) reads as before.
        assert_eq!(
            decode_memo(&serde_json::to_vec(&memo).unwrap()).unwrap(),
            memo
        );
        // Cut short or with bytes left over, it is corrupt, not misread.
        for bad in [
            &bytes[..bytes.len() - 1],
            &[bytes.as_slice(), b"x"].concat(),
        ] {
            assert!(matches!(
                decode_memo(bad),
                Err(StoreError::Corrupt {
                    what: "page memo",
                    ..
                })
            ));
        }
        // A memo holding items (remembered before items were named) stays JSON.
        let old = PageMemo {
            items: vec![Item::new(
                serde_json::json!({"title": "a"})
                    .as_object()
                    .unwrap()
                    .clone(),
                &[],
            )],
            ..memo
        };
        assert_eq!(encode_memo(&old)[0], b'{');
        assert_eq!(decode_memo(&encode_memo(&old)).unwrap(), old);
    }
}
