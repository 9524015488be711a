//! [`Host`]: the daemon's services as a plugin object sees them — logging, time, sleeping, emitting
//! events and HTTP — and [`Cancel`], the signal an actor delivery watches.
//!
//! A plugin has its own copy of the standard library and of any crate it links, and none of the
//! daemon's runtime: its tokio (if it had one) has no reactor, its stdout is not the daemon's log.
//! So everything that waits, talks to the network or writes a log goes through here.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use abi_stable::std_types::{RResult, RStr, RString, RVec, Tuple2};

use crate::abi::{level, CancelBox, FfiHttpRequest, FfiHttpResponse, HostBox};
use crate::error::PluginError;
use crate::event::Event;

/// How important a log line is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    /// Very detailed tracing.
    Trace,
    /// Details for debugging.
    Debug,
    /// Normal operation.
    Info,
    /// Something looks wrong but work goes on.
    Warn,
    /// Something failed.
    Error,
}

impl Level {
    pub(crate) fn to_wire(self) -> u8 {
        match self {
            Level::Trace => level::TRACE,
            Level::Debug => level::DEBUG,
            Level::Info => level::INFO,
            Level::Warn => level::WARN,
            Level::Error => level::ERROR,
        }
    }

    #[doc(hidden)]
    pub fn from_wire(n: u8) -> Level {
        match n {
            level::TRACE => Level::Trace,
            level::DEBUG => Level::Debug,
            level::INFO => Level::Info,
            level::WARN => Level::Warn,
            _ => Level::Error,
        }
    }
}

/// The host's services, lent to one plugin object. Cheap to clone; keep one in your object.
#[derive(Clone)]
pub struct Host {
    inner: Arc<HostBox>,
}

impl std::fmt::Debug for Host {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Host")
    }
}

impl Host {
    pub(crate) fn new(inner: HostBox) -> Self {
        Host {
            inner: Arc::new(inner),
        }
    }

    /// Writes a log line into the daemon's log, tagged with module, plugin and symbol.
    pub fn log(&self, level: Level, message: &str) {
        self.inner.log(level.to_wire(), RStr::from_str(message));
    }

    /// Logs at debug level.
    pub fn debug(&self, message: &str) {
        self.log(Level::Debug, message)
    }

    /// Logs at info level.
    pub fn info(&self, message: &str) {
        self.log(Level::Info, message)
    }

    /// Logs at warn level.
    pub fn warn(&self, message: &str) {
        self.log(Level::Warn, message)
    }

    /// Logs at error level.
    pub fn error(&self, message: &str) {
        self.log(Level::Error, message)
    }

    /// The current time, by the host's clock (a test host may fake it).
    pub fn now(&self) -> SystemTime {
        UNIX_EPOCH + Duration::from_millis(self.inner.now_ms().max(0) as u64)
    }

    /// Waits on the host's timer. Never block a thread instead: plugin calls share the daemon's
    /// threads.
    pub fn sleep(&self, duration: Duration) -> impl Future<Output = ()> + Send + 'static {
        self.inner
            .sleep(duration.as_millis().min(u64::MAX as u128) as u64)
    }

    /// Emits an event into this object's module, where it is routed like any other. Fails when
    /// the module no longer accepts events (it is being unloaded).
    pub fn emit(&self, event: Event) -> Result<(), PluginError> {
        match self.inner.emit(event) {
            RResult::ROk(()) => Ok(()),
            RResult::RErr(e) => Err(PluginError::new(e.as_str())),
        }
    }

    /// Sends an HTTP request through the daemon's client.
    pub fn http(
        &self,
        request: HttpRequest,
    ) -> impl Future<Output = Result<HttpResponse, PluginError>> + Send + 'static {
        let response = self.inner.http(request.into_wire());
        async move {
            match response.await {
                RResult::ROk(r) => Ok(HttpResponse::from_wire(r)),
                RResult::RErr(e) => Err(PluginError::new(e.as_str())),
            }
        }
    }
}

