//! The `webhooks` tree (webhook id -> [`WebhookRecord`], tombstones
//! included: the replicated registry) and the `hooks` tree, each webhook's
//! delivery state, the same on every node but for the watermark:
//!
//! - `d\0{id}\0{item key}` -> the item version last delivered (u64 BE)
//!   and its content hash;
//! - `p\0{id}\0{n}` -> a [`PendingDelivery`] not yet acknowledged;
//! - `a\0{id}\0{n}{delivery id}` -> a [`DeliveryAck`], the newest [`ACKS_KEPT`];
//! - `l\0{id}\0{n}` -> a [`DeliveryRecord`], the newest [`LOG_KEPT`];
//! - `w\0{id}` -> this node's watermark over its own change feed of the
//!   webhook's collection (u64 BE): every change at or below it is either
//!   not wanted or delivered at its item's current version.
//!
//! Numbers (`n`) are big-endian u64, so keys sort by delivery number.

use super::{decode, encode, Result, Store};
use crate::domain::{DeliveryAck, DeliveryRecord, PendingDelivery, WebhookRecord, WebhookSpec};

/// Acknowledgements kept per webhook, for peers catching up.
pub const ACKS_KEPT: usize = 10_000;
/// Delivery records kept per webhook, for its status.
pub const LOG_KEPT: usize = 20;

fn prefix(kind: u8, id: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(id.len() + 3);
    k.push(kind);
    k.push(0);
    k.extend_from_slice(id.as_bytes());
    k.push(0);
    k
}

fn numbered(kind: u8, id: &str, n: u64) -> Vec<u8> {
    let mut k = prefix(kind, id);
    k.extend_from_slice(&n.to_be_bytes());
    k
}

fn u64_of(bytes: &[u8]) -> u64 {
    let mut b = [0u8; 8];
    let n = bytes.len().min(8);
    b[..n].copy_from_slice(&bytes[..n]);
    u64::from_be_bytes(b)
}

impl Store {
    pub fn put_webhook(&self, record: &WebhookRecord) -> Result<()> {
        self.write(|| {
            self.webhooks
                .insert(record.spec.id.as_bytes(), encode(record))?;
            Ok(())
        })
    }

    pub fn webhook(&self, id: &str) -> Result<Option<WebhookRecord>> {
        self.read(|| {
            self.webhooks
                .get(id.as_bytes())?
                .map(|b| decode("webhook", &b))
                .transpose()
        })
    }

    /// Every webhook record, tombstones included, in id order.
    pub fn webhooks(&self) -> Result<Vec<WebhookRecord>> {
        self.read(|| {
            self.webhooks
                .iter()
                .values()
                .map(|v| decode("webhook", &v?))
                .collect()
        })
    }

    /// Records a delivery about to be sent.
    pub fn hook_pending(&self, pending: &PendingDelivery) -> Result<()> {
        self.write(|| {
            self.hooks
                .insert(numbered(b'p', &pending.webhook, pending.n), encode(pending))?;
            Ok(())
        })
    }

    /// The webhook's deliveries not acknowledged, oldest first.
    pub fn hook_pendings(&self, id: &str) -> Result<Vec<PendingDelivery>> {
        self.read(|| {
            self.hooks
                .scan_prefix(prefix(b'p', id))
                .values()
                .map(|v| decode("pending delivery", &v?))
                .collect()
        })
    }

