//! The HTTP router and server.

use axum::http::StatusCode;
use axum::middleware;
use axum::response::Response;
use axum::routing::{get, post};
use axum::Router;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

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
            "/control/modules/{name}/rollback",
            post(modules::rollback).fallback(method_not_allowed),
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
        .route("/metrics", get(api::metrics).fallback(method_not_allowed))
        .route("/healthz", get(api::healthz).fallback(method_not_allowed))
        .route("/readyz", get(api::readyz).fallback(method_not_allowed))
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

/// Limits on the connections the server keeps; see [`serve`].
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// A connection that does not send a complete request header within this long is closed: a
    /// slow client (slowloris), and an idle keep-alive connection, alike.
    pub header_timeout: Duration,
    /// Connections served at once; one more is answered `503` and closed.
    pub max_connections: usize,
}

/// Serves until `shutdown` completes; then stops accepting and finishes open requests.
///
/// Each connection is served by hyper's HTTP/1 server with its header read timeout (hyper starts
/// it whenever the connection waits for a request head, so it also ends idle keep-alive
/// connections), and counted against [`Limits::max_connections`]: beyond it a connection gets a
/// `503` with `Retry-After` at once and is closed, so the ones admitted keep being served and a
/// flood cannot take every file descriptor. (A webhook's body has its own deadline, see
/// [`crate::ingest::webhook`].)
pub async fn serve(
    listener: TcpListener,
    state: AppState,
    limits: Limits,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = router(state);
    let admitted = Arc::new(Semaphore::new(limits.max_connections));
    let graceful = GracefulShutdown::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let tcp = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((tcp, _)) => tcp,
                Err(e) => {
                    // Out of file descriptors, or the peer gave up: wait a moment, go on.
                    tracing::warn!("accepting a connection failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = &mut shutdown => break,
        };
        // Answers are written whole; Nagle would only hold them back.
        let _ = tcp.set_nodelay(true);
        let Ok(permit) = admitted.clone().try_acquire_owned() else {
            tokio::spawn(refuse(tcp));
            continue;
        };
        let service = TowerToHyperService::new(app.clone());
        let connection = http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(limits.header_timeout)
            .serve_connection(TokioIo::new(tcp), service);
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            let _ = connection.await;
            drop(permit);
        });
    }
    drop(listener);
    graceful.shutdown().await;
    Ok(())
}

/// Answers a connection over the limit with `503` and closes it. What the client sent first is
/// read (briefly), so that closing does not reset the connection before it reads the answer.
async fn refuse(mut tcp: tokio::net::TcpStream) {
    let mut request = [0u8; 4096];
    let _ = tokio::time::timeout(Duration::from_millis(100), tcp.read(&mut request)).await;
    const BODY: &str = r#"{"error":"too many connections; try again later"}"#;
    let answer = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nretry-after: 1\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{BODY}",
        BODY.len()
    );
    let _ = tokio::time::timeout(Duration::from_secs(1), tcp.write_all(answer.as_bytes())).await;
    let _ = tcp.shutdown().await;
}
