//! The `webhook` actor: POSTs (or PUTs) each delivery as JSON to a URL, with upstream OrgLoop's
//! webhook actor config.

use std::collections::BTreeMap;
use std::time::Duration;

use orgloop_plugin_sdk::prelude::*;
use orgloop_plugin_sdk::serde::{de, Deserializer};
use serde::Serialize;

use crate::auth::Auth;
use crate::duration;
use crate::headers::Headers;
use crate::response::status_error;
use crate::url;

/// The config of [`Webhook`]. Unknown keys are refused.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    /// Where to send deliveries (required; `http://` only).
    url: String,
    /// `POST` (default) or `PUT`.
    #[serde(default)]
    method: Method,
    /// Extra request headers.
    #[serde(default)]
    headers: BTreeMap<String, String>,
    /// Bearer or basic authentication.
    #[serde(default)]
    auth: Option<Auth>,
    /// Give up on a request after this long (default `30s`).
    #[serde(
        default = "default_timeout",
        deserialize_with = "duration::deserialize"
    )]
    timeout: Duration,
    /// Refuse to build, with the error `fail_init is set` (for testing reload failures).
    #[serde(default)]
    fail_init: bool,
    /// Upstream's body templating; refused with an explanation .
    #[serde(
        default,
        rename = "body_template",
        deserialize_with = "reject_body_template"
    )]
    _body_template: (),
}

fn default_timeout() -> Duration {
    Duration::from_secs(30)
}

/// The body has one documented shape, so receivers can rely on it; reshaping it belongs in the
/// receiver (or in an `enrich` transform, for the event part).
fn reject_body_template<'de, D: Deserializer<'de>>(_: D) -> Result<(), D::Error> {
    Err(de::Error::custom(
        "`body_template` is not supported by http::webhook; the body is always \
         {event, route, config, prompt, prompt_file, delivered_by}",
    ))
}

/// The request method.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
enum Method {
    #[default]
    #[serde(rename = "POST", alias = "post")]
    Post,
    #[serde(rename = "PUT", alias = "put")]
    Put,
}

impl Method {
    fn as_str(self) -> &'static str {
        match self {
            Method::Post => "POST",
            Method::Put => "PUT",
        }
    }
}

/// What the receiver gets.
#[derive(Serialize)]
struct Body<'a> {
    event: &'a Event,
    route: &'a str,
    config: &'a Json,
    prompt: Option<&'a str>,
    prompt_file: Option<&'a str>,
    delivered_by: DeliveredBy,
}

#[derive(Serialize)]
struct DeliveredBy {
    plugin: &'static str,
    version: &'static str,
}

/// The `webhook` actor: POSTs (or PUTs) each delivery as JSON to a URL, with upstream OrgLoop's
/// webhook actor config.
///
/// ```yaml
/// actors:
///   - id: notify
///     connector: http::webhook
///     config:
///       url: http://127.0.0.1:9000/hook
///       method: POST                      # or PUT
///       headers: { x-team: platform }
///       auth: { type: bearer, token: "${HOOK_TOKEN}" }
///       timeout: 30s
/// ```
///
/// The body is `{"event", "route", "config", "prompt", "prompt_file", "delivered_by"}`: the event
/// after the route's transforms, the route's name and `then.config`, the SOP text and its path
/// (or `null`), and which plugin version sent it. A route may send elsewhere or add headers
/// through its `then.config`: `{url: ..., headers: {...}}`.
///
/// Headers are layered, later ones replacing earlier ones of the same name: `content-type:
/// application/json` and `idempotency-key: <event id>:<route>` (the same on every attempt, so
/// that the receiver can drop repeats), then the actor's `headers`, then its `auth`, then the
/// route's `headers`.
///
/// A `2xx` answer is a delivery. A `4xx` other than `408` and `429` is final (the daemon
/// dead-letters the delivery); anything else — connection errors, timeouts, `408`, `429`, `5xx` —
/// is retried with backoff, waiting at least the `Retry-After` seconds the receiver asked for.
pub struct Webhook {
    config: WebhookConfig,
    host: Host,
}

impl Actor for Webhook {
    type Config = WebhookConfig;

    const DESCRIPTION: &'static str =
        "Sends each delivery as JSON to an http:// URL (POST or PUT, headers, bearer/basic auth)";

    fn new(config: WebhookConfig, host: Host) -> Result<Self, PluginError> {
        if config.fail_init {
            return Err(PluginError::new("fail_init is set"));
        }
        url::check("url", &config.url).map_err(PluginError::new)?;
        if let Some(auth) = &config.auth {
            auth.check().map_err(PluginError::new)?;
        }
        Ok(Webhook { config, host })
    }

