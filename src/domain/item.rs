//! Items: what extraction yields ([`Item`]), how scrapers hand them over
//! ([`ItemBatch`]), what a collection keeps ([`StoredItem`]), and a stored
//! item read in place ([`ItemRef`]).

use std::borrow::Cow;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::{Map, Value};

/// One extracted record and its stable key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Item {
    /// 32 hex characters: a hash of the key fields' values, or of the whole
    /// item when the source names no key fields.
    pub key: String,
    pub data: Map<String, Value>,
}

impl Item {
    /// Builds an item, deriving its key from `key_fields` (or from all of `data`).
    pub fn new(data: Map<String, Value>, key_fields: &[String]) -> Self {
        let key = item_key(&data, key_fields);
        Self { key, data }
    }

    /// A hash of the item's content, to tell a changed item from an unchanged one.
    pub fn content_hash(&self) -> String {
        hash_of(&self.data)
    }

    /// The item's data as JSON, serialised once, and its content hash (the
    /// same as [`Item::content_hash`]): a store writing the item, its hash
    /// and its log entry serialises the data once for all three.
    pub fn data_json(&self) -> (Box<RawValue>, String) {
        let json =
            serde_json::value::to_raw_value(&self.data).expect("a JSON map always serialises");
        let hash = hash_hex(json.get().as_bytes());
        (json, hash)
    }
}

/// The key of an item: the hash of the canonical JSON of its key fields' values
/// (in the order given), or of the whole item. `serde_json::Map` is sorted, so
/// the same content always hashes the same.
pub fn item_key(data: &Map<String, Value>, key_fields: &[String]) -> String {
    if key_fields.is_empty() {
        return hash_of(data);
    }
    let parts: Vec<Value> = key_fields
        .iter()
        .map(|f| data.get(f).cloned().unwrap_or(Value::Null))
        .collect();
    hash_of(&parts)
}

/// The first 32 hex characters of the BLAKE3 hash of `v`'s JSON (a map
/// serialises as the object holding it would, so nothing is cloned to hash
/// it).
fn hash_of<T: Serialize + ?Sized>(v: &T) -> String {
    let bytes = serde_json::to_vec(v).expect("a JSON value always serialises");
    hash_hex(&bytes)
}

fn hash_hex(bytes: &[u8]) -> String {
    blake3::hash(bytes).to_hex()[..32].to_string()
}

/// Items from one page of one run of one source.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ItemBatch {
    pub source: String,
    pub collection: String,
    pub fetched_at: DateTime<Utc>,
    pub items: Vec<Item>,
}

/// An item named by its key and content hash, without its data.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ItemName {
    pub key: String,
    pub hash: String,
}

impl From<&Item> for ItemName {
    fn from(item: &Item) -> Self {
        ItemName {
            key: item.key.clone(),
            hash: item.content_hash(),
        }
    }
}

/// A page's items by name, as a page answered in full is remembered for
/// conditional requests: each item's key and hash, and per field how many
/// of the items filled it (for the run's record, see [`filled`]).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct NamedItems {
    pub names: Vec<ItemName>,
    #[serde(default)]
    pub filled: std::collections::BTreeMap<String, u64>,
}

impl NamedItems {
    pub fn of(items: &[Item]) -> Self {
        let mut filled = std::collections::BTreeMap::new();
        for item in items {
            for (field, value) in &item.data {
                if !self::filled(value) {
                    continue;
                }
                // The name is copied once a page, not once an item.
                match filled.get_mut(field) {
                    Some(n) => *n += 1,
                    None => {
                        filled.insert(field.clone(), 1);
                    }
                }
            }
        }
        NamedItems {
            names: items.iter().map(ItemName::from).collect(),
            filled,
        }
    }
}

/// Whether a field's value counts as filled: not null, not an empty string
/// or list.
pub fn filled(value: &Value) -> bool {
    match value {
        Value::Null => false,
        Value::String(s) => !s.is_empty(),
        Value::Array(a) => !a.is_empty(),
        _ => true,
    }
}

