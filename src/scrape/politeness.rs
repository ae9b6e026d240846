//! Politeness toward the sites gleaner scrapes, per host (see
//! [`robots::host_key`]), held for the whole cluster by each host's
//! **owner node**: every request a node or worker makes (pages, next pages,
//! retries, robots.txt itself) first takes a *permit* from the host's gate,
//! which lives on the owner (placement by rendezvous hash over the live
//! nodes, as for sources; the cluster side is a [`Router`]). A node that
//! owns the host grants in process (no message); any other asks the owner
//! and releases the permit to it when the response is done.
//!
//! The gate of a host, on its owner:
//! - **policy**: [`HostPolicy`], the node's defaults with the host's stored
//!   override (replicated to every node; see `control::hosts`);
//! - **permits**: at most `max_in_flight` granted and not given back; a
//!   permit names its start time, at least `min_delay_ms` (raised by
//!   robots.txt's `Crawl-delay`) after the previous start; waiters are served
//!   first come, first served; a permit not given back within its holder's
//!   fetch timeout (plus a margin) is taken back, so a dead holder cannot
//!   keep a slot;
//! - **late starts**: a permit names a start time; a requester that would
//!   start more than [`LATE`] after it (a slow answer, a late timer) gives
//!   it back unused and asks again, and the gate spaces starts by the gap
//!   plus [`LATE`], so that lags cannot shrink the gap;
//! - **robots.txt** is fetched by the owner once per host and kept an hour
//!   ([`ROBOTS_TTL`]); a 4xx answer allows everything, a 5xx or 429 answer or
//!   a network failure disallows everything until the next try, at most
//!   [`ROBOTS_FAILURE_TTL`] later;
//! - **back-off**: a 429 or 503 answer pauses the host until its
//!   `Retry-After`, else for [`BACKOFF_BASE`] doubled with each further
//!   throttled answer in a row, at most [`MAX_BACKOFF`]; a request due during
//!   a pause waits for its end when that is at most [`MAX_WAIT`] away and is
//!   refused (`host_backoff`) otherwise. The owner tells every node of a
//!   pause, so that a new owner keeps it.
//!
//! When the owner changes (a node joins, leaves or dies), the new owner's
//! first grant is not before `max_in_flight` gaps from when it took the host
//! over (the old owner may have granted that many starts ahead), and it does
//! not know the permits the old owner granted: docs/sources.md states the
//! windows where the promise may not hold.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use tokio::sync::oneshot;
use url::Url;

use super::fetch::{FetchError, Fetcher};
use super::robots::{host_key, robots_url, RobotsRules};
use crate::domain::host::{
    HostOverride, HostPolicy, HostState, PermitAnswer, PermitOutcome, PermitRelease, PermitRequest,
    RobotsState,
};

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
/// The longest a request waits in a host's queue for a permit.
pub const QUEUE_WAIT: Duration = Duration::from_secs(120);
/// Added to a holder's fetch timeout before its permit is taken back.
pub const PERMIT_MARGIN: Duration = Duration::from_secs(5);
/// The longest a request keeps trying to reach its host's owner.
pub const OWNER_WAIT: Duration = Duration::from_secs(30);
/// How late after its granted start a request may still start, on a host
/// whose starts are spaced: later (a slow answer from the owner, a late
/// timer, a busy thread) it gives the permit back unused and asks again, so
/// that it cannot start too close to the next permit's start.
pub const LATE: Duration = Duration::from_millis(10);
/// Times a request asks again for being late before it starts anyway.
const LATE_RETRIES: u32 = 3;

/// Why a request was not made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("robots.txt disallows {url}")]
    RobotsDisallowed { url: String },
    #[error("{host} is paused after a 429 or 503 answer for {}s more", remaining.as_secs())]
    HostBackoff { host: String, remaining: Duration },
    #[error("{host} has had no free permit for {}s", QUEUE_WAIT.as_secs())]
    HostBusy { host: String },
    #[error("the owner of {host}'s permits could not be reached: {reason}")]
    GateUnavailable { host: String, reason: String },
}

