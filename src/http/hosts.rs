//! Admin routes on hosts: each host's politeness policy (the node's
//! defaults, or an operator's override stored and replicated to every node)
//! and its state as the host's owner node holds it (robots.txt, back-off,
//! permits in flight, requests granted). A host in a path is normalised as
//! a URL's host is (`Example.ORG:80` is `example.org`).

use std::collections::BTreeMap;
use std::time::Duration;

use actix_web::{web, HttpRequest, HttpResponse};

use super::error::{ApiError, ErrorBody};
use super::{auth, read_body, AppState};
use crate::cluster::wire::{Request, Response};
use crate::domain::host::normalise_host;
use crate::domain::{HostOverride, HostState};

/// How long a view waits for the owner's figures.
const OWNER_TIMEOUT: Duration = Duration::from_secs(1);

/// Every host the cluster knows of: with an override, or requested lately.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct HostList {
    pub hosts: Vec<HostState>,
}

fn admin(req: &HttpRequest, state: &AppState) -> Result<(), ApiError> {
    auth::require(req, state.admin_token.as_deref())
}

fn host_of(path: &str) -> Result<String, ApiError> {
    Ok(normalise_host(path)?)
}

/// `host`'s state from its owner (asked when it is another node); this
/// node's own when the owner does not answer.
async fn state_of(state: &AppState, host: &str) -> HostState {
    let politeness = state.hosts.politeness();
    let owner = state.cluster.owner_of(host);
    let me = &state.cluster.me().node_id;
    let mut view = politeness.state(host);
    if let Some(owner) = owner.as_ref().filter(|o| *o != me) {
        let answer = state
            .cluster
            .call(
                owner,
                &Request::HostStates(Some(host.to_owned())),
                OWNER_TIMEOUT,
            )
            .await;
        if let Ok(Response::HostStates(mut s)) = answer {
            if let Some(theirs) = s.pop() {
                view = HostState {
                    // The policy as this node stores it (replicated).
                    policy: view.policy,
                    policy_override: view.policy_override,
                    ..theirs
                };
            }
        }
    }
    view.owner = owner.and_then(|o| state.cluster.name_of(&o));
    view
}

#[utoipa::path(get, path = "/api/v1/hosts", tag = "hosts", operation_id = "list_hosts",
    responses((status = 200, description = "Every host with an override or requested since its owner took it, with the owner's figures", body = HostList),
        (status = 401, description = "A token is required and missing or wrong", body = ErrorBody)))]
pub async fn list(req: HttpRequest, state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    admin(&req, &state)?;
    let politeness = state.hosts.politeness();
    let mut hosts: BTreeMap<String, HostState> = politeness
        .states()
        .into_iter()
        .map(|s| (s.host.clone(), s))
        .collect();
    let answers = state
        .cluster
        .ask_all(&Request::HostStates(None), OWNER_TIMEOUT)
        .all()
        .await;
    for (node, answer) in answers {
        let Ok(Response::HostStates(states)) = answer else {
            continue;
        };
        for theirs in states {
            if state.cluster.owner_of(&theirs.host).as_deref() != Some(node.as_str()) {
                continue;
            }
            let host = theirs.host.clone();
            hosts.insert(
                host.clone(),
                HostState {
                    policy: politeness.policy(&host),
                    policy_override: politeness.override_of(&host),
                    ..theirs
                },
            );
        }
    }
    let hosts = hosts
        .into_values()
        .map(|mut h| {
            h.owner = state
                .cluster
                .owner_of(&h.host)
                .and_then(|o| state.cluster.name_of(&o));
            h
        })
        .collect();
    Ok(HttpResponse::Ok().json(HostList { hosts }))
}

#[utoipa::path(get, path = "/api/v1/hosts/{host}", tag = "hosts", operation_id = "get_host",
    params(("host" = String, Path, description = "A host, with a port unless it is the default: `example.org`, `127.0.0.1:8000`")),
    responses((status = 200, description = "The host's policy and its owner's figures (the defaults for a host never seen)", body = HostState),
        (status = 400, description = "Not a host", body = ErrorBody),
        (status = 401, description = "A token is required and missing or wrong", body = ErrorBody)))]
pub async fn get(
    req: HttpRequest,
    state: web::Data<AppState>,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    admin(&req, &state)?;
    let host = host_of(&path)?;
    Ok(HttpResponse::Ok().json(state_of(&state, &host).await))
}

#[utoipa::path(put, path = "/api/v1/hosts/{host}", tag = "hosts", operation_id = "put_host",
    params(("host" = String, Path, description = "The host whose policy is set")),
    request_body(content = HostOverride, description = "Any of `max_in_flight` (1-1000), `min_delay_ms` (0-3600000), `obey_robots`; a field left out keeps the node's default"),
    responses((status = 200, description = "Stored (flushed, and on a peer when one is up); the host's view", body = HostState),
        (status = 400, description = "Not a host, or an invalid policy, naming the field", body = ErrorBody),
        (status = 401, description = "A token is required and missing or wrong", body = ErrorBody),
        (status = 413, description = "Body over 256 KiB", body = ErrorBody)))]
pub async fn put(
    req: HttpRequest,
    state: web::Data<AppState>,
    path: web::Path<String>,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    admin(&req, &state)?;
    let host = host_of(&path)?;
    let body = read_body(&req, payload).await?;
    let policy = HostOverride::from_json(&body)?;
    state.hosts.put(host.clone(), policy).await?;
    Ok(HttpResponse::Ok().json(state_of(&state, &host).await))
}

#[utoipa::path(delete, path = "/api/v1/hosts/{host}", tag = "hosts", operation_id = "delete_host",
    params(("host" = String, Path, description = "The host whose override is removed")),
    responses((status = 200, description = "Reset: the defaults apply again; the host's view", body = HostState),
        (status = 400, description = "Not a host", body = ErrorBody),
        (status = 401, description = "A token is required and missing or wrong", body = ErrorBody),
        (status = 404, description = "The host has no override", body = ErrorBody)))]
pub async fn delete(
    req: HttpRequest,
    state: web::Data<AppState>,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    admin(&req, &state)?;
    let host = host_of(&path)?;
    state.hosts.reset(host.clone()).await?;
    Ok(HttpResponse::Ok().json(state_of(&state, &host).await))
}
