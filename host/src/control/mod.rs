//! The daemon's one HTTP server on loopback: webhooks under `/webhook/`, read-only status under
//! `/api/` ([`api`]), module management and dead letters under `/control/` ([`modules`],
//! [`dlq`], behind [`auth`]), with typed errors ([`error`]); [`server`] wires them together, and
//! [`client`] is the CLI's side.

pub mod api;
pub mod auth;
pub mod client;
pub mod dlq;
pub mod error;
pub mod modules;
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
    /// The control API's bearer token.
    pub token: Arc<str>,
    /// How long a webhook's body may take to arrive.
    pub body_timeout: std::time::Duration,
    /// Raised when the daemon starts shutting down (it is no longer ready).
    pub stopping: Arc<std::sync::atomic::AtomicBool>,
}

/// `{"error": message}` with a status, the shape of every error answer.
pub fn error_response(status: StatusCode, message: impl Into<String>) -> Response {
    (status, Json(serde_json::json!({"error": message.into()}))).into_response()
}
