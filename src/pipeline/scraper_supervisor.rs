//! ScraperSupervisor: keeps one Scraper per source placed on this node. The
//! Orchestrator tells it which sources to run (`Ensure`, `Remove`); it spawns
//! each Scraper linked, and when one fails it restarts it after an exponential
//! backoff, or marks the source `failed` once failures exceed the restart
//! intensity. A failed source tries one run again by itself after a long
//! backoff ([`heal_delay`](crate::supervision::heal_delay): its period, doubling, at most
//! an hour), at once if its spec changes or an operator asks for a run, and
//! is `scheduled` again after its next successful run, its failures
//! forgotten. A failing source never disturbs another.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Weak};
use std::time::Instant;

use chrono::{DateTime, Utc};
use futures_util::future::join_all;
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort, SupervisionEvent};
use ractor_cluster::RactorMessage;

use super::collection_supervisor::CollectionSupervisorMsg;
use super::scraper::{Scraper, ScraperArgs, ScraperMsg, ScraperNode};
use super::timer::Timer;
use crate::domain::{SharedExtracts, SourceRuntime, SourceSpec, SourceState, Totals};
use crate::events::{Event, Events};
use crate::scrape::extract::{Limits, Rules};
use crate::scrape::fetch::Fetcher;
use crate::settings::RestartPolicy;
use crate::store::Store;
use crate::supervision::{ask, child_down, AfterRunFailure, SourceFailures, ASK_TIMEOUT};

pub struct ScraperSupervisor;

pub struct ScraperSupervisorArgs {
    pub fetcher: Fetcher,
    pub limits: Limits,
    pub store: Store,
    /// Where scrapers deliver their batches.
    pub sink: BatchSink,
    pub restart: RestartPolicy,
    pub events: Events,
    pub cluster: crate::cluster::Cluster,
}

/// Where a scraper's batches go: on a node, its collection's Aggregator; in
/// a worker process, the Courier that carries them to the owner node.
#[derive(Clone)]
pub enum BatchSink {
    Collections(ActorRef<CollectionSupervisorMsg>),
    Fixed(ActorRef<super::aggregator::AggregatorMsg>),
}

#[derive(RactorMessage)]
pub enum ScraperSupervisorMsg {
    /// Run this source here (start it, or restart it if its spec changed).
    Ensure(Box<SourceSpec>),
    /// Stop running this source here.
    Remove(String),
    /// Run the source now; revives a failed one. Err if it does not run here.
    RunNow(String, RpcReplyPort<Result<(), String>>),
    /// Internal: a backoff ended (a restart's, or a failed source's retry);
    /// ignored unless `generation` is still the source's.
    Restart { id: String, generation: u64 },
    /// From a Scraper when a run starts (for [`ScraperSupervisorMsg::StateCounts`]).
    RunStarted { id: String },
    /// How many sources run here are in each state, from what this
    /// supervisor knows (no scraper is asked): cheap whatever their number.
    StateCounts(RpcReplyPort<Vec<(SourceState, u64)>>),
    /// How many of the sources run here were judged `degraded` by their
    /// last run (for the metrics, without a view per source).
    DegradedCount(RpcReplyPort<u64>),
    /// From a Scraper after each run, so the counts outlive the actor.
    RunCounted {
        id: String,
        pages: u32,
        items: u64,
        failed: bool,
        /// The run's drift judgement was `degraded`.
        degraded: bool,
    },
    /// The runtime status of the sources run here: all of them, or only
    /// those listed.
    Statuses(
        Option<Vec<String>>,
        RpcReplyPort<BTreeMap<String, SourceRuntime>>,
    ),
}

enum Phase {
    /// Between stopping a scraper and spawning the next, within one message.
    Down,
    Up(ActorRef<ScraperMsg>),
    BackingOff {
        until: DateTime<Utc>,
    },
    /// Given up on; tries one run again at `retry_at`.
    Failed {
        retry_at: DateTime<Utc>,
    },
}

struct Child {
    /// Shared with the source's scraper.
    spec: Arc<SourceSpec>,
    phase: Phase,
    /// Set from the supervisor's counter at each spawn, so a stale backoff
    /// or retry timer (one armed before a later spawn) is ignored.
    generation: u64,
    failures: SourceFailures,
    last_error: Option<String>,
    restarts: u64,
    totals: Totals,
}

/// What a status needs of a child, taken in the supervisor's mailbox.
struct ChildSnapshot {
    id: String,
    phase: PhaseSnapshot,
    totals: Totals,
    last_error: Option<String>,
    restarts: u64,
}

enum PhaseSnapshot {
    Down,
    Up(ActorRef<ScraperMsg>),
    BackingOff(DateTime<Utc>),
    Failed(DateTime<Utc>),
}

