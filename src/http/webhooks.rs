//! Admin routes on webhooks: create, list, get, replace, delete. A spec is
//! validated in full, its URL checked by the SSRF guard (the addresses its
//! host resolves to, now; deliveries are checked again as they are sent),
//! before the Webhooks actor stores it (flushed). Secrets are shown as `***`
//! in every answer.

use actix_web::http::header;
use actix_web::{web, HttpRequest, HttpResponse};
use serde_json::json;

use super::error::{ApiError, ErrorBody};
use super::{ask, auth, read_body, AppState};
use crate::cluster::groups::WEBHOOKS;
use crate::delivery::registry::{WebhookError, WebhookView, WebhooksMsg};
use crate::domain::webhook::MASK;
use crate::domain::WebhookSpec;
use crate::scrape::fetch::{check_target, FetchError};

impl From<WebhookError> for ApiError {
    fn from(e: WebhookError) -> Self {
        match e {
            WebhookError::NotFound(_) => ApiError::NotFound(e.to_string()),
            WebhookError::Exists(_) => ApiError::Conflict(e.to_string()),
            WebhookError::Store(m) => ApiError::Internal(anyhow::anyhow!(m)),
            WebhookError::DiskFull(m) => ApiError::DiskFull(m),
            WebhookError::StorageUnavailable(m) => ApiError::StorageUnavailable(m),
        }
    }
}

/// Parses and checks a body; on replace the id may be left out (if given
/// it must match the path) and so may the secret (the stored one is kept).
async fn parse(
    state: &AppState,
    body: &[u8],
    path_id: Option<&str>,
) -> Result<WebhookSpec, ApiError> {
    let mut value: serde_json::Value =
        serde_json::from_slice(body).map_err(|e| ApiError::Invalid {
            field: None,
            message: format!("the body is not valid JSON: {e}"),
        })?;
    let object = value.as_object_mut().ok_or_else(|| ApiError::Invalid {
        field: None,
        message: "the body must be a JSON object".into(),
    })?;
    if let Some(id) = path_id {
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
    }
    let spec = WebhookSpec::from_json(value.to_string().as_bytes())?;
    let keeps_secret = path_id.is_some() && (spec.secret.is_empty() || spec.secret == MASK);
    if keeps_secret {
        WebhookSpec {
            secret: "kept-secret".into(),
            ..spec.clone()
        }
        .validate()?;
    } else {
        spec.validate()?;
    }
    let url = url::Url::parse(&spec.url).map_err(|e| ApiError::invalid("url", e.to_string()))?;
    match check_target(&url, &state.targets).await {
        Ok(()) => {}
        Err(e @ FetchError::Forbidden { .. }) => {
            return Err(ApiError::invalid("url", e.to_string()))
        }
        Err(e) => {
            return Err(ApiError::invalid(
                "url",
                format!("its host could not be checked: {e}"),
            ))
        }
    }
    Ok(spec)
}

fn admin(req: &HttpRequest, state: &AppState) -> Result<(), ApiError> {
    auth::require(req, state.admin_token.as_deref())
}

/// Every webhook, with its status (the last few deliveries).
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct WebhookList {
    pub webhooks: Vec<WebhookView>,
}

#[utoipa::path(post, path = "/api/v1/webhooks", tag = "webhooks", operation_id = "create_webhook", request_body = WebhookSpec,
    responses(
        (status = 201, description = "Created (secret masked); `Location` names it", body = WebhookView),
        (status = 400, description = "An invalid spec or a refused URL, naming the field", body = ErrorBody),
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
    let spec = parse(&state, &body, None).await?;
    let view = ask(WEBHOOKS, |r| WebhooksMsg::Create(spec, r)).await??;
    Ok(HttpResponse::Created()
        .insert_header((
            header::LOCATION,
            format!("/api/v1/webhooks/{}", view.spec.id),
        ))
        .json(view))
}

#[utoipa::path(get, path = "/api/v1/webhooks", tag = "webhooks", operation_id = "list_webhooks",
    responses((status = 200, description = "Every webhook (secrets masked) with its last deliveries", body = WebhookList),
        (status = 401, description = "A token is required and missing or wrong", body = ErrorBody)))]
pub async fn list(req: HttpRequest, state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    admin(&req, &state)?;
    let webhooks = ask(WEBHOOKS, WebhooksMsg::List).await??;
    Ok(HttpResponse::Ok().json(WebhookList { webhooks }))
}

#[utoipa::path(get, path = "/api/v1/webhooks/{id}", tag = "webhooks", operation_id = "get_webhook",
    params(("id" = String, Path, description = "The webhook's id")),
    responses((status = 200, description = "The webhook (secret masked) and its status: owner, cursor, last deliveries", body = WebhookView),
        (status = 401, description = "A token is required and missing or wrong", body = ErrorBody),
        (status = 404, description = "No such webhook", body = ErrorBody)))]
pub async fn get(
    req: HttpRequest,
    state: web::Data<AppState>,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    admin(&req, &state)?;
    let view = ask(WEBHOOKS, |r| WebhooksMsg::Get(id.into_inner(), r)).await??;
    Ok(HttpResponse::Ok().json(view))
}

#[utoipa::path(put, path = "/api/v1/webhooks/{id}", tag = "webhooks", operation_id = "replace_webhook",
    request_body = WebhookSpec,
    params(("id" = String, Path, description = "The webhook's id")),
    responses((status = 200, description = "Replaced (a left-out or masked secret keeps the stored one)", body = WebhookView),
        (status = 400, description = "An invalid spec or a refused URL, naming the field", body = ErrorBody),
        (status = 401, description = "A token is required and missing or wrong", body = ErrorBody),
        (status = 404, description = "No such webhook", body = ErrorBody)))]
pub async fn replace(
    req: HttpRequest,
    state: web::Data<AppState>,
    id: web::Path<String>,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    admin(&req, &state)?;
    let body = read_body(&req, payload).await?;
    let spec = parse(&state, &body, Some(&id)).await?;
    let view = ask(WEBHOOKS, |r| WebhooksMsg::Replace(spec, r)).await??;
    Ok(HttpResponse::Ok().json(view))
}

#[utoipa::path(delete, path = "/api/v1/webhooks/{id}", tag = "webhooks", operation_id = "delete_webhook",
    params(("id" = String, Path, description = "The webhook's id")),
    responses((status = 204, description = "Deleted: its deliveries stop cluster-wide"),
        (status = 401, description = "A token is required and missing or wrong", body = ErrorBody),
        (status = 404, description = "No such webhook", body = ErrorBody)))]
pub async fn delete(
    req: HttpRequest,
    state: web::Data<AppState>,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    admin(&req, &state)?;
    ask(WEBHOOKS, |r| WebhooksMsg::Delete(id.into_inner(), r)).await??;
    Ok(HttpResponse::NoContent().finish())
}
