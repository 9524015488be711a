//! `/control/modules`: list, inspect, load, unload and reload modules.

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use super::error::ApiError;
use super::AppState;
use crate::config::spec::parse_share;
use crate::module::report::{PluginBuild, ReloadOutcome};
use crate::module::{rollout, Module, ReloadOptions};

/// A module's state, as `GET /control/modules/<name>` shows it.
pub fn module_json(m: &Module) -> Value {
    let generation = m.current().map(|g| {
        let plugins: Vec<Value> = g
            .libraries
            .iter()
            .map(|(name, lib)| {
                let process = lib.process().map(|p| p.status());
                json!({
                    "name": name,
                    "build": PluginBuild::of(lib),
                    "isolation": if process.is_some() { "process" } else { "in_process" },
                    "process": process,
                })
            })
            .collect();
        json!({
            "number": g.number,
            "plugins": plugins,
            "routes": g.routes.len(),
            "sources": g.spec.sources.len(),
            "actors": g.actors.len(),
            "transforms": g.transforms.len(),
            "inflight": g.inflight.len(),
            "drain_timeout_ms": g.spec.drain_timeout.as_millis() as u64,
        })
    });
    let degraded = m.degraded();
    let rollout = rollout::status(m);
    let record = m.record();
    let draining: Vec<Value> = record
        .draining
        .iter()
        .map(|d| {
            json!({
                "generation": d.generation,
                "inflight": d.inflight(),
                "elapsed_ms": d.started.elapsed().as_millis() as u64,
                "drain_timeout_ms": d.timeout.as_millis() as u64,
            })
        })
        .collect();
    json!({
        "name": m.name,
        "directory": m.dir,
        "state": if generation.is_some() { "active" } else { "unloading" },
        "health": if degraded.is_some() { "degraded" } else { "ok" },
        "degraded": degraded,
        "transform_overruns": m.calls.overruns.load(Ordering::Relaxed),
        "queue": m.queue.stats(&m.name),
        "actors": actors_json(m),
        "uptime_ms": m.started.elapsed().as_millis() as u64,
        "generation": generation,
        "draining": draining,
        "last_drain": record.last_drain,
        "rollout": rollout,
        "last_reload": record.last_reload.as_ref().map(|(_, outcome)| outcome),
        "last_failed_reload": record.last_failure.as_ref().map(|f| json!({
            "at": f.at,
            "errors": f.errors.iter().map(super::error::error_json).collect::<Vec<_>>(),
        })),
    })
}

/// Each actor's deliveries by state, and its dead letters.
pub fn actors_json(m: &Module) -> Value {
    let dead = m.queue.dead.count_by_actor(&m.name);
    let g = m.current();
    let ids = g.iter().flat_map(|g| g.actors.keys()).chain(dead.keys());
    let mut actors = serde_json::Map::new();
    for id in ids {
        let stats = m.actor_stats(id);
        let slot = g.as_ref().and_then(|g| g.actors.get(id));
        actors.insert(
            id.clone(),
            json!({
                "waiting": stats.waiting.load(Ordering::Relaxed),
                "inflight": stats.inflight.load(Ordering::Relaxed),
                "retrying": stats.retrying.load(Ordering::Relaxed),
                "dead": dead.get(id).copied().unwrap_or(0),
                "failing": slot.is_some_and(|s| s.gate.is_failing()),
            }),
        );
    }
    Value::Object(actors)
}

/// `GET /control/modules`.
pub async fn list(State(app): State<AppState>) -> Json<Value> {
    Json(Value::Array(
        app.registry
            .modules()
            .iter()
            .map(|m| module_json(m))
            .collect(),
    ))
}