    /// Applies an acknowledgement: its items are delivered at their
    /// versions (never lowering one), pendings up to its number are done.
    /// Returns false when it was known already.
    pub fn hook_ack(&self, ack: &DeliveryAck) -> Result<bool> {
        self.write(|| {
            let mut key = numbered(b'a', &ack.webhook, ack.n);
            key.extend_from_slice(ack.id.as_bytes());
            if self.hooks.contains_key(&key)? {
                return Ok(false);
            }
            let mut batch = sled::Batch::default();
            for (item, version, hash) in &ack.pairs {
                let mut k = prefix(b'd', &ack.webhook);
                k.extend_from_slice(item.as_bytes());
                let known = self.hooks.get(&k)?.map_or(0, |v| u64_of(&v));
                if *version > known {
                    let mut value = version.to_be_bytes().to_vec();
                    value.extend_from_slice(hash.as_bytes());
                    batch.insert(k, value);
                }
            }
            for entry in self
                .hooks
                .range(prefix(b'p', &ack.webhook)..=numbered(b'p', &ack.webhook, ack.n))
            {
                let (k, _) = entry?;
                batch.remove(k);
            }
            batch.insert(key, encode(ack));
            self.hooks.apply_batch(batch)?;
            let acks = prefix(b'a', &ack.webhook);
            let kept = self.hooks.scan_prefix(&acks).keys().count();
            if kept > ACKS_KEPT {
                let stale: Vec<sled::IVec> = self
                    .hooks
                    .scan_prefix(&acks)
                    .keys()
                    .take(kept - ACKS_KEPT)
                    .collect::<std::result::Result<_, _>>()?;
                for k in stale {
                    self.hooks.remove(k)?;
                }
            }
            Ok(true)
        })
    }

    /// Up to `max` acknowledgements with a number above `after`, in order.
    pub fn hook_acks_after(&self, id: &str, after: u64, max: usize) -> Result<Vec<DeliveryAck>> {
        self.read(|| {
            self.hooks
                .range(numbered(b'a', id, after.saturating_add(1))..)
                .take_while(|e| {
                    e.as_ref()
                        .map_or(true, |(k, _)| k.starts_with(&prefix(b'a', id)))
                })
                .take(max)
                .map(|e| decode("delivery ack", &e?.1))
                .collect()
        })
    }

    /// The highest acknowledged delivery number (0 when none).
    pub fn hook_last_ack(&self, id: &str) -> Result<u64> {
        self.read(|| {
            let p = prefix(b'a', id);
            Ok(match self.hooks.scan_prefix(&p).keys().next_back() {
                Some(k) => u64_of(&k?[p.len()..]),
                None => 0,
            })
        })
    }

    /// The version of `item` last delivered to the webhook (0 when none).
    pub fn hook_delivered(&self, id: &str, item: &str) -> Result<u64> {
        self.read(|| {
            let mut k = prefix(b'd', id);
            k.extend_from_slice(item.as_bytes());
            Ok(self.hooks.get(k)?.map_or(0, |v| u64_of(&v)))
        })
    }

    /// Was this item delivered to the webhook as it is now: at this version
    /// or a later one, or with the same content (a node whose copy counts
    /// versions differently still recognises the content)?
    pub fn hook_covers(&self, id: &str, item: &crate::domain::StoredItem) -> Result<bool> {
        self.read(|| {
            let mut k = prefix(b'd', id);
            k.extend_from_slice(item.key.as_bytes());
            Ok(match self.hooks.get(k)? {
                Some(v) => item.version <= u64_of(&v) || v.get(8..) == Some(item.hash.as_bytes()),
                None => false,
            })
        })
    }

    /// This node's watermark for the webhook (0 when none).
    pub fn hook_watermark(&self, id: &str) -> Result<u64> {
        self.read(|| Ok(self.hooks.get(prefix(b'w', id))?.map_or(0, |v| u64_of(&v))))
    }

    pub fn set_hook_watermark(&self, id: &str, seq: u64) -> Result<()> {
        self.write(|| {
            self.hooks.insert(prefix(b'w', id), &seq.to_be_bytes())?;
            Ok(())
        })
    }

    /// Moves the watermark past changes already delivered or not wanted,
    /// looking at `max_scan` changes at most; returns the new watermark.
    pub fn hook_advance(&self, spec: &WebhookSpec, max_scan: usize) -> Result<u64> {
        let mut mark = self.hook_watermark(&spec.id)?;
        let start = mark;
        for change in self.changes_after(&spec.collection, mark, max_scan)? {
            let op = serde_json::to_value(change.op).unwrap_or_default();
            let wanted = op.as_str().is_some_and(|o| spec.wants(o));
            if wanted && !self.hook_covers(&spec.id, &change.item)? {
                break;
            }
            mark = change.seq;
        }
        if mark != start {
            self.set_hook_watermark(&spec.id, mark)?;
        }
        Ok(mark)
    }

