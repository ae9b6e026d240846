//! `GET /api/v1/cluster`: this node's view of the members (admin).
//!
//! Shape: `{"self": name, "settled": bool, "members": [{"name", "node_id",
//! "address", "http", "role", "state"}]}`, this node first; `state` is
//! `up`, `suspect` (heartbeats late) or `down` (silent past the timeout, or
//! its session closed).

use super::error::{ApiError, ErrorBody};
use super::{auth, AppState};
use crate::cluster::handle::MemberStatus;
use actix_web::{web, HttpRequest, HttpResponse};

/// This node's view of the members, this node first.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct ClusterView {
    /// This node's name.
    #[serde(rename = "self")]
    pub me: String,
    pub settled: bool,
    pub members: Vec<MemberStatus>,
}

#[utoipa::path(get, path = "/api/v1/cluster", tag = "cluster",
    responses((status = 200, description = "The members this node sees", body = ClusterView),
        (status = 401, description = "A token is required and missing or wrong", body = ErrorBody)))]
pub async fn members(
    req: HttpRequest,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    auth::require(&req, state.admin_token.as_deref())?;
    let cluster = &state.cluster;
    Ok(HttpResponse::Ok().json(ClusterView {
        me: cluster.me().name.clone(),
        settled: cluster.settled(),
        members: cluster.members(),
    }))
}
