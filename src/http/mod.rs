//! The HTTP API (actix-web). Every node serves every route; handlers ask the
//! node's actors (found by registered name, so a restarted actor is found
//! again) with a timeout, and a timeout or a missing actor is a 503.
//!
//! One file per resource: [`sources`] and [`webhooks`] (admin), [`preview`]
//! (admin: a spec tried against its site, nothing stored), [`hosts`] (admin:
//! host policies and their politeness state), [`collections`] (read),
//! [`health`], [`metrics`] (Prometheus text), [`openapi`] (the OpenAPI
//! document, generated from the handlers' annotations and types); [`error`]
//! maps every failure to the one JSON error shape and [`auth`] checks bearer
//! tokens.

pub mod auth;
pub mod cluster;
pub mod collections;
pub mod debug;
pub mod error;
pub mod health;
pub mod hosts;
pub mod metrics;
pub mod openapi;
pub mod preview;
pub mod sources;
pub mod webhooks;

use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use actix_web::{web, HttpRequest, HttpResponse};
use futures_util::StreamExt;
use ractor::{Message, RpcReplyPort};

use crate::store::Store;
use error::ApiError;

/// Largest request body accepted (a source spec is a few KiB).
pub const MAX_BODY_BYTES: usize = 256 * 1024;
/// Time allowed for the actors to answer one request.
pub const ACTOR_TIMEOUT: Duration = Duration::from_secs(10);

/// What every handler shares.
pub struct AppState {
    pub store: Store,
    pub node_name: String,
    pub node_id: String,
    /// The HTTP address this node is bound to.
    pub http_addr: std::net::SocketAddr,
    pub started_at: chrono::DateTime<chrono::Utc>,
    pub events: crate::events::Events,
    pub admin_token: Option<String>,
    pub read_token: Option<String>,
    /// False until the node's actors are up, and again once shutdown starts.
    pub ready: Arc<AtomicBool>,
    pub cluster: crate::cluster::Cluster,
    /// Rendered pages of items (see `collections::PageCache`).
    pub pages: collections::PageCache,
    /// Group commit; readers wait on it for writes not yet flushed.
    pub flusher: crate::store::Flusher,
    /// Which non-public addresses outbound URLs (webhooks) may reach.
    pub targets: crate::scrape::fetch::TargetPolicy,
    /// The node's HTTP client and politeness state, shared with its
    /// scrapers: a preview is one more client of the same hosts.
    pub fetcher: crate::scrape::fetch::Fetcher,
    /// Extraction limits, as the scrapers have them.
    pub limits: crate::scrape::extract::Limits,
    /// Host policies (stored, replicated) and, through it, this node's host gates.
    pub hosts: crate::control::hosts::HostRegistry,
    /// The engine, for previews of isolated sources (in containers).
    pub isolation: crate::isolation::Isolation,
    /// As given, passed on to preview containers.
    pub allow_private_targets: Option<String>,
}

/// Registers every route on an actix `App`.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(
        web::resource("/api/v1/sources")
            .route(web::post().to(sources::create))
            .route(web::get().to(sources::list))
            .default_service(web::to(method_not_allowed)),
    )
    .service(
        web::resource("/api/v1/sources/{id}")
            .route(web::get().to(sources::get))
            .route(web::put().to(sources::replace))
            .route(web::patch().to(sources::patch))
            .route(web::delete().to(sources::delete))
            .default_service(web::to(method_not_allowed)),
    )
    .service(
        web::resource("/api/v1/preview")
            .route(web::post().to(preview::preview))
            .default_service(web::to(method_not_allowed)),
    )
    .service(
        web::resource("/api/v1/sources/{id}/preview")
            .route(web::post().to(preview::preview_stored))
            .default_service(web::to(method_not_allowed)),
    )
    .service(
        web::resource("/api/v1/sources/{id}/run")
            .route(web::post().to(sources::run_now))
            .default_service(web::to(method_not_allowed)),
    )
    .service(
        web::resource("/api/v1/sources/{id}/runs")
            .route(web::get().to(sources::runs))
            .default_service(web::to(method_not_allowed)),
    )
    .service(
        web::resource("/api/v1/webhooks")
            .route(web::post().to(webhooks::create))
            .route(web::get().to(webhooks::list))
            .default_service(web::to(method_not_allowed)),
    )
    .service(
        web::resource("/api/v1/webhooks/{id}")
            .route(web::get().to(webhooks::get))
            .route(web::put().to(webhooks::replace))
            .route(web::delete().to(webhooks::delete))
            .default_service(web::to(method_not_allowed)),
    )
    .service(
        web::resource("/api/v1/hosts")
            .route(web::get().to(hosts::list))
            .default_service(web::to(method_not_allowed)),
    )
    .service(
        web::resource("/api/v1/hosts/{host}")
            .route(web::get().to(hosts::get))
            .route(web::put().to(hosts::put))
            .route(web::delete().to(hosts::delete))
            .default_service(web::to(method_not_allowed)),
    )
    .service(
        web::resource("/api/v1/collections")
            .route(web::get().to(collections::list))
            .default_service(web::to(method_not_allowed)),
    )
    .service(
        web::resource("/api/v1/collections/{name}")
            .route(web::delete().to(collections::delete))
            .default_service(web::to(method_not_allowed)),
    )
    .service(
        web::resource("/api/v1/collections/{name}/items")
            .route(web::get().to(collections::items))
            .default_service(web::to(method_not_allowed)),
    )
    .service(
        web::resource("/api/v1/collections/{name}/changes")
            .route(web::get().to(collections::changes))
            .default_service(web::to(method_not_allowed)),
    )
    .service(
        web::resource("/api/v1/collections/{name}/items/{key}")
            .route(web::get().to(collections::item))
            .default_service(web::to(method_not_allowed)),
    )
    .service(
        web::resource("/api/v1/openapi.json")
            .route(web::get().to(openapi::openapi_json))
            .default_service(web::to(method_not_allowed)),
    )
    .service(
        web::resource("/api/v1/cluster")
            .route(web::get().to(cluster::members))
            .default_service(web::to(method_not_allowed)),
    )
    .service(web::resource("/debug/state").route(web::get().to(debug::state)))
    .service(web::resource("/debug/events").route(web::get().to(debug::events)))
    .service(web::resource("/dashboard").route(web::get().to(debug::dashboard)))
    .service(web::resource("/dashboard/app.js").route(web::get().to(debug::dashboard_js)))
    .service(web::resource("/dashboard/app.css").route(web::get().to(debug::dashboard_css)))
    .service(web::resource("/dashboard/charts.js").route(web::get().to(debug::dashboard_charts_js)))
    .service(web::resource("/metrics").route(web::get().to(metrics::metrics)))
    .service(web::resource("/healthz").route(web::get().to(health::healthz)))
    .service(web::resource("/readyz").route(web::get().to(health::readyz)))
    .default_service(web::to(not_found));
}

