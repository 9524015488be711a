//! The host side of [`HostServices`]: what a plugin object may ask of the daemon. Each object gets
//! its own instance, tagged with its module, plugin and symbol, so its log lines say who wrote them
//! and its events go to its own module.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use abi_stable::sabi_trait::TD_Opaque;
use abi_stable::std_types::{RResult, RStr, RString};
use async_ffi::{FfiFuture, FutureExt};
use orgloop_plugin_sdk::abi::{
    FfiHttpRequest, FfiHttpResponse, HostBox, HostServices, HostServices_TO,
};
use orgloop_plugin_sdk::{new_trace_id, Event, Level};

use super::http_client::{HttpClient, Prepared};

/// Where a plugin's emitted events go: into its module, which routes them.
pub type Emitter = Arc<dyn Fn(Event) -> Result<(), String> + Send + Sync>;

/// The services of one plugin object.
pub struct Services {
    pub module: Arc<str>,
    /// `plugin::symbol` and the object's id or name, for log lines.
    pub object: String,
    /// For actors and sources: their id, which events they emit carry as `source`.
    pub source: Option<String>,
    pub emitter: Emitter,
    pub http: HttpClient,
    /// Where log lines go instead of the daemon's log (in a plugin process: to the daemon).
    pub log_to: Option<LogSink>,
}

/// Takes a plugin's log lines: level and message.
pub type LogSink = Arc<dyn Fn(u8, &str) + Send + Sync>;

impl Services {
    pub fn into_box(self) -> HostBox {
        HostServices_TO::from_value(self, TD_Opaque)
    }

    /// Writes a line of this object into the daemon's log.
    pub fn write_log(&self, level: u8, message: &str) {
        let (module, object) = (&*self.module, &self.object);
        match Level::from_wire(level) {
            Level::Trace => tracing::trace!(target: "orgloop::plugin", module, object, "{message}"),
            Level::Debug => tracing::debug!(target: "orgloop::plugin", module, object, "{message}"),
            Level::Info => tracing::info!(target: "orgloop::plugin", module, object, "{message}"),
            Level::Warn => tracing::warn!(target: "orgloop::plugin", module, object, "{message}"),
            Level::Error => tracing::error!(target: "orgloop::plugin", module, object, "{message}"),
        }
    }

    /// Routes an event this object emitted (already in host memory) into its module.
    pub fn emit_event(&self, event: Event) -> Result<(), String> {
        let event = match &self.source {
            Some(source) => normalize(event, source),
            None => event,
        };
        (self.emitter)(event)
    }
}

impl HostServices for Services {
    fn log(&self, level: u8, message: RStr<'_>) {
        match &self.log_to {
            Some(sink) => sink(level, message.as_str()),
            None => self.write_log(level, message.as_str()),
        }
    }

    fn now_ms(&self) -> i64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or(0)
    }

    fn sleep(&self, ms: u64) -> FfiFuture<()> {
        tokio::time::sleep(Duration::from_millis(ms)).into_ffi()
    }

    fn emit(&self, event: Event) -> RResult<(), RString> {
        // The plugin's copy is dropped at the end of this call, while its library is loaded.
        match self.emit_event(event.rehome()) {
            Ok(()) => RResult::ROk(()),
            Err(e) => RResult::RErr(e.into()),
        }
    }

    fn http(&self, request: FfiHttpRequest) -> FfiFuture<RResult<FfiHttpResponse, RString>> {
        let request = match Prepared::from_wire(&request) {
            Ok(request) => request,
            Err(e) => return std::future::ready(RResult::RErr(e.into())).into_ffi(),
        };
        // The request runs as a task of its own: hyper keeps the waker of whoever polls a request
        // in state its connection task owns, for as long as the connection lives. The plugin's
        // waker must not end up there (it is plugin code, and the plugin may be unloaded first);
        // a task's join handle drops the waker it holds when it is dropped, with the plugin.
        let task = AbortOnDrop(self.http.spawn_send(request));
        async move {
            match task.await {
                Ok(Ok(r)) => RResult::ROk(r.into_wire()),
                Ok(Err(e)) => RResult::RErr(e.into()),
                Err(e) => RResult::RErr(format!("the HTTP request failed: {e}").into()),
            }
        }
        .into_ffi()
    }
}

/// A task's join handle that aborts the task when dropped.
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> std::future::Future for AbortOnDrop<T> {
    type Output = Result<T, tokio::task::JoinError>;
    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        std::pin::Pin::new(&mut self.0).poll(cx)
    }
}

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Events from a source or an actor carry its id as `source` (so routes can name it in
/// `when.source`) and a trace id (assigned when missing, as upstream's runtime does).
pub fn normalize(event: Event, source: &str) -> Event {
    if event.source() == source && event.trace_id().is_some() {
        return event;
    }
    event
        .with(|v| {
            v["source"] = source.into();
            if v.get("trace_id").is_none_or(|t| !t.is_string()) {
                v["trace_id"] = new_trace_id().into();
            }
        })
        .unwrap_or(event)
}