    async fn deliver(&self, delivery: Delivery, cancel: Cancel) -> Result<Outcome, PluginError> {
        // A delivery cancelled before it started sends nothing: the receiver never sees it.
        if cancel.is_cancelled() {
            return Err(PluginError::new("cancelled"));
        }
        let request = self.request(&delivery)?;
        let (method, url) = (request.method.clone(), request.url.clone());
        // The response wins a tie with cancellation: once the receiver has answered, the event
        // was delivered, and reporting otherwise would invite a duplicate.
        match race(self.host.http(request), cancel.cancelled()).await {
            Either::Left(Ok(response)) if response.is_success() => Ok(Outcome::Delivered),
            Either::Left(Ok(response)) => Err(status_error(&url, &response)),
            Either::Left(Err(e)) => Err(e.context(format!("{method} {url} failed"))),
            Either::Right(()) => Err(PluginError::new("cancelled")),
        }
    }
}

impl Webhook {
    /// Builds the request for one delivery, with the route's `url` and `headers` applied.
    fn request(&self, d: &Delivery) -> Result<HttpRequest, PluginError> {
        let url = match d.config.get("url") {
            None | Some(Json::Null) => self.config.url.as_str(),
            Some(Json::String(url)) => {
                url::check("route config url", url).map_err(PluginError::new)?;
                url.as_str()
            }
            Some(other) => {
                return Err(PluginError::new(format!(
                    "route config url must be a string, not {other}"
                )))
            }
        };
        let mut headers = Headers::default();
        headers.set("content-type", "application/json");
        // Before the actor's and the route's headers, which may replace it.
        if !d.idempotency_key.is_empty() {
            headers.set("idempotency-key", &d.idempotency_key);
        }
        headers.extend(&self.config.headers);
        if let Some(auth) = &self.config.auth {
            headers.set("authorization", &auth.header_value());
        }
        headers.extend(&route_headers(&d.config)?);

        let body = Body {
            event: &d.event,
            route: &d.route,
            config: &d.config,
            prompt: d.prompt.as_deref(),
            prompt_file: d.prompt_file.as_deref(),
            delivered_by: DeliveredBy {
                plugin: "http",
                version: env!("CARGO_PKG_VERSION"),
            },
        };
        let mut request =
            HttpRequest::new(self.config.method.as_str(), url).timeout(self.config.timeout);
        request.headers = headers.into_vec();
        request.body = serde_json::to_vec(&body)?;
        Ok(request)
    }
}

