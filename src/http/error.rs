//! One error type for every route, mapped in one place to one JSON shape:
//! `{"error": {"code": "...", "message": "...", "field": "..."}}`. A 500 logs
//! its whole cause chain; the response never carries it.

use actix_web::http::{header, StatusCode};
use actix_web::{HttpResponse, ResponseError};

use crate::control::orchestrator::AdminError;
use crate::domain::SpecError;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// Bad input; `field` names the input at fault when there is one.
    #[error("{message}")]
    Invalid {
        field: Option<String>,
        message: String,
    },
    #[error("a valid bearer token is required")]
    Unauthorized,
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    MethodNotAllowed(String),
    #[error("{0}")]
    Conflict(String),
    /// A file of the sources directory defines the source (409).
    #[error("{0}")]
    ManagedByFile(String),
    /// Sources still feed the collection (409).
    #[error("{0}")]
    CollectionInUse(String),
    #[error("{0}")]
    UnsupportedMediaType(String),
    #[error("request body is larger than {limit} bytes")]
    TooLarge { limit: usize },
    #[error("{0}")]
    Unavailable(String),
    /// Work done for the request did not finish in its bound (504).
    #[error("{0}")]
    Timeout(String),
    /// The data directory's disk is below its free-space reserve (507).
    #[error("{0}")]
    DiskFull(String),
    /// The store failed or did not answer in time (503).
    #[error("{0}")]
    StorageUnavailable(String),
    #[error("internal error")]
    Internal(#[source] anyhow::Error),
}

impl ApiError {
    pub fn invalid(field: impl Into<String>, message: impl Into<String>) -> Self {
        ApiError::Invalid {
            field: Some(field.into()),
            message: message.into(),
        }
    }

    /// The one table: each error's code and HTTP status.
    fn kind(&self) -> (&'static str, StatusCode) {
        match self {
            ApiError::Invalid { .. } => ("invalid_request", StatusCode::BAD_REQUEST),
            ApiError::Unauthorized => ("unauthorized", StatusCode::UNAUTHORIZED),
            ApiError::NotFound(_) => ("not_found", StatusCode::NOT_FOUND),
            ApiError::MethodNotAllowed(_) => ("method_not_allowed", StatusCode::METHOD_NOT_ALLOWED),
            ApiError::Conflict(_) => ("conflict", StatusCode::CONFLICT),
            ApiError::ManagedByFile(_) => ("managed_by_file", StatusCode::CONFLICT),
            ApiError::CollectionInUse(_) => ("collection_in_use", StatusCode::CONFLICT),
            ApiError::UnsupportedMediaType(_) => {
                ("unsupported_media_type", StatusCode::UNSUPPORTED_MEDIA_TYPE)
            }
            ApiError::TooLarge { .. } => ("payload_too_large", StatusCode::PAYLOAD_TOO_LARGE),
            ApiError::Unavailable(_) => ("unavailable", StatusCode::SERVICE_UNAVAILABLE),
            ApiError::Timeout(_) => ("timeout", StatusCode::GATEWAY_TIMEOUT),
            ApiError::DiskFull(_) => ("disk_full", StatusCode::INSUFFICIENT_STORAGE),
            ApiError::StorageUnavailable(_) => {
                ("storage_unavailable", StatusCode::SERVICE_UNAVAILABLE)
            }
            ApiError::Internal(_) => ("internal", StatusCode::INTERNAL_SERVER_ERROR),
        }
    }
}

impl From<SpecError> for ApiError {
    fn from(e: SpecError) -> Self {
        ApiError::Invalid {
            field: (!e.field.is_empty()).then_some(e.field),
            message: e.message,
        }
    }
}

impl From<AdminError> for ApiError {
    fn from(e: AdminError) -> Self {
        match e {
            AdminError::NotFound(_) => ApiError::NotFound(e.to_string()),
            AdminError::Conflict(m) => ApiError::Conflict(m),
            AdminError::Store(m) => ApiError::Internal(anyhow::anyhow!(m)),
            AdminError::Unavailable(m) => ApiError::Unavailable(m),
            AdminError::DiskFull(m) => ApiError::DiskFull(m),
            AdminError::StorageUnavailable(m) => ApiError::StorageUnavailable(m),
            AdminError::ManagedByFile { .. } => ApiError::ManagedByFile(e.to_string()),
            AdminError::CollectionNotFound(_) => ApiError::NotFound(e.to_string()),
            AdminError::CollectionInUse { .. } => ApiError::CollectionInUse(e.to_string()),
            AdminError::Invalid(spec) => spec.into(),
        }
    }
}

impl From<crate::control::hosts::HostsError> for ApiError {
    fn from(e: crate::control::hosts::HostsError) -> Self {
        use crate::control::hosts::HostsError;
        match e {
            HostsError::NotFound(_) => ApiError::NotFound(e.to_string()),
            HostsError::Store(s) => s.into(),
            HostsError::Task(m) => ApiError::Internal(anyhow::anyhow!(m)),
        }
    }
}

impl From<crate::supervision::ActorError> for ApiError {
    fn from(e: crate::supervision::ActorError) -> Self {
        ApiError::Unavailable(e.to_string())
    }
}

impl From<crate::store::StoreError> for ApiError {
    fn from(e: crate::store::StoreError) -> Self {
        use crate::store::StoreError;
        match e {
            StoreError::DiskFull { .. } => ApiError::DiskFull(e.to_string()),
            StoreError::Unavailable(_) => ApiError::StorageUnavailable(e.to_string()),
            other => ApiError::Internal(other.into()),
        }
    }
}

/// The one error shape: `{"error": {"code", "message", "field"?}}`.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct ErrorDetail {
    /// A stable code (`invalid`, `not_found`, `disk_full`, ...).
    pub code: &'static str,
    pub message: String,
    /// The input at fault: a dotted path into the spec, `limit`, `cursor`, ...
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        self.kind().1
    }

    fn error_response(&self) -> HttpResponse {
        if let ApiError::Internal(cause) = self {
            tracing::error!(error = format!("{cause:#}"), "request failed");
        }
        let field = match self {
            ApiError::Invalid { field, .. } => field.clone(),
            _ => None,
        };
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.kind().0,
                message: self.to_string(),
                field,
            },
        };
        let mut response = HttpResponse::build(self.status_code());
        if matches!(self, ApiError::Unauthorized) {
            response.insert_header((header::WWW_AUTHENTICATE, "Bearer"));
        }
        response.json(body)
    }
}