/// `GET /control/modules/{name}`.
pub async fn status(
    State(app): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let m = app
        .registry
        .module(&name)
        .ok_or_else(|| ApiError::NotFound(format!("no module named {name:?} is loaded")))?;
    Ok(Json(module_json(&m)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoadBody {
    path: PathBuf,
}

/// `POST /control/modules` with `{"path": "<module dir>"}`.
pub async fn load(
    State(app): State<AppState>,
    body: Result<Json<LoadBody>, JsonRejection>,
) -> Result<Response, ApiError> {
    let Json(body) = body.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    let m = app.registry.load(&body.path).await?;
    Ok((StatusCode::CREATED, Json(module_json(&m))).into_response())
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct StopParams {
    drain_timeout_ms: Option<u64>,
    #[serde(default)]
    force: bool,
}

/// `DELETE /control/modules/{name}?drain_timeout_ms=&force=`: returns once the module is gone.
pub async fn unload(
    State(app): State<AppState>,
    Path(name): Path<String>,
    Query(p): Query<StopParams>,
) -> Result<Json<Value>, ApiError> {
    // On a task of its own: a client that hangs up must not cut an unload in half.
    let (registry, module) = (app.registry.clone(), name.clone());
    let timeout = p.drain_timeout_ms.map(Duration::from_millis);
    let report = tokio::spawn(async move { registry.unload(&module, timeout, p.force).await })
        .await
        .map_err(|e| ApiError::Internal(format!("unload task failed: {e}")))??;
    Ok(Json(json!({"module": name, "drain": report})))
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct ReloadBody {
    drain_timeout_ms: Option<u64>,
    #[serde(default)]
    force: bool,
    #[serde(default)]
    dry_run: bool,
    /// `"10%"`: start with a canary of that share.
    canary: Option<String>,
    canary_for_ms: Option<u64>,
    auto_rollback: Option<bool>,
    bake_ms: Option<u64>,
    /// In cluster mode: reload this node only (the default reloads every node, or none).
    #[serde(default)]
    local: bool,
}

/// `POST /control/modules/{name}/reload` with `{"drain_timeout_ms", "force", "dry_run",
/// "canary", "canary_for_ms", "auto_rollback", "bake_ms"}` (all optional). 200 with the report
/// when applied, unchanged or a dry run; 422 with the errors when refused (the current
/// generation keeps serving).
pub async fn reload(
    State(app): State<AppState>,
    Path(name): Path<String>,
    body: Option<Json<ReloadBody>>,
) -> Result<Response, ApiError> {
    let body = body.map(|Json(b)| b).unwrap_or_default();
    let canary = match body.canary.as_deref().map(parse_share) {
        Some(Err(e)) => return Err(ApiError::BadRequest(format!("canary: {e}"))),
        Some(Ok(share)) => Some(share),
        None => None,
    };
    let opts = ReloadOptions {
        drain_timeout: body.drain_timeout_ms.map(Duration::from_millis),
        force: body.force,
        dry_run: body.dry_run,
        canary,
        canary_for: body.canary_for_ms.map(Duration::from_millis),
        auto_rollback: body.auto_rollback,
        bake: body.bake_ms.map(Duration::from_millis),
    };
    if let Some(cluster) = app.registry.queue.cluster().filter(|_| !body.local) {
        if app.registry.module(&name).is_none() {
            return Err(crate::module::LoadError::NotFound(name).into());
        }
        // On a task of its own: a client that hangs up must not leave the nodes without a
        // decision.
        let coordinated = tokio::spawn(async move {
            crate::cluster::reload::coordinate(&cluster, &name, &opts).await
        });
        let (applied, report) = coordinated
            .await
            .map_err(|e| ApiError::Internal(format!("reload task failed: {e}")))?;
        let status = if applied {
            StatusCode::OK
        } else {
            StatusCode::UNPROCESSABLE_ENTITY
        };
        return Ok((status, Json(report)).into_response());
    }
    let outcome = app.registry.reload(&name, &opts).await?;
    let status = match &outcome {
        ReloadOutcome::Rejected { .. } => StatusCode::UNPROCESSABLE_ENTITY,
        _ => StatusCode::OK,
    };
    Ok((status, Json(outcome_json(&outcome))).into_response())
}

/// `POST /control/modules/{name}/rollback`: swaps back to the previous generation while a
/// rollout keeps it loaded. 200 with the rollout's report; 409 when there is none.
pub async fn rollback(
    State(app): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    match app.registry.roll_back(&name).await? {
        Ok(report) => Ok(Json(json!({"module": name, "rollout": report}))),
        Err(why) => Err(ApiError::Conflict(why)),
    }
}

/// A reload's outcome as the API answers it.
pub(crate) fn outcome_json(outcome: &ReloadOutcome) -> Value {
    match outcome {
        ReloadOutcome::Rejected { module, errors } => json!({
            "outcome": "rejected",
            "module": module,
            "error": "invalid module configuration; the current generation keeps serving",
            "errors": errors.iter().map(super::error::error_json).collect::<Vec<_>>(),
        }),
        other => serde_json::to_value(other).unwrap_or(Value::Null),
    }
}
