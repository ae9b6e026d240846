//! Orchestrator: the node's controller. HTTP sends it every admin command on
//! sources (create, replace, delete, run now, get, list). It writes the source
//! registry in the store (flushed), sends the record to every peer, and
//! answers once one peer has it too (or none is up, or none answered in
//! time). Then it reconciles: each enabled source that placement gives to
//! this node runs under the ScraperSupervisor (its child), and nothing else
//! does. It reconciles again whenever membership changes.
//!
//! The registry is replicated last-writer-wins: peers' records arrive as
//! `Merge` and replace ours only when their version is newer; every few
//! seconds, and when membership changes, each node sends its versions to its
//! peers (`Digest`), and a peer that holds newer records pushes them back.
//!
//! Status views join the stored spec, the owner, the last run (runs are
//! replicated too), the supervisor's live state for sources run here, and
//! the collection's counts.

use std::collections::BTreeMap;
use std::time::Instant;

use chrono::{DateTime, Utc};
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort, SupervisionEvent};
use ractor_cluster::RactorMessage;
use serde::Serialize;

use crate::cluster::groups;
use crate::cluster::handle::Answer;
use crate::cluster::wire::{Notice, Request, Response};
use crate::cluster::Cluster;
use crate::domain::{RunRecord, SourceRecord, SourceRuntime, SourceSpec, SourceState, Version};
use crate::events::{Event, Events};
use crate::isolation::worker_supervisor::{
    add_worker_runtimes, WorkerSupervisor, WorkerSupervisorArgs, WorkerSupervisorMsg,
};
use crate::isolation::Isolation;
use crate::pipeline::collection_supervisor::CollectionSupervisorMsg;
use crate::pipeline::endpoint::CollectionSummary;
use crate::pipeline::scraper_supervisor::{
    BatchSink, ScraperSupervisor, ScraperSupervisorArgs, ScraperSupervisorMsg,
};
use crate::scrape::extract::Limits;
use crate::scrape::fetch::Fetcher;
use crate::settings::RestartPolicy;
use crate::store::{Store, StoreError};
use crate::supervision::{AfterFailure, FailureWindow, ASK_TIMEOUT};

pub struct Orchestrator;

pub struct OrchestratorArgs {
    pub store: Store,
    /// The display name, shown as a source's owner.
    pub node_name: String,
    /// The stable id placement hashes on.
    pub node_id: String,
    pub collections: ActorRef<CollectionSupervisorMsg>,
    pub fetcher: Fetcher,
    pub limits: Limits,
    pub restart: RestartPolicy,
    pub events: Events,
    pub cluster: Cluster,
    /// The Docker engine, for isolated sources' worker containers.
    pub isolation: Isolation,
    /// The cluster cookie, handed to workers so they can join.
    pub cookie: Option<String>,
    pub allow_private_targets: Option<String>,
}

/// How often the node sends its source versions to its peers.
pub const GOSSIP_EVERY: std::time::Duration = std::time::Duration::from_secs(5);
/// How long an admin write waits for a peer to store the record too.
pub const REPLICATE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);
/// Records per push to a peer.
const PUSH_CHUNK: usize = 200;

/// Why an admin command was refused.
#[derive(Debug, Clone, thiserror::Error)]
pub enum AdminError {
    #[error("source '{0}' not found")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("storage failed: {0}")]
    Store(String),
    #[error("{0}")]
    Unavailable(String),
    /// The disk is below its free-space reserve; writes resume once it is not.
    #[error("{0}")]
    DiskFull(String),
    /// The store failed or did not answer in time.
    #[error("{0}")]
    StorageUnavailable(String),
}

impl From<StoreError> for AdminError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::DiskFull { .. } => AdminError::DiskFull(e.to_string()),
            StoreError::Unavailable(_) => AdminError::StorageUnavailable(e.to_string()),
            other => AdminError::Store(other.to_string()),
        }
    }
}

type Reply<T> = RpcReplyPort<Result<T, AdminError>>;

