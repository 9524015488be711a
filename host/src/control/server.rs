//! The HTTP router and server.

use axum::http::StatusCode;
use axum::middleware;
use axum::response::Response;
use axum::routing::{get, post};
use axum::serve::ListenerExt;
use axum::Router;
use tokio::net::TcpListener;

use super::{api, auth, dlq, error_response, modules, AppState};
use crate::ingest::webhook;

/// Every route of the daemon's server.
pub fn router(state: AppState) -> Router {
    let control = Router::new()
        .route(
            "/control/modules",
            get(modules::list)
                .post(modules::load)
                .fallback(method_not_allowed),
        )
        .route(
            "/control/modules/{name}",
            get(modules::status)
                .delete(modules::unload)
                .fallback(method_not_allowed),
        )
        .route(
            "/control/modules/{name}/reload",
            post(modules::reload).fallback(method_not_allowed),
        )
        .route(
            "/control/dlq",
            get(dlq::list)
                .delete(dlq::purge_all)
                .fallback(method_not_allowed),
        )
        .route(
            "/control/dlq/replay",
            post(dlq::replay_all).fallback(method_not_allowed),
        )
        .route(
            "/control/dlq/{id}",
            get(dlq::show)
                .delete(dlq::purge_one)
                .fallback(method_not_allowed),
        )
        .route(
            "/control/dlq/{id}/replay",
            post(dlq::replay_one).fallback(method_not_allowed),
        )
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            auth::require_token,
        ));
    Router::new()
        .route(
            "/webhook/{source}",
            post(webhook::receive).fallback(method_not_allowed),
        )
        .route("/api/status", get(api::status).fallback(method_not_allowed))
        .route("/api/routes", get(api::routes).fallback(method_not_allowed))
        .merge(control)
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
    let listener = listener.tap_io(|tcp| {
        // Answers are written whole; Nagle would only hold them back.
        let _ = tcp.set_nodelay(true);
    });
    axum::serve(listener, router(state))
        .with_graceful_shutdown(shutdown)
        .await
}
