//! NodeSupervisor: the root of a node's actor tree. It starts the
//! CollectionSupervisor, the Orchestrator (which needs it), the
//! Replicator and the Webhooks actor, all under registered names so HTTP and the Peer actor always
//! find the current ones. If any fails, all are restarted together
//! (one-for-all: the Orchestrator's scrapers hold aggregator references);
//! past the restart intensity the node supervisor itself fails, and the
//! process exits.

use std::time::Instant;

use ractor::{Actor, ActorProcessingErr, ActorRef, SupervisionEvent};
use ractor_cluster::RactorMessage;

use super::orchestrator::{Orchestrator, OrchestratorArgs, OrchestratorMsg};
use super::source_files::{SourceFiles, SourceFilesArgs, SourceFilesMsg};
use crate::cluster::groups;
use crate::cluster::Cluster;
use crate::delivery::registry::{Webhooks, WebhooksArgs, WebhooksMsg};
use crate::events::Events;
use crate::pipeline::collection_supervisor::{
    CollectionSupervisor, CollectionSupervisorArgs, CollectionSupervisorMsg,
};
use crate::pipeline::replicator::{Replicator, ReplicatorArgs, ReplicatorMsg};
use crate::scrape::extract::Limits;
use crate::scrape::fetch::Fetcher;
use crate::settings::RestartPolicy;
use crate::store::Store;
use crate::supervision::{child_down, AfterFailure, ChildDown, FailureWindow, ASK_TIMEOUT};

pub struct NodeSupervisor;

#[derive(Clone)]
pub struct NodeSupervisorArgs {
    pub store: Store,
    pub node_name: String,
    pub node_id: String,
    pub fetcher: Fetcher,
    pub limits: Limits,
    pub restart: RestartPolicy,
    pub events: Events,
    pub cluster: Cluster,
    pub isolation: crate::isolation::Isolation,
    pub flusher: crate::store::Flusher,
    pub cookie: Option<String>,
    pub allow_private_targets: Option<String>,
    /// The sources directory (sources as files).
    pub sources_dir: std::path::PathBuf,
}

#[derive(RactorMessage)]
pub enum NodeMsg {
    /// Internal: restart the children after a failure's backoff.
    Restart,
}

pub struct NodeState {
    args: NodeSupervisorArgs,
    collections: Option<ActorRef<CollectionSupervisorMsg>>,
    orchestrator: Option<ActorRef<OrchestratorMsg>>,
    replicator: Option<ActorRef<ReplicatorMsg>>,
    webhooks: Option<ActorRef<WebhooksMsg>>,
    source_files: Option<ActorRef<SourceFilesMsg>>,
    failures: FailureWindow,
}

