//! Read-only status, in upstream's shapes: `GET /api/status` and `GET /api/routes`; and the
//! probes a load balancer or an orchestrator asks: `GET /healthz` (the process serves) and
//! `GET /readyz` (it can take events).

use std::sync::atomic::Ordering;

use axum::extract::State;
use axum::Json;
use serde_json::{json, Value};

use super::AppState;
use crate::config::spec::SourceKind;
use crate::plugin::library::short;

/// `GET /api/status`.
pub async fn status(State(app): State<AppState>) -> Json<Value> {
    let mut modules = Vec::new();
    let mut sources = Vec::new();
    let mut health = "ok";
    for m in app.registry.modules() {
        let Some(g) = m.current() else { continue };
        let plugins: Vec<Value> = g
            .libraries
            .iter()
            .map(|(name, lib)| json!({"name": name, "version": lib.manifest().version, "hash": short(lib.hash())}))
            .collect();
        let degraded = m.degraded();
        if degraded.is_some() {
            health = "degraded";
        }
        modules.push(json!({
            "name": m.name,
            "state": "active",
            "health": if degraded.is_some() { "degraded" } else { "ok" },
            "degraded": degraded,
            "directory": m.dir,
            "generation": g.number,
            "sources": g.spec.sources.len(),
            "routes": g.routes.len(),
            "actors": g.actors.len(),
            "plugins": plugins,
            "inflight": g.inflight.len(),
            "uptime_ms": m.started.elapsed().as_millis() as u64,
            "queue": m.queue.stats(&m.name),
            "actors": super::modules::actors_json(&m),
        }));
        for s in &g.spec.sources {
            let stats = m.source_stats(&s.id);
            let errors = stats.error_count.load(Ordering::Relaxed);
            let last_error = stats
                .last_error
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone();
            let status = if last_error.is_some() && errors > 0 {
                "degraded"
            } else {
                "healthy"
            };
            if status != "healthy" {
                health = "degraded";
            }
            let (connector, kind) = match &s.kind {
                SourceKind::Webhook(_) => ("webhook".to_owned(), "webhook"),
                SourceKind::Plugin { symbol, .. } => (symbol.to_string(), "polling"),
            };
            let last = stats.last_event_ms.load(Ordering::Relaxed);
            sources.push(json!({
                "id": s.id,
                "module": m.name,
                "connector": connector,
                "type": kind,
                "status": status,
                "event_count": stats.event_count.load(Ordering::Relaxed),
                "last_event": (last > 0).then(|| orgloop_plugin_sdk::format_timestamp(ms_to_time(last))),
                "error_count": errors,
                "last_error": last_error,
            }));
        }
    }
    let cluster = match app.registry.queue.cluster() {
        None => None,
        Some(c) => {
            let mut status = json!(c.status());
            status["nodes"] = match c.nodes().await {
                Ok(nodes) => json!(nodes),
                Err(e) => json!({"error": e}),
            };
            Some(status)
        }
    };
    Json(json!({
        "health": health,
        "running": true,
        "pid": std::process::id(),
        "uptime_ms": app.started.elapsed().as_millis() as u64,
        "http_port": app.port,
        "version": env!("CARGO_PKG_VERSION"),
        "durability": app.registry.queue.durability,
        "cluster": cluster,
        "modules": modules,
        "sources": sources,
    }))
}

/// `GET /api/routes`.
pub async fn routes(State(app): State<AppState>) -> Json<Value> {
    let mut out = Vec::new();
    for m in app.registry.modules() {
        let Some(g) = m.current() else { continue };
        for r in &g.routes {
            let s = &r.spec;
            let mut when = json!({"source": s.source, "events": s.events.iter().map(|e| e.as_str()).collect::<Vec<_>>()});
            if !s.filter.is_empty() {
                when["filter"] = Value::Object(s.filter.iter().cloned().collect());
            }
            let last = r.stats.last_fired_ms.load(Ordering::Relaxed);
            out.push(json!({
                "name": s.name,
                "module": m.name,
                "when": when,
                "transforms": s.transforms.iter().map(|t| t.name.as_str()).collect::<Vec<_>>(),
                "actor": s.actor,
                "sop_file": s.prompt_file,
                "fire_count": r.stats.fire_count.load(Ordering::Relaxed),
                "last_fired": (last > 0).then(|| orgloop_plugin_sdk::format_timestamp(ms_to_time(last))),
            }));
        }
    }
    Json(Value::Array(out))
}

fn ms_to_time(ms: i64) -> std::time::SystemTime {
    std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms as u64)
}

/// `GET /metrics`: the Prometheus text format (see [`crate::metrics`]).
pub async fn metrics(State(app): State<AppState>) -> axum::response::Response {
    use axum::response::IntoResponse;
    let text = crate::metrics::metrics().render(&app.registry);
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
        .into_response()
}

/// `GET /healthz`: the daemon answers.
pub async fn healthz() -> Json<Value> {
    Json(json!({"status": "ok"}))
}

/// `GET /readyz`: 200 when the daemon can take events — at least one module is loaded, the store
/// writes, and it is not shutting down; else 503 with the reasons.
pub async fn readyz(State(app): State<AppState>) -> axum::response::Response {
    use axum::response::IntoResponse;
    let mut not_ready = Vec::new();
    if app.stopping.load(Ordering::Relaxed) {
        not_ready.push("shutting down".to_owned());
    }
    if app.registry.modules().is_empty() {
        not_ready.push("no module is loaded".to_owned());
    }
    if let Some(e) = app.registry.queue.write_error() {
        not_ready.push(format!("the store cannot write: {e}"));
    }
    if not_ready.is_empty() {
        return Json(json!({"status": "ready"})).into_response();
    }
    (
        axum::http::StatusCode::SERVICE_UNAVAILABLE,
        Json(json!({"status": "not ready", "reasons": not_ready})),
    )
        .into_response()
}
