//! The daemon's HTTP client, lent to plugins through [`super::services`] (a plugin has no reactor
//! of its own). Plain `http://` only for now: TLS would add a large dependency tree to every build.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use orgloop_plugin_sdk::{HttpRequest, HttpResponse};

/// Responses larger than this are refused.
const MAX_RESPONSE_BYTES: usize = 16 * 1024 * 1024;

#[derive(Clone)]
pub struct HttpClient {
    client: Client<HttpConnector, Full<Bytes>>,
    /// The runtime requests run on: the daemon's, never a module's (see
    /// [`crate::module::executor`]); the current one when made outside a runtime.
    io: Option<tokio::runtime::Handle>,
}

impl Default for HttpClient {
    fn default() -> Self {
        // No Nagle: a request is written whole, and waiting to coalesce small writes only adds
        // latency.
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(60))
            .build(connector);
        HttpClient {
            client,
            io: tokio::runtime::Handle::try_current().ok(),
        }
    }
}

impl HttpClient {
    /// Starts [`send`](Self::send) as a task on the client's runtime.
    pub fn spawn_send(
        &self,
        req: HttpRequest,
    ) -> tokio::task::JoinHandle<Result<HttpResponse, String>> {
        let client = self.clone();
        let send = async move { client.send(req).await };
        match &self.io {
            Some(io) => io.spawn(send),
            None => tokio::spawn(send),
        }
    }

    /// Sends `req` and reads the whole response, within `req.timeout`.
    pub async fn send(&self, req: HttpRequest) -> Result<HttpResponse, String> {
        let uri: hyper::Uri = req
            .url
            .parse()
            .map_err(|e| format!("invalid URL {:?}: {e}", req.url))?;
        match uri.scheme_str() {
            Some("http") => {}
            Some(other) => {
                return Err(format!(
                    "{other}:// URLs are not supported (only http://): {}",
                    req.url
                ))
            }
            None => {
                return Err(format!(
                    "URL {:?} has no scheme; expected http://...",
                    req.url
                ))
            }
        }
        let mut builder = hyper::Request::builder()
            .method(req.method.as_str())
            .uri(uri);
        for (k, v) in &req.headers {
            builder = builder.header(k.as_str(), v.as_str());
        }
        let request = builder
            .body(Full::new(Bytes::from(req.body)))
            .map_err(|e| format!("invalid request: {e}"))?;
        let exchange = async {
            let response = self
                .client
                .request(request)
                .await
                .map_err(|e| error_chain(&e))?; // the caller names the request
            let (parts, body) = response.into_parts();
            let body = Limited::new(body, MAX_RESPONSE_BYTES)
                .collect()
                .await
                .map_err(|e| format!("reading the response of {}: {e}", req.url))?;
            let headers = parts
                .headers
                .iter()
                .map(|(k, v)| {
                    (
                        k.as_str().to_owned(),
                        String::from_utf8_lossy(v.as_bytes()).into_owned(),
                    )
                })
                .collect();
            Ok(HttpResponse {
                status: parts.status.as_u16(),
                headers,
                body: body.to_bytes().to_vec(),
            })
        };
        tokio::time::timeout(req.timeout, exchange)
            .await
            .unwrap_or_else(|_| {
                Err(format!(
                    "{} {}: timed out after {:?}",
                    req.method, req.url, req.timeout
                ))
            })
    }
}

/// "error: cause: cause", since hyper's top-level messages say little.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}
