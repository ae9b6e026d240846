//! Admin routes on sources: create, list, get, replace (taking back what
//! `get` returned), patch (a JSON merge patch), delete, run now, and a
//! source's run history. Specs are validated in full before anything is
//! stored; the Orchestrator flushes before it answers, and refuses to change
//! a source a file of the sources directory manages.

use actix_web::http::header;
use actix_web::{web, HttpRequest, HttpResponse};
use serde_json::json;

use super::error::{ApiError, ErrorBody};
use super::{ask, auth, read_body, AppState};
use std::collections::{BTreeMap, BTreeSet};

use crate::cluster::groups::ORCHESTRATOR;
use crate::cluster::wire::{Request, Response};
use crate::control::orchestrator::{OrchestratorMsg, SourceView};
use crate::domain::SourceSpec;

/// How long a status view waits for an owner node's live state.
const OWNER_STATUS_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(1);

/// Fills in the live state of sources that another node runs, asking each
/// owner once. An owner that does not answer leaves the view as stored
/// (owner, last run and counts are replicated; state and next run are not).
async fn with_owners_status(state: &AppState, views: &mut [SourceView]) {
    let me = &state.cluster.me().node_id;
    let owners: BTreeSet<String> = views
        .iter()
        .filter_map(|v| v.status.owner_id.clone())
        .filter(|o| o != me)
        .collect();
    let asks = owners.into_iter().map(|owner| async move {
        let answer = state
            .cluster
            .call(&owner, &Request::Runtimes, OWNER_STATUS_TIMEOUT)
            .await;
        (owner, answer)
    });
    let answers: BTreeMap<String, _> = futures_util::future::join_all(asks)
        .await
        .into_iter()
        .filter_map(|(owner, answer)| match answer {
            Ok(Response::Runtimes(r)) => Some((owner, r)),
            _ => None,
        })
        .collect();
    for view in views.iter_mut() {
        let status = &mut view.status;
        let Some(runtime) = status
            .owner_id
            .as_ref()
            .and_then(|o| answers.get(o))
            .and_then(|r| r.get(&view.spec.id))
        else {
            continue;
        };
        if view.spec.enabled {
            status.state = runtime.state;
            status.last_error = runtime.last_error.clone().or(status.last_error.take());
        }
        status.container = runtime.container.clone();
        status.next_run = runtime.next_run;
        status.restarts = runtime.restarts;
    }
}

fn admin(req: &HttpRequest, state: &AppState) -> Result<(), ApiError> {
    auth::require(req, state.admin_token.as_deref())
}

/// A request body as a JSON object.
fn json_object(body: &[u8]) -> Result<serde_json::Value, ApiError> {
    let value: serde_json::Value = serde_json::from_slice(body).map_err(|e| ApiError::Invalid {
        field: None,
        message: format!("the body is not valid JSON: {e}"),
    })?;
    if !value.is_object() {
        return Err(ApiError::Invalid {
            field: None,
            message: "the body must be a JSON object".into(),
        });
    }
    Ok(value)
}

fn parse_spec(body: &[u8], path_id: Option<&str>) -> Result<SourceSpec, ApiError> {
    let spec = match path_id {
        None => SourceSpec::from_json(body)?,
        Some(id) => {
            // On replace the id may be left out of the body; if given it must
            // match. A source as GET returned it is accepted as it is: its
            // status and bookkeeping are dropped.
            let mut value = json_object(body)?;
            let object = value.as_object_mut().expect("checked to be an object");
            match object.get("id") {
                None => {
                    object.insert("id".into(), json!(id));
                }
                Some(given) if given == id => {}
                Some(_) => {
                    return Err(ApiError::invalid(
                        "id",
                        format!("must match the path's id '{id}'"),
                    ))
                }
            }
            SourceSpec::from_view(value)?
        }
    };
    spec.validate()?;
    Ok(spec)
}

/// The sources, each with its live status.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct SourceList {
    pub sources: Vec<SourceView>,
}

/// A run asked for.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct RunRequested {
    pub source: String,
    /// Always `requested`.
    pub run: &'static str,
}