impl NodeState {
    async fn start_children(
        &mut self,
        myself: &ActorRef<NodeMsg>,
    ) -> Result<(), ActorProcessingErr> {
        let a = &self.args;
        let (collections, _) = Actor::spawn_linked(
            Some(groups::COLLECTIONS.to_string()),
            CollectionSupervisor,
            CollectionSupervisorArgs {
                store: a.store.clone(),
                flusher: a.flusher.clone(),
                cluster: a.cluster.clone(),
                restart: a.restart,
                events: a.events.clone(),
            },
            myself.get_cell(),
        )
        .await?;
        self.collections = Some(collections.clone());
        let (orchestrator, _) = Actor::spawn_linked(
            Some(groups::ORCHESTRATOR.to_string()),
            Orchestrator,
            OrchestratorArgs {
                store: a.store.clone(),
                node_name: a.node_name.clone(),
                node_id: a.node_id.clone(),
                collections,
                fetcher: a.fetcher.clone(),
                limits: a.limits.clone(),
                restart: a.restart,
                events: a.events.clone(),
                cluster: a.cluster.clone(),
                isolation: a.isolation.clone(),
                cookie: a.cookie.clone(),
                allow_private_targets: a.allow_private_targets.clone(),
            },
            myself.get_cell(),
        )
        .await?;
        self.orchestrator = Some(orchestrator);
        let (replicator, _) = Actor::spawn_linked(
            Some(groups::REPLICATOR.to_string()),
            Replicator,
            ReplicatorArgs {
                cluster: a.cluster.clone(),
                store: a.store.clone(),
            },
            myself.get_cell(),
        )
        .await?;
        self.replicator = Some(replicator);
        let (webhooks, _) = Actor::spawn_linked(
            Some(groups::WEBHOOKS.to_string()),
            Webhooks,
            WebhooksArgs {
                store: a.store.clone(),
                flusher: a.flusher.clone(),
                cluster: a.cluster.clone(),
                targets: a.fetcher.targets().clone(),
                node_name: a.node_name.clone(),
            },
            myself.get_cell(),
        )
        .await?;
        let (source_files, _) = Actor::spawn_linked(
            Some(groups::SOURCE_FILES.to_string()),
            SourceFiles,
            SourceFilesArgs {
                dir: a.sources_dir.clone(),
            },
            myself.get_cell(),
        )
        .await?;
        self.webhooks = Some(webhooks);
        self.source_files = Some(source_files);
        Ok(())
    }

    async fn stop_children(&mut self) {
        if let Some(w) = self.webhooks.take() {
            w.stop_and_wait(None, Some(ASK_TIMEOUT)).await.ok();
        }
        if let Some(f) = self.source_files.take() {
            f.stop_and_wait(None, Some(ASK_TIMEOUT)).await.ok();
        }
        if let Some(r) = self.replicator.take() {
            r.stop_and_wait(None, Some(ASK_TIMEOUT)).await.ok();
        }
        if let Some(o) = self.orchestrator.take() {
            o.stop_and_wait(None, Some(ASK_TIMEOUT)).await.ok();
        }
        if let Some(c) = self.collections.take() {
            c.stop_and_wait(None, Some(ASK_TIMEOUT)).await.ok();
        }
    }
}

impl Actor for NodeSupervisor {
    type Msg = NodeMsg;
    type State = NodeState;
    type Arguments = NodeSupervisorArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        args: NodeSupervisorArgs,
    ) -> Result<Self::State, ActorProcessingErr> {
        let mut state = NodeState {
            args,
            collections: None,
            orchestrator: None,
            replicator: None,
            webhooks: None,
            source_files: None,
            failures: FailureWindow::default(),
        };
        state.start_children(&myself).await?;
        Ok(state)
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<Self::Msg>,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        // The orchestrator first: its scrapers write to the collections.
        state.stop_children().await;
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        msg: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            NodeMsg::Restart => {
                if state.orchestrator.is_none() {
                    state.start_children(&myself).await?;
                    tracing::info!("node actors restarted");
                }
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
        let Some(ChildDown { who, why, .. }) = child_down(event) else {
            return Ok(());
        };
        let id = who.get_id();
        let ours = state
            .orchestrator
            .as_ref()
            .is_some_and(|o| o.get_id() == id)
            || state.collections.as_ref().is_some_and(|c| c.get_id() == id)
            || state.replicator.as_ref().is_some_and(|r| r.get_id() == id)
            || state.webhooks.as_ref().is_some_and(|w| w.get_id() == id)
            || state
                .source_files
                .as_ref()
                .is_some_and(|f| f.get_id() == id);
        if !ours {
            return Ok(());
        }
        tracing::error!(actor = ?who.get_name(), reason = %why, "node actor stopped, restarting the node's actors");
        state.stop_children().await;
        match state.failures.record(Instant::now(), &state.args.restart) {
            AfterFailure::RestartIn(delay) => {
                myself.send_after(delay, || NodeMsg::Restart);
                Ok(())
            }
            AfterFailure::GiveUp => Err(format!("node actors failed too often: {why}").into()),
        }
    }
}
