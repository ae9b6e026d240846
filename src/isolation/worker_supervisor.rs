//! WorkerSupervisor: runs this node's isolated sources, each in a worker
//! container of its own (see [`crate::isolation`]). The Orchestrator tells it
//! which isolated sources this node owns (`Ensure`, `Remove`); it reconciles
//! the engine with that at once and every [`RECONCILE_EVERY`]:
//!
//! - a container labelled as ours whose source is not ours (deleted, moved,
//!   left from before a restart) is removed: orphans never outlive us long;
//! - a container started for an older spec is replaced;
//! - a container that is not running (killed, crashed) is replaced;
//! - a source without a container gets one; existing ones are adopted;
//! - a stopped worker of the same cluster (the [`LABEL_CLUSTER`] label) whose
//!   owner is no live member is removed, with its anonymous volume, by
//!   whichever node's full pass sees it first: the orphans of a dead owner;
//! - a stray preview container of the cluster (see
//!   [`stray_preview`](crate::isolation::docker::stray_preview)) is removed by
//!   the same pass: a dead node's that has exited, this node's that no
//!   preview of its waits on, any past the longest preview budget.
//!
//! Without a reachable engine every isolated source reports that error; it is
//! never run in-process.

use std::collections::BTreeMap;
use std::time::Duration;

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use ractor_cluster::RactorMessage;
use serde::{Deserialize, Serialize};

use crate::cluster::Cluster;
use crate::domain::SourceSpec;
use crate::domain::{SourceRuntime, SourceState, Totals, WorkerContainer};
use crate::isolation::docker::{cluster_label, stray_preview, LABEL_CLUSTER};
use crate::isolation::{Isolation, WorkerPlan};
use crate::supervision::{ask, ASK_TIMEOUT};

/// How often the engine is checked without being asked.
pub const RECONCILE_EVERY: Duration = Duration::from_secs(3);

pub struct WorkerSupervisor;

pub struct WorkerSupervisorArgs {
    pub isolation: Isolation,
    pub node_id: String,
    pub node_name: String,
    /// This node's cluster address (the worker's seed); none without a cluster.
    pub cluster_addr: Option<String>,
    pub cookie: Option<String>,
    pub allow_private_targets: Option<String>,
    /// The member view: whose workers are orphans.
    pub cluster: Cluster,
}

#[derive(RactorMessage)]
pub enum WorkerSupervisorMsg {
    /// This node owns the isolated source (spec and its version).
    Ensure(Box<SourceSpec>, String),
    /// This node does not run the source (any more).
    Remove(String),
    Reconcile,
    Statuses(RpcReplyPort<BTreeMap<String, WorkerStatus>>),
}

/// An isolated source's worker as this node sees it.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct WorkerStatus {
    pub container: Option<WorkerContainer>,
    pub last_error: Option<String>,
    /// Containers replaced after they stopped.
    pub replaced: u64,
}

impl WorkerStatus {
    /// The status as a source runtime, as views show sources.
    pub fn as_runtime(&self) -> SourceRuntime {
        let running = self
            .container
            .as_ref()
            .is_some_and(|c| c.state == "running");
        let state = if running {
            SourceState::Running
        } else if self.last_error.is_some() {
            SourceState::Failed
        } else {
            SourceState::Scheduled
        };
        SourceRuntime {
            totals: Totals::default(),
            state,
            next_run: None,
            last_error: self.last_error.clone(),
            restarts: self.replaced,
            scraper: None,
            container: self.container.clone(),
        }
    }
}

/// Adds the workers' statuses, as runtimes, to the scrapers' runtimes of
/// this node (a source runs either as a scraper or as a worker).
pub async fn add_worker_runtimes(
    runtimes: &mut BTreeMap<String, SourceRuntime>,
    workers: &ActorRef<WorkerSupervisorMsg>,
) {
    if let Ok(statuses) = ask(workers, WorkerSupervisorMsg::Statuses, ASK_TIMEOUT).await {
        runtimes.extend(statuses.iter().map(|(id, s)| (id.clone(), s.as_runtime())));
    }
}

pub struct WorkerSupervisorState {
    args: WorkerSupervisorArgs,
    desired: BTreeMap<String, (SourceSpec, String)>,
    status: BTreeMap<String, WorkerStatus>,
}

impl WorkerSupervisorState {
    fn plan(&self, spec: &SourceSpec, version: &str) -> Result<WorkerPlan, String> {
        let (Some(cluster), Some(cookie)) = (&self.args.cluster_addr, &self.args.cookie) else {
            return Err(
                "isolated sources need a cluster: set GLEANER_COOKIE so workers can join".into(),
            );
        };
        Ok(WorkerPlan {
            spec: spec.clone(),
            spec_version: version.to_owned(),
            owner_id: self.args.node_id.clone(),
            owner_name: self.args.node_name.clone(),
            owner_cluster: cluster.clone(),
            cookie: cookie.clone(),
            allow_private_targets: self.args.allow_private_targets.clone(),
        })
    }

