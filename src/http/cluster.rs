//! `GET /api/v1/cluster`: this node's view of the members (admin).
//!
//! Shape: `{"self": name, "settled": bool, "members": [{"name", "node_id",
//! "address", "http", "role", "state"}]}`, this node first; `state` is
//! `up`, `suspect` (heartbeats late) or `down` (silent past the timeout, or
//! its session closed).

use actix_web::{web, HttpRequest, HttpResponse};
use serde_json::json;

use super::error::ApiError;
use super::{auth, AppState};

pub async fn members(
    req: HttpRequest,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    auth::require(&req, state.admin_token.as_deref())?;
    let cluster = &state.cluster;
    Ok(HttpResponse::Ok().json(json!({
        "self": cluster.me().name,
        "settled": cluster.settled(),
        "members": cluster.members(),
    })))
}