#[derive(RactorMessage)]
pub enum OrchestratorMsg {
    Create(SourceSpec, Reply<SourceView>),
    Replace(SourceSpec, Reply<SourceView>),
    Delete(String, Reply<()>),
    RunNow(String, Reply<()>),
    Get(String, Reply<SourceView>),
    List(Reply<Vec<SourceView>>),
    /// A source's recent runs, newest first.
    Runs(String, usize, Reply<Vec<RunRecord>>),
    /// Every source with the live state its view was built from, for the debug view.
    ListLive(Reply<LiveSources>),
    /// Membership changed: reconcile, and exchange versions with peers.
    Membership,
    /// Time to send our versions to peers.
    Gossip,
    /// A peer's versions: push it what it lacks.
    Digest {
        from: String,
        versions: BTreeMap<String, Version>,
    },
    /// Peers' records to merge; answered once durable when a peer asked.
    Merge(Vec<SourceRecord>, Option<Answer>),
}

/// A source as the API returns it: its spec plus live status.
#[derive(Debug, Clone, Serialize)]
pub struct SourceView {
    #[serde(flatten)]
    pub spec: SourceSpec,
    pub status: SourceStatus,
    pub version: Version,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// Source views together with the live state they were assembled from, so a
/// caller that needs both asks the scrapers and collections once.
#[derive(Debug, Clone)]
pub struct LiveSources {
    pub sources: Vec<SourceView>,
    /// Each scraper's runtime on this node, by source id.
    pub runtimes: BTreeMap<String, SourceRuntime>,
    /// Each collection's summary, by name.
    pub collections: BTreeMap<String, CollectionSummary>,
}

/// A source's live status.
#[derive(Debug, Clone, Serialize)]
pub struct SourceStatus {
    /// The node that runs the source (its name); none while membership settles.
    pub owner: Option<String>,
    /// The owner's node id.
    pub owner_id: Option<String>,
    pub state: SourceState,
    pub last_run: Option<RunRecord>,
    pub next_run: Option<DateTime<Utc>>,
    /// Items in the collection last written by this source.
    pub items: u64,
    pub last_error: Option<String>,
    pub restarts: u64,
    /// The worker container of an isolated source.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub container: Option<crate::domain::WorkerContainer>,
}

pub struct OrchestratorState {
    args: OrchestratorArgs,
    scrapers: ActorRef<ScraperSupervisorMsg>,
    workers: ActorRef<WorkerSupervisorMsg>,
    failures: FailureWindow,
}

fn store_err(e: impl std::fmt::Display) -> AdminError {
    AdminError::Store(e.to_string())
}

impl OrchestratorState {
    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(Store) -> crate::store::Result<T> + Send + 'static,
    ) -> Result<T, AdminError> {
        let store = self.args.store.clone();
        tokio::task::spawn_blocking(move || f(store))
            .await
            .map_err(store_err)?
            .map_err(AdminError::from)
    }

    fn changed(&self, source: &str, change: &'static str) {
        self.args.events.publish(Event::SourceChanged {
            source: source.to_owned(),
            change,
        });
    }

    /// Does this node run the source?
    fn runs_here(&self, record: &SourceRecord) -> bool {
        let spec = &record.spec;
        !record.deleted && spec.enabled && !spec.isolated && self.args.cluster.owns(&spec.id)
    }

    /// Sends our versions to every peer.
    async fn gossip(&self) -> Result<(), AdminError> {
        if self.args.cluster.node_peers().is_empty() {
            return Ok(());
        }
        let versions = self
            .blocking(|s| {
                Ok(s.sources()?
                    .into_iter()
                    .map(|r| (r.spec.id, r.version))
                    .collect::<BTreeMap<_, _>>())
            })
            .await?;
        self.args.cluster.cast_all(&Notice::SourceDigest {
            from: self.args.node_id.clone(),
            versions,
        });
        Ok(())
    }

    /// Pushes to `peer` every record newer than its `versions`.
    async fn push_newer(
        &self,
        peer: &str,
        versions: BTreeMap<String, Version>,
    ) -> Result<(), AdminError> {
        let newer: Vec<SourceRecord> = self
            .blocking(|s| s.sources())
            .await?
            .into_iter()
            .filter(|r| versions.get(&r.spec.id).is_none_or(|v| *v < r.version))
            .collect();
        for chunk in newer.chunks(PUSH_CHUNK) {
            self.args
                .cluster
                .cast_to(peer, &Notice::Sources(chunk.to_vec()));
        }
        Ok(())
    }

