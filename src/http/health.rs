//! `/healthz` (the process answers) and `/readyz` (the node's actors are up,
//! its cluster membership has settled, its store takes writes, and it is not
//! shutting down). Neither touches sled: a stuck disk cannot hang them.

use std::sync::atomic::Ordering;

use actix_web::{web, HttpResponse};
use serde_json::json;

use super::error::{ApiError, ErrorBody};
use super::AppState;
use crate::cluster::groups;

/// `{"status": "ok"}`.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct Health {
    pub status: &'static str,
}

/// `{"status": "ready", "node": name}`.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct Ready {
    pub status: &'static str,
    pub node: String,
}

#[utoipa::path(get, path = "/healthz", tag = "health",
    responses((status = 200, description = "The process answers", body = Health)))]
pub async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(Health { status: "ok" })
}

#[utoipa::path(get, path = "/readyz", tag = "health",
    responses((status = 200, description = "Ready for traffic", body = Ready),
        (status = 503, description = "Not ready: starting, settling, storage refusing writes, or shutting down", body = ErrorBody)))]
pub async fn readyz(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let actors_up = ractor::registry::where_is(groups::ORCHESTRATOR).is_some()
        && ractor::registry::where_is(groups::COLLECTIONS).is_some();
    if !state.ready.load(Ordering::Acquire) || !actors_up {
        return Err(ApiError::Unavailable("the node is not ready".into()));
    }
    if !state.cluster.settled() {
        return Err(ApiError::Unavailable(
            "the node is still finding its cluster peers".into(),
        ));
    }
    let storage = state.store.storage_status(true);
    if let Some(message) = &storage.error {
        // The one error shape, with the storage state beside it; 503 as for
        // any node that is not ready (writes themselves answer 507).
        let code = if storage.state == "disk_full" {
            "disk_full"
        } else {
            "storage_unavailable"
        };
        return Ok(HttpResponse::ServiceUnavailable().json(json!({
            "error": { "code": code, "message": message },
            "storage": storage,
        })));
    }
    Ok(HttpResponse::Ok().json(Ready {
        status: "ready",
        node: state.node_name.clone(),
    }))
}