impl ChildSnapshot {
    fn of((id, child): (&String, &Child)) -> ChildSnapshot {
        ChildSnapshot {
            id: id.clone(),
            phase: match &child.phase {
                Phase::Down => PhaseSnapshot::Down,
                Phase::Up(actor) => PhaseSnapshot::Up(actor.clone()),
                Phase::BackingOff { until } => PhaseSnapshot::BackingOff(*until),
                Phase::Failed { retry_at } => PhaseSnapshot::Failed(*retry_at),
            },
            totals: child.totals,
            last_error: child.last_error.clone(),
            restarts: child.restarts,
        }
    }

    /// Asks a running scraper for its counters, and puts the status together.
    async fn status(self) -> (String, SourceRuntime) {
        let scraper = match &self.phase {
            PhaseSnapshot::Up(actor) => ask(actor, ScraperMsg::Stats, ASK_TIMEOUT).await.ok(),
            _ => None,
        };
        let (state, next_run) = match (&self.phase, &scraper) {
            (PhaseSnapshot::Up(_), Some(s)) if s.running => (SourceState::Running, None),
            (PhaseSnapshot::Up(_), Some(s)) => (SourceState::Scheduled, s.next_run),
            (PhaseSnapshot::Up(_) | PhaseSnapshot::Down, _) => (SourceState::Scheduled, None),
            (PhaseSnapshot::BackingOff(until), _) => (SourceState::BackingOff, Some(*until)),
            (PhaseSnapshot::Failed(retry_at), _) => (SourceState::Failed, Some(*retry_at)),
        };
        let runtime = SourceRuntime {
            totals: self.totals,
            state,
            next_run,
            last_error: self.last_error,
            restarts: self.restarts,
            scraper,
            container: None,
        };
        (self.id, runtime)
    }
}

/// A state's name, to group counts by.
fn state_key(s: SourceState) -> &'static str {
    match s {
        SourceState::Scheduled => "scheduled",
        SourceState::Running => "running",
        SourceState::BackingOff => "backing_off",
        SourceState::Failed => "failed",
        SourceState::Disabled => "disabled",
    }
}

pub struct ScraperSupervisorState {
    args: ScraperSupervisorArgs,
    children: BTreeMap<String, Child>,
    /// Sources whose scraper reported a run started and not yet counted.
    running: std::collections::HashSet<String>,
    /// Sources whose last run here was judged `degraded`.
    degraded: std::collections::HashSet<String>,
    rules: RulesCache,
    /// One `extract` section for the sources that extract alike.
    extracts: SharedExtracts,
    /// The handles every scraper shares.
    node: Arc<ScraperNode>,
    /// Spawns so far, for the children's generations: unique across
    /// children, so a timer outliving a removed source cannot match the
    /// source created again under its id.
    spawns: u64,
}

/// Compiled rules shared by the sources that extract alike (a fleet often
/// runs one template over many start URLs): one copy of the selectors per
/// distinct (extract, key), held by the scrapers that use it.
#[derive(Default)]
struct RulesCache {
    by_spec: HashMap<String, Weak<Rules>>,
}

impl RulesCache {
    fn get(&mut self, spec: &SourceSpec) -> Result<Arc<Rules>, String> {
        let id = serde_json::to_string(&(&*spec.extract, &spec.key)).map_err(|e| e.to_string())?;
        if let Some(rules) = self.by_spec.get(&id).and_then(Weak::upgrade) {
            return Ok(rules);
        }
        let rules = Arc::new(Rules::compile(&spec.extract, &spec.key).map_err(|e| e.to_string())?);
        if self.by_spec.len() >= 64 && self.by_spec.len().is_power_of_two() {
            self.by_spec.retain(|_, r| r.strong_count() > 0);
        }
        self.by_spec.insert(id, Arc::downgrade(&rules));
        Ok(rules)
    }
}

impl ScraperSupervisorState {
    /// Spawns the source's scraper; a failure to start counts as a failure.
    async fn spawn(&mut self, myself: &ActorRef<ScraperSupervisorMsg>, id: &str, run_now: bool) {
        let spec = match self.children.get_mut(id) {
            Some(child) => {
                self.spawns += 1;
                child.generation = self.spawns;
                child.spec.clone()
            }
            None => return,
        };
        let started = async {
            let rules = self.rules.get(&spec)?;
            let aggregator = match &self.args.sink {
                BatchSink::Fixed(a) => a.clone(),
                BatchSink::Collections(c) => {
                    let collection = spec.collection.clone();
                    ask(
                        c,
                        |r| CollectionSupervisorMsg::Aggregator(collection, r),
                        ASK_TIMEOUT,
                    )
                    .await
                    .map_err(|_| "the collection supervisor did not answer".to_string())??
                }
            };
            let args = ScraperArgs {
                spec: spec.clone(),
                rules,
                aggregator,
                run_now,
                node: self.node.clone(),
            };
            Actor::spawn_linked(None, Scraper, args, myself.get_cell())
                .await
                .map(|(actor, _)| actor)
                .map_err(|e| format!("scraper did not start: {e}"))
        }
        .await;
        match (started, self.children.get_mut(id)) {
            (Ok(actor), Some(child)) => {
                child.phase = Phase::Up(actor);
                self.running.remove(id);
            }
            (Ok(actor), None) => actor.stop(None),
            (Err(e), _) => self.failed(myself, id, e),
        }
    }

