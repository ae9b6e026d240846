//! Scraper{source}: runs one source on its schedule. Spawned linked by the
//! ScraperSupervisor; each run walks the source's pages ([`Pager`]), sends each
//! page's items to the collection's Aggregator and waits for the durable ack,
//! then records the run in the store. Runs of one source never overlap. A
//! failed run fails the actor, so the supervisor's backoff and restart
//! intensity decide what happens next.

use std::collections::{BTreeMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use ractor_cluster::RactorMessage;
use rand::Rng;
use tokio::task::JoinHandle;
use url::Url;

use super::aggregator::AggregatorMsg;
use super::scraper_supervisor::ScraperSupervisorMsg;
use super::timer::Timer;
use crate::cluster::wire::Notice;
use crate::cluster::Cluster;
use crate::domain::{ItemBatch, RunRecord, ScraperStats, SeenBatch, SourceSpec};
use crate::events::{Event, Events};
use crate::scrape::extract::{Limits, Rules};
use crate::scrape::fetch::Fetcher;
use crate::scrape::Pager;
use crate::store::{BatchOutcome, Store};
use crate::supervision::{ask_later, ActorError, ASK_TIMEOUT};

pub struct Scraper;

/// The run's code when the aggregator refused its items (refined into the
/// storage state's own code when this node's disk is at fault).
const STORE_REFUSED: &str = "store_refused";

/// How long a page's items may wait for the aggregator's answer (which
/// waits up to 2 s for a peer, and for the disk).
const STORE_TIMEOUT: Duration = Duration::from_secs(ASK_TIMEOUT.as_secs() * 6);

pub struct ScraperArgs {
    /// Shared with the supervisor's record of the source (one copy a source).
    pub spec: Arc<SourceSpec>,
    pub rules: Arc<Rules>,
    pub aggregator: ActorRef<AggregatorMsg>,
    /// Run at once instead of waiting for the schedule (after a failure's backoff).
    pub run_now: bool,
    /// What every scraper of the node shares, held once rather than copied
    /// into each (an idle source's memory is mostly what it holds).
    pub node: Arc<ScraperNode>,
}

/// The node-wide handles a scraper uses.
pub struct ScraperNode {
    pub fetcher: Fetcher,
    pub limits: Limits,
    pub store: Store,
    pub events: Events,
    /// Told of every run, so the counts outlive this actor.
    pub supervisor: ActorRef<ScraperSupervisorMsg>,
    /// Peers are told of every run, so a new owner keeps the schedule.
    pub cluster: Cluster,
    /// Sends each scraper its `Tick` when its next run is due (one task for
    /// the node rather than one a source).
    pub timer: Timer<ScraperMsg>,
}

#[derive(RactorMessage)]
pub enum ScraperMsg {
    /// The schedule fired.
    Tick,
    /// An operator asked for a run.
    RunNow,
    /// A run ended (sent by the run's own task).
    Finished(Box<RunRecord>),
    Stats(RpcReplyPort<ScraperStats>),
}

pub struct ScraperState {
    args: ScraperArgs,
    /// A run is in progress.
    running: bool,
    /// When the next run is due (none while one runs).
    next_run: Option<chrono::DateTime<Utc>>,
    /// The last run, only while the store could not record it (see
    /// `ScraperStats::last_run`); boxed, as an idle source has none.
    unrecorded: Option<Box<RunRecord>>,
    /// The run in progress, aborted if the actor stops.
    run: Option<JoinHandle<()>>,
    /// Another run was asked for while one was in progress.
    again: bool,
}

#[derive(Debug, thiserror::Error)]
#[error("{message}")]
struct RunFailed {
    message: String,
}

impl ScraperState {
    fn schedule(&mut self, myself: &ActorRef<ScraperMsg>, delay: Duration) {
        self.next_run = Some(Utc::now() + delay);
        self.args
            .node
            .timer
            .arm(myself, tokio::time::Instant::now() + delay);
    }

    /// How long from now until the run due after `from` (`every_secs` after
    /// it, or the cron expression's next time after it), jitter included;
    /// zero when that time has passed.
    fn delay_after(&self, from: chrono::DateTime<Utc>) -> Duration {
        let s = &self.args.spec.schedule;
        let jitter_ms = if s.jitter_secs == 0 {
            0
        } else {
            rand::rng().random_range(0..=s.jitter_secs * 1000)
        };
        let due = s
            .next_after(from)
            .unwrap_or(from + chrono::Duration::hours(1));
        (due - Utc::now()).to_std().unwrap_or(Duration::ZERO) + Duration::from_millis(jitter_ms)
    }

    fn start_run(&mut self, myself: &ActorRef<ScraperMsg>) {
        self.args.node.timer.cancel(myself.get_id());
        self.next_run = None;
        self.running = true;
        let _ = self
            .args
            .node
            .supervisor
            .cast(ScraperSupervisorMsg::RunStarted {
                id: self.args.spec.id.clone(),
            });
        self.args.node.events.publish(Event::RunStarted {
            source: self.args.spec.id.clone(),
        });
        let spec = self.args.spec.clone();
        let pager = match url::Url::parse(&spec.url) {
            Ok(url) => Pager::new(
                url,
                spec.extract.next_page.as_ref().map_or(1, |n| n.max_pages),
                self.args.node.fetcher.clone(),
                self.args.rules.clone(),
                self.args.node.limits.clone(),
                spec.request.clone(),
            )
            .with_memory(
                self.args.node.store.clone(),
                spec.id.clone(),
                page_fingerprint(&spec),
            )
            .with_max_follows(spec.extract.max_follows)
            .with_render(&spec),
            Err(e) => {
                let now = Utc::now();
                let _ = myself.cast(ScraperMsg::Finished(Box::new(RunRecord {
                    started_at: now,
                    finished_at: now,
                    error: Some(format!("invalid url: {e}")),
                    ..RunRecord::default()
                })));
                return;
            }
        };
        let aggregator = self.args.aggregator.clone();
        let me = myself.clone();
        self.run = Some(tokio::spawn(async move {
            let record = run_once(spec, pager, aggregator).await;
            let _ = me.cast(ScraperMsg::Finished(Box::new(record)));
        }));
    }
}

/// A hash of what shapes a page's items (extraction rules, key fields,
/// request, collection): pages remembered under other rules are not reused.
fn page_fingerprint(spec: &SourceSpec) -> String {
    let shape = serde_json::to_vec(&(&*spec.extract, &spec.key, &spec.request, &spec.collection))
        .unwrap_or_default();
    blake3::hash(&shape).to_hex()[..32].to_owned()
}

/// Pages of one run whose items may wait for their answer at once: the next
/// page is fetched and handed over while earlier ones are being made
/// durable, so one flush (group commit) covers several pages of a source
/// instead of each page waiting for its own.
pub const PAGES_IN_FLIGHT: usize = 4;

/// A page's items handed to the aggregator, its answer to come.
struct InFlight {
    /// Named items (a 304): their count and filled fields, counted once
    /// applied, and the page to ask for in full if they are not.
    named: Option<(Url, u64, BTreeMap<String, u64>)>,
    /// The outcome once durable; `None` for named items no longer stored
    /// as named.
    answer: Pin<Box<dyn Future<Output = Answer> + Send>>,
}

type Answer = Result<Result<Option<BatchOutcome>, String>, ActorError>;

/// One run: every page, in order, each page's items handed to the
/// aggregator as soon as the page is had, and up to [`PAGES_IN_FLIGHT`]
/// pages' answers awaited at a time. The run ends once every answer came.
async fn run_once(
    spec: Arc<SourceSpec>,
    mut pager: Pager,
    aggregator: ActorRef<AggregatorMsg>,
) -> RunRecord {
    let started = Utc::now();
    let clock = std::time::Instant::now();
    let mut record = RunRecord {
        started_at: started,
        finished_at: started,
        filled: spec.extract.fields.keys().map(|f| (f.clone(), 0)).collect(),
        ..RunRecord::default()
    };
    let mut in_flight: VecDeque<InFlight> = VecDeque::new();
    loop {
        if in_flight.len() >= PAGES_IN_FLIGHT {
            let oldest = in_flight.pop_front().expect("pages in flight");
            if !settle(oldest, &mut record, &mut pager, &spec.collection).await {
                break;
            }
            continue;
        }
        let page = match pager.next_page().await {
            Some(Ok(p)) => p,
            Some(Err(e)) => {
                record.error = Some(e.to_string());
                record.code = e.code().map(Into::into);
                break;
            }
            // No page left to ask for, unless an answer still to come asks
            // for one again.
            None => match in_flight.pop_front() {
                Some(oldest) => {
                    if !settle(oldest, &mut record, &mut pager, &spec.collection).await {
                        break;
                    }
                    continue;
                }
                None => break,
            },
        };
        let fetched_at = Utc::now();
        let (source, collection) = (spec.id.clone(), spec.collection.clone());
        let handed = match page.unchanged {
            Some((_, named)) if named.names.is_empty() => continue,
            Some((url, named)) => {
                let n = named.names.len() as u64;
                let names = named.names;
                let batch = SeenBatch {
                    source,
                    collection,
                    fetched_at,
                    names,
                };
                let answer = ask_later(
                    &aggregator,
                    |r| AggregatorMsg::Seen(batch, r),
                    STORE_TIMEOUT,
                );
                InFlight {
                    named: Some((url, n, named.filled)),
                    answer: Box::pin(answer),
                }
            }
            None if page.items.is_empty() => continue,
            None => {
                record.items += page.items.len() as u64;
                count_filled(&mut record, &page.items);
                let items = page.items;
                let batch = ItemBatch {
                    source,
                    collection,
                    fetched_at,
                    items,
                };
                let answer = ask_later(
                    &aggregator,
                    |r| AggregatorMsg::Apply(batch, r),
                    STORE_TIMEOUT,
                );
                InFlight {
                    named: None,
                    answer: Box::pin(async move { answer.await.map(|r| r.map(Some)) }),
                }
            }
        };
        in_flight.push_back(handed);
    }
    // Stopped early: what was handed over still counts once answered.
    while let Some(rest) = in_flight.pop_front() {
        settle(rest, &mut record, &mut pager, &spec.collection).await;
    }
    record.pages = pager.pages();
    record.stopped = pager.stopped().map(Into::into);
    record.not_modified = u64::from(pager.not_modified());
    let follows = pager.follow_stats();
    record.follows = follows.fetched;
    record.follow_errors = follows.errors;
    record.follow_error = follows.error.clone();
    record.blocked = pager.blocked().count;
    record.blocked_sample = pager.blocked().sample.clone();
    record.finished_at = Utc::now();
    record.duration_ms = clock.elapsed().as_millis() as u64;
    crate::instruments::run_finished(clock.elapsed(), record.error.is_some());
    record
}

/// Waits for a page's answer and counts it in the run's record; false
/// (the run's error recorded) when the items were refused or not answered.
async fn settle(
    page: InFlight,
    record: &mut RunRecord,
    pager: &mut Pager,
    collection: &str,
) -> bool {
    let Some(answer) = stored(page.answer.await, collection, record) else {
        return false;
    };
    match (page.named, answer) {
        (None, Some(outcome)) => {
            record.inserted += outcome.inserted;
            record.changed += outcome.changed;
        }
        (Some((_, n, filled)), Some(_)) => {
            record.items += n;
            for (field, count) in &filled {
                if let Some(c) = record.filled.get_mut(field) {
                    *c += count;
                }
            }
        }
        // The collection no longer holds them as they were.
        (Some((url, _, _)), None) => pager.again_in_full(url),
        (None, None) => {}
    }
    true
}

/// The aggregator's answer to a page's items; `None`, with the run's error
/// recorded, when it refused them or did not answer.
fn stored<T>(
    answer: Result<Result<T, String>, ActorError>,
    collection: &str,
    record: &mut RunRecord,
) -> Option<T> {
    match answer {
        Ok(Ok(t)) => Some(t),
        Ok(Err(e)) => {
            if record.error.is_none() {
                record.error = Some(format!("storing items: {e}"));
                record.code = Some(STORE_REFUSED.into());
            }
            None
        }
        Err(_) => {
            if record.error.is_none() {
                record.error = Some(format!(
                    "storing items: the aggregator of collection {collection} did not answer"
                ));
            }
            None
        }
    }
}

/// Counts, per field, the items in which it is filled (see `RunRecord::filled`).
pub fn count_filled(record: &mut RunRecord, items: &[crate::domain::Item]) {
    for item in items {
        for (field, value) in &item.data {
            if crate::domain::item::filled(value) {
                if let Some(n) = record.filled.get_mut(field) {
                    *n += 1;
                }
            }
        }
    }
}

impl Actor for Scraper {
    type Msg = ScraperMsg;
    type State = ScraperState;
    type Arguments = ScraperArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        args: ScraperArgs,
    ) -> Result<Self::State, ActorProcessingErr> {
        let store = args.node.store.clone();
        let id = args.spec.id.clone();
        let last = tokio::task::spawn_blocking(move || store.runs(&id, 1))
            .await??
            .pop();
        let mut state = ScraperState {
            running: false,
            next_run: None,
            // The store has it (see `ScraperStats::last_run`).
            unrecorded: None,
            args,
            run: None,
            again: false,
        };
        // Resume the schedule from the last run (kept across restarts).
        let delay = if state.args.run_now {
            Duration::ZERO
        } else {
            match &last {
                Some(run) => state.delay_after(run.started_at),
                None => Duration::ZERO,
            }
        };
        state.schedule(&myself, delay);
        Ok(state)
    }

    async fn post_stop(
        &self,
        myself: ActorRef<Self::Msg>,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        if let Some(run) = state.run.take() {
            run.abort();
        }
        state.args.node.timer.cancel(myself.get_id());
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        msg: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            ScraperMsg::Tick => {
                if !state.running {
                    state.start_run(&myself);
                }
            }
            ScraperMsg::RunNow => {
                if state.running {
                    state.again = true;
                } else {
                    state.start_run(&myself);
                }
            }
            ScraperMsg::Finished(record) => {
                let mut record = *record;
                // A full or failed disk here is not the source's fault: the
                // run is kept as failed, and the schedule simply goes on.
                let storage = state.args.node.store.storage_status(false);
                let node_at_fault =
                    record.code.as_deref() == Some(STORE_REFUSED) && !storage.is_ok();
                if node_at_fault {
                    record.code = Some(storage.code().into());
                }
                state.run = None;
                state.running = false;
                // Drift is judged against the runs before this one (a short
                // read of the run history, like the write below).
                let earlier = match state.args.node.store.runs(&state.args.spec.id, 10) {
                    Ok(runs) => runs,
                    Err(e) => {
                        tracing::warn!(source = %state.args.spec.id, error = %e, "run history unreadable");
                        state.unrecorded.iter().map(|r| (**r).clone()).collect()
                    }
                };
                (record.health, record.health_reason) = crate::domain::assess(&record, &earlier);
                if record.health == crate::domain::Health::Degraded {
                    tracing::warn!(source = %state.args.spec.id, reason = record.health_reason.as_deref(), "source degraded");
                }
                // A small write (sled writes out in its own threads): here,
                // rather than two thread hops per run. A full disk refuses
                // it: the run still shows in the status (kept here until a
                // later run is recorded), only not in history.
                state.unrecorded = match state
                    .args
                    .node
                    .store
                    .record_run(&state.args.spec.id, &record)
                {
                    Ok(()) => None,
                    Err(e) => {
                        tracing::warn!(source = %state.args.spec.id, error = %e, "run not recorded");
                        Some(Box::new(record.clone()))
                    }
                };
                let source = &state.args.spec.id;
                state.args.node.cluster.cast_all(&Notice::Run {
                    source: source.clone(),
                    run: record.clone(),
                });
                let _ = state
                    .args
                    .node
                    .supervisor
                    .cast(ScraperSupervisorMsg::RunCounted {
                        id: source.clone(),
                        pages: record.pages,
                        items: record.items,
                        failed: record.error.is_some(),
                        degraded: record.health == crate::domain::Health::Degraded,
                    });
                state.args.node.events.publish(Event::RunFinished {
                    source: source.clone(),
                    pages: record.pages,
                    items: record.items,
                    duration_ms: record.duration_ms,
                    error: record.error.clone(),
                });
                if let Some(error) = record.error {
                    tracing::warn!(source = %source, pages = record.pages, items = record.items, blocked = record.blocked, code = record.code.as_deref(), %error, "run failed");
                    if !node_at_fault {
                        return Err(Box::new(RunFailed { message: error }));
                    }
                }
                tracing::info!(
                    source = %source,
                    pages = record.pages,
                    items = record.items,
                    inserted = record.inserted,
                    changed = record.changed,
                    blocked = record.blocked,
                    duration_ms = record.duration_ms,
                    "run finished"
                );
                // Due one period (or at the cron time) after the run
                // finished, however long the bookkeeping above took.
                let delay = if std::mem::take(&mut state.again) {
                    Duration::ZERO
                } else {
                    state.delay_after(record.finished_at)
                };
                state.schedule(&myself, delay);
            }
            ScraperMsg::Stats(reply) => {
                let _ = reply.send(ScraperStats {
                    source: state.args.spec.id.clone(),
                    running: state.running,
                    last_run: state.unrecorded.as_deref().cloned(),
                    next_run: state.next_run,
                });
            }
        }
        Ok(())
    }
}