impl Refusal {
    /// The run's code for this refusal.
    pub fn code(&self) -> &'static str {
        match self {
            Refusal::RobotsDisallowed { .. } => "robots_disallowed",
            Refusal::HostBackoff { .. } => "host_backoff",
            Refusal::HostBusy { .. } => "host_busy",
            Refusal::GateUnavailable { .. } => "host_gate_unavailable",
        }
    }

    fn answer(&self) -> PermitAnswer {
        let remaining_ms = match self {
            Refusal::HostBackoff { remaining, .. } => remaining.as_millis() as u64,
            _ => 0,
        };
        PermitAnswer::Refused {
            code: self.code().to_owned(),
            message: self.to_string(),
            remaining_ms,
        }
    }

    fn from_answer(host: &str, url: &Url, code: &str, message: String, remaining_ms: u64) -> Self {
        match code {
            "robots_disallowed" => Refusal::RobotsDisallowed {
                url: url.to_string(),
            },
            "host_backoff" => Refusal::HostBackoff {
                host: host.to_owned(),
                remaining: Duration::from_millis(remaining_ms),
            },
            "host_busy" => Refusal::HostBusy {
                host: host.to_owned(),
            },
            _ => Refusal::GateUnavailable {
                host: host.to_owned(),
                reason: message,
            },
        }
    }
}

/// A boxed future, for the [`Router`]'s asks.
pub type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

/// How the gate reaches other nodes: the cluster implements it (`cluster::hosts`).
/// Without one, this node owns every host.
pub trait Router: Send + Sync + 'static {
    /// This node's id, named as the holder of its permits.
    fn me(&self) -> String;
    /// The node id of `host`'s owner when it is another node; `None` when
    /// this node owns it (or no node does).
    fn remote_owner(&self, host: &str) -> Option<String>;
    /// Changes whenever the owners may have changed.
    fn epoch(&self) -> u64;
    /// May this member hold host gates? A worker never does: until it
    /// knows the owner of a host, it waits rather than grant itself a
    /// permit under a policy it does not hold.
    fn may_own(&self) -> bool {
        true
    }
    /// Asks `owner` for a permit; `Err` when it did not answer (or no longer owns the host).
    fn acquire(
        &self,
        owner: String,
        request: PermitRequest,
    ) -> BoxFuture<Result<PermitAnswer, String>>;
    /// Gives a permit back to the node that granted it.
    fn release(&self, owner: &str, release: PermitRelease);
    /// Tells every node that `host` is paused until `until`.
    fn paused(&self, host: &str, until: DateTime<Utc>);
}

/// The politeness state of this node: the gates of the hosts it owns, their
/// robots.txt, the hosts' policies, and the way to the other owners; cheap
/// to clone.
#[derive(Clone)]
pub struct Politeness {
    inner: Arc<Inner>,
}

struct Inner {
    defaults: HostPolicy,
    overrides: RwLock<HashMap<String, HostOverride>>,
    hosts: Mutex<HashMap<String, Arc<Host>>>,
    router: RwLock<Option<Arc<dyn Router>>>,
    /// The router's epoch the gates were last checked against.
    epoch: AtomicU64,
    /// Pauses other owners told of (a new owner starts with them).
    pauses: Mutex<HashMap<String, Instant>>,
    next_id: AtomicU64,
    sweeper: AtomicBool,
}

#[derive(Default)]
struct Host {
    /// The host's robots.txt and when it was had; the async lock makes
    /// concurrent requests wait for one fetch instead of each making their own.
    robots: tokio::sync::Mutex<Option<(Instant, Arc<RobotsRules>)>>,
    /// What the last fetch said, for the views and the gap.
    seen: Mutex<RobotsState>,
    crawl_delay: Mutex<Option<Duration>>,
    /// The gate, while this node owns the host.
    gate: Mutex<Option<Gate>>,
}

/// One host's permits on its owner.
struct Gate {
    /// The earliest start of the next request.
    next_slot: Instant,
    /// The end of the current pause (back-off).
    paused_until: Option<Instant>,
    /// Throttled answers in a row.
    throttles: u32,
    /// Permits out: id -> when it is taken back.
    permits: HashMap<u64, Instant>,
    waiters: VecDeque<Waiter>,
    requests: u64,
}

