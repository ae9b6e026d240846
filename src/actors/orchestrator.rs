//! Orchestrator: the node's controller. HTTP sends it every admin command on
//! sources (create, replace, delete, run now, get, list). It writes the source
//! registry in the store (flushed before it answers), then reconciles: each
//! enabled source that placement gives to this node runs under the
//! ScraperSupervisor (its child), and nothing else does. Status views join the
//! stored spec, the last run, the supervisor's live state and the collection's counts.

use std::collections::BTreeMap;
use std::time::Instant;

use chrono::{DateTime, Utc};
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort, SupervisionEvent};
use ractor_cluster::RactorMessage;
use serde::Serialize;

use super::collection_supervisor::CollectionSupervisorMsg;
use super::endpoint::CollectionSummary;
use super::scraper_supervisor::{
    ScraperSupervisor, ScraperSupervisorArgs, ScraperSupervisorMsg, SourceRuntime, SourceState,
};
use super::{AfterFailure, FailureWindow, ASK_TIMEOUT};
use crate::cluster::placement;
use crate::domain::{RunRecord, SourceRecord, SourceSpec, Version};
use crate::events::{Event, Events};
use crate::scrape::extract::Limits;
use crate::scrape::fetch::Fetcher;
use crate::settings::RestartPolicy;
use crate::store::Store;

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
    /// The node that runs the source.
    pub owner: String,
    pub state: SourceState,
    pub last_run: Option<RunRecord>,
    pub next_run: Option<DateTime<Utc>>,
    /// Items in the collection last written by this source.
    pub items: u64,
    pub last_error: Option<String>,
    pub restarts: u64,
}

/// Why an isolated source does not run on this build.
const ISOLATION_UNAVAILABLE: &str =
    "isolated sources run in worker containers, which this node cannot start yet; it is not run in-process";

pub struct OrchestratorState {
    args: OrchestratorArgs,
    scrapers: ActorRef<ScraperSupervisorMsg>,
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
            .map_err(store_err)
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
        !record.deleted
            && spec.enabled
            && !spec.isolated
            && placement::owner(&spec.id, [self.args.node_id.as_str()])
                == Some(self.args.node_id.as_str())
    }

    fn reconcile_one(&self, record: &SourceRecord) {
        let msg = if self.runs_here(record) {
            ScraperSupervisorMsg::Ensure(Box::new(record.spec.clone()))
        } else {
            ScraperSupervisorMsg::Remove(record.spec.id.clone())
        };
        if let Err(e) = self.scrapers.cast(msg) {
            tracing::error!(source = %record.spec.id, error = %e, "scraper supervisor unreachable");
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

    async fn live(
        &self,
    ) -> (
        BTreeMap<String, SourceRuntime>,
        BTreeMap<String, CollectionSummary>,
    ) {
        let runtimes = match self
            .scrapers
            .call(ScraperSupervisorMsg::Statuses, Some(ASK_TIMEOUT))
            .await
        {
            Ok(ractor::rpc::CallResult::Success(s)) => s,
            _ => BTreeMap::new(),
        };
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
        let last_runs = self
            .blocking(move |s| {
                ids.iter()
                    .map(|id| Ok(s.runs(id, 1)?.pop()))
                    .collect::<crate::store::Result<Vec<_>>>()
            })
            .await?;
        let (runtimes, summaries) = self.live().await;
        let sources = records
            .into_iter()
            .zip(last_runs)
            .map(|(record, last_run)| {
                let spec = &record.spec;
                let runtime = runtimes.get(&spec.id);
                let (state, last_error) = if !spec.enabled {
                    (SourceState::Disabled, None)
                } else if spec.isolated {
                    (SourceState::Failed, Some(ISOLATION_UNAVAILABLE.to_string()))
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
                SourceView {
                    status: SourceStatus {
                        owner: self.args.node_name.clone(),
                        state,
                        last_run,
                        next_run: runtime.and_then(|r| r.next_run),
                        items,
                        last_error,
                        restarts: runtime.map_or(0, |r| r.restarts),
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
                    self.view(record).await
                }
                .await;
                let _ = reply.send(result);
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
                    self.view(record).await
                }
                .await;
                let _ = reply.send(result);
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
                    self.save(record).await?;
                    tracing::info!(source = %id, "source deleted");
                    self.changed(&id, "deleted");
                    Ok(())
                }
                .await;
                let _ = reply.send(result);
            }
            OrchestratorMsg::RunNow(id, reply) => {
                let result = async {
                    let record = self.existing(&id).await?;
                    if !record.spec.enabled {
                        return Err(AdminError::Conflict(format!("source '{id}' is disabled")));
                    }
                    if record.spec.isolated {
                        return Err(AdminError::Conflict(ISOLATION_UNAVAILABLE.into()));
                    }
                    match self
                        .scrapers
                        .call(
                            |r| ScraperSupervisorMsg::RunNow(id.clone(), r),
                            Some(ASK_TIMEOUT),
                        )
                        .await
                    {
                        Ok(ractor::rpc::CallResult::Success(r)) => r.map_err(AdminError::Conflict),
                        _ => Err(AdminError::Store(
                            "the scraper supervisor did not answer".into(),
                        )),
                    }
                }
                .await;
                let _ = reply.send(result);
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

async fn spawn_scrapers(
    myself: &ActorRef<OrchestratorMsg>,
    args: &OrchestratorArgs,
) -> Result<ActorRef<ScraperSupervisorMsg>, ActorProcessingErr> {
    let sup_args = ScraperSupervisorArgs {
        fetcher: args.fetcher.clone(),
        limits: args.limits.clone(),
        store: args.store.clone(),
        collections: args.collections.clone(),
        restart: args.restart,
        events: args.events.clone(),
    };
    let (scrapers, _) =
        Actor::spawn_linked(None, ScraperSupervisor, sup_args, myself.get_cell()).await?;
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
        let state = OrchestratorState {
            args,
            scrapers,
            failures: FailureWindow::default(),
        };
        state.reconcile_all().await?;
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
        let why = match event {
            SupervisionEvent::ActorFailed(who, err) if who.get_id() == state.scrapers.get_id() => {
                err.to_string()
            }
            SupervisionEvent::ActorTerminated(who, _, reason)
                if who.get_id() == state.scrapers.get_id() =>
            {
                reason.unwrap_or_else(|| "stopped".into())
            }
            _ => return Ok(()),
        };
        tracing::error!(reason = %why, "scraper supervisor stopped");
        if state.failures.record(Instant::now(), &state.args.restart) == AfterFailure::GiveUp {
            return Err(format!("scraper supervisor failed too often: {why}").into());
        }
        // Restarting it restarts every scraper; reconciling puts them back.
        state.scrapers = spawn_scrapers(&myself, &state.args).await?;
        state.reconcile_all().await?;
        Ok(())
    }
}
