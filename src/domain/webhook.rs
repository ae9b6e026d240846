//! Webhooks: what an operator asks for ([`WebhookSpec`], validated here
//! without I/O; the URL's address is checked by the fetch module's guard),
//! what every node stores ([`WebhookRecord`], replicated like sources), and
//! the delivery state nodes replicate so that a new owner resumes where the
//! last one stopped ([`PendingDelivery`], [`DeliveryAck`], [`DeliveryRecord`];
//! docs/webhooks.md tells the design).

use std::fmt;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::spec::{is_slug, SpecError};
use super::Version;

/// The change kinds a webhook may ask for.
pub const EVENTS: [&str; 2] = ["inserted", "changed"];

/// Longest secret accepted, in bytes.
pub const MAX_SECRET_LEN: usize = 512;
/// Shortest secret accepted, in bytes.
pub const MIN_SECRET_LEN: usize = 8;
/// Longest URL accepted.
const MAX_URL_LEN: usize = 2048;

/// How a secret is shown in every view.
pub const MASK: &str = "***";

/// A webhook as submitted: where to POST which changes of which collection,
/// and the secret the deliveries are signed with.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct WebhookSpec {
    pub id: String,
    /// http or https; its address must be public unless the operator allows
    /// private targets (`GLEANER_ALLOW_PRIVATE_TARGETS`).
    pub url: String,
    pub collection: String,
    /// `inserted`, `changed` or both (the default).
    #[serde(default = "all_events")]
    pub events: Vec<String>,
    /// The HMAC-SHA256 key of `X-Gleaner-Signature`; shown as `***`. On
    /// replace, leaving it out (or sending `***`) keeps the stored one.
    #[serde(default)]
    pub secret: String,
}

fn all_events() -> Vec<String> {
    EVENTS.iter().map(|e| (*e).to_owned()).collect()
}

/// The secret never reaches a log, even through `{:?}`.
impl fmt::Debug for WebhookSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WebhookSpec")
            .field("id", &self.id)
            .field("url", &self.url)
            .field("collection", &self.collection)
            .field("events", &self.events)
            .field("secret", &MASK)
            .finish()
    }
}

impl WebhookSpec {
    /// Parses a JSON body, naming the field at fault.
    pub fn from_json(bytes: &[u8]) -> Result<Self, SpecError> {
        let de = &mut serde_json::Deserializer::from_slice(bytes);
        serde_path_to_error::deserialize(de).map_err(|e| {
            let path = e.path().to_string();
            let mut field = if path == "." { String::new() } else { path };
            let message = e.inner().to_string();
            if let Some(name) = message
                .strip_prefix("missing field `")
                .and_then(|rest| rest.split('`').next())
            {
                if !field.is_empty() {
                    field.push('.');
                }
                field.push_str(name);
            }
            SpecError::new(field, message)
        })
    }

    /// Checks every field but the URL's address (see the module doc).
    pub fn validate(&self) -> Result<(), SpecError> {
        if !is_slug(&self.id) {
            return Err(SpecError::new(
                "id",
                "must be 1-64 characters of a-z, 0-9, '-' or '_', starting with a letter or digit",
            ));
        }
        if !is_slug(&self.collection) {
            return Err(SpecError::new(
                "collection",
                "must be a collection name (a slug)",
            ));
        }
        if self.url.len() > MAX_URL_LEN {
            return Err(SpecError::new(
                "url",
                format!("longer than {MAX_URL_LEN} characters"),
            ));
        }
        let url = url::Url::parse(&self.url)
            .map_err(|e| SpecError::new("url", format!("not a URL: {e}")))?;
        if url.scheme() != "http" && url.scheme() != "https" {
            return Err(SpecError::new("url", "only http and https are accepted"));
        }
        if url.host().is_none() {
            return Err(SpecError::new("url", "has no host"));
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(SpecError::new("url", "must not carry credentials"));
        }
        if self.events.is_empty() {
            return Err(SpecError::new(
                "events",
                "name at least one of inserted, changed",
            ));
        }
        for (i, e) in self.events.iter().enumerate() {
            if !EVENTS.contains(&e.as_str()) {
                return Err(SpecError::new(
                    format!("events[{i}]"),
                    format!("'{e}' is not an event: inserted or changed"),
                ));
            }
        }
        if self.secret.len() < MIN_SECRET_LEN || self.secret.len() > MAX_SECRET_LEN {
            return Err(SpecError::new(
                "secret",
                format!("must be {MIN_SECRET_LEN} to {MAX_SECRET_LEN} bytes"),
            ));
        }
        if self.secret == MASK {
            return Err(SpecError::new("secret", "'***' is the mask, not a secret"));
        }
        Ok(())
    }