/// The route's `headers`: an object of strings, if present.
fn route_headers(config: &Json) -> Result<BTreeMap<String, String>, PluginError> {
    match config.get("headers") {
        None | Some(Json::Null) => Ok(BTreeMap::new()),
        Some(headers) => serde_json::from_value(headers.clone()).map_err(|e| {
            PluginError::new(format!(
                "route config headers must map names to strings: {e}"
            ))
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use orgloop_plugin_sdk::testing::{json_response, test_event, TestActor, TestHost};
    use std::sync::{Arc, Mutex};

    /// A test host that answers every request with `status` and `body`, and the requests it saw.
    fn answering(status: u16, body: Json) -> (TestHost, Arc<Mutex<Vec<HttpRequest>>>) {
        let host = TestHost::new();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        host.on_http(move |req| {
            log.lock().unwrap().push(req);
            json_response(status, body.clone())
        });
        (host, seen)
    }

    fn webhook(host: &TestHost, config: Json) -> TestActor {
        host.actor::<Webhook>(config).unwrap()
    }

    fn config_error(config: Json) -> String {
        match TestHost::new().actor::<Webhook>(config) {
            Ok(_) => panic!("config should be refused"),
            Err(e) => e.message().to_owned(),
        }
    }

    fn header<'a>(req: &'a HttpRequest, name: &str) -> Option<&'a str> {
        let mut found = req
            .headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name));
        let value = found.next().map(|(_, v)| v.as_str());
        assert!(found.next().is_none(), "header {name} sent twice");
        value
    }

    fn body(req: &HttpRequest) -> Json {
        serde_json::from_slice(&req.body).unwrap()
    }

    #[test]
    fn delivers_the_documented_body() {
        let (host, seen) = answering(200, json!({"ok": true}));
        let a = webhook(&host, json!({"url": "http://127.0.0.1:9000/hook"}));
        let event = test_event(json!({"pr": 42}));
        let mut d = Delivery::new(event.clone())
            .config(json!({"channel": "eng"}))
            .prompt("# Review\nLook at the PR.");
        d.prompt_file = Some("sops/review.md".into());
        d.route = "pr-review".into();
        assert_eq!(a.deliver(d), Ok(Outcome::Delivered));

        let seen = seen.lock().unwrap();
        assert_eq!(seen.len(), 1);
        let req = &seen[0];
        assert_eq!(req.method, "POST");
        assert_eq!(req.url, "http://127.0.0.1:9000/hook");
        assert_eq!(req.timeout, Duration::from_secs(30));
        assert_eq!(header(req, "content-type"), Some("application/json"));
        assert_eq!(header(req, "authorization"), None);
        assert_eq!(
            body(req),
            json!({
                "event": event.to_json(),
                "route": "pr-review",
                "config": {"channel": "eng"},
                "prompt": "# Review\nLook at the PR.",
                "prompt_file": "sops/review.md",
                "delivered_by": {"plugin": "http", "version": env!("CARGO_PKG_VERSION")},
            })
        );
    }

    #[test]
    fn missing_prompt_is_null() {
        let (host, seen) = answering(204, json!(null));
        let a = webhook(&host, json!({"url": "http://h/x"}));
        assert_eq!(
            a.deliver(Delivery::new(test_event(json!({})))),
            Ok(Outcome::Delivered)
        );
        let b = body(&seen.lock().unwrap()[0]);
        assert_eq!(b["prompt"], Json::Null);
        assert_eq!(b["prompt_file"], Json::Null);
        assert_eq!(b["config"], json!({}));
    }

    #[test]
    fn put_method_headers_and_timeout() {
        let (host, seen) = answering(201, json!({}));
        let a = webhook(
            &host,
            json!({
                "url": "http://h/x",
                "method": "put",
                "headers": {"X-Team": "platform", "Content-Type": "application/vnd.hook+json"},
                "timeout": "5s",
            }),
        );
        assert_eq!(
            a.deliver(Delivery::new(test_event(json!({})))),
            Ok(Outcome::Delivered)
        );
        let seen = seen.lock().unwrap();
        let req = &seen[0];
        assert_eq!(req.method, "PUT");
        assert_eq!(req.timeout, Duration::from_secs(5));
        assert_eq!(header(req, "x-team"), Some("platform"));
        assert_eq!(
            header(req, "content-type"),
            Some("application/vnd.hook+json"),
            "configured headers replace the default"
        );
    }

    #[test]
    fn bearer_auth() {
        let (host, seen) = answering(200, json!({}));
        let a = webhook(
            &host,
            json!({"url": "http://h/x", "auth": {"type": "bearer", "token": "t0k"}}),
        );
        a.deliver(Delivery::new(test_event(json!({})))).unwrap();
        assert_eq!(
            header(&seen.lock().unwrap()[0], "authorization"),
            Some("Bearer t0k")
        );
    }

    #[test]
    fn basic_auth_wins_over_a_configured_header() {
        let (host, seen) = answering(200, json!({}));
        let a = webhook(
            &host,
            json!({
                "url": "http://h/x",
                "headers": {"Authorization": "Bearer stale"},
                "auth": {"type": "basic", "username": "alice", "password": "s3cret"},
            }),
        );
        a.deliver(Delivery::new(test_event(json!({})))).unwrap();
        assert_eq!(
            header(&seen.lock().unwrap()[0], "authorization"),
            Some("Basic YWxpY2U6czNjcmV0")
        );
    }

    #[test]
    fn routes_override_url_and_add_headers() {
        let (host, seen) = answering(200, json!({}));
        let a = webhook(
            &host,
            json!({"url": "http://h/default", "headers": {"x-a": "1", "x-b": "1"},
                   "auth": {"type": "bearer", "token": "t"}}),
        );
        let d = Delivery::new(test_event(json!({}))).config(json!({
            "url": "http://other:8080/special",
            "headers": {"X-B": "2", "x-c": "3", "authorization": "Bearer route"},
        }));
        a.deliver(d).unwrap();
        a.deliver(Delivery::new(test_event(json!({})))).unwrap();
        let seen = seen.lock().unwrap();
        let (routed, plain) = (&seen[0], &seen[1]);
        assert_eq!(routed.url, "http://other:8080/special");
        assert_eq!(header(routed, "x-a"), Some("1"));
        assert_eq!(header(routed, "x-b"), Some("2"));
        assert_eq!(header(routed, "x-c"), Some("3"));
        assert_eq!(header(routed, "authorization"), Some("Bearer route"));
        assert_eq!(
            plain.url, "http://h/default",
            "the override is per delivery"
        );
        assert_eq!(header(plain, "x-b"), Some("1"));
        assert_eq!(header(plain, "authorization"), Some("Bearer t"));
    }

    #[test]
    fn bad_route_config_fails_the_delivery() {
        let (host, seen) = answering(200, json!({}));
        let a = webhook(&host, json!({"url": "http://h/x"}));
        let deliver = |config| {
            a.deliver(Delivery::new(test_event(json!({}))).config(config))
                .unwrap_err()
                .message()
                .to_owned()
        };
        assert!(deliver(json!({"url": 5})).contains("route config url must be a string"));
        assert!(deliver(json!({"url": "https://x"})).contains("route config url"));
        assert!(deliver(json!({"headers": ["a"]})).contains("route config headers"));
        assert!(deliver(json!({"headers": {"a": 1}})).contains("route config headers"));
        assert!(seen.lock().unwrap().is_empty(), "nothing was sent");
    }

    #[test]
    fn non_2xx_is_an_error_quoting_the_body() {
        let (host, _) = answering(503, json!({"error": "overloaded"}));
        let a = webhook(&host, json!({"url": "http://h/x"}));
        let err = a.deliver(Delivery::new(test_event(json!({})))).unwrap_err();
        assert_eq!(
            err.message(),
            r#"HTTP 503 from http://h/x: {"error":"overloaded"}"#
        );

        let (host, _) = answering(400, json!("e".repeat(1000)));
        let a = webhook(&host, json!({"url": "http://h/x"}));
        let err = a.deliver(Delivery::new(test_event(json!({})))).unwrap_err();
        let quoted = err
            .message()
            .strip_prefix("HTTP 400 from http://h/x: ")
            .unwrap();
        assert_eq!(quoted.len(), 200);

        let (host, _) = answering(302, json!({}));
        let a = webhook(&host, json!({"url": "http://h/x"}));
        assert!(
            a.deliver(Delivery::new(test_event(json!({})))).is_err(),
            "3xx is not delivered"
        );
    }

    #[test]
    fn transport_errors_name_the_request() {
        let host = TestHost::new(); // No HTTP handler: every request fails.
        let a = webhook(&host, json!({"url": "http://h/x", "method": "PUT"}));
        let err = a.deliver(Delivery::new(test_event(json!({})))).unwrap_err();
        assert!(
            err.message().starts_with("PUT http://h/x failed: "),
            "{err}"
        );
    }

    #[test]
    fn cancelled_before_sending_sends_nothing() {
        let (host, seen) = answering(200, json!({}));
        let a = webhook(&host, json!({"url": "http://h/x"}));
        let outcome =
            a.deliver_cancelled_after(Delivery::new(test_event(json!({}))), Duration::ZERO);
        assert_eq!(outcome, Err(PluginError::new("cancelled")));
        assert!(seen.lock().unwrap().is_empty());
        // A cancellation that comes later than the answer changes nothing.
        let outcome =
            a.deliver_cancelled_after(Delivery::new(test_event(json!({}))), Duration::from_secs(1));
        assert_eq!(outcome, Ok(Outcome::Delivered));
    }

    #[test]
    fn fail_init() {
        assert_eq!(
            config_error(json!({"url": "http://h/x", "fail_init": true})),
            "fail_init is set"
        );
    }

    #[test]
    fn bad_config_is_refused() {
        for (config, expected) in [
            (json!({}), "missing field `url`"),
            (json!({"url": "https://h/x"}), "https is not supported"),
            (json!({"url": "h/x"}), "not an absolute http:// URL"),
            (
                json!({"url": "http://h", "method": "GET"}),
                "unknown variant `GET`",
            ),
            (
                json!({"url": "http://h", "timeout": "30"}),
                "invalid duration \"30\"",
            ),
            (
                json!({"url": "http://h", "headers": {"a": 1}}),
                "invalid type",
            ),
            (
                json!({"url": "http://h", "auth": {"type": "oauth"}}),
                "unknown variant `oauth`",
            ),
            (
                json!({"url": "http://h", "auth": {"type": "bearer", "token": ""}}),
                "auth.token is empty",
            ),
            (
                json!({"url": "http://h", "body_template": "{}"}),
                "`body_template` is not supported",
            ),
            (
                json!({"url": "http://h", "retries": 3}),
                "unknown field `retries`",
            ),
        ] {
            let err = config_error(config.clone());
            assert!(err.contains(expected), "{config}: {err}");
        }
    }
}
