//! What the node keeps about sources besides their spec: the stored record
//! with its version (for last-writer-wins between nodes) and run history.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::{Health, SourceSpec};

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
    /// Who may change the source: the API, or a file of the sources
    /// directory (then the API refuses to edit or delete it).
    #[serde(default)]
    pub managed_by: ManagedBy,
    /// The file that defines a file-managed source (its name in the
    /// sources directory).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
}

/// Where a source's truth lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ManagedBy {
    /// Created and changed through `/api/v1/sources`.
    #[default]
    Api,
    /// Defined by a file of the sources directory, which is the truth for it.
    File,
}

/// A deleted collection: its items, changes and log are gone on every node,
/// and this record stays so that no copy older than the deletion brings
/// them back (a batch fetched at or before `version.millis` is not applied).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CollectionTombstone {
    pub name: String,
    /// When and where it was deleted; a later deletion of the same name wins.
    pub version: Version,
}

impl CollectionTombstone {
    /// Was something observed at `at` before this deletion (so it stays deleted)?
    pub fn covers(&self, at: DateTime<Utc>) -> bool {
        at.timestamp_millis() <= self.version.millis
    }
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
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
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
    /// Pages the site answered 304 Not Modified, or in full with the very
    /// body of their last full answer: their remembered items were seen
    /// again (their `last_seen` moved), nothing was parsed.
    #[serde(default)]
    pub not_modified: u64,
    /// Per field, the items in which it was filled (not null, `""` or
    /// `[]`): what drift is judged on ([`super::health`]).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub filled: BTreeMap<String, u64>,
    /// Detail pages fetched (fields with `follow`).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub follows: u64,
    /// Follows that left their field null (the detail page failed, robots.txt
    /// disallowed it, or `max_follows` was spent); the page still counts.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub follow_errors: u64,
    /// The first follow failure's reason.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub follow_error: Option<String>,
    /// The source's health after this run (see [`super::health`]).
    #[serde(default)]
    pub health: Health,
    /// Why the health is `degraded`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_reason: Option<String>,
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