struct Waiter {
    tx: oneshot::Sender<Result<(u64, Instant), Refusal>>,
    ttl: Duration,
}

/// A host's limits at a grant.
#[derive(Clone, Copy)]
struct Limits {
    max: usize,
    gap: Duration,
}

/// What the gate decided for one request.
enum Grant {
    Now(u64, Instant),
    Refused(Refusal),
    Full,
}

impl Gate {
    fn new(now: Instant, limits: Limits, paused_until: Option<Instant>) -> Gate {
        Gate {
            // A new owner: the old one may have granted up to `max` starts ahead.
            next_slot: now + limits.gap.saturating_mul(limits.max.min(64) as u32),
            paused_until: paused_until.filter(|p| *p > now),
            throttles: 0,
            permits: HashMap::new(),
            waiters: VecDeque::new(),
            requests: 0,
        }
    }

    fn expire(&mut self, now: Instant, host: &str) {
        let before = self.permits.len();
        self.permits.retain(|_, until| *until > now);
        if self.permits.len() < before {
            tracing::warn!(
                host,
                taken_back = before - self.permits.len(),
                "permits not given back in time were taken back"
            );
        }
    }

    fn try_grant(
        &mut self,
        now: Instant,
        limits: Limits,
        ttl: Duration,
        id: u64,
        host: &str,
    ) -> Grant {
        let paused = self.paused_until.filter(|u| *u > now);
        if let Some(until) = paused {
            if until - now > MAX_WAIT {
                return Grant::Refused(Refusal::HostBackoff {
                    host: host.to_owned(),
                    remaining: until - now,
                });
            }
        }
        if self.permits.len() >= limits.max {
            return Grant::Full;
        }
        let start = [now, self.next_slot, paused.unwrap_or(now)]
            .into_iter()
            .max()
            .unwrap_or(now);
        self.next_slot = start + limits.gap;
        self.permits.insert(id, start + ttl);
        self.requests += 1;
        Grant::Now(id, start)
    }

    /// Hands free permits to the waiters, first come first served.
    fn pump(&mut self, now: Instant, limits: Limits, inner: &Inner, host: &str) {
        self.expire(now, host);
        while let Some(w) = self.waiters.front() {
            if w.tx.is_closed() {
                self.waiters.pop_front();
                continue;
            }
            let ttl = w.ttl;
            let id = inner.next_id.fetch_add(1, Ordering::Relaxed);
            match self.try_grant(now, limits, ttl, id, host) {
                Grant::Full => return,
                Grant::Now(id, start) => {
                    let w = self.waiters.pop_front().expect("a waiter");
                    if w.tx.send(Ok((id, start))).is_err() {
                        self.permits.remove(&id);
                    }
                }
                Grant::Refused(r) => {
                    let w = self.waiters.pop_front().expect("a waiter");
                    let _ = w.tx.send(Err(r));
                }
            }
        }
    }
}

/// A permit to start one request: given back (with what the host answered)
/// by [`Permit::release`], or as `Failed` when dropped.
pub struct Permit {
    politeness: Option<Politeness>,
    host: String,
    id: u64,
    /// The node that granted it, when not this one.
    owner: Option<String>,
    /// How long the request waited for it.
    pub waited: Duration,
}

impl Permit {
    /// A permit for a URL without a host (nothing to release).
    fn none() -> Permit {
        Permit {
            politeness: None,
            host: String::new(),
            id: 0,
            owner: None,
            waited: Duration::ZERO,
        }
    }

    /// The node that granted it, when not this process's own gate.
    pub fn granted_by(&self) -> Option<&str> {
        self.owner.as_deref()
    }

    /// Gives the permit back, saying how the request ended.
    pub fn release(mut self, outcome: PermitOutcome) {
        self.give_back(outcome);
    }

