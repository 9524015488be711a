//! The CLI's side of the control API: a small blocking client that finds the daemon's token by
//! itself.

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client as Hyper;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;

use super::auth::{read_token, token_path};

/// Where this machine reaches a daemon on `port` that listens on `host` (default: the address
/// in `ORGLOOP_HOST`, as `orgloop start` reads it): 127.0.0.1 when that is unset or every
/// address (`0.0.0.0`, `::`).
fn local_address(host: Option<std::net::IpAddr>, port: u16) -> String {
    let host = host
        .or_else(|| std::env::var("ORGLOOP_HOST").ok()?.parse().ok())
        .filter(|ip| !ip.is_unspecified())
        .unwrap_or(std::net::Ipv4Addr::LOCALHOST.into());
    std::net::SocketAddr::new(host, port).to_string()
}

/// A connection to the daemon on one port.
pub struct Client {
    /// `host:port`: the daemon's `ORGLOOP_HOST` when set (see [`local_address`]).
    address: String,
    token: String,
    runtime: tokio::runtime::Runtime,
    http: Hyper<HttpConnector, Full<Bytes>>,
}

/// An answer: status and JSON body.
pub struct Answer {
    pub status: u16,
    pub body: Value,
}

impl Client {
    /// Prepares a client for the daemon on `port`.
    pub fn new(port: u16) -> Result<Client, String> {
        Self::listening_on(None, port)
    }

    /// Prepares a client for the daemon that listens on `host` (default: `ORGLOOP_HOST`) and
    /// `port`.
    pub fn listening_on(host: Option<std::net::IpAddr>, port: u16) -> Result<Client, String> {
        let token = read_token(port).map_err(|e| {
            format!(
                "no orgloop daemon seems to run on port {port}: cannot read its token at {} ({e}); start one with `orgloop start`, or pass --port",
                token_path(port).display()
            )
        })?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| e.to_string())?;
        let http = {
            let _guard = runtime.enter();
            Hyper::builder(TokioExecutor::new()).build_http()
        };
        Ok(Client {
            address: local_address(host, port),
            token,
            runtime,
            http,
        })
    }

    pub fn get(&self, path: &str) -> Result<Answer, String> {
        self.send("GET", path, None)
    }

    pub fn post(&self, path: &str, body: &Value) -> Result<Answer, String> {
        self.send("POST", path, Some(body))
    }

    pub fn delete(&self, path: &str) -> Result<Answer, String> {
        self.send("DELETE", path, None)
    }

    fn send(&self, method: &str, path: &str, body: Option<&Value>) -> Result<Answer, String> {
        let url = format!("http://{}{path}", self.address);
        let mut req = hyper::Request::builder()
            .method(method)
            .uri(&url)
            .header("authorization", format!("Bearer {}", self.token));
        if body.is_some() {
            req = req.header("content-type", "application/json");
        }
        let bytes = body.map(|b| Bytes::from(b.to_string())).unwrap_or_default();
        let req = req.body(Full::new(bytes)).map_err(|e| e.to_string())?;
        self.runtime.block_on(async {
            let resp =
                self.http.request(req).await.map_err(|e| {
                    format!("cannot reach the orgloop daemon on {}: {e}", self.address)
                })?;
            let status = resp.status().as_u16();
            let body = resp
                .into_body()
                .collect()
                .await
                .map_err(|e| e.to_string())?
                .to_bytes();
            Ok(Answer {
                status,
                body: serde_json::from_slice(&body).unwrap_or(Value::Null),
            })
        })
    }
}