    /// Keeps each record newer than ours; returns those kept.
    async fn merge(&self, records: Vec<SourceRecord>) -> Result<Vec<SourceRecord>, AdminError> {
        let kept = self
            .blocking(move |s| {
                let mut kept = Vec::new();
                for record in records {
                    if !crate::domain::spec::is_slug(&record.spec.id) {
                        continue;
                    }
                    let newer = s
                        .source(&record.spec.id)?
                        .is_none_or(|local| local.version < record.version);
                    if newer {
                        s.put_source(&record)?;
                        kept.push(record);
                    }
                }
                if !kept.is_empty() {
                    s.flush()?;
                }
                Ok(kept)
            })
            .await?;
        for record in &kept {
            tracing::info!(source = %record.spec.id, deleted = record.deleted, from = %record.version.node, "source record merged from a peer");
            self.changed(
                &record.spec.id,
                if record.deleted {
                    "deleted"
                } else {
                    "replicated"
                },
            );
            self.reconcile_one(record);
        }
        Ok(kept)
    }

    /// Answers an admin write: at once if it failed, else once replicated.
    fn answer_write<T: Send + 'static>(
        &self,
        reply: Reply<T>,
        result: Result<(SourceRecord, Result<T, AdminError>), AdminError>,
    ) {
        match result {
            Ok((record, answer)) => self.reply_after_replicated(&record, reply, answer),
            Err(e) => {
                let _ = reply.send(Err(e));
            }
        }
    }

    /// Replies once a peer has stored `record` too (bounded; see [`REPLICATE_TIMEOUT`]).
    fn reply_after_replicated<T: Send + 'static>(
        &self,
        record: &SourceRecord,
        reply: Reply<T>,
        result: Result<T, AdminError>,
    ) {
        let pending = self
            .args
            .cluster
            .ask_all(&Request::Sources(vec![record.clone()]), REPLICATE_TIMEOUT);
        if pending.asked() == 0 {
            let _ = reply.send(result);
            return;
        }
        let id = record.spec.id.clone();
        tokio::spawn(async move {
            if pending.first(|r| matches!(r, Response::Ok)).await.is_none() {
                tracing::warn!(source = %id, "no peer stored the source in time; gossip will carry it");
            }
            let _ = reply.send(result);
        });
    }

    fn reconcile_one(&self, record: &SourceRecord) {
        let spec = &record.spec;
        let msg = if self.runs_here(record) {
            ScraperSupervisorMsg::Ensure(Box::new(spec.clone()))
        } else {
            ScraperSupervisorMsg::Remove(spec.id.clone())
        };
        if let Err(e) = self.scrapers.cast(msg) {
            tracing::error!(source = %spec.id, error = %e, "scraper supervisor unreachable");
        }
        let isolated_here =
            !record.deleted && spec.enabled && spec.isolated && self.args.cluster.owns(&spec.id);
        let msg = if isolated_here {
            let version = format!("{}-{}", record.version.millis, record.version.node);
            WorkerSupervisorMsg::Ensure(Box::new(spec.clone()), version)
        } else {
            WorkerSupervisorMsg::Remove(spec.id.clone())
        };
        if let Err(e) = self.workers.cast(msg) {
            tracing::error!(source = %spec.id, error = %e, "worker supervisor unreachable");
        }
    }

    async fn reconcile_all(&self) -> Result<(), AdminError> {
        for record in self.blocking(|s| s.sources()).await? {
            self.reconcile_one(&record);
        }
        Ok(())
    }

    /// Writes a record and flushes it before anything is acknowledged.
    async fn save(&self, record: SourceRecord) -> Result<SourceRecord, AdminError> {
        let saved = record.clone();
        self.blocking(move |s| {
            s.put_source(&saved)?;
            s.flush()
        })
        .await?;
        self.reconcile_one(&record);
        Ok(record)
    }

    /// The live state of the sources run here (only `ids`, when given),
    /// and every collection's summary.
    async fn live(
        &self,
        ids: Option<Vec<String>>,
    ) -> (
        BTreeMap<String, SourceRuntime>,
        BTreeMap<String, CollectionSummary>,
    ) {
        let mut runtimes = match self
            .scrapers
            .call(
                |r| ScraperSupervisorMsg::Statuses(ids, r),
                Some(ASK_TIMEOUT),
            )
            .await
        {
            Ok(ractor::rpc::CallResult::Success(s)) => s,
            _ => BTreeMap::new(),
        };
        add_worker_runtimes(&mut runtimes, &self.workers).await;
        let summaries = match self
            .args
            .collections
            .call(CollectionSupervisorMsg::Summaries, Some(ASK_TIMEOUT))
            .await
        {
            Ok(ractor::rpc::CallResult::Success(s)) => {
                s.into_iter().map(|c| (c.name.clone(), c)).collect()
            }
            _ => BTreeMap::new(),
        };
        (runtimes, summaries)
    }

    async fn views(&self, records: Vec<SourceRecord>) -> Result<Vec<SourceView>, AdminError> {
        Ok(self.views_live(records).await?.sources)
    }

    async fn views_live(&self, records: Vec<SourceRecord>) -> Result<LiveSources, AdminError> {
        let ids: Vec<String> = records.iter().map(|r| r.spec.id.clone()).collect();
        // A few sources: ask for those alone (a create must not cost one
        // call per source of the node).
        let only = (ids.len() <= 16).then(|| ids.clone());
        let last_runs = self
            .blocking(move |s| {
                ids.iter()
                    .map(|id| Ok(s.runs(id, 1)?.pop()))
                    .collect::<crate::store::Result<Vec<_>>>()
            })
            .await?;
        let (runtimes, summaries) = self.live(only).await;
        let sources = records
            .into_iter()
            .zip(last_runs)
            .map(|(record, last_run)| {
                let spec = &record.spec;
                let runtime = runtimes.get(&spec.id);
                // The live scraper's last run is newer when the store could
                // not record it (a full disk).
                let live_run = runtime
                    .and_then(|r| r.scraper.as_ref())
                    .and_then(|s| s.last_run.clone());
                let last_run = match (last_run, live_run) {
                    (Some(kept), Some(live)) if kept.started_at > live.started_at => Some(kept),
                    (kept, live) => live.or(kept),
                };
                let (state, last_error) = if !spec.enabled {
                    (SourceState::Disabled, None)
                } else {
                    match runtime {
                        Some(r) => (r.state, r.last_error.clone()),
                        None => (SourceState::Scheduled, None),
                    }
                };
                let last_error =
                    last_error.or_else(|| last_run.as_ref().and_then(|r| r.error.clone()));
                let items = summaries
                    .get(&spec.collection)
                    .and_then(|c| c.by_source.get(&spec.id))
                    .copied()
                    .unwrap_or(0);
                let owner_id = self.args.cluster.owner_of(&spec.id);
                SourceView {
                    status: SourceStatus {
                        owner: owner_id
                            .as_deref()
                            .and_then(|id| self.args.cluster.name_of(id)),
                        owner_id,
                        state,
                        last_run,
                        next_run: runtime.and_then(|r| r.next_run),
                        items,
                        last_error,
                        restarts: runtime.map_or(0, |r| r.restarts),
                        container: runtime.and_then(|r| r.container.clone()),
                    },
                    spec: record.spec,
                    version: record.version,
                    created_at: record.created_at,
                    updated_at: record.updated_at,
                }
            })
            .collect();
        Ok(LiveSources {
            sources,
            runtimes,
            collections: summaries,
        })
    }

    async fn view(&self, record: SourceRecord) -> Result<SourceView, AdminError> {
        let mut views = self.views(vec![record]).await?;
        views.pop().ok_or_else(|| store_err("no view"))
    }

    /// Every live (not deleted) source, with the state its view came from.
    async fn list_live(&self) -> Result<LiveSources, AdminError> {
        let records = self.blocking(|s| s.sources()).await?;
        self.views_live(records.into_iter().filter(|r| !r.deleted).collect())
            .await
    }

    /// The live (not deleted) record of a source.
    async fn existing(&self, id: &str) -> Result<SourceRecord, AdminError> {
        let key = id.to_owned();
        match self.blocking(move |s| s.source(&key)).await? {
            Some(r) if !r.deleted => Ok(r),
            _ => Err(AdminError::NotFound(id.to_owned())),
        }
    }

    async fn handle_admin(&self, msg: OrchestratorMsg) {
        match msg {
            OrchestratorMsg::Create(spec, reply) => {
                let result = async {
                    let id = spec.id.clone();
                    let previous = self.blocking(move |s| s.source(&id)).await?;
                    if previous.as_ref().is_some_and(|p| !p.deleted) {
                        return Err(AdminError::Conflict(format!("source '{}' already exists", spec.id)));
                    }
                    let now = Utc::now();
                    let record = SourceRecord {
                        version: Version::next(previous.as_ref().map(|p| &p.version), &self.args.node_id),
                        spec,
                        deleted: false,
                        created_at: now,
                        updated_at: now,
                    };
                    let record = self.save(record).await?;
                    tracing::info!(source = %record.spec.id, url = %record.spec.url, "source created");
                    self.changed(&record.spec.id, "created");
                    let view = self.view(record.clone()).await;
                    Ok((record, view))
                }
                .await;
                self.answer_write(reply, result);
            }
            OrchestratorMsg::Replace(spec, reply) => {
                let result = async {
                    let previous = self.existing(&spec.id).await?;
                    let record = SourceRecord {
                        version: Version::next(Some(&previous.version), &self.args.node_id),
                        spec,
                        deleted: false,
                        created_at: previous.created_at,
                        updated_at: Utc::now(),
                    };
                    let record = self.save(record).await?;
                    tracing::info!(source = %record.spec.id, "source replaced");
                    self.changed(&record.spec.id, "replaced");
                    let view = self.view(record.clone()).await;
                    Ok((record, view))
                }
                .await;
                self.answer_write(reply, result);
            }
            OrchestratorMsg::Delete(id, reply) => {
                let result = async {
                    let previous = self.existing(&id).await?;
                    let record = SourceRecord {
                        version: Version::next(Some(&previous.version), &self.args.node_id),
                        deleted: true,
                        updated_at: Utc::now(),
                        ..previous
                    };
                    let record = self.save(record).await?;
                    tracing::info!(source = %id, "source deleted");
                    self.changed(&id, "deleted");
                    Ok((record, Ok(())))
                }
                .await;
                self.answer_write(reply, result);
            }
            OrchestratorMsg::RunNow(id, reply) => {
                let result = async {
                    let record = self.existing(&id).await?;
                    if !record.spec.enabled {
                        return Err(AdminError::Conflict(format!("source '{id}' is disabled")));
                    }
                    if record.spec.isolated {
                        return Err(AdminError::Conflict(
                            "an isolated source runs on its schedule in its worker container"
                                .into(),
                        ));
                    }
                    let owner = self.args.cluster.owner_of(&id);
                    if let Some(owner) = owner.filter(|o| *o != self.args.node_id) {
                        // The owner runs it: ask it, off this mailbox.
                        return Ok(Some(owner));
                    }
                    match self
                        .scrapers
                        .call(
                            |r| ScraperSupervisorMsg::RunNow(id.clone(), r),
                            Some(ASK_TIMEOUT),
                        )
                        .await
                    {
                        Ok(ractor::rpc::CallResult::Success(r)) => {
                            r.map(|()| None).map_err(AdminError::Conflict)
                        }
                        _ => Err(AdminError::Store(
                            "the scraper supervisor did not answer".into(),
                        )),
                    }
                }
                .await;
                match result {
                    Ok(Some(owner)) => {
                        let cluster = self.args.cluster.clone();
                        tokio::spawn(async move {
                            let asked = cluster
                                .call(&owner, &Request::RunNow(id), ASK_TIMEOUT)
                                .await;
                            let _ = reply.send(match asked {
                                Ok(Response::Ok) => Ok(()),
                                Ok(Response::Error(e)) => Err(AdminError::Conflict(e)),
                                Ok(other) => {
                                    Err(AdminError::Store(format!("unexpected answer: {other:?}")))
                                }
                                Err(e) => Err(AdminError::Unavailable(e.to_string())),
                            });
                        });
                    }
                    other => {
                        let _ = reply.send(other.map(|_| ()));
                    }
                }
            }
            OrchestratorMsg::Get(id, reply) => {
                let result = async { self.view(self.existing(&id).await?).await }.await;
                let _ = reply.send(result);
            }
            OrchestratorMsg::List(reply) => {
                let result = async { Ok(self.list_live().await?.sources) }.await;
                let _ = reply.send(result);
            }
            OrchestratorMsg::ListLive(reply) => {
                let _ = reply.send(self.list_live().await);
            }
            OrchestratorMsg::Membership => {
                if let Err(e) = self.reconcile_all().await {
                    tracing::error!(error = %e, "reconcile after a membership change failed");
                }
                if let Err(e) = self.gossip().await {
                    tracing::warn!(error = %e, "gossip failed");
                }
            }
            OrchestratorMsg::Gossip => {
                if let Err(e) = self.gossip().await {
                    tracing::warn!(error = %e, "gossip failed");
                }
            }
            OrchestratorMsg::Digest { from, versions } => {
                if let Err(e) = self.push_newer(&from, versions).await {
                    tracing::warn!(peer = %from, error = %e, "push to peer failed");
                }
            }
            OrchestratorMsg::Merge(records, answer) => {
                let result = self.merge(records).await;
                if let Err(e) = &result {
                    tracing::error!(error = %e, "merging peers' source records failed");
                }
                if let Some(answer) = answer {
                    answer.send(match result {
                        Ok(_) => Response::Ok,
                        Err(e) => Response::Error(e.to_string()),
                    });
                }
            }
            OrchestratorMsg::Runs(id, limit, reply) => {
                let result = async {
                    self.existing(&id).await?;
                    self.blocking(move |s| s.runs(&id, limit)).await
                }
                .await;
                let _ = reply.send(result);
            }
        }
    }
}