    /// Records a failure of a source's scraper and schedules what follows.
    fn failed(&mut self, myself: &ActorRef<ScraperSupervisorMsg>, id: &str, error: String) {
        let Some(child) = self.children.get_mut(id) else {
            return;
        };
        child.last_error = Some(error.clone());
        let period = child.spec.schedule.period();
        let (id, generation) = (id.to_owned(), child.generation);
        let delay = match child
            .failures
            .record(Instant::now(), &self.args.restart, period)
        {
            AfterRunFailure::RestartIn(delay) => {
                child.restarts += 1;
                child.phase = Phase::BackingOff {
                    until: Utc::now() + delay,
                };
                tracing::info!(source = %id, delay_ms = delay.as_millis() as u64, %error, "scraper restarting after backoff");
                self.args.events.publish(Event::BackingOff {
                    source: id.clone(),
                    delay_ms: delay.as_millis() as u64,
                    error,
                });
                delay
            }
            AfterRunFailure::RetryIn(delay) => {
                child.phase = Phase::Failed {
                    retry_at: Utc::now() + delay,
                };
                tracing::error!(
                    source = %id,
                    give_ups = child.failures.give_ups(),
                    retry_in_secs = delay.as_secs(),
                    %error,
                    "source failed too often; it tries again after the delay, or at once if its spec changes or a run is asked for"
                );
                self.args.events.publish(Event::SourceFailed {
                    source: id.clone(),
                    error,
                    retry_in_ms: delay.as_millis() as u64,
                });
                delay
            }
        };
        myself.send_after(delay, move || ScraperSupervisorMsg::Restart {
            id,
            generation,
        });
    }

    async fn stop_child(child: &mut Child) {
        if let Phase::Up(actor) = std::mem::replace(&mut child.phase, Phase::Down) {
            actor
                .stop_and_wait(Some("replaced".into()), Some(ASK_TIMEOUT))
                .await
                .ok();
        }
    }
}

