//! What a delivery looks like on the wire, without I/O: its JSON body and
//! its signature, `X-Gleaner-Signature: sha256=<hex HMAC-SHA256(secret,
//! body)>`, computed over the exact bytes sent.

use hmac::{KeyInit, Mac};
use serde_json::{json, Value};
use sha2::Sha256;

use crate::domain::StoredItem;

/// The signature header's value for `body` under `secret`.
pub fn signature(secret: &str, body: &[u8]) -> String {
    let mut mac = <hmac::Hmac<Sha256> as KeyInit>::new_from_slice(secret.as_bytes())
        .expect("HMAC takes a key of any length");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// One change as the feed shows it: `{"seq", "op", "item"}`, the item
/// without its content hash.
pub fn change(seq: u64, op: &str, item: &StoredItem) -> Value {
    json!({
        "seq": seq,
        "op": op,
        "item": {
            "key": item.key,
            "data": item.data,
            "first_seen": item.first_seen,
            "last_seen": item.last_seen,
            "version": item.version,
            "source": item.source,
        }
    })
}

/// A delivery's body: `{"webhook", "collection", "changes": [...]}`.
pub fn body(webhook: &str, collection: &str, changes: Vec<Value>) -> String {
    json!({ "webhook": webhook, "collection": collection, "changes": changes }).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_are_hmac_sha256_in_hex() {
        // RFC 4231, test case 2.
        assert_eq!(
            signature("Jefe", b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }
}