/// A source's last runs, newest first.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct RunList {
    pub runs: Vec<crate::domain::RunRecord>,
}

#[utoipa::path(post, path = "/api/v1/sources", tag = "sources", request_body = SourceSpec,
    responses(
        (status = 201, description = "Created; `Location` names it", body = SourceView),
        (status = 400, description = "An invalid spec, naming the field", body = ErrorBody),
        (status = 401, description = "A token is required and missing or wrong", body = ErrorBody),
        (status = 409, description = "The id exists", body = ErrorBody),
        (status = 413, description = "Body over 256 KiB", body = ErrorBody)))]
pub async fn create(
    req: HttpRequest,
    state: web::Data<AppState>,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    admin(&req, &state)?;
    let body = read_body(&req, payload).await?;
    let spec = parse_spec(&body, None)?;
    let view = ask(ORCHESTRATOR, |r| OrchestratorMsg::Create(spec, r)).await??;
    Ok(HttpResponse::Created()
        .insert_header((
            header::LOCATION,
            format!("/api/v1/sources/{}", view.spec.id),
        ))
        .json(view))
}

#[utoipa::path(get, path = "/api/v1/sources", tag = "sources", operation_id = "list_sources",
    responses((status = 200, description = "Every source", body = SourceList), (status = 401, description = "A token is required and missing or wrong", body = ErrorBody)))]
pub async fn list(req: HttpRequest, state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    admin(&req, &state)?;
    let mut views = ask(ORCHESTRATOR, OrchestratorMsg::List).await??;
    with_owners_status(&state, &mut views).await;
    // The list is a shared view: sensitive header values are masked. Only an
    // admin's create, replace or get of one source returns them as stored.
    for view in &mut views {
        view.spec = view.spec.masked();
    }
    Ok(HttpResponse::Ok().json(SourceList { sources: views }))
}

#[utoipa::path(get, path = "/api/v1/sources/{id}", tag = "sources",
    params(("id" = String, Path, description = "The source's id")),
    responses((status = 200, description = "The source", body = SourceView), (status = 401, description = "A token is required and missing or wrong", body = ErrorBody),
        (status = 404, description = "No such source", body = ErrorBody)))]
pub async fn get(
    req: HttpRequest,
    state: web::Data<AppState>,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    admin(&req, &state)?;
    let view = ask(ORCHESTRATOR, |r| OrchestratorMsg::Get(id.into_inner(), r)).await??;
    let mut views = [view];
    with_owners_status(&state, &mut views).await;
    let [view] = views;
    Ok(HttpResponse::Ok().json(view))
}

#[utoipa::path(put, path = "/api/v1/sources/{id}", tag = "sources", request_body = SourceSpec,
    params(("id" = String, Path, description = "The source's id")),
    responses((status = 200, description = "Replaced (a changed spec runs at once)", body = SourceView),
        (status = 400, description = "An invalid spec, naming the field", body = ErrorBody), (status = 401, description = "A token is required and missing or wrong", body = ErrorBody),
        (status = 404, description = "No such source", body = ErrorBody),
        (status = 409, description = "A file of the sources directory manages the source (`managed_by_file`)", body = ErrorBody)))]
pub async fn replace(
    req: HttpRequest,
    state: web::Data<AppState>,
    id: web::Path<String>,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    admin(&req, &state)?;
    let body = read_body(&req, payload).await?;
    let spec = parse_spec(&body, Some(&id))?;
    let view = ask(ORCHESTRATOR, |r| OrchestratorMsg::Replace(spec, r)).await??;
    Ok(HttpResponse::Ok().json(view))
}

#[utoipa::path(patch, path = "/api/v1/sources/{id}", tag = "sources",
    request_body(content = serde_json::Value, description = "A JSON merge patch (RFC 7396) of the spec: keys given replace, `null` removes", content_type = "application/merge-patch+json"),
    params(("id" = String, Path, description = "The source's id")),
    responses((status = 200, description = "Patched (a changed spec runs at once)", body = SourceView),
        (status = 400, description = "The patched spec is invalid, naming the field", body = ErrorBody),
        (status = 401, description = "A token is required and missing or wrong", body = ErrorBody),
        (status = 404, description = "No such source", body = ErrorBody),
        (status = 409, description = "A file of the sources directory manages the source (`managed_by_file`)", body = ErrorBody),
        (status = 415, description = "Neither application/merge-patch+json nor application/json", body = ErrorBody)))]
