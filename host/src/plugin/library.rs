//! [`Library`]: one loaded plugin build, and the host-side handles of the objects built from it.
//!
//! Ownership rules that keep plugin code from running after its library closed:
//! - every object, and every future a plugin returns, holds an `Arc<Library>` in a field declared
//!   **after** the object, so the object is dropped first;
//! - everything a plugin returns is copied into host-owned memory at the boundary (strings with
//!   `to_string`, events with [`Event::rehome`]) and the plugin's value is dropped right there.
//!
//! A library with `isolation: process` is not mapped here at all: a child process maps it (see
//! [`super::process`]), and its objects are handles to objects in that process. The rest of the
//! daemon sees the same types either way.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use abi_stable::library::RawLibrary;
use abi_stable::std_types::{RNone, RResult, RSome, RStr, RString};
use orgloop_plugin_sdk::abi::*;
use orgloop_plugin_sdk::{Event, Manifest, Outcome, Polled, SymbolKind, TransformCtx, Verdict};

use super::close::{close_later, Closing};
use super::process::{Remote, Supervisor};
use super::services::Services;
use super::store::{Lease, Stored};
use super::verify::UnloadReport;

/// A boxed future of a plugin call.
pub type CallFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

type UnloadHook = Box<dyn FnOnce(&UnloadReport) + Send>;

/// A loaded plugin library. Dropping the last `Arc` closes it (a moment later, see
/// [`super::close`]) and verifies the unload.
pub struct Library {
    backend: Backend,
    manifest: Manifest,
    hash: String,
    /// The private copy that is mapped.
    path: PathBuf,
    /// The user's build it was copied from.
    source: PathBuf,
    lease: Option<Lease>,
    on_unload: Mutex<Vec<UnloadHook>>,
}

/// Where the library's code runs.
enum Backend {
    /// Mapped into this process.
    Mapped {
        root: PluginRootRef,
        raw: Option<RawLibrary>,
    },
    /// Mapped by a child process.
    Process(Arc<Supervisor>),
}

impl Library {
    pub(super) fn new(
        raw: RawLibrary,
        root: PluginRootRef,
        manifest: Manifest,
        stored: Stored,
        source: PathBuf,
    ) -> Self {
        let backend = Backend::Mapped {
            root,
            raw: Some(raw),
        };
        Self::with(backend, manifest, stored, source)
    }

    /// A library a child process loaded.
    pub(super) fn isolated(
        supervisor: Supervisor,
        manifest: Manifest,
        stored: Stored,
        source: PathBuf,
    ) -> Self {
        Self::with(
            Backend::Process(Arc::new(supervisor)),
            manifest,
            stored,
            source,
        )
    }

    fn with(backend: Backend, manifest: Manifest, stored: Stored, source: PathBuf) -> Self {
        Library {
            backend,
            manifest,
            hash: stored.hash,
            path: stored.path,
            source,
            lease: Some(stored.lease),
            on_unload: Mutex::new(Vec::new()),
        }
    }

    /// Maps `path` as it is, without a store (a plugin process maps the daemon's copy).
    pub fn open_here(path: &Path) -> Result<Library, super::PluginLoadError> {
        let (raw, root, manifest) = super::load::open(path)?;
        Ok(Library {
            backend: Backend::Mapped {
                root,
                raw: Some(raw),
            },
            manifest,
            hash: String::new(),
            path: path.to_path_buf(),
            source: path.to_path_buf(),
            lease: None,
            on_unload: Mutex::new(Vec::new()),
        })
    }

    /// The plugin process, for a library with `isolation: process`.
    pub fn process(&self) -> Option<&Supervisor> {
        match &self.backend {
            Backend::Process(s) => Some(s),
            Backend::Mapped { .. } => None,
        }
    }

    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// Hex SHA-256 of the library file.
    pub fn hash(&self) -> &str {
        &self.hash
    }

    /// The mapped private copy.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The user's build this was copied from.
    pub fn source(&self) -> &Path {
        &self.source
    }

    /// Runs `hook` with the unload report once the library is closed.
    pub fn on_unload(&self, hook: impl FnOnce(&UnloadReport) + Send + 'static) {
        self.on_unload
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(Box::new(hook));
    }

