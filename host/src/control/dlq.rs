//! `/control/dlq`: list, show, replay and purge dead letters.
//!
//! Replaying a dead letter stores its delivery in the queue again (the event as it was to be
//! delivered, along its route only, without routing or transforms; a whole event that was never
//! routed goes through its routes) and removes the letter once that is durable; the delivery then goes through the module's current generation like any
//! other, retries included. A module that is not loaded cannot take its letters back.

use axum::extract::{Path, Query, State};
use axum::Json;
use orgloop_plugin_sdk::Event;
use serde::Deserialize;
use serde_json::{json, Value};

use super::error::ApiError;
use super::AppState;
use crate::queue::dead::DeadLetter;

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Filter {
    module: Option<String>,
}

/// `GET /control/dlq?module=`: the dead letters, oldest first.
pub async fn list(State(app): State<AppState>, Query(f): Query<Filter>) -> Json<Value> {
    let letters = app.registry.queue.dead.list(f.module.as_deref());
    Json(serde_json::to_value(letters).unwrap_or(Value::Null))
}

/// `GET /control/dlq/{id}`.
pub async fn show(
    State(app): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<DeadLetter>, ApiError> {
    app.registry
        .queue
        .dead
        .get(&id)
        .map(Json)
        .ok_or_else(|| not_found(&id))
}

/// `POST /control/dlq/{id}/replay`.
pub async fn replay_one(
    State(app): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let letter = app
        .registry
        .queue
        .dead
        .get(&id)
        .ok_or_else(|| not_found(&id))?;
    let outcome = replay(&app, vec![letter]).await;
    if let Some(failure) = outcome["failed"].get(0) {
        return Err(ApiError::Conflict(
            failure["error"]
                .as_str()
                .unwrap_or("not replayed")
                .to_owned(),
        ));
    }
    Ok(Json(outcome))
}

/// `POST /control/dlq/replay?module=`: every dead letter (of one module).
pub async fn replay_all(State(app): State<AppState>, Query(f): Query<Filter>) -> Json<Value> {
    let letters = app.registry.queue.dead.list(f.module.as_deref());
    Json(replay(&app, letters).await)
}

/// `DELETE /control/dlq/{id}`.
pub async fn purge_one(
    State(app): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    match app.registry.queue.dead.remove(&id).await {
        Ok(true) => Ok(Json(json!({"purged": [id]}))),
        Ok(false) => Err(not_found(&id)),
        Err(e) => Err(ApiError::Internal(format!(
            "removing dead letter {id}: {e}"
        ))),
    }
}

/// `DELETE /control/dlq?module=`: every dead letter (of one module).
pub async fn purge_all(
    State(app): State<AppState>,
    Query(f): Query<Filter>,
) -> Result<Json<Value>, ApiError> {
    let dead = &app.registry.queue.dead;
    let mut purged = Vec::new();
    for letter in dead.list(f.module.as_deref()) {
        dead.remove(&letter.id)
            .await
            .map_err(|e| ApiError::Internal(format!("removing dead letter {}: {e}", letter.id)))?;
        purged.push(letter.id);
    }
    Ok(Json(json!({ "purged": purged })))
}

/// Stores each letter's delivery again and removes the letters that were stored.
async fn replay(app: &AppState, letters: Vec<DeadLetter>) -> Value {
    let (mut replayed, mut failed) = (Vec::new(), Vec::new());
    for letter in letters {
        match replay_letter(app, &letter).await {
            Ok(()) => replayed.push(letter.id),
            Err(error) => failed.push(json!({"id": letter.id, "error": error})),
        }
    }
    json!({"replayed": replayed, "failed": failed})
}

/// Claims the letter (a concurrent replay of it finds nothing), stores its delivery again, then
/// deletes it; on any failure it goes back to the list.
async fn replay_letter(app: &AppState, letter: &DeadLetter) -> Result<(), String> {
    let dead = &app.registry.queue.dead;
    let claimed = dead
        .claim(&letter.id)
        .await
        .map_err(|e| e.to_string())?
        .ok_or_else(|| format!("dead letter {} is no longer there", letter.id))?;
    match store_again(app, &claimed).await {
        Ok(()) => dead
            .delete(claimed)
            .await
            .map_err(|e| format!("replayed, but the letter could not be removed: {e}")),
        Err(e) => {
            if let Err(back) = dead.put_back(claimed).await {
                tracing::warn!("a dead letter that was not replayed could not be put back at once ({back}); it is listed again in a minute");
            }
            Err(e)
        }
    }
}

async fn store_again(app: &AppState, letter: &DeadLetter) -> Result<(), String> {
    let module = app.registry.module(&letter.module).ok_or_else(|| {
        format!(
            "module {} is not loaded; load it, then replay",
            letter.module
        )
    })?;
    let event = Event::from_json(letter.event.clone()).map_err(|e| e.to_string())?;
    module
        .queue
        .replay(&letter.module, letter.route.clone(), event)
        .map_err(|e| e.to_string())?
        .wait()
        .await
        .map_err(|e| e.to_string())
}

fn not_found(id: &str) -> ApiError {
    ApiError::NotFound(format!("no dead letter {id:?}"))
}