async fn spawn_workers(
    myself: &ActorRef<OrchestratorMsg>,
    args: &OrchestratorArgs,
) -> Result<ActorRef<WorkerSupervisorMsg>, ActorProcessingErr> {
    let me = args.cluster.me();
    let (workers, _) = Actor::spawn_linked(
        Some(groups::WORKERS.to_owned()),
        WorkerSupervisor,
        WorkerSupervisorArgs {
            isolation: args.isolation.clone(),
            node_id: me.node_id.clone(),
            node_name: me.name.clone(),
            cluster_addr: (!me.cluster.is_empty()).then(|| me.cluster.clone()),
            cookie: args.cookie.clone(),
            allow_private_targets: args.allow_private_targets.clone(),
        },
        myself.get_cell(),
    )
    .await?;
    Ok(workers)
}

async fn spawn_scrapers(
    myself: &ActorRef<OrchestratorMsg>,
    args: &OrchestratorArgs,
) -> Result<ActorRef<ScraperSupervisorMsg>, ActorProcessingErr> {
    let sup_args = ScraperSupervisorArgs {
        fetcher: args.fetcher.clone(),
        limits: args.limits.clone(),
        store: args.store.clone(),
        sink: BatchSink::Collections(args.collections.clone()),
        restart: args.restart,
        events: args.events.clone(),
        cluster: args.cluster.clone(),
    };
    let (scrapers, _) = Actor::spawn_linked(
        Some(groups::SCRAPERS.to_owned()),
        ScraperSupervisor,
        sup_args,
        myself.get_cell(),
    )
    .await?;
    Ok(scrapers)
}