    /// This spec as every view shows it: the secret masked.
    pub fn masked(&self) -> WebhookSpec {
        WebhookSpec {
            secret: MASK.to_owned(),
            ..self.clone()
        }
    }

    /// Does the webhook want changes of this kind (`inserted`, `changed`)?
    pub fn wants(&self, op: &str) -> bool {
        self.events.iter().any(|e| e == op)
    }
}

/// A webhook as stored on every node: last writer wins, deletes are tombstones.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WebhookRecord {
    pub spec: WebhookSpec,
    pub version: Version,
    pub deleted: bool,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// The key placement hashes a webhook on (apart from sources of the same id).
pub fn placement_key(id: &str) -> String {
    format!("webhook/{id}")
}

/// One item a delivery carried: its key, version and content hash.
pub type Delivered = (String, u64, String);

/// A delivery built and about to be sent (or being retried): replicated to
/// peers before its first attempt, so a new owner sends the same body under
/// the same id.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PendingDelivery {
    pub webhook: String,
    /// The webhook's delivery number: one more than the last acknowledged.
    pub n: u64,
    /// `X-Gleaner-Delivery`.
    pub id: String,
    /// The exact body sent (and signed).
    pub body: String,
    pub pairs: Vec<Delivered>,
    pub changes: usize,
    pub created_at: DateTime<Utc>,
}

/// A delivery the receiver acknowledged (2xx): every node records its items
/// as delivered.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeliveryAck {
    pub webhook: String,
    pub n: u64,
    pub id: String,
    pub pairs: Vec<Delivered>,
}

/// A delivery as its status shows it, updated after each attempt.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct DeliveryRecord {
    /// `X-Gleaner-Delivery`.
    pub id: String,
    /// The webhook's delivery number.
    pub n: u64,
    /// When the last attempt ended.
    pub at: DateTime<Utc>,
    /// Changes in the body.
    pub changes: usize,
    /// `ok` (acknowledged), `retrying` (the last attempt failed).
    pub outcome: String,
    /// The receiver's HTTP status of the last attempt, if it answered.
    pub status: Option<u16>,
    /// Why the last attempt failed, if it did.
    pub error: Option<String>,
    pub attempts: u32,
    /// Duration of the last attempt, in milliseconds.
    pub latency_ms: u64,
    /// The node that sent it.
    pub node: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(json: &str) -> Result<WebhookSpec, SpecError> {
        let s = WebhookSpec::from_json(json.as_bytes())?;
        s.validate()?;
        Ok(s)
    }

    #[test]
    fn valid_specs_default_to_both_events_and_hide_the_secret() {
        let s = spec(r#"{"id":"h1","url":"https://example.org/hook","collection":"books","secret":"0123456789"}"#)
            .unwrap();
        assert_eq!(s.events, ["inserted", "changed"]);
        assert!(!format!("{s:?}").contains("0123456789"));
        assert_eq!(s.masked().secret, MASK);
    }

    #[test]
    fn bad_specs_name_their_field() {
        for (json, field) in [
            (
                r#"{"id":"H!","url":"https://e.org/","collection":"b","secret":"0123456789"}"#,
                "id",
            ),
            (
                r#"{"id":"h","url":"ftp://e.org/","collection":"b","secret":"0123456789"}"#,
                "url",
            ),
            (
                r#"{"id":"h","url":"nope","collection":"b","secret":"0123456789"}"#,
                "url",
            ),
            (
                r#"{"id":"h","url":"https://u:p@e.org/","collection":"b","secret":"0123456789"}"#,
                "url",
            ),
            (
                r#"{"id":"h","url":"https://e.org/","collection":"B B","secret":"0123456789"}"#,
                "collection",
            ),
            (
                r#"{"id":"h","url":"https://e.org/","collection":"b","events":[],"secret":"0123456789"}"#,
                "events",
            ),
            (
                r#"{"id":"h","url":"https://e.org/","collection":"b","events":["deleted"],"secret":"0123456789"}"#,
                "events[0]",
            ),
            (
                r#"{"id":"h","url":"https://e.org/","collection":"b","secret":"short"}"#,
                "secret",
            ),
            (
                r#"{"id":"h","url":"https://e.org/","collection":"b"}"#,
                "secret",
            ),
            (
                r#"{"id":"h","url":"https://e.org/","collection":"b","secret":"0123456789","x":1}"#,
                "x",
            ),
            (
                r#"{"url":"https://e.org/","collection":"b","secret":"0123456789"}"#,
                "id",
            ),
        ] {
            let e = spec(json).unwrap_err();
            assert_eq!(e.field, field, "{json}: {e}");
        }
    }
}
