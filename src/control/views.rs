//! The debug view of this node, built here from its actors' `Stats`
//! snapshots: its member entry (with memory and storage) and its actor tree,
//! with every source it owns and every collection. `/debug/state` serialises
//! it for this node and asks every peer for theirs (`Request::Stats`).

use chrono::Utc;
use serde::Serialize;
use serde_json::{json, Value};

use crate::cluster::groups::{COLLECTIONS, ORCHESTRATOR, REPLICATOR, SOURCE_FILES, WEBHOOKS};
use crate::cluster::Cluster;
use crate::control::orchestrator::{LiveSources, OrchestratorMsg, SourceView};
use crate::control::source_files::{SourceFilesMsg, SourceFilesStats};
use crate::delivery::registry::{WebhooksMsg, WebhooksStats};
use crate::domain::SourceState;
use crate::pipeline::aggregator::AggregatorStats;
use crate::pipeline::collection_supervisor::CollectionSupervisorMsg;
use crate::pipeline::replicator::{ReplicatorMsg, ReplicatorStats};
use crate::supervision::{ask_named, ActorError, ASK_TIMEOUT};

/// One actor in the supervision tree.
#[derive(Debug, Serialize)]
pub struct ActorNode {
    pub kind: &'static str,
    pub id: String,
    pub state: String,
    #[serde(skip_serializing_if = "Value::is_null")]
    pub stats: Value,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub children: Vec<ActorNode>,
}

impl ActorNode {
    fn new(
        kind: &'static str,
        id: impl Into<String>,
        state: &str,
        stats: Value,
        children: Vec<ActorNode>,
    ) -> Self {
        ActorNode {
            kind,
            id: id.into(),
            state: state.to_owned(),
            stats,
            children,
        }
    }
}

/// Resident memory of this process in bytes, where the OS tells it.
fn rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kib * 1024)
}

fn state_name(s: SourceState) -> &'static str {
    match s {
        SourceState::Scheduled => "scheduled",
        SourceState::Running => "running",
        SourceState::BackingOff => "backing_off",
        SourceState::Failed => "failed",
        SourceState::Disabled => "disabled",
    }
}