async fn not_found(req: HttpRequest) -> Result<HttpResponse, ApiError> {
    Err(ApiError::NotFound(format!(
        "no route for {} {}",
        req.method(),
        req.path()
    )))
}

async fn method_not_allowed(req: HttpRequest) -> Result<HttpResponse, ApiError> {
    Err(ApiError::MethodNotAllowed(format!(
        "{} is not allowed on {}",
        req.method(),
        req.path()
    )))
}

/// Asks the actor registered under `name`, within [`ACTOR_TIMEOUT`].
pub async fn ask<M: Message, T: Send + 'static>(
    name: &str,
    build: impl FnOnce(RpcReplyPort<T>) -> M,
) -> Result<T, ApiError> {
    Ok(crate::supervision::ask_named(name, build, ACTOR_TIMEOUT).await?)
}

/// Reads a request body of at most [`MAX_BODY_BYTES`].
pub async fn read_body(
    req: &HttpRequest,
    mut payload: web::Payload,
) -> Result<web::Bytes, ApiError> {
    let declared = req
        .headers()
        .get(actix_web::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > MAX_BODY_BYTES) {
        return Err(ApiError::TooLarge {
            limit: MAX_BODY_BYTES,
        });
    }
    let mut body = web::BytesMut::new();
    while let Some(chunk) = payload.next().await {
        let chunk = chunk.map_err(|e| ApiError::Invalid {
            field: None,
            message: format!("reading the request body: {e}"),
        })?;
        if body.len() + chunk.len() > MAX_BODY_BYTES {
            return Err(ApiError::TooLarge {
                limit: MAX_BODY_BYTES,
            });
        }
        body.extend_from_slice(&chunk);
    }
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::Invalid {
            field: None,
            message: "the request body is empty: send a JSON source spec".into(),
        });
    }
    Ok(body.freeze())
}

/// Time allowed for one piece of store work behind a request.
pub const STORE_TIMEOUT: Duration = Duration::from_secs(10);

/// Runs blocking store work off the async workers; a store that does not
/// answer in [`STORE_TIMEOUT`] is a 503, never a hung request.
pub async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    match tokio::time::timeout(STORE_TIMEOUT, tokio::task::spawn_blocking(f)).await {
        Ok(done) => done.map_err(|e| ApiError::Internal(e.into()))?,
        Err(_) => Err(stalled()),
    }
}

fn stalled() -> ApiError {
    ApiError::StorageUnavailable(format!(
        "storage did not answer within {} s",
        STORE_TIMEOUT.as_secs()
    ))
}

/// Waits until every item write to `collection` that a reader may have
/// seen is flushed (at once when it already is): nothing is served that a
/// crash could take back.
pub async fn durable(state: &AppState, collection: &str) -> Result<(), ApiError> {
    if state.store.durable(collection) {
        return Ok(());
    }
    match tokio::time::timeout(STORE_TIMEOUT, state.flusher.flushed()).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(e.into()),
        Err(_) => Err(stalled()),
    }
}

/// A 202 with a small JSON body.
pub fn accepted(body: serde_json::Value) -> HttpResponse {
    HttpResponse::Accepted().json(body)
}

/// Logs each request at debug level with its status and duration, and counts
/// it in the metrics by route pattern (never the raw path: one series per
/// route, not per source id or item key).
pub async fn access_log(
    req: actix_web::dev::ServiceRequest,
    next: actix_web::middleware::Next<impl actix_web::body::MessageBody>,
) -> Result<actix_web::dev::ServiceResponse<impl actix_web::body::MessageBody>, actix_web::Error> {
    let started = std::time::Instant::now();
    let method = req.method().clone();
    let path = req.path().to_owned();
    let response = next.call(req).await?;
    let route = response.request().match_pattern();
    crate::instruments::http_request(
        route.as_deref().unwrap_or("unmatched"),
        method.as_str(),
        response.status().as_u16(),
    );
    tracing::debug!(
        %method,
        %path,
        status = response.status().as_u16(),
        duration_us = started.elapsed().as_micros() as u64,
        "request"
    );
    Ok(response)
}
