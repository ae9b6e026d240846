//! The node's metrics: every family it exports, in one place, recorded
//! through the `metrics` facade and rendered in Prometheus's text format by
//! `metrics-exporter-prometheus` (its recorder and handle only: `GET
//! /metrics` renders from the HTTP server the node already runs, no extra
//! listener). docs/metrics.md lists every family with its labels and
//! cardinality.
//!
//! Counters and the run histogram move where the work happens (the fetcher,
//! the aggregator, the scraper, the HTTP middleware, the replicator); gauges
//! are set at scrape time from the actors' snapshots ([`Snapshot`]), so they
//! cost nothing between scrapes. Nothing here knows of actors.
//!
//! Labels are never per item or per source: `collection` is the only label
//! whose values the operator chooses (one per collection), every other
//! label has a fixed, small set of values.

pub mod throughput;

use std::sync::OnceLock;
use std::time::Duration;

use metrics::{counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

pub const PAGES_FETCHED: &str = "gleaner_pages_fetched_total";
pub const FETCHED_BYTES: &str = "gleaner_fetched_bytes_total";
pub const ITEMS: &str = "gleaner_items_total";
pub const RUNS: &str = "gleaner_runs_total";
pub const RUN_DURATION: &str = "gleaner_run_duration_seconds";
pub const SOURCES: &str = "gleaner_sources";
pub const SOURCES_DEGRADED: &str = "gleaner_sources_degraded";
pub const MEMBERS: &str = "gleaner_members";
pub const REPLICATION_BEHIND: &str = "gleaner_replication_behind_batches";
pub const REPLICATION_PULLED: &str = "gleaner_replication_pulled_batches_total";
pub const HOST_BACKOFFS: &str = "gleaner_host_backoffs_total";
pub const HOST_PERMITS: &str = "gleaner_host_permits_total";
pub const HOST_PERMIT_WAIT: &str = "gleaner_host_permit_wait_seconds";
pub const HTTP_REQUESTS: &str = "gleaner_http_requests_total";
pub const STORAGE_STATE: &str = "gleaner_storage_state";
pub const STORAGE_FREE: &str = "gleaner_storage_free_bytes";
pub const STORAGE_RESERVE: &str = "gleaner_storage_reserve_bytes";
pub const SNAPSHOT_FAILURES: &str = "gleaner_metrics_snapshot_failures_total";
pub const BUILD_INFO: &str = "gleaner_build_info";
pub const WEBHOOK_DELIVERIES: &str = "gleaner_webhook_deliveries_total";
pub const WEBHOOK_DELIVERY_SECONDS: &str = "gleaner_webhook_delivery_seconds";

/// Outcomes of a webhook delivery attempt: `ok` (2xx), `failed` (any other
/// answer or none), and `retried` (an attempt that sends a delivery again:
/// after a failure, or re-sent by a new owner after a failover).
pub const WEBHOOK_OUTCOMES: [&str; 3] = ["ok", "failed", "retried"];

/// Bucket bounds of the webhook delivery histogram, in seconds (from the
/// batch being built to its acknowledgement, retries included).
const WEBHOOK_BUCKETS: [f64; 12] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0, 60.0, 600.0,
];

/// The classes of a fetch's outcome; `error` is a fetch with no HTTP status
/// (refused, timed out, connection failed, body too large or broken).
pub const STATUS_CLASSES: [&str; 5] = ["2xx", "3xx", "4xx", "5xx", "error"];
/// A source's states, as the API names them.
pub const SOURCE_STATES: [&str; 5] = ["scheduled", "running", "backing_off", "failed", "disabled"];
/// A member's states in the cluster view.
pub const MEMBER_STATES: [&str; 3] = ["up", "suspect", "down"];
/// The store's states (see `store::StorageStatus`).
pub const STORAGE_STATES: [&str; 3] = ["ok", "disk_full", "failed"];

/// Bucket bounds of the run duration histogram, in seconds: a one-page run
/// of a local site takes milliseconds, a long paginated one minutes.
const RUN_BUCKETS: [f64; 12] = [
    0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
];