impl Actor for ScraperSupervisor {
    type Msg = ScraperSupervisorMsg;
    type State = ScraperSupervisorState;
    type Arguments = ScraperSupervisorArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        args: ScraperSupervisorArgs,
    ) -> Result<Self::State, ActorProcessingErr> {
        let node = Arc::new(ScraperNode {
            fetcher: args.fetcher.clone(),
            limits: args.limits.clone(),
            store: args.store.clone(),
            events: args.events.clone(),
            supervisor: myself,
            cluster: args.cluster.clone(),
            timer: Timer::spawn(|| ScraperMsg::Tick),
        });
        Ok(ScraperSupervisorState {
            node,
            args,
            children: BTreeMap::new(),
            running: Default::default(),
            degraded: Default::default(),
            rules: RulesCache::default(),
            extracts: SharedExtracts::default(),
            spawns: 0,
        })
    }

    async fn post_stop(
        &self,
        myself: ActorRef<Self::Msg>,
        _state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        myself.stop_children_and_wait(None, Some(ASK_TIMEOUT)).await;
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        msg: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            ScraperSupervisorMsg::Ensure(mut spec) => {
                state.extracts.share(&mut spec);
                let spec = Arc::new(*spec);
                let id = spec.id.clone();
                // A changed spec runs at once, so its effect shows without waiting a period.
                let mut run_now = false;
                if let Some(child) = state.children.get_mut(&id) {
                    // Unchanged (a membership change re-sends every spec): a
                    // failed source keeps its retry time rather than all of
                    // them running at once on each change.
                    if child.spec == spec {
                        return Ok(());
                    }
                    run_now = true;
                    ScraperSupervisorState::stop_child(child).await;
                    child.spec = spec;
                    child.failures.reset();
                    child.last_error = None;
                    child.restarts = 0;
                } else {
                    state.children.insert(
                        id.clone(),
                        Child {
                            spec,
                            phase: Phase::Down,
                            generation: 0,
                            failures: SourceFailures::default(),
                            last_error: None,
                            restarts: 0,
                            totals: Totals::default(),
                        },
                    );
                }
                state.spawn(&myself, &id, run_now).await;
            }
            ScraperSupervisorMsg::Remove(id) => {
                state.degraded.remove(&id);
                if let Some(mut child) = state.children.remove(&id) {
                    ScraperSupervisorState::stop_child(&mut child).await;
                    tracing::info!(source = %id, "scraper stopped");
                }
                // Deleted, disabled or placed elsewhere: its remembered
                // pages (conditional requests) are of no more use here.
                if let Err(e) = state.args.store.forget_pages(&id) {
                    tracing::warn!(source = %id, error = %e, "remembered pages not forgotten");
                }
            }
            ScraperSupervisorMsg::RunNow(id, reply) => {
                let result = match state.children.get_mut(&id) {
                    None => Err(format!("source {id} does not run on this node")),
                    Some(Child {
                        phase: Phase::Up(actor),
                        ..
                    }) => actor.cast(ScraperMsg::RunNow).map_err(|e| e.to_string()),
                    Some(child) => {
                        child.failures.reset();
                        state.spawn(&myself, &id, true).await;
                        Ok(())
                    }
                };
                let _ = reply.send(result);
            }
            ScraperSupervisorMsg::RunStarted { id } => {
                state.running.insert(id);
            }
            ScraperSupervisorMsg::DegradedCount(reply) => {
                let _ = reply.send(state.degraded.len() as u64);
            }
            ScraperSupervisorMsg::StateCounts(reply) => {
                let mut counts: BTreeMap<&'static str, (SourceState, u64)> = BTreeMap::new();
                for (id, child) in &state.children {
                    let s = match child.phase {
                        Phase::Up(_) if state.running.contains(id) => SourceState::Running,
                        Phase::Up(_) | Phase::Down => SourceState::Scheduled,
                        Phase::BackingOff { .. } => SourceState::BackingOff,
                        Phase::Failed { .. } => SourceState::Failed,
                    };
                    counts.entry(state_key(s)).or_insert((s, 0)).1 += 1;
                }
                let _ = reply.send(counts.into_values().collect());
            }
            ScraperSupervisorMsg::RunCounted {
                id,
                pages,
                items,
                failed,
                degraded,
            } => {
                state.running.remove(&id);
                if degraded {
                    state.degraded.insert(id.clone());
                } else {
                    state.degraded.remove(&id);
                }
                if let Some(child) = state.children.get_mut(&id) {
                    let t = &mut child.totals;
                    t.runs += 1;
                    t.errors += u64::from(failed);
                    t.pages += u64::from(pages);
                    t.items += items;
                    if !failed {
                        // A success forgets past failures: the next one
                        // starts again from the first quick restart.
                        if child.failures.give_ups() > 0 {
                            tracing::info!(source = %id, items, "failed source healed: it runs on its schedule again");
                        }
                        child.failures.reset();
                    }
                }
            }
            ScraperSupervisorMsg::Restart { id, generation } => {
                let due = state.children.get(&id).filter(|c| {
                    c.generation == generation
                        && matches!(c.phase, Phase::BackingOff { .. } | Phase::Failed { .. })
                });
                if let Some(child) = due {
                    if matches!(child.phase, Phase::Failed { .. }) {
                        tracing::info!(source = %id, give_ups = child.failures.give_ups(), "failed source trying a run again");
                    }
                    state.spawn(&myself, &id, true).await;
                }
            }
            ScraperSupervisorMsg::Statuses(only, reply) => {
                // A snapshot of each child now; its scraper is asked from a
                // task, so this mailbox (which every run reports to) never
                // waits on thousands of scrapers.
                let children: Vec<ChildSnapshot> = match only {
                    None => state.children.iter().map(ChildSnapshot::of).collect(),
                    Some(ids) => ids
                        .iter()
                        .filter_map(|id| state.children.get_key_value(id))
                        .map(ChildSnapshot::of)
                        .collect(),
                };
                tokio::spawn(async move {
                    let asks = children.into_iter().map(ChildSnapshot::status);
                    let _ = reply.send(join_all(asks).await.into_iter().collect());
                });
            }
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<Self::Msg>,
        event: SupervisionEvent,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        let Some(down) = child_down(event) else {
            return Ok(());
        };
        let who = down.who;
        let error = if down.stopped {
            format!("scraper stopped unexpectedly: {}", down.why)
        } else {
            down.why
        };
        let dead = who.get_id();
        let id = state.children.iter().find_map(|(id, c)| match &c.phase {
            Phase::Up(actor) if actor.get_id() == dead => Some(id.clone()),
            _ => None,
        });
        if let Some(id) = id {
            state.failed(&myself, &id, error);
        }
        Ok(())
    }
}
