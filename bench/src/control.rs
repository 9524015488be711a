//! The daemon's control API (`/control/modules/...`, bearer token), as the reload benchmark uses
//! it: reload a module, read its status.

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;

pub struct Control {
    base: String,
    auth: String,
    http: Client<HttpConnector, Full<Bytes>>,
}

impl Control {
    pub fn new(port: u16, token: &str) -> Control {
        Control {
            base: format!("http://127.0.0.1:{port}"),
            auth: format!("Bearer {token}"),
            http: Client::builder(TokioExecutor::new()).build_http(),
        }
    }

    /// Sends a request; returns the status and the JSON body (`Null` when not JSON).
    pub async fn request(
        &self,
        method: &str,
        path: &str,
        body: Option<&Value>,
    ) -> Result<(u16, Value), String> {
        let body = body.map(Value::to_string).unwrap_or_default();
        let request = hyper::Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.base))
            .header("authorization", &self.auth)
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| e.to_string())?;
        let response = self
            .http
            .request(request)
            .await
            .map_err(|e| format!("{method} {path}: {e}"))?;
        let status = response.status().as_u16();
        let bytes = response
            .into_body()
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .to_bytes();
        Ok((
            status,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        ))
    }

    /// `GET /control/modules/<name>`.
    pub async fn status(&self, module: &str) -> Result<Value, String> {
        match self
            .request("GET", &format!("/control/modules/{module}"), None)
            .await?
        {
            (200, v) => Ok(v),
            (status, v) => Err(format!("module status: {status} {v}")),
        }
    }

    /// `POST /control/modules/<name>/reload`; the report, or why it failed.
    pub async fn reload(&self, module: &str, body: &Value) -> Result<Value, String> {
        match self
            .request(
                "POST",
                &format!("/control/modules/{module}/reload"),
                Some(body),
            )
            .await?
        {
            (200, v) => Ok(v),
            (status, v) => Err(format!("reload: {status} {v}")),
        }
    }
}