    fn give_back(&mut self, outcome: PermitOutcome) {
        let Some(p) = self.politeness.take() else {
            return;
        };
        let release = PermitRelease {
            host: std::mem::take(&mut self.host),
            id: self.id,
            outcome,
        };
        match &self.owner {
            None => p.release_local(release),
            Some(owner) => {
                if let Some(router) = p.router() {
                    router.release(owner, release);
                }
            }
        }
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.give_back(PermitOutcome::Failed);
    }
}

impl Politeness {
    /// The politeness state of a node whose hosts get `defaults` unless an
    /// override says otherwise.
    pub fn new(defaults: HostPolicy) -> Politeness {
        Politeness {
            inner: Arc::new(Inner {
                defaults,
                overrides: RwLock::default(),
                hosts: Mutex::default(),
                router: RwLock::new(None),
                epoch: AtomicU64::new(0),
                pauses: Mutex::default(),
                next_id: AtomicU64::new(1),
                sweeper: AtomicBool::new(false),
            }),
        }
    }

    /// Routes permits of hosts other nodes own through `router`.
    pub fn set_router(&self, router: Arc<dyn Router>) {
        *self.inner.router.write().unwrap_or_else(|p| p.into_inner()) = Some(router);
    }

    fn router(&self) -> Option<Arc<dyn Router>> {
        self.inner
            .router
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The node's default policy.
    pub fn defaults(&self) -> HostPolicy {
        self.inner.defaults
    }

    /// Sets (or, with `None`, removes) a host's override.
    pub fn set_override(&self, host: &str, policy: Option<HostOverride>) {
        let mut o = self
            .inner
            .overrides
            .write()
            .unwrap_or_else(|p| p.into_inner());
        match policy {
            Some(p) => o.insert(host.to_owned(), p),
            None => o.remove(host),
        };
    }

    /// The host's stored override, if any.
    pub fn override_of(&self, host: &str) -> Option<HostOverride> {
        self.inner
            .overrides
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(host)
            .copied()
    }

    /// The host's effective policy.
    pub fn policy(&self, host: &str) -> HostPolicy {
        match self.override_of(host) {
            Some(o) => self.inner.defaults.with(&o),
            None => self.inner.defaults,
        }
    }

    fn host(&self, key: &str) -> Arc<Host> {
        let mut hosts = self.inner.hosts.lock().unwrap_or_else(|p| p.into_inner());
        hosts.entry(key.to_owned()).or_default().clone()
    }

    fn limits(&self, key: &str, host: &Host) -> Limits {
        let policy = self.policy(key);
        let mut gap = Duration::from_millis(policy.min_delay_ms);
        if policy.obey_robots {
            if let Some(d) = *host.crawl_delay.lock().unwrap_or_else(|p| p.into_inner()) {
                gap = gap.max(d);
            }
        }
        // Spaced by LATE more than asked: a start may be up to LATE late
        // (see `permit`), which would shrink the gap to the next one.
        if !gap.is_zero() {
            gap += LATE;
        }
        Limits {
            max: policy.max_in_flight.max(1) as usize,
            gap,
        }
    }

    /// Waits for a permit to request `url`: robots.txt allows it (checked
    /// only when `robots`), the host's pause (if any) is over, its gap has
    /// passed since the previous start anywhere in the cluster, and fewer
    /// than its `max_in_flight` requests are open. `ttl` is how long the
    /// request may take.
    pub async fn permit(
        &self,
        fetcher: &Fetcher,
        url: &Url,
        robots: bool,
        ttl: Duration,
    ) -> Result<Permit, Refusal> {
        let Some(key) = host_key(url) else {
            return Ok(Permit::none());
        };
        let asked = Instant::now();
        let ttl = ttl + PERMIT_MARGIN;
        let deadline = asked + OWNER_WAIT;
        let mut late_retries = 0;
        loop {
            let router = self.router();
            let owner = router.as_ref().and_then(|r| r.remote_owner(&key));
            if owner.is_none() && router.as_ref().is_some_and(|r| !r.may_own()) {
                // A worker whose view of the cluster is not settled yet.
                if Instant::now() >= deadline {
                    return Err(Refusal::GateUnavailable {
                        host: key,
                        reason: "no node owns the host".into(),
                    });
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
            let Some(owner) = owner else {
                if robots {
                    self.check_robots(fetcher, url, &key).await?;
                }
                match self.acquire_local(&key, ttl).await {
                    Ok(Some((id, start))) => {
                        // Only when there is a wait: a timer, even one due
                        // now, costs a timer tick (about 1 ms).
                        if start > Instant::now() {
                            tokio::time::sleep_until(start.into()).await;
                        }
                        let gapped = !self.limits(&key, &self.host(&key)).gap.is_zero();
                        let late = start.elapsed();
                        if gapped && late > LATE && late_retries < LATE_RETRIES {
                            late_retries += 1;
                            tracing::debug!(host = %key, late_ms = late.as_millis() as u64, "permit used too late, asking again");
                            self.release_local(PermitRelease {
                                host: key.clone(),
                                id,
                                outcome: PermitOutcome::Failed,
                            });
                            continue;
                        }
                        let waited = asked.elapsed();
                        crate::instruments::host_permit(true, waited);
                        return Ok(Permit {
                            politeness: Some(self.clone()),
                            host: key,
                            id,
                            owner: None,
                            waited,
                        });
                    }
                    // The host moved to another owner while we waited: ask it.
                    Ok(None) => continue,
                    Err(r) => return Err(r),
                }
            };
            let router = router.expect("a remote owner comes from a router");
            let request = PermitRequest {
                host: key.clone(),
                url: url.to_string(),
                robots,
                holder: router.me(),
                ttl_ms: ttl.as_millis() as u64,
            };
            let sent = Instant::now();
            let call = router.acquire(owner.clone(), request);
            tokio::pin!(call);
            // Watch for the owner changing while the question is out.
            let answer = loop {
                tokio::select! {
                    a = &mut call => break Some(a),
                    _ = tokio::time::sleep(Duration::from_millis(250)) => {
                        if router.remote_owner(&key).as_deref() != Some(owner.as_str()) {
                            break None;
                        }
                    }
                }
            };
            let last_error = match answer {
                Some(Ok(PermitAnswer::Granted {
                    id,
                    wait_ms,
                    queued_ms,
                    gap_ms,
                })) => {
                    let answered = Instant::now();
                    // The messages took at most this; the answer, at most as long.
                    let transit =
                        (answered - sent).saturating_sub(Duration::from_millis(queued_ms));
                    if wait_ms > 0 {
                        tokio::time::sleep_until(
                            (answered + Duration::from_millis(wait_ms)).into(),
                        )
                        .await;
                    }
                    let late = transit
                        + Instant::now()
                            .saturating_duration_since(answered + Duration::from_millis(wait_ms));
                    if gap_ms > 0 && late > LATE && late_retries < LATE_RETRIES {
                        late_retries += 1;
                        tracing::debug!(host = %key, %owner, late_ms = late.as_millis() as u64, "permit used too late, asking again");
                        router.release(
                            &owner,
                            PermitRelease {
                                host: key.clone(),
                                id,
                                outcome: PermitOutcome::Failed,
                            },
                        );
                        continue;
                    }
                    let waited = asked.elapsed();
                    crate::instruments::host_permit(false, waited);
                    return Ok(Permit {
                        politeness: Some(self.clone()),
                        host: key,
                        id,
                        owner: Some(owner),
                        waited,
                    });
                }
                Some(Ok(PermitAnswer::Refused {
                    code,
                    message,
                    remaining_ms,
                })) => {
                    return Err(Refusal::from_answer(
                        &key,
                        url,
                        &code,
                        message,
                        remaining_ms,
                    ));
                }
                Some(Err(e)) => e,
                None => format!("{owner} no longer owns the host"),
            };
            if Instant::now() >= deadline {
                return Err(Refusal::GateUnavailable {
                    host: key,
                    reason: last_error,
                });
            }
            tracing::debug!(host = %key, %owner, error = %last_error, "asking the host's owner again");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Answers another node's [`PermitRequest`]: this node must own the host.
    pub async fn serve(
        &self,
        fetcher: &Fetcher,
        request: PermitRequest,
    ) -> Result<PermitAnswer, String> {
        let arrived = Instant::now();
        if let Some(owner) = self.router().and_then(|r| r.remote_owner(&request.host)) {
            return Err(format!("not the owner of {} ({owner} is)", request.host));
        }
        let url = Url::parse(&request.url).map_err(|e| e.to_string())?;
        if host_key(&url).as_deref() != Some(request.host.as_str()) {
            return Err("the URL is not on the host".into());
        }
        if request.robots {
            if let Err(r) = self.check_robots(fetcher, &url, &request.host).await {
                return Ok(r.answer());
            }
        }
        let ttl = Duration::from_millis(request.ttl_ms).min(Duration::from_secs(3600));
        match self.acquire_local(&request.host, ttl).await {
            Ok(Some((id, start))) => {
                let gap = self.limits(&request.host, &self.host(&request.host)).gap;
                Ok(PermitAnswer::Granted {
                    id,
                    // Rounded up: the requester must not start before the slot.
                    wait_ms: start
                        .saturating_duration_since(Instant::now())
                        .as_micros()
                        .div_ceil(1000) as u64,
                    queued_ms: arrived.elapsed().as_millis() as u64,
                    gap_ms: gap.as_millis() as u64,
                })
            }
            Ok(None) => Err(format!("{} moved to another owner", request.host)),
            Err(r) => Ok(r.answer()),
        }
    }

    /// Drops the gates of hosts this node no longer owns (their waiters ask
    /// the new owner), once per change of the router's epoch.
    fn check_owners(&self) {
        let Some(router) = self.router() else {
            return;
        };
        let epoch = router.epoch();
        if self.inner.epoch.swap(epoch, Ordering::AcqRel) == epoch {
            return;
        }
        let hosts: Vec<(String, Arc<Host>)> = self
            .inner
            .hosts
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|(k, h)| (k.clone(), h.clone()))
            .collect();
        for (key, host) in hosts {
            if router.remote_owner(&key).is_some() {
                let gate = host.gate.lock().unwrap_or_else(|p| p.into_inner()).take();
                if let Some(gate) = gate {
                    tracing::info!(host = %key, in_flight = gate.permits.len(), waiting = gate.waiters.len(), "host gate handed over to another owner");
                    // Dropping the waiters' senders wakes them: they ask the new owner.
                    drop(gate);
                }
            }
        }
    }

    /// A permit from this node's own gate of `key`: `Ok(None)` when the gate
    /// was handed over while waiting.
    async fn acquire_local(
        &self,
        key: &str,
        ttl: Duration,
    ) -> Result<Option<(u64, Instant)>, Refusal> {
        self.check_owners();
        let host = self.host(key);
        let limits = self.limits(key, &host);
        let rx = {
            let now = Instant::now();
            let mut slot = host.gate.lock().unwrap_or_else(|p| p.into_inner());
            let gate = slot.get_or_insert_with(|| {
                let known = self
                    .inner
                    .pauses
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .get(key)
                    .copied();
                let first = self.router().is_none();
                let mut g = Gate::new(now, limits, known);
                if first {
                    // No cluster: nobody else granted anything.
                    g.next_slot = now;
                }
                g
            });
            gate.expire(now, key);
            if gate.waiters.iter().all(|w| w.tx.is_closed()) {
                gate.waiters.clear();
                let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
                match gate.try_grant(now, limits, ttl, id, key) {
                    Grant::Now(id, start) => return Ok(Some((id, start))),
                    Grant::Refused(r) => return Err(r),
                    Grant::Full => {}
                }
            }
            let (tx, rx) = oneshot::channel();
            gate.waiters.push_back(Waiter { tx, ttl });
            rx
        };
        self.start_sweeper();
        match tokio::time::timeout(QUEUE_WAIT, rx).await {
            Ok(Ok(Ok(granted))) => Ok(Some(granted)),
            Ok(Ok(Err(r))) => Err(r),
            Ok(Err(_)) => Ok(None),
            Err(_) => Err(Refusal::HostBusy {
                host: key.to_owned(),
            }),
        }
    }

    /// Takes back expired permits now and then, so that waiters behind a
    /// dead holder's permit get it.
    fn start_sweeper(&self) {
        if self.inner.sweeper.swap(true, Ordering::AcqRel) {
            return;
        }
        let weak: Weak<Inner> = Arc::downgrade(&self.inner);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(500));
            loop {
                tick.tick().await;
                let Some(inner) = weak.upgrade() else { return };
                let p = Politeness { inner };
                p.check_owners();
                let hosts: Vec<(String, Arc<Host>)> = p
                    .inner
                    .hosts
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .iter()
                    .map(|(k, h)| (k.clone(), h.clone()))
                    .collect();
                for (key, host) in hosts {
                    let limits = p.limits(&key, &host);
                    if let Some(gate) = host.gate.lock().unwrap_or_else(|e| e.into_inner()).as_mut()
                    {
                        if !gate.waiters.is_empty() || !gate.permits.is_empty() {
                            gate.pump(Instant::now(), limits, &p.inner, &key);
                        }
                    }
                }
            }
        });
    }

    /// A permit of this node's gate comes back.
    pub fn release_local(&self, release: PermitRelease) {
        let host = self.host(&release.host);
        let limits = self.limits(&release.host, &host);
        let mut paused = None;
        {
            let mut slot = host.gate.lock().unwrap_or_else(|p| p.into_inner());
            let Some(gate) = slot.as_mut() else {
                return;
            };
            if gate.permits.remove(&release.id).is_none() {
                tracing::debug!(host = %release.host, id = release.id, "a permit came back after it was taken back");
            }
            match release.outcome {
                PermitOutcome::Answered => gate.throttles = 0,
                PermitOutcome::Failed => {}
                PermitOutcome::Throttled { retry_after_ms } => {
                    gate.throttles = gate.throttles.saturating_add(1);
                    let pause = retry_after_ms
                        .map(Duration::from_millis)
                        .unwrap_or_else(|| {
                            BACKOFF_BASE.saturating_mul(1 << (gate.throttles - 1).min(12))
                        })
                        .min(MAX_BACKOFF);
                    let until = Instant::now() + pause;
                    let until = gate.paused_until.map_or(until, |u| u.max(until));
                    gate.paused_until = Some(until);
                    tracing::warn!(host = %release.host, pause_ms = pause.as_millis() as u64, throttles = gate.throttles, "host paused");
                    crate::instruments::host_backoff();
                    paused = Some(until);
                }
            }
            gate.pump(Instant::now(), limits, &self.inner, &release.host);
        }
        if let (Some(until), Some(router)) = (paused, self.router()) {
            router.paused(&release.host, to_utc(until));
        }
    }

    /// Another node (the host's owner) paused `host` until `until`.
    pub fn note_pause(&self, host: &str, until: DateTime<Utc>) {
        let Ok(left) = (until - Utc::now()).to_std() else {
            return;
        };
        let at = Instant::now() + left.min(MAX_BACKOFF);
        let mut pauses = self.inner.pauses.lock().unwrap_or_else(|p| p.into_inner());
        pauses.retain(|_, u| *u > Instant::now());
        pauses.insert(host.to_owned(), at);
    }

    /// Checks `url` against its host's robots.txt when the host's policy
    /// obeys it (fetching the file when missing or stale).
    async fn check_robots(&self, fetcher: &Fetcher, url: &Url, key: &str) -> Result<(), Refusal> {
        if !self.policy(key).obey_robots {
            return Ok(());
        }
        let rules = self.robots_of(fetcher, url, key).await;
        if rules.allows(url) {
            Ok(())
        } else {
            tracing::info!(host = %key, %url, "robots.txt disallows the page");
            Err(Refusal::RobotsDisallowed {
                url: url.to_string(),
            })
        }
    }

    /// The host's robots.txt rules, fetched when missing or stale.
    async fn robots_of(&self, fetcher: &Fetcher, url: &Url, key: &str) -> Arc<RobotsRules> {
        let host = self.host(key);
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
            // Boxed: the robots.txt request takes a permit like any other.
            Some(robots) => match fetch_boxed(fetcher, &robots).await {
                Ok(fetched) => RobotsRules::parse(&fetched.body),
                Err(FetchError::Status(s)) if (400..500).contains(&s) => RobotsRules::AllowAll,
                Err(e) => {
                    tracing::warn!(host = %key, error = %e, "robots.txt unavailable, disallowing the host");
                    RobotsRules::DisallowAll
                }
            },
            None => RobotsRules::AllowAll,
        });
        tracing::debug!(host = %key, rules = rules_kind(&rules), "robots.txt fetched");
        *host.crawl_delay.lock().unwrap_or_else(|p| p.into_inner()) = rules.crawl_delay();
        *host.seen.lock().unwrap_or_else(|p| p.into_inner()) = RobotsState {
            status: rules_kind(&rules).into(),
            fetched_at: Some(Utc::now()),
            crawl_delay_secs: rules.crawl_delay().map(|d| d.as_secs_f64()),
        };
        *slot = Some((Instant::now(), rules.clone()));
        rules
    }

    /// The state of every host this node holds a gate, robots.txt or an
    /// override for.
    pub fn states(&self) -> Vec<HostState> {
        let mut keys: Vec<String> = self
            .inner
            .hosts
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .keys()
            .cloned()
            .collect();
        keys.extend(
            self.inner
                .overrides
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .keys()
                .cloned(),
        );
        keys.sort();
        keys.dedup();
        keys.iter().map(|k| self.state(k)).collect()
    }

    /// One host's state as this node holds it.
    pub fn state(&self, key: &str) -> HostState {
        let host = self
            .inner
            .hosts
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(key)
            .cloned();
        let mut state = HostState {
            host: key.to_owned(),
            policy: self.policy(key),
            policy_override: self.override_of(key),
            robots: RobotsState {
                status: "unknown".into(),
                ..RobotsState::default()
            },
            backoff_until: None,
            in_flight: 0,
            requests: 0,
            waiting: 0,
            owner: None,
        };
        let Some(host) = host else {
            return state;
        };
        let seen = host.seen.lock().unwrap_or_else(|p| p.into_inner()).clone();
        if !seen.status.is_empty() {
            state.robots = seen;
        }
        if let Some(gate) = host.gate.lock().unwrap_or_else(|p| p.into_inner()).as_ref() {
            let now = Instant::now();
            state.backoff_until = gate.paused_until.filter(|u| *u > now).map(to_utc);
            state.in_flight = gate.permits.values().filter(|u| **u > now).count() as u32;
            state.requests = gate.requests;
            state.waiting = gate.waiters.iter().filter(|w| !w.tx.is_closed()).count() as u32;
        }
        state
    }

    /// Does this node hold the gate of `key` now?
    pub fn holds_gate(&self, key: &str) -> bool {
        self.inner
            .hosts
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(key)
            .is_some_and(|h| h.gate.lock().unwrap_or_else(|p| p.into_inner()).is_some())
    }
}

impl Default for Politeness {
    fn default() -> Self {
        Politeness::new(HostPolicy::default())
    }
}

/// The robots.txt request, boxed: it takes a permit like any other, so its
/// future would otherwise hold itself.
fn fetch_boxed<'a>(
    fetcher: &'a Fetcher,
    url: &'a Url,
) -> Pin<Box<dyn Future<Output = Result<super::fetch::Fetched, FetchError>> + Send + 'a>> {
    Box::pin(fetcher.fetch(url))
}

fn to_utc(at: Instant) -> DateTime<Utc> {
    let now = Instant::now();
    let utc = Utc::now();
    if at >= now {
        utc + chrono::Duration::from_std(at - now).unwrap_or_default()
    } else {
        utc - chrono::Duration::from_std(now - at).unwrap_or_default()
    }
}

fn rules_kind(rules: &RobotsRules) -> &'static str {
    match rules {
        RobotsRules::AllowAll => "allow_all",
        RobotsRules::DisallowAll => "disallow_all",
        RobotsRules::Parsed(_) => "parsed",
    }
}

#[cfg(test)]
mod tests;
