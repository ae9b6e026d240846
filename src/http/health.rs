//! `/healthz` (the process answers) and `/readyz` (the node's actors are up,
//! its cluster membership has settled, and it is not shutting down).

use std::sync::atomic::Ordering;

use actix_web::{web, HttpResponse};
use serde_json::json;

use super::error::ApiError;
use super::AppState;
use crate::cluster::groups;

pub async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(json!({ "status": "ok" }))
}

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
    Ok(HttpResponse::Ok().json(json!({ "status": "ready", "node": state.node_name })))
}
