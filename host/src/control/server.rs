//! The HTTP router and server.

use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::{get, post};
use axum::Router;
use tokio::net::TcpListener;

use super::{api, error_response, AppState};
use crate::ingest::webhook;

/// Every route of the daemon's server.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route(
            "/webhook/{source}",
            post(webhook::receive).fallback(method_not_allowed),
        )
        .route("/api/status", get(api::status).fallback(method_not_allowed))
        .route("/api/routes", get(api::routes).fallback(method_not_allowed))
        .fallback(not_found)
        .with_state(state)
}

async fn method_not_allowed() -> Response {
    error_response(StatusCode::METHOD_NOT_ALLOWED, "method not allowed")
}

async fn not_found() -> Response {
    error_response(StatusCode::NOT_FOUND, "not found")
}

/// Serves until `shutdown` completes; then stops accepting and finishes open requests.
pub async fn serve(
    listener: TcpListener,
    state: AppState,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(state))
        .with_graceful_shutdown(shutdown)
        .await
}