impl Actor for Orchestrator {
    type Msg = OrchestratorMsg;
    type State = OrchestratorState;
    type Arguments = OrchestratorArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        args: OrchestratorArgs,
    ) -> Result<Self::State, ActorProcessingErr> {
        let scrapers = spawn_scrapers(&myself, &args).await?;
        let workers = spawn_workers(&myself, &args).await?;
        let state = OrchestratorState {
            args,
            scrapers,
            workers,
            failures: FailureWindow::default(),
        };
        let mut changes = state.args.cluster.changes();
        state.reconcile_all().await?;
        let me = myself.clone();
        tokio::spawn(async move {
            while changes.changed().await.is_ok() {
                if me.cast(OrchestratorMsg::Membership).is_err() {
                    break;
                }
            }
        });
        myself.send_interval(GOSSIP_EVERY, || OrchestratorMsg::Gossip);
        Ok(state)
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
        _myself: ActorRef<Self::Msg>,
        msg: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        state.handle_admin(msg).await;
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<Self::Msg>,
        event: SupervisionEvent,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        let (who, why) = match event {
            SupervisionEvent::ActorFailed(who, err) => (who, err.to_string()),
            SupervisionEvent::ActorTerminated(who, _, reason) => {
                (who, reason.unwrap_or_else(|| "stopped".into()))
            }
            _ => return Ok(()),
        };
        let scrapers = who.get_id() == state.scrapers.get_id();
        if !scrapers && who.get_id() != state.workers.get_id() {
            return Ok(());
        }
        let which = if scrapers { "scraper" } else { "worker" };
        tracing::error!(reason = %why, supervisor = which, "supervisor stopped");
        if state.failures.record(Instant::now(), &state.args.restart) == AfterFailure::GiveUp {
            return Err(format!("the {which} supervisor failed too often: {why}").into());
        }
        // Restarting it restarts its children; reconciling puts them back
        // (worker containers are adopted by their labels).
        if scrapers {
            state.scrapers = spawn_scrapers(&myself, &state.args).await?;
        } else {
            state.workers = spawn_workers(&myself, &state.args).await?;
        }
        state.reconcile_all().await?;
        Ok(())
    }
}
