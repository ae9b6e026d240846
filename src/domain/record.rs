//! What the node keeps about sources besides their spec: the stored record
//! with its version (for last-writer-wins between nodes) and run history.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::SourceSpec;

/// A source as stored: the spec, its version, and a tombstone flag.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SourceRecord {
    pub spec: SourceSpec,
    pub version: Version,
    /// A deleted source stays as a tombstone so that a stale copy elsewhere
    /// cannot bring it back.
    pub deleted: bool,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// A write's version: later timestamps win, the node id breaks ties.
#[derive(
    Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, utoipa::ToSchema,
)]
pub struct Version {
    pub millis: i64,
    pub node: String,
}

impl Version {
    /// A version later than `previous` (if any), stamped now by `node`.
    pub fn next(previous: Option<&Version>, node: &str) -> Version {
        let now = Utc::now().timestamp_millis();
        let millis = previous.map_or(now, |p| now.max(p.millis + 1));
        Version {
            millis,
            node: node.to_owned(),
        }
    }
}

/// One run of a source: when, how long, what it yielded, how it ended.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct RunRecord {
    pub started_at: DateTime<Utc>,
    pub finished_at: DateTime<Utc>,
    pub duration_ms: u64,
    /// Pages fetched and extracted.
    pub pages: u32,
    /// Items extracted (before deduplication).
    pub items: u64,
    /// Items new to the collection.
    pub inserted: u64,
    /// Items whose content changed.
    pub changed: u64,
    /// Why the run failed, if it did; pages before the failure are kept.
    pub error: Option<String>,
    /// A stable code for the failure, where one applies (`disk_full`,
    /// `storage_unavailable`: the node refused the items, not the site).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
    /// Why pagination ended before `next_page` ran out, on a run that did
    /// not fail: `robots_disallowed` (robots.txt disallows the next page).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stopped: Option<String>,
    /// Pages the site answered 304 Not Modified: their remembered items
    /// were stored again (their `last_seen` moved), nothing was parsed.
    #[serde(default)]
    pub not_modified: u64,
    /// Requests a rendered page made that were blocked (`render: browser`):
    /// a non-public address, another host than the page's, or another
    /// scheme than http(s).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub blocked: u64,
    /// The first few blocked requests, as `URL (reason)`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub blocked_sample: Vec<String>,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}
