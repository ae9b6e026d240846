//! Hosts: the politeness policy of one host (how many requests may be open
//! to it at once, the least time between two starts, whether robots.txt is
//! obeyed), an operator's stored override of it, and the messages of the
//! cluster-wide host gate (a permit asked of the host's owner node, and its
//! release). Plain serde types with their validation; the gate itself is in
//! `scrape::politeness`, the stored registry in `control::hosts`.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::{SpecError, Version};

/// Largest `max_in_flight` accepted.
pub const MAX_IN_FLIGHT_LIMIT: u32 = 1000;
/// Largest `min_delay_ms` accepted: one hour.
pub const MAX_DELAY_MS: u64 = 3_600_000;

/// A host's effective policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct HostPolicy {
    /// Requests open to the host at once, cluster-wide.
    pub max_in_flight: u32,
    /// Least time between the starts of two requests to the host,
    /// cluster-wide (a robots.txt `Crawl-delay` raises it).
    pub min_delay_ms: u64,
    /// Whether robots.txt is consulted before a page is requested.
    pub obey_robots: bool,
}

impl Default for HostPolicy {
    fn default() -> Self {
        HostPolicy {
            max_in_flight: 8,
            min_delay_ms: 0,
            obey_robots: true,
        }
    }
}

impl HostPolicy {
    /// This policy with the fields `o` sets replaced.
    pub fn with(self, o: &HostOverride) -> HostPolicy {
        HostPolicy {
            max_in_flight: o.max_in_flight.unwrap_or(self.max_in_flight),
            min_delay_ms: o.min_delay_ms.unwrap_or(self.min_delay_ms),
            obey_robots: o.obey_robots.unwrap_or(self.obey_robots),
        }
    }
}

/// An operator's override of a host's policy: each field left out keeps
/// the node's default (`GLEANER_HOST_MAX_IN_FLIGHT`, `GLEANER_HOST_MIN_DELAY_MS`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct HostOverride {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_in_flight: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_delay_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub obey_robots: Option<bool>,
}

impl HostOverride {
    /// Parses a `PUT /api/v1/hosts/{host}` body; a field of the wrong type or
    /// an unknown one is named in the error.
    pub fn from_json(body: &[u8]) -> Result<HostOverride, SpecError> {
        let value: serde_json::Value = serde_json::from_slice(body)
            .map_err(|e| SpecError::new("", format!("the body is not valid JSON: {e}")))?;
        if !value.is_object() {
            return Err(SpecError::new("", "the body must be a JSON object"));
        }
        if let Some(obj) = value.as_object() {
            for key in obj.keys() {
                if !["max_in_flight", "min_delay_ms", "obey_robots"].contains(&key.as_str()) {
                    return Err(SpecError::new(
                        key,
                        "unknown field: expected max_in_flight, min_delay_ms or obey_robots",
                    ));
                }
            }
            for (key, ok, what) in [
                (
                    "max_in_flight",
                    obj.get("max_in_flight").is_none_or(|v| v.is_u64()),
                    "a whole number",
                ),
                (
                    "min_delay_ms",
                    obj.get("min_delay_ms").is_none_or(|v| v.is_u64()),
                    "a whole number of milliseconds",
                ),
                (
                    "obey_robots",
                    obj.get("obey_robots").is_none_or(|v| v.is_boolean()),
                    "true or false",
                ),
            ] {
                if !ok {
                    return Err(SpecError::new(key, format!("must be {what}")));
                }
            }
        }
        let o: HostOverride = serde_json::from_value(value)
            .map_err(|e| SpecError::new("max_in_flight", e.to_string()))?;
        o.validate()?;
        Ok(o)
    }

    /// Bounds: 1 to [`MAX_IN_FLIGHT_LIMIT`] requests, 0 to [`MAX_DELAY_MS`].
    pub fn validate(&self) -> Result<(), SpecError> {
        if let Some(n) = self.max_in_flight {
            if !(1..=MAX_IN_FLIGHT_LIMIT).contains(&n) {
                return Err(SpecError::new(
                    "max_in_flight",
                    format!("must be between 1 and {MAX_IN_FLIGHT_LIMIT}"),
                ));
            }
        }
        if let Some(d) = self.min_delay_ms {
            if d > MAX_DELAY_MS {
                return Err(SpecError::new(
                    "min_delay_ms",
                    format!("must be at most {MAX_DELAY_MS} (one hour)"),
                ));
            }
        }
        Ok(())
    }
}

/// Longest host accepted in a path, in bytes.
const MAX_HOST_LEN: usize = 260;

/// The host key of a host as written in a path (`Example.ORG:80` is
/// `example.org`), as a URL's host is keyed: its authority without
/// userinfo, lowercased, the default port (80) left out.
pub fn normalise_host(given: &str) -> Result<String, SpecError> {
    let bad = |why: &str| SpecError::new("host", format!("'{given}' is not a host: {why}"));
    if given.is_empty() || given.len() > MAX_HOST_LEN {
        return Err(bad(
            "expected a host name or address, with an optional port",
        ));
    }
    if given.chars().any(|c| {
        matches!(c, '/' | '\\' | '@' | '?' | '#' | '%') || c.is_whitespace() || c.is_control()
    }) {
        return Err(bad("it may hold only a name or address and a port"));
    }
    let url = url::Url::parse(&format!("http://{given}/")).map_err(|e| bad(&e.to_string()))?;
    let host = url
        .host_str()
        .filter(|h| !h.is_empty())
        .ok_or_else(|| bad("it has no host"))?
        .to_ascii_lowercase();
    Ok(match url.port() {
        Some(port) => format!("{host}:{port}"),
        None => host,
    })
}

