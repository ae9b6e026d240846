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
//!
//! Files: this one holds the actor, its messages and a one-line dispatch;
//! `commands` one method per admin command, `files` the sources directory's
//! sync, `registry` the replicated
//! registry (gossip, merge, acknowledgements, reconciliation) and `views`
//! the status views.

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
use crate::domain::{
    ManagedBy, RunRecord, SourceRecord, SourceRuntime, SourceSpec, SourceState, Version,
};
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
use crate::supervision::{ask, child_down, AfterFailure, ChildDown, FailureWindow, ASK_TIMEOUT};

mod commands;
mod files;
mod registry;
mod views;

pub use commands::REPLICATE_TIMEOUT;
pub use files::{FileSync, FileSyncOutcome};
pub use registry::GOSSIP_EVERY;
pub use views::{LiveSources, SourceStatus, SourceView};

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
    /// The source is defined by a file of the sources directory.
    #[error(
        "source '{id}' is managed by the file '{file}' of the sources directory: change the file"
    )]
    ManagedByFile { id: String, file: String },
    #[error("collection '{0}' not found")]
    CollectionNotFound(String),
    /// Sources still feed the collection.
    #[error("collection '{name}' is fed by the sources {}: delete them or point them elsewhere first", .sources.join(", "))]
    CollectionInUse { name: String, sources: Vec<String> },
    /// The spec a patch makes is not valid.
    #[error("{0}")]
    Invalid(crate::domain::SpecError),
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
    /// Applies a JSON merge patch (RFC 7396) to a source's spec.
    Patch(String, serde_json::Value, Reply<SourceView>),
    /// Deletes a collection's data on every node (no source may feed it).
    DropCollection(String, Reply<()>),
    /// The sources directory as this node read it: upsert, delete.
    SyncFiles(FileSync, Reply<FileSyncOutcome>),
    Delete(String, Reply<()>),
    RunNow(String, Reply<()>),
    Get(String, Reply<SourceView>),
    List(Reply<Vec<SourceView>>),
    /// A source's recent runs, newest first.
    Runs(String, usize, Reply<Vec<RunRecord>>),
    /// Every source with the live state its view was built from, for the debug view.
    ListLive(Reply<LiveSources>),
    /// How many sources this node owns per state, for `/metrics`: from
    /// counts the node keeps (no store read, no scraper asked).
    StateCounts(Reply<Vec<(SourceState, u64)>>),
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

pub struct OrchestratorState {
    args: OrchestratorArgs,
    scrapers: ActorRef<ScraperSupervisorMsg>,
    workers: ActorRef<WorkerSupervisorMsg>,
    failures: FailureWindow,
    /// The disabled sources this node owns, kept as records are reconciled.
    disabled_here: std::sync::Mutex<std::collections::BTreeSet<String>>,
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

    /// The live (not deleted) record of a source.
    async fn existing(&self, id: &str) -> Result<SourceRecord, AdminError> {
        let key = id.to_owned();
        match self.blocking(move |s| s.source(&key)).await? {
            Some(r) if !r.deleted => Ok(r),
            _ => Err(AdminError::NotFound(id.to_owned())),
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
            cluster: args.cluster.clone(),
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
            disabled_here: Default::default(),
        };
        // Subscribed first: a change during the first reconcile is not lost.
        state
            .args
            .cluster
            .notify_changes(myself.clone(), || OrchestratorMsg::Membership);
        state.reconcile_all().await?;
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
        match msg {
            OrchestratorMsg::Create(spec, reply) => state.create(spec, reply).await,
            OrchestratorMsg::Replace(spec, reply) => state.replace(spec, reply).await,
            OrchestratorMsg::Patch(id, patch, reply) => state.patch(id, patch, reply).await,
            OrchestratorMsg::DropCollection(name, reply) => {
                state.drop_collection(name, reply).await
            }
            OrchestratorMsg::SyncFiles(sync, reply) => state.sync_files(sync, reply).await,
            OrchestratorMsg::Delete(id, reply) => state.delete(id, reply).await,
            OrchestratorMsg::RunNow(id, reply) => state.run_now(id, reply).await,
            OrchestratorMsg::Get(id, reply) => state.get(id, reply).await,
            OrchestratorMsg::List(reply) => state.list(reply).await,
            OrchestratorMsg::ListLive(reply) => state.list_with_live(reply).await,
            OrchestratorMsg::StateCounts(reply) => state.state_counts(reply),
            OrchestratorMsg::Runs(id, limit, reply) => state.runs(id, limit, reply).await,
            OrchestratorMsg::Membership => state.on_membership().await,
            OrchestratorMsg::Gossip => state.on_gossip().await,
            OrchestratorMsg::Digest { from, versions } => state.on_digest(from, versions).await,
            OrchestratorMsg::Merge(records, answer) => state.on_merge(records, answer).await,
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<Self::Msg>,
        event: SupervisionEvent,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        let Some(ChildDown { who, why, .. }) = child_down(event) else {
            return Ok(());
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