/// An HTTP request for [`Host::http`].
///
/// ```
/// use orgloop_plugin_sdk::HttpRequest;
/// let req = HttpRequest::post("http://127.0.0.1:9000/hook")
///     .header("authorization", "Bearer t")
///     .json(&serde_json::json!({"ok": true}));
/// assert_eq!(req.method, "POST");
/// assert_eq!(req.headers.len(), 2); // authorization + content-type
/// ```
#[derive(Clone, Debug, PartialEq)]
pub struct HttpRequest {
    /// `GET`, `POST`, `PUT`, ...
    pub method: String,
    /// An absolute `http://` URL.
    pub url: String,
    /// Header names and values.
    pub headers: Vec<(String, String)>,
    /// The body bytes.
    pub body: Vec<u8>,
    /// Give up after this long. Default 30 s.
    pub timeout: Duration,
}

impl HttpRequest {
    /// A request with the given method and no body.
    pub fn new(method: &str, url: &str) -> Self {
        HttpRequest {
            method: method.to_owned(),
            url: url.to_owned(),
            headers: Vec::new(),
            body: Vec::new(),
            timeout: Duration::from_secs(30),
        }
    }

    /// A `GET` request.
    pub fn get(url: &str) -> Self {
        Self::new("GET", url)
    }

    /// A `POST` request.
    pub fn post(url: &str) -> Self {
        Self::new("POST", url)
    }

    /// Adds a header.
    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.to_owned(), value.to_owned()));
        self
    }

    /// Sets a JSON body and `content-type: application/json`.
    pub fn json<T: serde::Serialize + ?Sized>(mut self, body: &T) -> Self {
        self.body = serde_json::to_vec(body).unwrap_or_default();
        self.header("content-type", "application/json")
    }

    /// Sets the timeout.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    fn into_wire(self) -> FfiHttpRequest {
        FfiHttpRequest {
            method: self.method.into(),
            url: self.url.into(),
            headers: self
                .headers
                .into_iter()
                .map(|(k, v)| Tuple2(k.into(), v.into()))
                .collect(),
            body: self.body.into(),
            timeout_ms: self.timeout.as_millis().min(u64::MAX as u128) as u64,
        }
    }

    #[doc(hidden)]
    pub fn from_wire(r: &FfiHttpRequest) -> Self {
        HttpRequest {
            method: r.method.to_string(),
            url: r.url.to_string(),
            headers: pairs(&r.headers),
            body: r.body.to_vec(),
            timeout: Duration::from_millis(r.timeout_ms),
        }
    }
}

/// The answer to an [`HttpRequest`].
#[derive(Clone, Debug, PartialEq)]
pub struct HttpResponse {
    /// The status code.
    pub status: u16,
    /// Header names (lower case) and values.
    pub headers: Vec<(String, String)>,
    /// The body bytes.
    pub body: Vec<u8>,
}

impl HttpResponse {
    /// Whether the status is 2xx.
    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }

    /// The body as text (lossy).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// Parses the body as JSON.
    pub fn json<T: serde::de::DeserializeOwned>(&self) -> Result<T, PluginError> {
        Ok(serde_json::from_slice(&self.body)?)
    }

    fn from_wire(r: FfiHttpResponse) -> Self {
        HttpResponse {
            status: r.status,
            headers: pairs(&r.headers),
            body: r.body.to_vec(),
        }
    }

    #[doc(hidden)]
    pub fn into_wire(self) -> FfiHttpResponse {
        FfiHttpResponse {
            status: self.status,
            headers: self
                .headers
                .into_iter()
                .map(|(k, v)| Tuple2(k.into(), v.into()))
                .collect(),
            body: self.body.into(),
        }
    }
}

fn pairs(headers: &RVec<Tuple2<RString, RString>>) -> Vec<(String, String)> {
    headers
        .iter()
        .map(|Tuple2(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// The cancellation signal of one actor delivery. The host raises it when the delivery must stop:
/// the drain timeout of a reload ran out, the module is unloaded, or the daemon shuts down. Stop
/// promptly when it fires: after a short grace the host drops the delivery's future.
#[derive(Clone)]
pub struct Cancel {
    inner: Arc<CancelBox>,
}

impl Cancel {
    pub(crate) fn new(inner: CancelBox) -> Self {
        Cancel {
            inner: Arc::new(inner),
        }
    }

    /// Whether cancellation was requested.
    pub fn is_cancelled(&self) -> bool {
        self.inner.is_cancelled()
    }

    /// Completes once cancellation is requested. Use it in a `select` beside your work, or race it
    /// with [`Host::sleep`].
    pub fn cancelled(&self) -> impl Future<Output = ()> + Send + 'static {
        self.inner.cancelled()
    }
}