    fn check_kind(&self, symbol: &str, kind: SymbolKind) -> Result<(), String> {
        match self.manifest.symbol(symbol) {
            Some(s) if s.kind == kind => Ok(()),
            Some(s) => Err(format!(
                "{}::{symbol} is a {}, not a {}",
                self.manifest.name,
                s.kind.as_str(),
                kind.as_str()
            )),
            None => {
                let same_kind = self
                    .manifest
                    .symbols
                    .iter()
                    .filter(|s| s.kind == kind)
                    .map(|s| s.name.as_str());
                let names: Vec<&str> = same_kind.clone().collect();
                Err(format!(
                    "plugin {} {} exports no {} \"{symbol}\"{} (it exports: {})",
                    self.manifest.name,
                    self.manifest.version,
                    kind.as_str(),
                    crate::config::error::did_you_mean(symbol, same_kind),
                    if names.is_empty() {
                        "none".to_owned()
                    } else {
                        names.join(", ")
                    }
                ))
            }
        }
    }

    /// Builds a transform.
    pub fn new_transform(
        self: &Arc<Self>,
        symbol: &str,
        config: &str,
        services: Services,
    ) -> Result<PluginTransform, String> {
        let obj = self.build(SymbolKind::Transform, symbol, config, services, |root| {
            root.new_transform()
        })?;
        Ok(PluginTransform {
            obj,
            lib: self.clone(),
        })
    }

    /// Builds an actor.
    pub fn new_actor(
        self: &Arc<Self>,
        symbol: &str,
        config: &str,
        services: Services,
    ) -> Result<PluginActor, String> {
        let obj = self.build(SymbolKind::Actor, symbol, config, services, |root| {
            root.new_actor()
        })?;
        Ok(PluginActor {
            obj,
            lib: self.clone(),
        })
    }

    /// Builds a source.
    pub fn new_source(
        self: &Arc<Self>,
        symbol: &str,
        config: &str,
        services: Services,
    ) -> Result<PluginSource, String> {
        let obj = self.build(SymbolKind::Source, symbol, config, services, |root| {
            root.new_source()
        })?;
        Ok(PluginSource {
            obj,
            lib: self.clone(),
        })
    }

    /// Runs the plugin's constructor of `kind` here or in the plugin process.
    fn build<B>(
        &self,
        kind: SymbolKind,
        symbol: &str,
        config: &str,
        services: Services,
        constructor: impl FnOnce(&PluginRootRef) -> Constructor<B>,
    ) -> Result<Object<B>, String> {
        self.check_kind(symbol, kind)?;
        match &self.backend {
            Backend::Mapped { root, .. } => take(constructor(root)(
                RStr::from_str(symbol),
                RStr::from_str(config),
                services.into_box(),
            ))
            .map(Object::Mapped),
            Backend::Process(sup) => sup
                .build(kind, symbol, config, services)
                .map(|id| Object::Remote(Remote::new(id, sup.clone()))),
        }
    }
}

/// A plugin's constructor of one kind of object.
type Constructor<B> = extern "C" fn(RStr<'_>, RStr<'_>, HostBox) -> RResult<B, RString>;

/// A plugin object: mapped here, or living in the plugin process.
enum Object<B> {
    Mapped(B),
    Remote(Remote),
}

impl Drop for Library {
    /// Hands the handle to the closer, which unmaps it a moment later (see [`super::close`]).
    /// A child process is stopped instead, on a thread of its own (it may take a moment).
    fn drop(&mut self) {
        let hooks = std::mem::take(self.on_unload.get_mut().unwrap_or_else(|e| e.into_inner()));
        let lease = self.lease.take();
        match &mut self.backend {
            Backend::Mapped { raw, .. } => {
                let Some(raw) = raw.take() else { return };
                close_later(Closing {
                    raw,
                    path: self.path.clone(),
                    plugin: self.manifest.name.clone(),
                    version: self.manifest.version.clone(),
                    hash: short(&self.hash).to_owned(),
                    hooks,
                    lease,
                });
            }
            Backend::Process(sup) => {
                let sup = sup.clone();
                let (plugin, version) = (self.manifest.name.clone(), self.manifest.version.clone());
                let hash = short(&self.hash).to_owned();
                let stop = move || {
                    let report = sup.stop();
                    tracing::info!(plugin = %plugin, version = %version, hash = %hash, "plugin process exited ({report})");
                    for hook in hooks {
                        hook(&report);
                    }
                    drop(lease);
                };
                if let Err(e) = std::thread::Builder::new()
                    .name("p-stop".into())
                    .spawn(stop)
                {
                    tracing::error!("cannot start a thread to stop a plugin process: {e}");
                }
            }
        }
    }
}