    /// Records (or updates) a delivery's status; keeps the newest [`LOG_KEPT`].
    pub fn hook_record(&self, webhook: &str, record: &DeliveryRecord) -> Result<()> {
        self.write(|| {
            self.hooks
                .insert(numbered(b'l', webhook, record.n), encode(record))?;
            let p = prefix(b'l', webhook);
            let kept = self.hooks.scan_prefix(&p).keys().count();
            if kept > LOG_KEPT {
                let stale: Vec<sled::IVec> = self
                    .hooks
                    .scan_prefix(&p)
                    .keys()
                    .take(kept - LOG_KEPT)
                    .collect::<std::result::Result<_, _>>()?;
                for k in stale {
                    self.hooks.remove(k)?;
                }
            }
            Ok(())
        })
    }

    /// The webhook's last deliveries, newest first.
    pub fn hook_records(&self, webhook: &str, limit: usize) -> Result<Vec<DeliveryRecord>> {
        self.read(|| {
            self.hooks
                .scan_prefix(prefix(b'l', webhook))
                .values()
                .rev()
                .take(limit)
                .map(|v| decode("delivery record", &v?))
                .collect()
        })
    }

    /// Drops a deleted webhook's delivery state.
    pub fn hook_forget(&self, id: &str) -> Result<()> {
        self.write(|| {
            let mut batch = sled::Batch::default();
            for kind in [b'd', b'p', b'a', b'l'] {
                for k in self.hooks.scan_prefix(prefix(kind, id)).keys() {
                    batch.remove(k?);
                }
            }
            batch.remove(prefix(b'w', id));
            self.hooks.apply_batch(batch)?;
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ack(n: u64, pairs: &[(&str, u64)]) -> DeliveryAck {
        DeliveryAck {
            webhook: "h".into(),
            n,
            id: format!("d{n}"),
            pairs: pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), *v, format!("hash-{v}")))
                .collect(),
        }
    }

    #[test]
    fn acks_mark_items_delivered_clear_pendings_and_never_lower_a_version() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), 1 << 20).unwrap();
        let pending = PendingDelivery {
            webhook: "h".into(),
            n: 1,
            id: "d1".into(),
            body: "{}".into(),
            pairs: vec![("a".into(), 2, "hash-2".into())],
            changes: 1,
            created_at: chrono::Utc::now(),
        };
        store.hook_pending(&pending).unwrap();
        assert_eq!(store.hook_pendings("h").unwrap(), [pending]);
        assert!(store.hook_ack(&ack(1, &[("a", 2)])).unwrap());
        assert!(!store.hook_ack(&ack(1, &[("a", 2)])).unwrap(), "known");
        assert!(store.hook_pendings("h").unwrap().is_empty());
        store.hook_ack(&ack(2, &[("a", 1), ("b", 1)])).unwrap();
        assert_eq!(store.hook_delivered("h", "a").unwrap(), 2);
        assert_eq!(store.hook_delivered("h", "b").unwrap(), 1);
        assert_eq!(store.hook_last_ack("h").unwrap(), 2);
        let after: Vec<u64> = store
            .hook_acks_after("h", 1, 10)
            .unwrap()
            .iter()
            .map(|a| a.n)
            .collect();
        assert_eq!(after, [2]);
        // Another webhook's state is apart.
        assert_eq!(store.hook_delivered("h2", "a").unwrap(), 0);
        assert!(store.hook_acks_after("g", 0, 10).unwrap().is_empty());
        store.hook_forget("h").unwrap();
        assert_eq!(store.hook_last_ack("h").unwrap(), 0);
    }
}