/// A stored override, replicated like sources: last writer wins on the
/// version, a reset is a tombstone.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HostRecord {
    pub host: String,
    #[serde(rename = "override")]
    pub policy: HostOverride,
    pub version: Version,
    pub deleted: bool,
    pub updated_at: DateTime<Utc>,
}

/// A request for a permit to start one request to `host`, asked of the
/// host's owner node.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PermitRequest {
    pub host: String,
    /// The URL to be requested, checked against robots.txt when `robots`.
    pub url: String,
    pub robots: bool,
    /// The requesting node (for the owner's view of who holds what).
    pub holder: String,
    /// How long the permit may be held before the owner takes it back (the
    /// requester's fetch timeout, plus a margin).
    pub ttl_ms: u64,
}

/// The owner's answer to a [`PermitRequest`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum PermitAnswer {
    /// Start in `wait_ms` (the gap since the host's previous start); the
    /// permit is `id` on the owner. `queued_ms` is how long the request
    /// waited on the owner (so the requester can tell how long the messages
    /// took), `gap_ms` the host's gap (0: starts need not be spaced).
    Granted {
        id: u64,
        wait_ms: u64,
        #[serde(default)]
        queued_ms: u64,
        #[serde(default)]
        gap_ms: u64,
    },
    /// No request: `code` is `robots_disallowed`, `host_backoff` or
    /// `host_busy`.
    Refused {
        code: String,
        message: String,
        remaining_ms: u64,
    },
}

/// How the request made under a permit ended, told to the owner that
/// granted it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum PermitOutcome {
    /// Any answer but a throttle.
    Answered,
    /// A 429 or 503: the host is paused, for `retry_after_ms` when it said.
    Throttled { retry_after_ms: Option<u64> },
    /// No answer (a network failure, a refusal): nothing learnt of the host.
    Failed,
}

/// A permit given back.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PermitRelease {
    pub host: String,
    pub id: u64,
    pub outcome: PermitOutcome,
}

/// A host's robots.txt as its owner holds it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct RobotsState {
    /// `unknown` (not fetched yet), `allow_all` (a 4xx), `disallow_all` (a
    /// 5xx or no answer), `parsed` (rules apply).
    pub status: String,
    pub fetched_at: Option<DateTime<Utc>>,
    pub crawl_delay_secs: Option<f64>,
}

/// A host's politeness state, as its owner node sees it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct HostState {
    pub host: String,
    /// The effective policy (the defaults with the override applied).
    pub policy: HostPolicy,
    /// The stored override, when there is one.
    #[serde(rename = "override", default, skip_serializing_if = "Option::is_none")]
    pub policy_override: Option<HostOverride>,
    pub robots: RobotsState,
    /// The end of the host's pause after a 429 or 503, if paused.
    pub backoff_until: Option<DateTime<Utc>>,
    /// Permits granted and not yet given back.
    pub in_flight: u32,
    /// Permits granted since the owner took the host.
    pub requests: u64,
    /// Requests waiting for a permit.
    #[serde(default)]
    pub waiting: u32,
    /// The display name of the node whose gate holds these figures.
    #[serde(default)]
    pub owner: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_normalise_as_urls_do() {
        assert_eq!(normalise_host("Example.ORG:80").unwrap(), "example.org");
        assert_eq!(
            normalise_host("example.org:8443").unwrap(),
            "example.org:8443"
        );
        assert_eq!(normalise_host("127.0.0.2:8000").unwrap(), "127.0.0.2:8000");
        assert_eq!(normalise_host("[::1]:81").unwrap(), "[::1]:81");
        for bad in [
            "",
            "a/b",
            "user@host",
            "h?x",
            "h#x",
            "a b",
            "h:99999",
            ":80",
            "h%2f",
        ] {
            let e = normalise_host(bad).unwrap_err();
            assert_eq!(e.field, "host", "{bad}");
        }
    }

    #[test]
    fn overrides_validate_and_name_the_field() {
        let ok = HostOverride::from_json(br#"{"max_in_flight": 2, "min_delay_ms": 200}"#).unwrap();
        let policy = HostPolicy::default().with(&ok);
        assert_eq!(
            (
                policy.max_in_flight,
                policy.min_delay_ms,
                policy.obey_robots
            ),
            (2, 200, true)
        );
        for (body, field) in [
            (&br#"{"max_in_flight": 0}"#[..], "max_in_flight"),
            (br#"{"max_in_flight": 5000}"#, "max_in_flight"),
            (br#"{"max_in_flight": -1}"#, "max_in_flight"),
            (br#"{"max_in_flight": "2"}"#, "max_in_flight"),
            (br#"{"min_delay_ms": 1.5}"#, "min_delay_ms"),
            (br#"{"min_delay_ms": 99999999}"#, "min_delay_ms"),
            (br#"{"obey_robots": "no"}"#, "obey_robots"),
            (br#"{"max_inflight": 2}"#, "max_inflight"),
            (br#"[1]"#, ""),
            (br#"{"#, ""),
        ] {
            let e = HostOverride::from_json(body).unwrap_err();
            assert_eq!(e.field, field, "{}", String::from_utf8_lossy(body));
        }
    }
}