/// Bucket bounds of the permit wait histogram, in seconds: the fast path
/// takes microseconds, a gap or an ask to the owner milliseconds, a queue
/// behind slow pages or a pause seconds.
const WAIT_BUCKETS: [f64; 10] = [0.0001, 0.001, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0, 30.0];

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs the process's recorder (once; later calls return the same
/// handle) and registers every family, so that each is exported from the
/// first scrape on, at zero where nothing happened yet.
pub fn install() -> &'static PrometheusHandle {
    HANDLE.get_or_init(|| {
        let builder = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Full(RUN_DURATION.into()), &RUN_BUCKETS)
            .expect("the run duration buckets are not empty")
            .set_buckets_for_metric(
                Matcher::Full(WEBHOOK_DELIVERY_SECONDS.into()),
                &WEBHOOK_BUCKETS,
            )
            .expect("the webhook buckets are not empty")
            .set_buckets_for_metric(Matcher::Full(HOST_PERMIT_WAIT.into()), &WAIT_BUCKETS)
            .expect("the permit wait buckets are not empty");
        let recorder = builder.build_recorder();
        let handle = recorder.handle();
        if let Err(e) = metrics::set_global_recorder(recorder) {
            // Another recorder (a test's) was there first: /metrics renders
            // an empty registry rather than failing the node.
            tracing::warn!(error = %e, "a metrics recorder was already installed");
        }
        describe();
        handle
    })
}

/// The Prometheus text of every family, with the gauges set from `snapshot`.
pub fn render(snapshot: &Snapshot) -> String {
    let handle = install();
    snapshot.set_gauges();
    handle.render()
}

fn describe() {
    describe_counter!(
        PAGES_FETCHED,
        "HTTP fetches of source pages (each attempt, retries included), by status class"
    );
    describe_counter!(FETCHED_BYTES, "Body bytes of successful page fetches");
    describe_counter!(
        ITEMS,
        "Items applied to a collection (local and replicated batches), by collection and outcome"
    );
    describe_counter!(RUNS, "Finished scraper runs, by outcome");
    describe_histogram!(RUN_DURATION, "Duration of scraper runs in seconds");
    describe_gauge!(SOURCES, "Sources this node owns, by state");
    describe_gauge!(
        SOURCES_DEGRADED,
        "Sources this node owns whose runs drift from what they used to yield"
    );
    describe_gauge!(
        MEMBERS,
        "Cluster members in this node's view (itself included), by state"
    );
    describe_gauge!(
        REPLICATION_BEHIND,
        "Batches peers had that this node lacked when the Replicator's last round began"
    );
    describe_counter!(
        REPLICATION_PULLED,
        "Batches the Replicator pulled from peers"
    );
    describe_counter!(
        HOST_BACKOFFS,
        "Pauses of a host after a 429 or 503 answer, counted by the node that held the host's gate (its owner)"
    );
    describe_counter!(
        HOST_PERMITS,
        "Permits this node's requests took from their host's gate, by where the gate was (local: this node owns the host; remote: another node does)"
    );
    describe_histogram!(
        HOST_PERMIT_WAIT,
        "Seconds this node's requests waited for their host's permits (the gap, the requests in flight, a pause, the ask to the owner), by where the gate was"
    );
    describe_counter!(
        HTTP_REQUESTS,
        "Requests to the node's HTTP API, by route pattern, method and status"
    );
    describe_gauge!(
        STORAGE_STATE,
        "1 for the store's current state (ok, disk_full, failed), 0 for the others"
    );
    describe_gauge!(
        STORAGE_FREE,
        "Free bytes on the data directory's filesystem"
    );
    describe_gauge!(
        STORAGE_RESERVE,
        "Free bytes below which the store refuses writes"
    );
    describe_counter!(
        SNAPSHOT_FAILURES,
        "Scrapes whose gauges of a part were left as they were: its actor did not answer in time"
    );
    describe_gauge!(BUILD_INFO, "1, labelled with the running version");
    describe_counter!(
        WEBHOOK_DELIVERIES,
        "Webhook delivery attempts sent by this node, by outcome (ok, failed, retried)"
    );
    describe_histogram!(
        WEBHOOK_DELIVERY_SECONDS,
        "Seconds from a webhook batch being built to its acknowledgement, retries included"
    );
    for outcome in WEBHOOK_OUTCOMES {
        counter!(WEBHOOK_DELIVERIES, "outcome" => outcome).absolute(0);
    }
    for class in STATUS_CLASSES {
        counter!(PAGES_FETCHED, "class" => class).absolute(0);
    }
    for outcome in ["ok", "error"] {
        counter!(RUNS, "outcome" => outcome).absolute(0);
    }
    counter!(FETCHED_BYTES).absolute(0);
    counter!(REPLICATION_PULLED).absolute(0);
    counter!(HOST_BACKOFFS).absolute(0);
    for gate in ["local", "remote"] {
        counter!(HOST_PERMITS, "gate" => gate).absolute(0);
    }
    gauge!(BUILD_INFO, "version" => env!("CARGO_PKG_VERSION")).set(1.0);
}

