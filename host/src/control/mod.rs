//! The daemon's one HTTP server on loopback: webhooks under `/webhook/`, read-only status under
//! `/api/` ([`api`]); [`server`] wires them together.

pub mod api;
pub mod server;

use std::sync::Arc;
use std::time::Instant;

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;

use crate::module::Registry;

/// What every handler can reach.
#[derive(Clone)]
pub struct AppState {
    pub registry: Arc<Registry>,
    pub started: Instant,
    pub port: u16,
}

/// `{"error": message}` with a status, the shape of every error answer.
pub fn error_response(status: StatusCode, message: impl Into<String>) -> Response {
    (status, Json(serde_json::json!({"error": message.into()}))).into_response()
}
