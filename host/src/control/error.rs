//! [`ApiError`]: every way a control request can fail, and the HTTP status each one gets. A 500
//! answers with a generic message; the details go to the daemon's log.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

use crate::config::ConfigError;
use crate::module::LoadError;

#[derive(Debug)]
pub enum ApiError {
    /// 400: the request itself is malformed.
    BadRequest(String),
    /// 401: no token, or the wrong one.
    Unauthorized,
    /// 404: no such module.
    NotFound(String),
    /// 409: conflicts with the daemon's state (a name or source id already taken).
    Conflict(String),
    /// 422: the module's configuration is invalid; every error is listed.
    Invalid(Vec<ConfigError>),
    /// 500: a bug.
    Internal(String),
}

impl From<LoadError> for ApiError {
    fn from(e: LoadError) -> Self {
        match e {
            LoadError::Invalid(errors) => ApiError::Invalid(errors),
            LoadError::Conflict(why) => ApiError::Conflict(why),
            LoadError::NotFound(name) => {
                ApiError::NotFound(format!("no module named {name:?} is loaded"))
            }
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, body) = match self {
            ApiError::BadRequest(m) => (StatusCode::BAD_REQUEST, json!({"error": m})),
            ApiError::Unauthorized => (
                StatusCode::UNAUTHORIZED,
                json!({"error": "missing or wrong bearer token (the CLI reads it from the daemon's token file)"}),
            ),
            ApiError::NotFound(m) => (StatusCode::NOT_FOUND, json!({"error": m})),
            ApiError::Conflict(m) => (StatusCode::CONFLICT, json!({"error": m})),
            ApiError::Invalid(errors) => (
                StatusCode::UNPROCESSABLE_ENTITY,
                json!({"error": "invalid module configuration", "errors": errors.iter().map(error_json).collect::<Vec<_>>()}),
            ),
            ApiError::Internal(m) => {
                tracing::error!("internal error in the control API: {m}");
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    json!({"error": "internal error; see the daemon's log"}),
                )
            }
        };
        (status, Json(body)).into_response()
    }
}

/// A config error as JSON, with its rendered text.
pub fn error_json(e: &ConfigError) -> serde_json::Value {
    json!({"file": e.file, "line": e.pos.map(|p| p.line), "column": e.pos.map(|p| p.col), "field": e.field, "message": e.message, "text": e.to_string()})
}