/// A webhook delivery attempt ended (`outcome` one of [`WEBHOOK_OUTCOMES`]).
pub fn webhook_attempt(outcome: &'static str) {
    counter!(WEBHOOK_DELIVERIES, "outcome" => outcome).increment(1);
}

/// A webhook batch was acknowledged `age` after it was built.
pub fn webhook_delivered(age: Duration) {
    histogram!(WEBHOOK_DELIVERY_SECONDS).record(age.as_secs_f64());
}

/// A request took a permit of its host's gate after waiting `waited`.
pub fn host_permit(local: bool, waited: Duration) {
    let gate = if local { "local" } else { "remote" };
    counter!(HOST_PERMITS, "gate" => gate).increment(1);
    histogram!(HOST_PERMIT_WAIT, "gate" => gate).record(waited.as_secs_f64());
}

/// A host asked this node to slow down (429 or 503) and was paused.
pub fn host_backoff() {
    counter!(HOST_BACKOFFS).increment(1);
}

/// The class of an HTTP status (`2xx` ... `5xx`); anything else is `error`.
pub fn status_class(status: u16) -> &'static str {
    match status {
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        500..=599 => "5xx",
        _ => "error",
    }
}

/// One fetch attempt ended: with an HTTP status, or without one (`None`).
pub fn page_fetched(status: Option<u16>, body_bytes: usize) {
    let class = status.map_or("error", status_class);
    throughput::pages();
    counter!(PAGES_FETCHED, "class" => class).increment(1);
    if body_bytes > 0 {
        counter!(FETCHED_BYTES).increment(body_bytes as u64);
    }
}

/// A batch was applied to `collection`.
pub fn items_applied(collection: &str, inserted: u64, changed: u64, unchanged: u64) {
    throughput::items(inserted + changed + unchanged);
    for (outcome, n) in [
        ("inserted", inserted),
        ("changed", changed),
        ("unchanged", unchanged),
    ] {
        if n > 0 {
            counter!(ITEMS, "collection" => collection.to_owned(), "outcome" => outcome)
                .increment(n);
        }
    }
}

/// A scraper run finished.
pub fn run_finished(duration: Duration, failed: bool) {
    let outcome = if failed { "error" } else { "ok" };
    if failed {
        throughput::errors();
    }
    counter!(RUNS, "outcome" => outcome).increment(1);
    histogram!(RUN_DURATION).record(duration.as_secs_f64());
}

/// The Replicator applied `n` batches pulled from a peer.
pub fn batches_pulled(n: u64) {
    counter!(REPLICATION_PULLED).increment(n);
}

/// An HTTP request was answered. `route` is the matched pattern
/// (`/api/v1/sources/{id}`), never the raw path; `unmatched` when no route
/// matched. Methods outside the usual few are counted as `other`.
pub fn http_request(route: &str, method: &str, status: u16) {
    let method = match method {
        "GET" | "POST" | "PUT" | "DELETE" | "HEAD" | "OPTIONS" | "PATCH" => method.to_owned(),
        _ => "other".to_owned(),
    };
    counter!(
        HTTP_REQUESTS,
        "route" => route.to_owned(),
        "method" => method,
        "status" => status.to_string()
    )
    .increment(1);
}