/// Items a page yielded again, unchanged, named rather than extracted: a
/// page answered 304 Not Modified whose items the collection holds as they
/// were (see `store::pages`). Applied only if every item is still stored
/// with its named hash; otherwise the page is asked for again in full.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SeenBatch {
    pub source: String,
    pub collection: String,
    pub fetched_at: DateTime<Utc>,
    pub names: Vec<ItemName>,
}

/// A batch as it travels between nodes: which node first accepted it, and
/// its number in that node's sequence for the collection.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReplicatedBatch {
    pub origin: String,
    pub seq: u64,
    pub batch: ItemBatch,
}

/// An item as a collection keeps and serves it.
///
/// The hash comes first on purpose: stored as JSON, an item reads
/// `{"hash":"<32 hex>",` followed by exactly what the API shows of it, so the
/// store serves pages without parsing them (see `store::ItemBytes`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct StoredItem {
    /// Content hash of `data` (32 hex characters), to detect changes
    /// without comparing maps.
    pub hash: String,
    pub key: String,
    pub data: Map<String, Value>,
    #[serde(serialize_with = "super::timestamp::serialize")]
    pub first_seen: DateTime<Utc>,
    #[serde(serialize_with = "super::timestamp::serialize")]
    pub last_seen: DateTime<Utc>,
    /// 1 when first stored; bumped each time the content changes.
    pub version: u64,
    /// The source that last wrote the item.
    pub source: String,
}

/// A stored item about to be written, borrowing its parts (the data as the
/// JSON it serialised to once): it serialises exactly as [`StoredItem`]
/// does, byte for byte.
#[derive(Debug, Clone, Serialize)]
pub struct StoredItemOut<'a> {
    pub hash: &'a str,
    pub key: &'a str,
    pub data: &'a RawValue,
    #[serde(serialize_with = "super::timestamp::serialize")]
    pub first_seen: DateTime<Utc>,
    #[serde(serialize_with = "super::timestamp::serialize")]
    pub last_seen: DateTime<Utc>,
    pub version: u64,
    pub source: Cow<'a, str>,
}

/// A [`ReplicatedBatch`] about to be written, its items' data borrowed as
/// serialised JSON: it serialises exactly as the batch does, byte for byte.
#[derive(Debug, Serialize)]
pub struct ReplicatedBatchOut<'a> {
    pub origin: &'a str,
    pub seq: u64,
    pub batch: ItemBatchOut<'a>,
}

impl<'a> ReplicatedBatchOut<'a> {
    /// `rb` with each item, in order, as `logged` says: its data as
    /// [`Item::data_json`] serialised it, or its content hash alone.
    pub fn of(rb: &'a ReplicatedBatch, logged: impl IntoIterator<Item = Logged<'a>>) -> Self {
        let batch = &rb.batch;
        ReplicatedBatchOut {
            origin: &rb.origin,
            seq: rb.seq,
            batch: ItemBatchOut {
                source: &batch.source,
                collection: &batch.collection,
                fetched_at: batch.fetched_at,
                items: batch
                    .items
                    .iter()
                    .zip(logged)
                    .map(|(item, logged)| match logged {
                        Logged::Data(data) => ItemOut {
                            key: &item.key,
                            data: Some(data),
                            hash: None,
                        },
                        Logged::Named(hash) => ItemOut {
                            key: &item.key,
                            data: None,
                            hash: Some(hash),
                        },
                    })
                    .collect(),
            },
        }
    }
}

/// How an item of a [`ReplicatedBatchOut`] is written.
#[derive(Debug, Clone, Copy)]
pub enum Logged<'a> {
    /// With its data (serialised JSON): as [`Item`] serialises.
    Data(&'a RawValue),
    /// Named by its content hash alone, in place of its data (see
    /// `store::log`: an item the batch found unchanged).
    Named(&'a str),
}

/// The batch of a [`ReplicatedBatchOut`]: serialises as [`ItemBatch`].
#[derive(Debug, Serialize)]
pub struct ItemBatchOut<'a> {
    pub source: &'a str,
    pub collection: &'a str,
    pub fetched_at: DateTime<Utc>,
    pub items: Vec<ItemOut<'a>>,
}