pub async fn patch(
    req: HttpRequest,
    state: web::Data<AppState>,
    id: web::Path<String>,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    admin(&req, &state)?;
    let media = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| {
            v.split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase()
        });
    if !matches!(
        media.as_deref(),
        Some("application/merge-patch+json" | "application/json")
    ) {
        return Err(ApiError::UnsupportedMediaType(
            "send a JSON merge patch as application/merge-patch+json (or application/json)".into(),
        ));
    }
    let body = read_body(&req, payload).await?;
    let mut patch = json_object(&body)?;
    // A view's status and bookkeeping are not part of the spec.
    if let Some(object) = patch.as_object_mut() {
        for key in crate::domain::spec::VIEW_ONLY_FIELDS {
            object.remove(*key);
        }
    }
    let view = ask(ORCHESTRATOR, |r| {
        OrchestratorMsg::Patch(id.into_inner(), patch, r)
    })
    .await??;
    Ok(HttpResponse::Ok().json(view))
}

#[utoipa::path(delete, path = "/api/v1/sources/{id}", tag = "sources",
    params(("id" = String, Path, description = "The source's id")),
    responses((status = 204, description = "Deleted; its items stay"), (status = 401, description = "A token is required and missing or wrong", body = ErrorBody),
        (status = 404, description = "No such source", body = ErrorBody),
        (status = 409, description = "A file of the sources directory manages the source (`managed_by_file`)", body = ErrorBody)))]
pub async fn delete(
    req: HttpRequest,
    state: web::Data<AppState>,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    admin(&req, &state)?;
    ask(ORCHESTRATOR, |r| {
        OrchestratorMsg::Delete(id.into_inner(), r)
    })
    .await??;
    Ok(HttpResponse::NoContent().finish())
}

#[utoipa::path(post, path = "/api/v1/sources/{id}/run", tag = "sources",
    params(("id" = String, Path, description = "The source's id")),
    responses((status = 202, description = "A run is requested", body = RunRequested), (status = 401, description = "A token is required and missing or wrong", body = ErrorBody),
        (status = 409, description = "The source is disabled or isolated", body = ErrorBody)))]
pub async fn run_now(
    req: HttpRequest,
    state: web::Data<AppState>,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    admin(&req, &state)?;
    let id = id.into_inner();
    ask(ORCHESTRATOR, |r| OrchestratorMsg::RunNow(id.clone(), r)).await??;
    Ok(HttpResponse::Accepted().json(RunRequested {
        source: id,
        run: "requested",
    }))
}

#[utoipa::path(get, path = "/api/v1/sources/{id}/runs", tag = "sources",
    params(("id" = String, Path, description = "The source's id"),
        ("limit" = Option<usize>, Query, description = "1 to 100, default 20")),
    responses((status = 200, description = "The last runs, newest first", body = RunList), (status = 401, description = "A token is required and missing or wrong", body = ErrorBody)))]
pub async fn runs(
    req: HttpRequest,
    state: web::Data<AppState>,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    admin(&req, &state)?;
    let mut limit = 20;
    for (k, v) in url::form_urlencoded::parse(req.query_string().as_bytes()) {
        if k == "limit" {
            limit = v
                .parse::<usize>()
                .ok()
                .filter(|n| (1..=crate::store::RUNS_KEPT).contains(n))
                .ok_or_else(|| {
                    ApiError::invalid("limit", format!("must be 1 to {}", crate::store::RUNS_KEPT))
                })?;
        }
    }
    let runs = ask(ORCHESTRATOR, |r| {
        OrchestratorMsg::Runs(id.into_inner(), limit, r)
    })
    .await??;
    Ok(HttpResponse::Ok().json(RunList { runs }))
}