pub fn short(hash: &str) -> &str {
    &hash[..hash.len().min(12)]
}

/// Takes a constructor's result into host memory.
fn take<T>(r: RResult<T, RString>) -> Result<T, String> {
    match r {
        RResult::ROk(v) => Ok(v),
        RResult::RErr(e) => Err(e.to_string()),
    }
}

/// A transform built by a plugin.
pub struct PluginTransform {
    obj: Object<TransformBox>,
    lib: Arc<Library>,
}

impl PluginTransform {
    /// The library that built it.
    pub fn library(&self) -> &Arc<Library> {
        &self.lib
    }

    /// Applies the transform. A replaced event comes back in host memory. In a plugin process,
    /// a call still running at `deadline` gets the process killed (its thread is stuck); here,
    /// the call cannot be stopped and the caller measures the overrun.
    pub fn apply(
        &self,
        event: &Event,
        ctx: &TransformCtx<'_>,
        deadline: std::time::Duration,
    ) -> Result<Verdict, String> {
        let obj = match &self.obj {
            Object::Mapped(obj) => obj,
            Object::Remote(remote) => return remote.apply(event, ctx, deadline),
        };
        let ctx = FfiTransformCtx {
            source: RStr::from_str(ctx.source),
            route: RStr::from_str(ctx.route),
            actor: RStr::from_str(ctx.actor),
            module: RStr::from_str(ctx.module),
        };
        match obj.apply(event, ctx) {
            FfiVerdict::Pass => Ok(Verdict::Pass),
            FfiVerdict::Drop => Ok(Verdict::Drop),
            FfiVerdict::Replace(e) => Ok(Verdict::Replace(e.rehome())),
            FfiVerdict::Error(e) => Err(e.to_string()),
        }
    }
}

/// An actor built by a plugin.
pub struct PluginActor {
    obj: Object<ActorBox>,
    lib: Arc<Library>,
}

/// What goes into one delivery (also as it crosses to a plugin process).
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub struct DeliveryRequest {
    pub event: Event,
    pub config_json: String,
    pub prompt: Option<String>,
    pub prompt_file: Option<String>,
    pub route: String,
    pub idempotency_key: String,
    pub attempt: u32,
}

/// A failed delivery, in host memory.
#[derive(Clone, Debug, PartialEq)]
pub struct Failure {
    pub message: String,
    /// Retrying cannot help.
    pub permanent: bool,
    /// The least wait the actor asked for before the next attempt.
    pub retry_after: Option<std::time::Duration>,
}

impl Failure {
    /// A retryable failure with this message.
    pub fn new(message: impl Into<String>) -> Self {
        Failure {
            message: message.into(),
            permanent: false,
            retry_after: None,
        }
    }
}

impl PluginActor {
    /// The library that built it.
    pub fn library(&self) -> &Arc<Library> {
        &self.lib
    }

