//! The built-in webhook source: `POST /webhook/<source-id>`. The JSON body becomes the payload of
//! a `resource.changed` event (as upstream's generic webhook), optionally authenticated with an
//! HMAC-SHA256 signature; the answer is `202 {"ok": true, "event_id": ...}` once the event is
//! stored (synced to disk with `durability: disk`), and `503` with `Retry-After` when it cannot
//! be (the module's queue is full, the disk fails).

use axum::body::Body;
use axum::extract::{Path, Request, State};
use axum::http::header::{CONTENT_TYPE, RETRY_AFTER};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use hmac::{Hmac, Mac};
use http_body_util::{BodyExt, Limited};
use orgloop_plugin_sdk::{format_timestamp, new_event_id, new_trace_id, Doc, Event, Part};
use sha2::Sha256;

use crate::config::spec::WebhookConfig;
use crate::control::{error_response, AppState};
use crate::metrics::{metrics, WebhookLabels};
use crate::module::registry::WebhookTarget;
use crate::queue::Refused;

/// `POST /webhook/{source}`, counted by source and answer code.
pub async fn receive(
    State(app): State<AppState>,
    Path(source): Path<String>,
    request: Request,
) -> Response {
    // The request taken whole: axum's `HeaderMap` extractor would copy the headers.
    let (parts, body) = request.into_parts();
    let (response, source) = match app.registry.webhook(&source) {
        Some(target) => (
            answer(&app, &source, &target, &parts.headers, body).await,
            source,
        ),
        // Anyone can post to any path: unknown sources share one label, so that their number
        // stays bounded.
        None => (
            error_response(StatusCode::NOT_FOUND, format!("unknown source: {source}")),
            "(unknown)".to_owned(),
        ),
    };
    let labels = WebhookLabels {
        source,
        code: response.status().as_u16(),
    };
    metrics().webhooks.get_or_create(&labels).inc();
    response
}

async fn answer(
    app: &AppState,
    source: &str,
    target: &WebhookTarget,
    headers: &HeaderMap,
    body: Body,
) -> Response {
    let read = Limited::new(body, target.config.max_body_bytes).collect();
    let Ok(body) = tokio::time::timeout(app.body_timeout, read).await else {
        return error_response(
            StatusCode::REQUEST_TIMEOUT,
            format!("the body did not arrive within {:?}", app.body_timeout),
        );
    };
    let body = match body {
        Ok(b) => b.to_bytes(),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => {
            return error_response(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("body larger than {} bytes", target.config.max_body_bytes),
            );
        }
        Err(e) => return error_response(StatusCode::BAD_REQUEST, format!("cannot read body: {e}")),
    };
    if let Some(secret) = &target.config.secret {
        if let Err(why) = check_signature(secret, headers, &body) {
            return error_response(StatusCode::UNAUTHORIZED, why);
        }
    }
    let payload = match Doc::parse(&body) {
        Ok(d) => d,
        Err(e) => {
            return error_response(StatusCode::BAD_REQUEST, format!("invalid JSON body: {e}"))
        }
    };
    let event = build_event(source, &target.config, &payload);
    // Written out: an event id is letters, digits and `_`, nothing JSON escapes.
    let answer = format!(r#"{{"ok":true,"event_id":"{}"}}"#, event.id());
    let stored = match target.module.accept(event, Some(&target.stats)) {
        Ok(stored) => stored.wait().await,
        Err(e) => Err(e),
    };
    match stored {
        Ok(()) => (
            StatusCode::ACCEPTED,
            [(CONTENT_TYPE, HeaderValue::from_static("application/json"))],
            answer,
        )
            .into_response(),
        Err(e) => unavailable(&e),
    }
}

/// `503` with `Retry-After`: nothing was stored, so the sender must try again.
fn unavailable(why: &Refused) -> Response {
    let mut response = error_response(
        StatusCode::SERVICE_UNAVAILABLE,
        format!("not accepted, try again later: {why}"),
    );
    let seconds = match why {
        Refused::Full(_) => "1",
        Refused::Failed(_) | Refused::Unknown(_) => "5",
    };
    response
        .headers_mut()
        .insert(RETRY_AFTER, HeaderValue::from_static(seconds));
    response
}

/// Upstream's generic webhook event: `resource.changed`, platform `webhook`, `platform_event` from
/// the configured body field (else `unknown`), the body as payload. The body, parsed once, is
/// copied into the event as it is; every other field is valid by construction.
fn build_event(source: &str, config: &WebhookConfig, payload: &Doc) -> Event {
    let platform_event = config
        .event_type_field
        .as_deref()
        .and_then(|f| payload.root().get(f))
        .and_then(|v| v.as_str())
        .unwrap_or("unknown");
    let (id, trace_id) = (new_event_id(), new_trace_id());
    let timestamp = format_timestamp(std::time::SystemTime::now());
    Event::from_doc_unchecked(Doc::object(&[
        ("type", Part::Str("resource.changed")),
        ("source", Part::Str(source)),
        ("id", Part::Str(&id)),
        ("trace_id", Part::Str(&trace_id)),
        ("timestamp", Part::Str(&timestamp)),
        (
            "provenance",
            Part::Object(&[
                ("platform", Part::Str("webhook")),
                ("platform_event", Part::Str(platform_event)),
            ]),
        ),
        ("payload", Part::Doc(payload)),
    ]))
}

/// Checks `x-hub-signature-256` (or `x-signature`): `sha256=<hex of HMAC-SHA256(secret, body)>`.
fn check_signature(secret: &str, headers: &HeaderMap, body: &[u8]) -> Result<(), String> {
    let header = headers
        .get("x-hub-signature-256")
        .or_else(|| headers.get("x-signature"))
        .and_then(|v| v.to_str().ok())
        .ok_or("missing x-hub-signature-256 header")?;
    let hex = header.strip_prefix("sha256=").unwrap_or(header);
    let given = decode_hex(hex).ok_or("malformed signature")?;
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).map_err(|e| e.to_string())?;
    mac.update(body);
    mac.verify_slice(&given)
        .map_err(|_| "signature mismatch".to_owned())
}

fn decode_hex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn signed(secret: &str, body: &[u8]) -> HeaderMap {
        let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
        mac.update(body);
        let sig = crate::plugin::store::hex(&mac.finalize().into_bytes());
        let mut h = HeaderMap::new();
        h.insert(
            "x-hub-signature-256",
            format!("sha256={sig}").parse().unwrap(),
        );
        h
    }

    #[test]
    fn signatures_are_checked() {
        let body = br#"{"a":1}"#;
        assert!(check_signature("k", &signed("k", body), body).is_ok());
        assert_eq!(
            check_signature("k", &signed("other", body), body),
            Err("signature mismatch".into())
        );
        assert!(check_signature("k", &HeaderMap::new(), body).is_err());
    }

    #[test]
    fn events_follow_the_generic_webhook_shape() {
        let cfg = WebhookConfig {
            secret: None,
            event_type_field: Some("action".into()),
            max_body_bytes: 10,
        };
        let e = build_event("hook", &cfg, &Doc::from_json(&json!({"action": "opened"})));
        assert!(Event::from_json(e.to_json()).is_ok(), "a valid event");
        assert_eq!(e.source(), "hook");
        assert_eq!(e.str_field("provenance.platform_event"), Some("opened"));
        assert_eq!(e.str_field("provenance.platform"), Some("webhook"));
        assert!(e.trace_id().unwrap().starts_with("trc_"));
    }
}