/// An item of an [`ItemBatchOut`]: serialises as [`Item`] with its data,
/// or as its key and content hash.
#[derive(Debug, Serialize)]
pub struct ItemOut<'a> {
    pub key: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data: Option<&'a RawValue>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hash: Option<&'a str>,
}

/// A stored item as the API shows it, read in place: borrowed from the
/// store's bytes, with `data` kept as the raw JSON it was stored as. It
/// serialises exactly as [`StoredItem`] does, less the content hash, so a
/// page of items is written without building a single `Value`.
#[derive(Debug, Serialize, Deserialize)]
pub struct ItemRef<'a> {
    #[serde(borrow)]
    pub key: Cow<'a, str>,
    #[serde(borrow)]
    pub data: &'a RawValue,
    /// RFC 3339, as [`StoredItem`] wrote it.
    #[serde(borrow)]
    pub first_seen: Cow<'a, str>,
    #[serde(borrow)]
    pub last_seen: Cow<'a, str>,
    pub version: u64,
    #[serde(borrow)]
    pub source: Cow<'a, str>,
}

impl ItemRef<'_> {
    /// The item's fields, parsed (for filters).
    pub fn fields(&self) -> serde_json::Result<Map<String, Value>> {
        serde_json::from_str(self.data.get())
    }
}

/// What an upsert did to one item.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Upsert {
    Inserted,
    Changed,
    Unchanged,
}

impl StoredItem {
    /// Merges a copy of an item from another node's snapshot: the later
    /// observation wins, first_seen is the earliest either saw. Commutative,
    /// so replicas converge whatever order copies arrive in.
    pub fn merge_copy(old: Option<StoredItem>, copy: StoredItem) -> StoredItem {
        match old {
            None => copy,
            Some(old) => {
                let first_seen = old.first_seen.min(copy.first_seen);
                let mut winner = if (copy.last_seen, copy.version, &copy.hash)
                    > (old.last_seen, old.version, &old.hash)
                {
                    copy
                } else {
                    old
                };
                winner.first_seen = first_seen;
                winner
            }
        }
    }