    /// Starts a delivery. The returned future keeps the library alive until it is dropped.
    pub fn deliver(
        &self,
        req: DeliveryRequest,
        cancel: CancelBox,
    ) -> CallFuture<Result<Outcome, Failure>> {
        let obj = match &self.obj {
            Object::Mapped(obj) => obj,
            Object::Remote(remote) => return keep(remote.deliver(req, cancel), &self.lib),
        };
        let wire = FfiDelivery {
            event: req.event,
            config_json: req.config_json.into(),
            prompt: req.prompt.map_or(RNone, |p| RSome(p.into())),
            prompt_file: req.prompt_file.map_or(RNone, |p| RSome(p.into())),
            route: req.route.into(),
            idempotency_key: req.idempotency_key.into(),
            attempt: req.attempt,
        };
        fn convert(outcome: FfiOutcome) -> Result<Outcome, Failure> {
            match outcome {
                FfiOutcome::Delivered => Ok(Outcome::Delivered),
                FfiOutcome::Rejected(why) => Ok(Outcome::Rejected(why.to_string())),
                FfiOutcome::Error(f) => Err(Failure {
                    message: f.message.to_string(),
                    permanent: f.permanent,
                    retry_after: (f.retry_after_ms > 0)
                        .then(|| std::time::Duration::from_millis(f.retry_after_ms)),
                }),
            }
        }
        Box::pin(WithLibrary {
            fut: obj.deliver(wire, cancel),
            convert,
            panicked: || Err(Failure::new(PANICKED)),
            lib: self.lib.clone(),
        })
    }
}

/// A source built by a plugin.
pub struct PluginSource {
    obj: Object<SourceBox>,
    lib: Arc<Library>,
}

impl PluginSource {
    /// The library that built it.
    pub fn library(&self) -> &Arc<Library> {
        &self.lib
    }

    /// Polls once. Events come back in host memory.
    pub fn poll(&self, checkpoint: Option<String>) -> CallFuture<Result<Polled, String>> {
        let obj = match &self.obj {
            Object::Mapped(obj) => obj,
            Object::Remote(remote) => return keep(remote.poll(checkpoint), &self.lib),
        };
        fn convert(polled: FfiPolled) -> Result<Polled, String> {
            match polled {
                FfiPolled::Ok { events, checkpoint } => Ok(Polled {
                    events: events.iter().map(Event::rehome).collect(),
                    checkpoint: checkpoint.as_ref().map(|c| c.to_string()).into_option(),
                }),
                FfiPolled::Error(e) => Err(e.to_string()),
            }
        }
        let checkpoint = checkpoint.map_or(RNone, |c| RSome(c.into()));
        Box::pin(WithLibrary {
            fut: obj.poll(checkpoint),
            convert,
            panicked: || Err(PANICKED.to_owned()),
            lib: self.lib.clone(),
        })
    }
}

/// A call into a plugin process, holding the library (and so the process) until it is done.
fn keep<T: 'static>(
    call: impl Future<Output = T> + Send + 'static,
    lib: &Arc<Library>,
) -> CallFuture<T> {
    let lib = lib.clone();
    Box::pin(async move {
        let r = call.await;
        drop(lib);
        r
    })
}

/// What a panic that escaped the plugin's own guards becomes.
const PANICKED: &str = "the plugin panicked while running";

/// A plugin future together with its library. The plugin's output is converted into host memory
/// inside `poll`, while the library is certainly loaded; the future is dropped before the library.
/// A panic that escapes the plugin's own guards (async-ffi reports it by panicking in `poll`)
/// becomes the value of `panicked`.
struct WithLibrary<F: Future, T> {
    fut: F,
    convert: fn(F::Output) -> T,
    panicked: fn() -> T,
    lib: Arc<Library>,
}

/// A single poll of a plugin future longer than this blocked its thread (a plugin must await
/// the host instead); it is logged, as the module's threads are its own (see
/// `crate::module::executor`).
const BLOCKED: std::time::Duration = std::time::Duration::from_secs(1);

impl<F: Future + Unpin, T> Future for WithLibrary<F, T> {
    type Output = T;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let (convert, panicked) = (self.convert, self.panicked);
        let started = std::time::Instant::now();
        let fut = &mut self.fut;
        let polled =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| Pin::new(fut).poll(cx)));
        let took = started.elapsed();
        if took > BLOCKED {
            let plugin = &self.lib.manifest().name;
            tracing::warn!(plugin = %plugin, "a call of plugin {plugin} blocked its thread for {took:?}");
        }
        match polled {
            Ok(p) => p.map(convert),
            Err(_) => Poll::Ready(panicked()),
        }
    }
}
