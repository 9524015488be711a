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
use orgloop_plugin_sdk::{new_trace_id, Event, HttpRequest, Level};

use super::http_client::HttpClient;

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
}

impl Services {
    pub fn into_box(self) -> HostBox {
        HostServices_TO::from_value(self, TD_Opaque)
    }
}

impl HostServices for Services {
    fn log(&self, level: u8, message: RStr<'_>) {
        let (module, object, message) = (&*self.module, &self.object, message.as_str());
        match Level::from_wire(level) {
            Level::Trace => tracing::trace!(target: "orgloop::plugin", module, object, "{message}"),
            Level::Debug => tracing::debug!(target: "orgloop::plugin", module, object, "{message}"),
            Level::Info => tracing::info!(target: "orgloop::plugin", module, object, "{message}"),
            Level::Warn => tracing::warn!(target: "orgloop::plugin", module, object, "{message}"),
            Level::Error => tracing::error!(target: "orgloop::plugin", module, object, "{message}"),
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
        let event = event.rehome();
        let event = match &self.source {
            Some(source) => normalize(event, source),
            None => event,
        };
        match (self.emitter)(event) {
            Ok(()) => RResult::ROk(()),
            Err(e) => RResult::RErr(e.into()),
        }
    }

    fn http(&self, request: FfiHttpRequest) -> FfiFuture<RResult<FfiHttpResponse, RString>> {
        let request = HttpRequest::from_wire(&request);
        let client = self.http.clone();
        async move {
            match client.send(request).await {
                Ok(r) => RResult::ROk(r.into_wire()),
                Err(e) => RResult::RErr(e.into()),
            }
        }
        .into_ffi()
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