    /// Merges a freshly scraped item into what is stored (if anything):
    /// first_seen is kept, last_seen moves on, the version goes up only when
    /// the content changed.
    pub fn merge(
        old: Option<StoredItem>,
        item: &Item,
        source: &str,
        seen: DateTime<Utc>,
    ) -> (StoredItem, Upsert) {
        let hash = item.content_hash();
        match old {
            None => (
                StoredItem {
                    key: item.key.clone(),
                    data: item.data.clone(),
                    first_seen: seen,
                    last_seen: seen,
                    version: 1,
                    source: source.to_owned(),
                    hash,
                },
                Upsert::Inserted,
            ),
            // An older observation arriving late (a replica catching up, or
            // two nodes scraping during a partition) never overwrites newer
            // content: every node ends with the same item whatever the order.
            Some(mut old) if seen < old.last_seen => {
                old.first_seen = old.first_seen.min(seen);
                (old, Upsert::Unchanged)
            }
            Some(mut old) => {
                old.last_seen = old.last_seen.max(seen);
                old.source = source.to_owned();
                if old.hash == hash {
                    (old, Upsert::Unchanged)
                } else {
                    old.data = item.data.clone();
                    old.hash = hash;
                    old.version += 1;
                    (old, Upsert::Changed)
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn data(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn key_depends_only_on_key_fields() {
        let a = Item::new(data(json!({"url": "u1", "price": 1})), &["url".into()]);
        let b = Item::new(data(json!({"url": "u1", "price": 2})), &["url".into()]);
        let c = Item::new(data(json!({"url": "u2", "price": 1})), &["url".into()]);
        assert_eq!(a.key, b.key);
        assert_ne!(a.key, c.key);
        assert_eq!(a.key.len(), 32);
    }

    #[test]
    fn keys_and_hashes_stay_what_stores_already_hold() {
        // Pinned: keys and content hashes are stored; they must never move.
        let item = Item::new(
            data(json!({"url": "http://a/1", "price": 9.5, "tags": ["x", "é"]})),
            &["url".into()],
        );
        assert_eq!(item.key, "9cde1a0f2a0f9cb35339567e9c0f2b89");
        assert_eq!(item.content_hash(), "93b11ee04cba563423bd50e389bd5db3");
        let whole = Item::new(data(json!({"b": 1, "a": [true, null]})), &[]);
        assert_eq!(whole.key, whole.content_hash());
    }

    #[test]
    fn data_serialised_once_writes_the_same_bytes_and_hash_as_the_items() {
        let item = Item::new(
            data(json!({"t": "a \"q\" é\n", "n": [1, 2.5, null], "o": {"z": true, "a": ""}})),
            &["t".into()],
        );
        let (json, hash) = item.data_json();
        assert_eq!(hash, item.content_hash());
        let at = Utc::now();
        let stored = StoredItem {
            hash: hash.clone(),
            key: item.key.clone(),
            data: item.data.clone(),
            first_seen: at,
            last_seen: at + chrono::Duration::milliseconds(1500),
            version: 7,
            source: "s\"rc".into(),
        };
        let out = StoredItemOut {
            hash: &hash,
            key: &item.key,
            data: &json,
            first_seen: stored.first_seen,
            last_seen: stored.last_seen,
            version: 7,
            source: "s\"rc".into(),
        };
        assert_eq!(
            serde_json::to_vec(&out).unwrap(),
            serde_json::to_vec(&stored).unwrap()
        );
        let rb = ReplicatedBatch {
            origin: "n1".into(),
            seq: 42,
            batch: ItemBatch {
                source: "src".into(),
                collection: "books".into(),
                fetched_at: at,
                items: vec![item.clone(), item.clone()],
            },
        };
        let rb_out = ReplicatedBatchOut::of(&rb, [Logged::Data(&json), Logged::Data(&json)]);
        assert_eq!(
            serde_json::to_vec(&rb_out).unwrap(),
            serde_json::to_vec(&rb).unwrap()
        );
    }

    #[test]
    fn without_key_fields_the_content_is_the_key() {
        let a = Item::new(data(json!({"x": 1, "y": 2})), &[]);
        let b = Item::new(data(json!({"y": 2, "x": 1})), &[]);
        let c = Item::new(data(json!({"x": 1, "y": 3})), &[]);
        assert_eq!(a.key, b.key);
        assert_ne!(a.key, c.key);
    }

    #[test]
    fn an_item_read_in_place_serialises_as_the_stored_item_without_its_hash() {
        let item = Item::new(data(json!({"t": "a \"q\" é", "n": [1, 2.5]})), &[]);
        let (stored, _) = StoredItem::merge(None, &item, "src", Utc::now());
        let bytes = serde_json::to_vec(&stored).unwrap();
        let read: ItemRef = serde_json::from_slice(&bytes).unwrap();
        let mut expected = serde_json::to_value(&stored).unwrap();
        expected.as_object_mut().unwrap().remove("hash");
        assert_eq!(serde_json::to_value(&read).unwrap(), expected);
        assert_eq!(read.fields().unwrap(), stored.data);
    }

    #[test]
    fn merge_versions_only_on_change() {
        let t0 = Utc::now();
        let t1 = t0 + chrono::Duration::seconds(5);
        let item = Item::new(data(json!({"url": "u", "price": 1})), &["url".into()]);
        let (stored, how) = StoredItem::merge(None, &item, "s", t0);
        assert_eq!((stored.version, how), (1, Upsert::Inserted));
        let (same, how) = StoredItem::merge(Some(stored.clone()), &item, "s", t1);
        assert_eq!(
            (same.version, how, same.first_seen, same.last_seen),
            (1, Upsert::Unchanged, t0, t1)
        );
        let changed = Item::new(data(json!({"url": "u", "price": 2})), &["url".into()]);
        let (new, how) = StoredItem::merge(Some(same), &changed, "s", t1);
        assert_eq!((new.version, how), (2, Upsert::Changed));
        assert_eq!(new.data["price"], json!(2));
    }
}
