//! Errors: one enum for the control plane, mapped to HTTP by one exhaustive `match`, and
//! always written as `{ "error": { "type", "message" } }`.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use schemars::JsonSchema;
use serde::Serialize;

/// Everything an API call can fail with.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The request is malformed (syntax, types, NUL bytes).
    #[error("{0}")]
    BadRequest(String),
    /// No admin key, or one that is unknown, expired or revoked.
    #[error("{0}")]
    Unauthorized(String),
    /// The key is valid but its role does not grant this.
    #[error("{0}")]
    Forbidden(String),
    /// No such thing (or not visible to the caller).
    #[error("{0}")]
    NotFound(String),
    /// The name is taken, or the thing is in use.
    #[error("{0}")]
    Conflict(String),
    /// Well-formed but not acceptable (a policy that does not compile, a bad reference).
    #[error("{0}")]
    Unprocessable(String),
    /// The database failed; the detail is logged, not returned.
    #[error("database error")]
    Database(#[source] sqlx::Error),
    /// A dependency (the Kubernetes API) failed or refused.
    #[error("{0}")]
    BadGateway(String),
    /// Something else on our side failed; the detail is logged, not returned.
    #[error("{0}")]
    Internal(String),
}

/// The error body every route returns.
#[derive(Debug, Serialize, JsonSchema)]
pub struct ErrorBody {
    /// The error.
    pub error: ErrorDetail,
}

/// What went wrong.
#[derive(Debug, Serialize, JsonSchema)]
pub struct ErrorDetail {
    /// Machine-readable kind: `invalid_request`, `unauthorized`, `forbidden`, `not_found`,
    /// `conflict`, `unprocessable`, `bad_gateway`, `internal`.
    #[serde(rename = "type")]
    pub kind: String,
    /// What a person can do about it.
    pub message: String,
}

impl ApiError {
    /// Status and kind.
    pub fn classify(&self) -> (StatusCode, &'static str) {
        match self {
            ApiError::BadRequest(_) => (StatusCode::BAD_REQUEST, "invalid_request"),
            ApiError::Unauthorized(_) => (StatusCode::UNAUTHORIZED, "unauthorized"),
            ApiError::Forbidden(_) => (StatusCode::FORBIDDEN, "forbidden"),
            ApiError::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            ApiError::Conflict(_) => (StatusCode::CONFLICT, "conflict"),
            ApiError::Unprocessable(_) => (StatusCode::UNPROCESSABLE_ENTITY, "unprocessable"),
            ApiError::BadGateway(_) => (StatusCode::BAD_GATEWAY, "bad_gateway"),
            ApiError::Database(_) | ApiError::Internal(_) => {
                (StatusCode::INTERNAL_SERVER_ERROR, "internal")
            }
        }
    }

    /// `what` was not found (or is not visible).
    pub fn not_found(what: &str) -> Self {
        ApiError::NotFound(format!("{what} not found"))
    }
}

impl From<sqlx::Error> for ApiError {
    fn from(e: sqlx::Error) -> Self {
        if let sqlx::Error::Database(d) = &e
            && d.is_unique_violation()
        {
            return ApiError::Conflict("a resource with this name already exists".into());
        }
        ApiError::Database(e)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, kind) = self.classify();
        // Logged once, here at the edge; database details never reach the client.
        match &self {
            ApiError::Database(e) => tracing::error!(error = %e, "control plane database error"),
            ApiError::Internal(m) => tracing::error!(error = %m, "control plane error"),
            ApiError::BadGateway(m) => {
                tracing::warn!(error = %m, "control plane dependency failed")
            }
            _ => {}
        }
        let body = ErrorBody {
            error: ErrorDetail {
                kind: kind.into(),
                message: self.to_string(),
            },
        };
        (status, Json(body)).into_response()
    }
}
