//! The debug view of a node: `/debug/state` (every member, every actor of the
//! supervision tree with its stats, every source and collection, as JSON),
//! `/debug/events` (a live stream of [`crate::events::Event`]s as server-sent
//! events), and `/dashboard` (a page that shows both). The page and its
//! script are static and hold no data: the data routes need the admin token.
//!
//! `/debug/state` shape (documented in docs/dashboard.md):
//! `{"self", "generated_at", "members": [...], "nodes": [{"name", "tree", "sources", "collections"}]}`.

use std::time::Duration;

use actix_web::http::header;
use actix_web::{web, HttpRequest, HttpResponse};
use chrono::Utc;
use futures_util::StreamExt;
use serde::Serialize;
use serde_json::{json, Value};

use super::error::ApiError;
use super::{ask, auth, AppState};
use crate::actors::aggregator::AggregatorStats;
use crate::actors::collection_supervisor::CollectionSupervisorMsg;
use crate::actors::orchestrator::{LiveSources, OrchestratorMsg, SourceView};
use crate::actors::replicator::{ReplicatorMsg, ReplicatorStats};
use crate::actors::scraper_supervisor::SourceState;
use crate::cluster::groups::{COLLECTIONS, ORCHESTRATOR, REPLICATOR};
use crate::cluster::wire::{Request, Response};
use crate::cluster::Cluster;

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
) -> Result<Value, ApiError> {
    let me = cluster.me();
    let LiveSources {
        sources,
        runtimes,
        collections: summaries,
    } = ask(ORCHESTRATOR, OrchestratorMsg::ListLive).await??;
    let aggregators: Vec<AggregatorStats> =
        ask(COLLECTIONS, CollectionSupervisorMsg::Stats).await?;
    let replicator: ReplicatorStats = ask(REPLICATOR, ReplicatorMsg::Stats).await?;

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
    let owned_sources: Vec<&SourceView> = sources
        .iter()
        .filter(|v| v.status.owner_id.as_ref().is_none_or(|o| *o == me.node_id))
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
        "node": { "name": me.name, "tree": tree, "sources": owned_sources, "collections": collections },
    }))
}

pub async fn state(req: HttpRequest, state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    auth::require(&req, state.admin_token.as_deref())?;
    let local = node_state(
        &state.cluster,
        state.started_at,
        state.store.storage_status(true),
    )
    .await?;
    let mut members = vec![local["member"].clone()];
    let mut nodes = vec![local["node"].clone()];
    // Every other member's part, asked of all at once; one that does not
    // answer is listed with its state and why.
    let answers = state
        .cluster
        .ask_all(&Request::Stats, PEER_STATS_TIMEOUT)
        .all()
        .await;
    for m in state.cluster.members().into_iter().skip(1) {
        match answers.get(&m.node_id) {
            Some(Ok(Response::Stats(v))) => {
                let mut member = v["member"].clone();
                member["state"] = json!(m.state);
                members.push(member);
                nodes.push(v["node"].clone());
            }
            None if m.role == crate::cluster::view::Role::Worker => {
                // Workers run one source for their owner, whose tree shows it.
                members.push(json!({
                    "name": m.name, "node_id": m.node_id, "address": m.address,
                    "role": m.role, "state": m.state,
                }));
            }
            other => {
                let why = match other {
                    Some(Ok(r)) => format!("unexpected answer: {r:?}"),
                    Some(Err(e)) => e.to_string(),
                    None => "not reachable".to_owned(),
                };
                members.push(json!({
                    "name": m.name, "node_id": m.node_id, "address": m.address, "http": m.http,
                    "role": m.role, "state": m.state, "error": why,
                }));
            }
        }
    }
    Ok(HttpResponse::Ok().json(json!({
        "self": state.node_name,
        "generated_at": Utc::now(),
        "members": members,
        "nodes": nodes,
    })))
}

/// How long `/debug/state` waits for each peer's part.
const PEER_STATS_TIMEOUT: Duration = Duration::from_secs(2);

/// Heartbeat comment interval, so proxies keep the stream open.
const KEEPALIVE: Duration = Duration::from_secs(15);

pub async fn events(
    req: HttpRequest,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    auth::require(&req, state.admin_token.as_deref())?;
    let rx = state.events.subscribe();
    let hello = web::Bytes::from(format!(
        "event: hello\ndata: {}\n\n",
        json!({ "node": state.node_name, "at": Utc::now() })
    ));
    let stream = futures_util::stream::once(async move { Ok::<_, actix_web::Error>(hello) }).chain(
        futures_util::stream::unfold(rx, |mut rx| async move {
            let frame = tokio::select! {
                received = rx.recv() => match received {
                    Ok(event) => format!("data: {}\n\n", serde_json::to_string(&event).unwrap_or_default()),
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(missed)) => {
                        format!("event: lagged\ndata: {}\n\n", json!({ "missed": missed }))
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return None,
                },
                _ = tokio::time::sleep(KEEPALIVE) => ": keepalive\n\n".to_owned(),
            };
            Some((Ok::<_, actix_web::Error>(web::Bytes::from(frame)), rx))
        }),
    );
    Ok(HttpResponse::Ok()
        .insert_header((header::CONTENT_TYPE, "text/event-stream"))
        .insert_header((header::CACHE_CONTROL, "no-cache"))
        // Compression would buffer events; proxies must not buffer either.
        .insert_header((header::CONTENT_ENCODING, "identity"))
        .insert_header(("X-Accel-Buffering", "no"))
        .streaming(stream))
}

/// The page's security policy: only our own script and style, no inline code,
/// no frames, so even text that slipped into markup could not run.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; \
                   img-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

fn asset(content_type: &str, body: &'static str) -> HttpResponse {
    HttpResponse::Ok()
        .insert_header((header::CONTENT_TYPE, content_type))
        .insert_header((header::CONTENT_SECURITY_POLICY, CSP))
        .insert_header((header::X_CONTENT_TYPE_OPTIONS, "nosniff"))
        .insert_header((header::CACHE_CONTROL, "no-cache"))
        .body(body)
}

pub async fn dashboard() -> HttpResponse {
    asset(
        "text/html; charset=utf-8",
        include_str!("dashboard/index.html"),
    )
}

pub async fn dashboard_js() -> HttpResponse {
    asset(
        "text/javascript; charset=utf-8",
        include_str!("dashboard/app.js"),
    )
}

pub async fn dashboard_css() -> HttpResponse {
    asset("text/css; charset=utf-8", include_str!("dashboard/app.css"))
}
