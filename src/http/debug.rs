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
use serde_json::json;

use super::error::ApiError;
use super::{auth, AppState};
use crate::cluster::wire::{Request, Response};
use crate::control::views::node_state;

#[utoipa::path(get, path = "/debug/state", tag = "debug",
    responses((status = 200, description = "Every member's actors (docs/dashboard.md)", body = serde_json::Value),
        (status = 401, description = "A token is required and missing or wrong", body = super::error::ErrorBody)))]
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

#[utoipa::path(get, path = "/debug/events", tag = "debug",
    responses((status = 200, description = "A live stream of this node's events", content_type = "text/event-stream", body = String),
        (status = 401, description = "A token is required and missing or wrong", body = super::error::ErrorBody)))]
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

#[utoipa::path(get, path = "/dashboard", tag = "debug",
    responses((status = 200, description = "The dashboard page", content_type = "text/html", body = String)))]
pub async fn dashboard() -> HttpResponse {
    asset(
        "text/html; charset=utf-8",
        include_str!("dashboard/index.html"),
    )
}

#[utoipa::path(get, path = "/dashboard/app.js", tag = "debug",
    responses((status = 200, description = "The dashboard's script", content_type = "text/javascript", body = String)))]
pub async fn dashboard_js() -> HttpResponse {
    asset(
        "text/javascript; charset=utf-8",
        include_str!("dashboard/app.js"),
    )
}

#[utoipa::path(get, path = "/dashboard/app.css", tag = "debug",
    responses((status = 200, description = "The dashboard's style sheet", content_type = "text/css", body = String)))]
pub async fn dashboard_css() -> HttpResponse {
    asset("text/css; charset=utf-8", include_str!("dashboard/app.css"))
}

#[utoipa::path(get, path = "/dashboard/charts.js", tag = "debug",
    responses((status = 200, description = "The dashboard's charts and webhooks table", content_type = "text/javascript", body = String)))]
pub async fn dashboard_charts_js() -> HttpResponse {
    asset(
        "text/javascript; charset=utf-8",
        include_str!("dashboard/charts.js"),
    )
}