/// What the gauges show, taken from the actors at scrape time. A part is
/// `None` when its actor did not answer in time: its gauges keep their last
/// values and [`SNAPSHOT_FAILURES`] counts the miss.
#[derive(Debug, Default, Clone)]
pub struct Snapshot {
    /// Sources owned by this node per state name (see [`SOURCE_STATES`]).
    pub sources: Option<Vec<(&'static str, u64)>>,
    /// Sources owned by this node whose health is `degraded`.
    pub sources_degraded: Option<u64>,
    /// Members per state name (see [`MEMBER_STATES`]).
    pub members: Vec<(&'static str, u64)>,
    /// Batches behind peers at the Replicator's last round.
    pub replication_behind: Option<u64>,
    pub storage: Option<StorageGauges>,
}

/// The store's status as gauges.
#[derive(Debug, Clone)]
pub struct StorageGauges {
    pub state: &'static str,
    pub free_bytes: u64,
    pub reserve_bytes: u64,
}

/// Counts of `names` among `values`, every name present (0 where absent),
/// so a state that empties drops to 0 rather than keeping its last count.
pub fn count_states<'a>(
    names: &[&'static str],
    values: impl IntoIterator<Item = &'a str>,
) -> Vec<(&'static str, u64)> {
    let mut counts: Vec<(&'static str, u64)> = names.iter().map(|n| (*n, 0)).collect();
    for v in values {
        if let Some(c) = counts.iter_mut().find(|(n, _)| *n == v) {
            c.1 += 1;
        }
    }
    counts
}

impl Snapshot {
    fn set_gauges(&self) {
        match &self.sources {
            Some(counts) => {
                for (state, n) in counts {
                    gauge!(SOURCES, "state" => *state).set(*n as f64);
                }
            }
            None => counter!(SNAPSHOT_FAILURES, "part" => "sources").increment(1),
        }
        if let Some(n) = self.sources_degraded {
            gauge!(SOURCES_DEGRADED).set(n as f64);
        }
        for (state, n) in &self.members {
            gauge!(MEMBERS, "state" => *state).set(*n as f64);
        }
        match self.replication_behind {
            Some(n) => gauge!(REPLICATION_BEHIND).set(n as f64),
            None => counter!(SNAPSHOT_FAILURES, "part" => "replication").increment(1),
        }
        if let Some(s) = &self.storage {
            for state in STORAGE_STATES {
                let on = if state == s.state { 1.0 } else { 0.0 };
                gauge!(STORAGE_STATE, "state" => state).set(on);
            }
            gauge!(STORAGE_FREE).set(s.free_bytes as f64);
            gauge!(STORAGE_RESERVE).set(s.reserve_bytes as f64);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_classes() {
        assert_eq!(status_class(200), "2xx");
        assert_eq!(status_class(304), "3xx");
        assert_eq!(status_class(404), "4xx");
        assert_eq!(status_class(503), "5xx");
        assert_eq!(status_class(99), "error");
    }

    #[test]
    fn every_state_is_counted_even_at_zero() {
        let counts = count_states(&SOURCE_STATES, ["running", "failed", "running", "odd"]);
        assert_eq!(
            counts,
            vec![
                ("scheduled", 0),
                ("running", 2),
                ("backing_off", 0),
                ("failed", 1),
                ("disabled", 0)
            ]
        );
    }

    #[test]
    fn renders_every_family_at_zero_and_the_gauges() {
        install();
        run_finished(Duration::from_millis(20), false);
        let text = render(&Snapshot {
            sources: Some(count_states(&SOURCE_STATES, ["scheduled"])),
            sources_degraded: Some(2),
            members: count_states(&MEMBER_STATES, ["up"]),
            replication_behind: Some(3),
            storage: Some(StorageGauges {
                state: "ok",
                free_bytes: 1000,
                reserve_bytes: 10,
            }),
        });
        for line in [
            "gleaner_pages_fetched_total{class=\"5xx\"} 0",
            "gleaner_sources{state=\"scheduled\"} 1",
            "gleaner_sources{state=\"failed\"} 0",
            "gleaner_sources_degraded 2",
            "gleaner_members{state=\"up\"} 1",
            "gleaner_replication_behind_batches 3",
            "gleaner_storage_state{state=\"ok\"} 1",
            "gleaner_storage_state{state=\"disk_full\"} 0",
            "gleaner_storage_free_bytes 1000",
            "gleaner_host_backoffs_total 0",
            "# TYPE gleaner_run_duration_seconds histogram",
        ] {
            assert!(text.contains(line), "no `{line}` in:\n{text}");
        }
    }
}
