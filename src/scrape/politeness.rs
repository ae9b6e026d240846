//! Politeness toward the sites this node scrapes, per host (see
//! [`robots::host_key`]), in memory on this node:
//!
//! - **robots.txt** is fetched once per host through the same [`Fetcher`]
//!   (SSRF guard, limits) and kept an hour ([`ROBOTS_TTL`]); a 4xx answer
//!   allows everything, a 5xx or 429 answer or a network failure disallows
//!   everything until the next try, at most [`ROBOTS_FAILURE_TTL`] later.
//! - **Crawl-delay** is the least time between the starts of two of this
//!   node's requests to the host, whichever sources make them.
//! - **Back-off.** A 429 or 503 answer pauses the host until its
//!   `Retry-After` (seconds or an HTTP date), else for [`BACKOFF_BASE`]
//!   doubled with each further throttled answer in a row; at most
//!   [`MAX_BACKOFF`]. A request due during a pause waits for its end when
//!   that is at most [`MAX_WAIT`] away, and is refused (`host_backoff`)
//!   otherwise.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use url::Url;

use super::fetch::{FetchError, Fetcher};
use super::robots::{host_key, robots_url, RobotsRules};

/// How long a fetched robots.txt is kept.
pub const ROBOTS_TTL: Duration = Duration::from_secs(3600);
/// How long a robots.txt that could not be had disallows everything.
pub const ROBOTS_FAILURE_TTL: Duration = Duration::from_secs(60);
/// The first pause after a 429 or 503 without `Retry-After`.
pub const BACKOFF_BASE: Duration = Duration::from_secs(1);
/// The longest pause, whatever `Retry-After` says.
pub const MAX_BACKOFF: Duration = Duration::from_secs(3600);
/// The longest a request waits for a host's pause to end.
pub const MAX_WAIT: Duration = Duration::from_secs(30);

/// Why a request was not made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("robots.txt disallows {url}")]
    RobotsDisallowed { url: String },
    #[error("{host} is paused after a 429 or 503 answer for {}s more", remaining.as_secs())]
    HostBackoff { host: String, remaining: Duration },
}

impl Refusal {
    /// The run's code for this refusal.
    pub fn code(&self) -> &'static str {
        match self {
            Refusal::RobotsDisallowed { .. } => "robots_disallowed",
            Refusal::HostBackoff { .. } => "host_backoff",
        }
    }
}

/// The politeness state of every host this node requests; cheap to clone.
#[derive(Clone, Default)]
pub struct Politeness {
    hosts: Arc<Mutex<HashMap<String, Arc<Host>>>>,
}

#[derive(Default)]
struct Host {
    /// The host's robots.txt and when it was had; the async lock makes
    /// concurrent runs wait for one fetch instead of each making their own.
    robots: tokio::sync::Mutex<Option<(Instant, Arc<RobotsRules>)>>,
    gate: Mutex<Gate>,
}

#[derive(Default)]
struct Gate {
    /// The earliest start of the next request (Crawl-delay).
    next_slot: Option<Instant>,
    /// The end of the current pause (back-off).
    paused_until: Option<Instant>,
    /// Throttled answers in a row.
    throttles: u32,
}

impl Politeness {
    fn host(&self, key: &str) -> Arc<Host> {
        let mut hosts = self.hosts.lock().unwrap_or_else(|p| p.into_inner());
        hosts.entry(key.to_owned()).or_default().clone()
    }

    /// Waits until `url` may be requested: robots.txt allows it, the host's
    /// pause (if any) is over and its Crawl-delay has passed since this
    /// node's last request to it.
    pub async fn admit(&self, fetcher: &Fetcher, url: &Url) -> Result<(), Refusal> {
        let Some(key) = host_key(url) else {
            return Ok(());
        };
        let host = self.host(&key);
        let rules = robots_of(&host, fetcher, url, &key).await;
        if !rules.allows(url) {
            tracing::info!(host = %key, %url, "robots.txt disallows the page");
            return Err(Refusal::RobotsDisallowed {
                url: url.to_string(),
            });
        }
        let delay = rules.crawl_delay().unwrap_or(Duration::ZERO);
        let wait = {
            let mut gate = host.gate.lock().unwrap_or_else(|p| p.into_inner());
            let now = Instant::now();
            let paused = gate.paused_until.filter(|u| *u > now);
            if let Some(until) = paused {
                let remaining = until - now;
                if remaining > MAX_WAIT {
                    return Err(Refusal::HostBackoff {
                        host: key,
                        remaining,
                    });
                }
            }
            let start = [Some(now), paused, gate.next_slot]
                .into_iter()
                .flatten()
                .max()
                .unwrap_or(now);
            gate.next_slot = Some(start + delay);
            start - now
        };
        if !wait.is_zero() {
            tracing::debug!(host = %key, wait_ms = wait.as_millis() as u64, "waiting for the host");
            tokio::time::sleep(wait).await;
        }
        Ok(())
    }