    /// Brings the engine in line with what is desired: for one source, or
    /// (`None`) for all, orphans included. Only the periodic pass removes
    /// orphans, so that after a restart every `Ensure` has arrived first and
    /// running workers are adopted, not replaced.
    async fn reconcile(&mut self, only: Option<&str>) {
        let isolation = self.args.isolation.clone();
        let listed = match isolation.list(&self.args.node_id).await {
            Ok(l) => l
                .into_iter()
                .filter(|c| only.is_none_or(|id| c.source == id))
                .collect::<Vec<_>>(),
            Err(e) => {
                for id in self.desired.keys() {
                    let s = self.status.entry(id.clone()).or_default();
                    s.container = None;
                    s.last_error = Some(e.to_string());
                }
                return;
            }
        };
        let mut running: BTreeMap<String, WorkerContainer> = BTreeMap::new();
        for c in listed {
            let wanted = self.desired.get(&c.source);
            let reason = match wanted {
                None => Some("its source is not this node's"),
                Some((_, v)) if *v != c.spec_version => Some("its source changed"),
                Some(_) if c.state != "running" => Some("it stopped"),
                Some(_) => None,
            };
            match reason {
                None => {
                    running.insert(c.source.clone(), c);
                }
                Some(why) => {
                    tracing::info!(source = %c.source, container = %c.id, state = %c.state, reason = why, "removing worker container");
                    if why == "it stopped" {
                        self.status.entry(c.source.clone()).or_default().replaced += 1;
                    }
                    if let Err(e) = isolation.remove(&c.id).await {
                        tracing::warn!(container = %c.id, error = %e, "worker container not removed");
                    }
                }
            }
        }
        let desired: Vec<(String, SourceSpec, String)> = self
            .desired
            .iter()
            .filter(|(id, _)| only.is_none_or(|o| o == id.as_str()))
            .map(|(id, (spec, v))| (id.clone(), spec.clone(), v.clone()))
            .collect();
        for (id, spec, version) in desired {
            if let Some(c) = running.remove(&id) {
                let s = self.status.entry(id).or_default();
                s.container = Some(c);
                s.last_error = None;
                continue;
            }
            let started = match self.plan(&spec, &version) {
                Ok(plan) => isolation.start(&plan).await.map_err(|e| e.to_string()),
                Err(e) => Err(e),
            };
            let s = self.status.entry(id.clone()).or_default();
            match started {
                Ok(c) => {
                    s.container = Some(c);
                    s.last_error = None;
                }
                Err(e) => {
                    tracing::warn!(source = %id, error = %e, "worker container not started");
                    s.container = None;
                    s.last_error = Some(e);
                }
            }
        }
        self.status.retain(|id, _| self.desired.contains_key(id));
        if only.is_none() {
            self.sweep_orphans().await;
            self.sweep_previews().await;
        }
    }

    /// Removes the stopped workers of this cluster whose owner is no live
    /// member (a dead node's, which stopped by themselves). A running one is
    /// left alone: it stops within two peer timeouts of losing its owner.
    async fn sweep_orphans(&self) {
        let Some(cookie) = &self.args.cookie else {
            return;
        };
        let isolation = &self.args.isolation;
        let Ok(workers) = isolation.list_cluster(&cluster_label(cookie)).await else {
            return;
        };
        for w in workers {
            let owner_live = w.owner == self.args.node_id || self.args.cluster.is_live(&w.owner);
            if owner_live || w.container.state == "running" {
                continue;
            }
            tracing::info!(source = %w.container.source, container = %w.container.id, owner = %w.owner, label = LABEL_CLUSTER, "removing an orphaned worker container");
            if let Err(e) = isolation.remove(&w.container.id).await {
                tracing::warn!(container = %w.container.id, error = %e, "orphan not removed");
            }
        }
    }

    /// Removes the stray preview containers of this cluster (this node's
    /// own without a cluster): those no preview waits on any more.
    async fn sweep_previews(&self) {
        let isolation = &self.args.isolation;
        let me = &self.args.node_id;
        let Ok(previews) = isolation.list_previews(me).await else {
            return;
        };
        if previews.is_empty() {
            return;
        }
        let now = chrono::Utc::now().timestamp();
        for p in previews {
            let owner_live = self.args.cluster.is_live(&p.owner);
            let live_here = isolation.previewing(&p.name);
            let Some(reason) = stray_preview(&p, me, live_here, owner_live, now) else {
                continue;
            };
            tracing::info!(container = %p.id, name = %p.name, owner = %p.owner, state = %p.state, reason, "removing a stray preview container");
            if let Err(e) = isolation.remove(&p.id).await {
                tracing::warn!(container = %p.id, error = %e, "stray preview not removed");
            }
        }
    }
}

impl Actor for WorkerSupervisor {
    type Msg = WorkerSupervisorMsg;
    type State = WorkerSupervisorState;
    type Arguments = WorkerSupervisorArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        args: WorkerSupervisorArgs,
    ) -> Result<Self::State, ActorProcessingErr> {
        myself.send_interval(RECONCILE_EVERY, || WorkerSupervisorMsg::Reconcile);
        Ok(WorkerSupervisorState {
            args,
            desired: BTreeMap::new(),
            status: BTreeMap::new(),
        })
    }

    async fn handle(
        &self,
        _myself: ActorRef<Self::Msg>,
        msg: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            WorkerSupervisorMsg::Ensure(spec, version) => {
                let same = state
                    .desired
                    .get(&spec.id)
                    .is_some_and(|(_, v)| *v == version);
                if !same {
                    let id = spec.id.clone();
                    state.desired.insert(id.clone(), (*spec, version));
                    state.reconcile(Some(&id)).await;
                }
            }
            WorkerSupervisorMsg::Remove(id) => {
                if state.desired.remove(&id).is_some() {
                    state.reconcile(Some(&id)).await;
                }
            }
            WorkerSupervisorMsg::Reconcile => state.reconcile(None).await,
            WorkerSupervisorMsg::Statuses(reply) => {
                let _ = reply.send(state.status.clone());
            }
        }
        Ok(())
    }
}