/// This node's part of the debug state: its member entry and its actor tree
/// (also what a peer's `Stats` request gets).
pub async fn node_state(
    cluster: &Cluster,
    started_at: chrono::DateTime<Utc>,
    storage: crate::store::StorageStatus,
) -> Result<Value, ActorError> {
    let me = cluster.me();
    let LiveSources {
        sources,
        runtimes,
        collections: summaries,
    } = ask_named(ORCHESTRATOR, OrchestratorMsg::ListLive, ASK_TIMEOUT)
        .await?
        .map_err(|e| ActorError::Refused(e.to_string()))?;
    let aggregators: Vec<AggregatorStats> =
        ask_named(COLLECTIONS, CollectionSupervisorMsg::Stats, ASK_TIMEOUT).await?;
    let replicator: ReplicatorStats =
        ask_named(REPLICATOR, ReplicatorMsg::Stats, ASK_TIMEOUT).await?;
    let webhooks: WebhooksStats = ask_named(WEBHOOKS, WebhooksMsg::Stats, ASK_TIMEOUT).await?;
    // Missing only while the node's actors restart.
    let source_files: Option<SourceFilesStats> =
        ask_named(SOURCE_FILES, SourceFilesMsg::Stats, ASK_TIMEOUT)
            .await
            .ok();

    let scrapers: Vec<ActorNode> = sources
        .iter()
        .filter_map(|view| {
            let runtime = runtimes.get(&view.spec.id)?;
            let totals = runtime.totals;
            // An isolated source runs in a worker container, not a Scraper here.
            let kind = if view.spec.isolated {
                "Worker"
            } else {
                "Scraper"
            };
            Some(ActorNode::new(
                kind,
                view.spec.id.clone(),
                state_name(runtime.state),
                json!({
                    "runs": totals.runs,
                    "items": totals.items,
                    "errors": totals.errors,
                    "pages": totals.pages,
                    "last_run": view.status.last_run,
                    "next_run": runtime.next_run,
                    "last_error": runtime.last_error,
                    "restarts": runtime.restarts,
                    "container": runtime.container,
                }),
                Vec::new(),
            ))
        })
        .collect();
    let collection_actors: Vec<ActorNode> = aggregators
        .iter()
        .flat_map(|a| {
            let summary = summaries.get(&a.collection);
            [
                ActorNode::new("Aggregator", a.collection.clone(), "running", json!(a), Vec::new()),
                ActorNode::new(
                    "Endpoint",
                    a.collection.clone(),
                    if summary.is_some() { "running" } else { "stopped" },
                    json!({ "items": summary.map(|s| s.items), "last_update": summary.and_then(|s| s.last_update) }),
                    Vec::new(),
                ),
            ]
        })
        .collect();
    let tree = ActorNode::new(
        "NodeSupervisor",
        me.name.clone(),
        "running",
        Value::Null,
        vec![
            ActorNode::new(
                "Orchestrator",
                "orchestrator",
                "running",
                json!({ "sources": sources.len() }),
                vec![ActorNode::new(
                    "ScraperSupervisor",
                    "scrapers",
                    "running",
                    json!({ "scrapers": scrapers.len() }),
                    scrapers,
                )],
            ),
            ActorNode::new(
                "CollectionSupervisor",
                "collections",
                "running",
                json!({ "collections": aggregators.len() }),
                collection_actors,
            ),
            ActorNode::new(
                "Replicator",
                "replicator",
                "running",
                json!(replicator),
                Vec::new(),
            ),
            ActorNode::new(
                "Webhooks",
                "webhooks",
                "running",
                json!({ "senders": webhooks.senders.len() }),
                webhooks
                    .senders
                    .iter()
                    .map(|id| {
                        ActorNode::new("Sender", id.clone(), "running", Value::Null, Vec::new())
                    })
                    .collect(),
            ),
            ActorNode::new(
                "SourceFiles",
                "source_files",
                if source_files.is_some() { "running" } else { "stopped" },
                json!(source_files.as_ref().map(|s| json!({
                    "dir": s.dir, "exists": s.exists, "watching": s.watching, "syncs": s.syncs,
                    "last_sync": s.last_sync, "last_outcome": s.last_outcome, "last_error": s.last_error,
                }))),
                Vec::new(),
            ),
        ],
    );
    let collections: Vec<Value> = summaries
        .values()
        .map(|s| {
            let a = aggregators.iter().find(|a| a.collection == s.name);
            json!({
                "name": s.name, "items": s.items, "last_update": s.last_update,
                "batches": a.map(|a| a.batches), "inserted": a.map(|a| a.inserted), "changed": a.map(|a| a.changed),
            })
        })
        .collect();
    let owned = runtimes.len();
    // Sensitive header values are masked here, as in every shared view.
    let owned_sources: Vec<SourceView> = sources
        .iter()
        .filter(|v| v.status.owner_id.as_ref().is_none_or(|o| *o == me.node_id))
        .map(|v| SourceView {
            spec: v.spec.masked(),
            ..v.clone()
        })
        .collect();
    let member = json!({
        "name": me.name,
        "node_id": me.node_id,
        "address": me.cluster,
        "http": me.http,
        "role": me.role,
        "state": "up",
        "started_at": started_at,
        "uptime_secs": (Utc::now() - started_at).num_seconds().max(0),
        "sources_owned": owned,
        "memory_rss_bytes": rss_bytes(),
        "storage": storage,
    });
    Ok(json!({
        "member": member,
        // Each node lists the sources it owns, so a cluster-wide view shows each once.
        "node": {
            "name": me.name, "tree": tree, "sources": owned_sources, "collections": collections,
            "throughput": crate::instruments::throughput::series(),
            // The sources directory as this node last read it: every file,
            // with `error` (and `field`) when it is broken.
            "source_files": source_files.map(|s| s.files).unwrap_or_default(),
        },
    }))
}