    /// The host answered 429 or 503: pauses it for `retry_after`, else
    /// exponentially; returns the pause.
    pub fn throttled(&self, url: &Url, retry_after: Option<Duration>) -> Duration {
        let Some(key) = host_key(url) else {
            return Duration::ZERO;
        };
        let host = self.host(&key);
        let mut gate = host.gate.lock().unwrap_or_else(|p| p.into_inner());
        gate.throttles = gate.throttles.saturating_add(1);
        let pause = retry_after
            .unwrap_or_else(|| BACKOFF_BASE.saturating_mul(1 << (gate.throttles - 1).min(12)))
            .min(MAX_BACKOFF);
        let until = Instant::now() + pause;
        gate.paused_until = Some(gate.paused_until.map_or(until, |u| u.max(until)));
        tracing::warn!(host = %key, pause_ms = pause.as_millis() as u64, throttles = gate.throttles, "host paused");
        crate::instruments::host_backoff();
        pause
    }

    /// The host answered without throttling: the next throttle starts the
    /// back-off afresh.
    pub fn answered(&self, url: &Url) {
        if let Some(key) = host_key(url) {
            let host = self.host(&key);
            host.gate
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .throttles = 0;
        }
    }
}

/// The host's robots.txt rules, fetched when missing or stale.
async fn robots_of(host: &Host, fetcher: &Fetcher, url: &Url, key: &str) -> Arc<RobotsRules> {
    let mut slot = host.robots.lock().await;
    if let Some((at, rules)) = slot.as_ref() {
        let ttl = match **rules {
            RobotsRules::DisallowAll => ROBOTS_FAILURE_TTL,
            _ => ROBOTS_TTL,
        };
        if at.elapsed() < ttl {
            return rules.clone();
        }
    }
    let rules = Arc::new(match robots_url(url) {
        Some(robots) => match fetcher.fetch(&robots).await {
            Ok(fetched) => RobotsRules::parse(&fetched.body),
            Err(FetchError::Status(s)) if (400..500).contains(&s) && s != 429 => {
                RobotsRules::AllowAll
            }
            Err(e) => {
                tracing::warn!(host = %key, error = %e, "robots.txt unavailable, disallowing the host");
                RobotsRules::DisallowAll
            }
        },
        None => RobotsRules::AllowAll,
    });
    tracing::debug!(host = %key, rules = rules_kind(&rules), "robots.txt fetched");
    *slot = Some((Instant::now(), rules.clone()));
    rules
}

fn rules_kind(rules: &RobotsRules) -> &'static str {
    match rules {
        RobotsRules::AllowAll => "allow_all",
        RobotsRules::DisallowAll => "disallow_all",
        RobotsRules::Parsed(_) => "parsed",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pauses_follow_retry_after_else_double() {
        let p = Politeness::default();
        let url = Url::parse("http://Example.org:80/a").unwrap();
        let same_host = Url::parse("http://example.org/b").unwrap();
        assert_eq!(p.throttled(&url, None), BACKOFF_BASE);
        assert_eq!(p.throttled(&same_host, None), BACKOFF_BASE * 2);
        assert_eq!(p.throttled(&url, None), BACKOFF_BASE * 4);
        assert_eq!(
            p.throttled(&url, Some(Duration::from_secs(7))),
            Duration::from_secs(7)
        );
        assert_eq!(
            p.throttled(&url, Some(Duration::from_secs(86_400))),
            MAX_BACKOFF
        );
        for _ in 0..40 {
            assert!(p.throttled(&url, None) <= MAX_BACKOFF);
        }
        // Any other answer starts the doubling afresh.
        p.answered(&same_host);
        assert_eq!(p.throttled(&url, None), BACKOFF_BASE);
        // Another host is not affected.
        let other = Url::parse("http://example.org:8080/").unwrap();
        assert_eq!(p.throttled(&other, None), BACKOFF_BASE);
    }

    #[test]
    fn refusals_carry_their_codes() {
        let r = Refusal::RobotsDisallowed { url: "u".into() };
        assert_eq!(r.code(), "robots_disallowed");
        let r = Refusal::HostBackoff {
            host: "h".into(),
            remaining: Duration::from_secs(90),
        };
        assert_eq!(r.code(), "host_backoff");
        assert!(r.to_string().contains("90s"), "{r}");
    }
}
