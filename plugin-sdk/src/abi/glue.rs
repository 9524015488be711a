//! Glue between the author traits and the wire types. Compiled into each plugin (it is generic, so
//! it is instantiated by [`export_plugin!`](crate::export_plugin) in the plugin crate).
//!
//! Every entry point runs inside [`guard`]: a panic crossing an `extern "C"` function or a
//! `#[sabi_trait]` method would abort the daemon, so it becomes an error value instead.

use std::any::Any;
use std::cell::Cell;
use std::marker::PhantomData;
use std::mem::ManuallyDrop;
use std::ops::Deref;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Arc, Mutex, Once};

use abi_stable::prefix_type::WithMetadata;
use abi_stable::sabi_trait::TD_Opaque;
use abi_stable::std_types::{RNone, ROption, RResult, RSome, RStr, RString, RVec};
use async_ffi::{FfiFuture, FutureExt};

use super::*;
use crate::actor::{Actor, Delivery, Outcome};
use crate::error::PluginError;
use crate::future::CatchUnwind;
use crate::host::{Cancel, Host};
use crate::manifest::SymbolKind;
use crate::source::Source;
use crate::transform::{Transform, TransformCtx, Verdict};

/// What [`export_plugin!`](crate::export_plugin) declares about a plugin.
pub trait Exports: 'static {
    /// The plugin name users write before `::` in YAML.
    const NAME: &'static str;
    /// The plugin version (semver).
    const VERSION: &'static str;
    /// Every exported symbol.
    fn symbols() -> Vec<FfiSymbol>;
    /// Builds the named transform; `None` when there is no such transform.
    fn transform(symbol: &str, config: &str, host: Host) -> Option<Result<TransformBox, String>>;
    /// Builds the named actor; `None` when there is no such actor.
    fn actor(symbol: &str, config: &str, host: Host) -> Option<Result<ActorBox, String>>;
    /// Builds the named source; `None` when there is no such source.
    fn source(symbol: &str, config: &str, host: Host) -> Option<Result<SourceBox, String>>;
}

// ---- panics -------------------------------------------------------------------------------

thread_local! {
    // A plain `Cell` has no destructor, so this registers none and cannot pin the library.
    static IN_GUARD: Cell<u32> = const { Cell::new(0) };
}
static LAST_PANIC: Mutex<Option<String>> = Mutex::new(None);
static HOOK: Once = Once::new();

/// Inside a guard, a panic is recorded quietly (with its location) instead of going to the
/// previous hook; outside, the previous hook runs as before (tests keep their panic output).
fn install_hook() {
    HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if IN_GUARD.with(Cell::get) == 0 {
                return previous(info);
            }
            let location = info
                .location()
                .map(|l| format!(" at {}:{}", l.file(), l.line()))
                .unwrap_or_default();
            let message = payload_text(info.payload());
            if let Ok(mut last) = LAST_PANIC.lock() {
                *last = Some(format!("plugin panicked{location}: {message}"));
            }
        }));
    });
}

fn payload_text(payload: &(dyn Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(no message)".into())
}

pub(crate) fn panic_message(payload: Box<dyn Any + Send>) -> String {
    let recorded = LAST_PANIC.lock().ok().and_then(|mut l| l.take());
    recorded.unwrap_or_else(|| format!("plugin panicked: {}", payload_text(&*payload)))
}

/// Runs `f`, turning a panic into `Err(message)`.
pub(crate) fn guard<T>(f: impl FnOnce() -> Result<T, String>) -> Result<T, String> {
    install_hook();
    IN_GUARD.with(|g| g.set(g.get() + 1));
    let result = catch_unwind(AssertUnwindSafe(f));
    IN_GUARD.with(|g| g.set(g.get() - 1));
    result.unwrap_or_else(|payload| Err(panic_message(payload)))
}

/// Polls a future inside [`guard`]'s panic handling.
fn guarded<F: std::future::Future + Send + 'static>(
    fut: F,
) -> impl std::future::Future<Output = Result<F::Output, String>> + Send {
    install_hook();
    let mut inner = CatchUnwind(Box::pin(fut));
    std::future::poll_fn(move |cx| {
        IN_GUARD.with(|g| g.set(g.get() + 1));
        let r = std::future::Future::poll(std::pin::Pin::new(&mut inner), cx);
        IN_GUARD.with(|g| g.set(g.get() - 1));
        r
    })
}

/// Owns a plugin object and drops it under panic protection: a panicking `Drop` would otherwise
/// unwind into the host's call to the vtable's drop function.
pub(crate) struct Guarded<T>(ManuallyDrop<T>);

impl<T> Guarded<T> {
    pub(crate) fn new(value: T) -> Self {
        Guarded(ManuallyDrop::new(value))
    }
}

impl<T> Deref for Guarded<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.0
    }
}

impl<T> Drop for Guarded<T> {
    fn drop(&mut self) {
        // SAFETY: `self.0` is dropped exactly once, here, and never used again.
        let _ = guard(|| {
            unsafe { ManuallyDrop::drop(&mut self.0) };
            Ok(())
        });
    }
}

fn rresult<T>(r: Result<T, String>) -> RResult<T, RString> {
    match r {
        Ok(v) => RResult::ROk(v),
        Err(e) => RResult::RErr(RString::from(e)),
    }
}

/// Parses config text the host generated from YAML. Through a `Value` first, so that messages do
/// not cite positions in that generated text, which mean nothing to the person who wrote the YAML.
fn parse_config<C: serde::de::DeserializeOwned>(config: &str) -> Result<C, String> {
    let value: serde_json::Value =
        serde_json::from_str(config).map_err(|e| format!("invalid config: {e}"))?;
    C::deserialize(value).map_err(|e| format!("invalid config: {e}"))
}

// ---- transforms ---------------------------------------------------------------------------

struct TransformGlue<T>(Guarded<T>);

impl<T: Transform> TransformObj for TransformGlue<T> {
    fn apply(&self, event: &Event, ctx: FfiTransformCtx<'_>) -> FfiVerdict {
        let ctx = TransformCtx {
            source: ctx.source.as_str(),
            route: ctx.route.as_str(),
            actor: ctx.actor.as_str(),
            module: ctx.module.as_str(),
        };
        match guard(|| self.0.apply(event, &ctx).map_err(|e| e.to_string())) {
            Ok(Verdict::Pass) => FfiVerdict::Pass,
            Ok(Verdict::Replace(e)) => FfiVerdict::Replace(e),
            Ok(Verdict::Drop) => FfiVerdict::Drop,
            Err(e) => FfiVerdict::Error(e.into()),
        }
    }
}

/// Builds transform `T` from JSON config text.
pub fn new_transform<T: Transform>(config: &str, host: Host) -> Result<TransformBox, String> {
    let config = parse_config(config)?;
    let t = T::new(config, host).map_err(|e| e.to_string())?;
    Ok(TransformObj_TO::from_value(
        TransformGlue(Guarded::new(t)),
        TD_Opaque,
    ))
}

// ---- actors -------------------------------------------------------------------------------

struct ActorGlue<A>(Arc<Guarded<A>>);

impl<A: Actor> ActorObj for ActorGlue<A> {
    fn deliver(&self, d: FfiDelivery, cancel: CancelBox) -> FfiFuture<FfiOutcome> {
        let this = self.0.clone();
        let cancel = Cancel::new(cancel);
        let delivery = guard(|| {
            Ok(Delivery {
                event: d.event,
                config: parse_config(d.config_json.as_str())?,
                prompt: d.prompt.map(|p| p.into_string()).into_option(),
                prompt_file: d.prompt_file.map(|p| p.into_string()).into_option(),
                route: d.route.into_string(),
                idempotency_key: d.idempotency_key.into_string(),
                attempt: d.attempt,
            })
        });
        let outcome = guarded(async move {
            match delivery {
                Ok(delivery) => this.deliver(delivery, cancel).await,
                Err(e) => Err(PluginError::new(e)),
            }
        });
        async move {
            // A panic is an ordinary (retryable) failure: the next attempt may well succeed.
            match outcome
                .await
                .unwrap_or_else(|panic| Err(PluginError::new(panic)))
            {
                Ok(Outcome::Delivered) => FfiOutcome::Delivered,
                Ok(Outcome::Rejected(why)) => FfiOutcome::Rejected(why.into()),
                Err(e) => FfiOutcome::Error(FfiFailure {
                    message: e.message().into(),
                    permanent: e.is_permanent(),
                    retry_after_ms: e
                        .retry_after()
                        .map_or(0, |d| d.as_millis().clamp(1, u64::MAX as u128) as u64),
                }),
            }
        }
        .into_ffi()
    }
}

/// Builds actor `A` from JSON config text.
pub fn new_actor<A: Actor>(config: &str, host: Host) -> Result<ActorBox, String> {
    let config = parse_config(config)?;
    let a = A::new(config, host).map_err(|e| e.to_string())?;
    Ok(ActorObj_TO::from_value(
        ActorGlue(Arc::new(Guarded::new(a))),
        TD_Opaque,
    ))
}

// ---- sources ------------------------------------------------------------------------------

struct SourceGlue<S>(Arc<Guarded<S>>);

impl<S: Source> SourceObj for SourceGlue<S> {
    fn poll(&self, checkpoint: ROption<RString>) -> FfiFuture<FfiPolled> {
        let this = self.0.clone();
        let checkpoint = checkpoint.map(|c| c.into_string()).into_option();
        let polled = guarded(async move { this.poll(checkpoint).await.map_err(|e| e.to_string()) });
        async move {
            match polled.await.and_then(|r| r) {
                Ok(p) => FfiPolled::Ok {
                    events: RVec::from(p.events),
                    checkpoint: p.checkpoint.map_or(RNone, |c| RSome(c.into())),
                },
                Err(e) => FfiPolled::Error(e.into()),
            }
        }
        .into_ffi()
    }
}

/// Builds source `S` from JSON config text.
pub fn new_source<S: Source>(config: &str, host: Host) -> Result<SourceBox, String> {
    let config = parse_config(config)?;
    let s = S::new(config, host).map_err(|e| e.to_string())?;
    Ok(SourceObj_TO::from_value(
        SourceGlue(Arc::new(Guarded::new(s))),
        TD_Opaque,
    ))
}

// ---- manifest and root module ---------------------------------------------------------------

/// Describes one symbol for the manifest.
pub fn symbol(
    name: &str,
    kind: SymbolKind,
    description: &str,
    schema: Option<serde_json::Value>,
) -> FfiSymbol {
    FfiSymbol {
        name: name.into(),
        kind: kind.to_wire(),
        description: description.into(),
        config_schema: schema.map(|s| s.to_string()).unwrap_or_default().into(),
    }
}

/// Entry point: the manifest.
pub extern "C" fn plugin_manifest<P: Exports>() -> FfiManifest {
    let symbols = guard(|| Ok(P::symbols())).unwrap_or_default();
    FfiManifest {
        name: P::NAME.into(),
        version: P::VERSION.into(),
        symbols: symbols.into(),
    }
}

fn construct<P: Exports, B>(
    kind: &str,
    symbol: RStr<'_>,
    config: RStr<'_>,
    host: HostBox,
    build: fn(&str, &str, Host) -> Option<Result<B, String>>,
) -> RResult<B, RString> {
    rresult(guard(|| {
        build(symbol.as_str(), config.as_str(), Host::new(host)).unwrap_or_else(|| {
            Err(format!(
                "plugin {} exports no {kind} {:?}",
                P::NAME,
                symbol.as_str()
            ))
        })
    }))
}

/// Entry point: builds a transform.
pub extern "C" fn new_transform_entry<P: Exports>(
    symbol: RStr<'_>,
    config: RStr<'_>,
    host: HostBox,
) -> RResult<TransformBox, RString> {
    construct::<P, _>("transform", symbol, config, host, P::transform)
}

/// Entry point: builds an actor.
pub extern "C" fn new_actor_entry<P: Exports>(
    symbol: RStr<'_>,
    config: RStr<'_>,
    host: HostBox,
) -> RResult<ActorBox, RString> {
    construct::<P, _>("actor", symbol, config, host, P::actor)
}

/// Entry point: builds a source.
pub extern "C" fn new_source_entry<P: Exports>(
    symbol: RStr<'_>,
    config: RStr<'_>,
    host: HostBox,
) -> RResult<SourceBox, RString> {
    construct::<P, _>("source", symbol, config, host, P::source)
}

struct Root<P>(PhantomData<P>);

impl<P: Exports> Root<P> {
    // A static root module (no per-load leak, unlike `leak_into_prefix`).
    abi_stable::staticref!(const MODULE: WithMetadata<PluginRoot> = WithMetadata::new(PluginRoot {
        manifest: plugin_manifest::<P>,
        new_transform: new_transform_entry::<P>,
        new_actor: new_actor_entry::<P>,
        new_source: new_source_entry::<P>,
    }));
}

/// The root module of plugin `P`.
pub fn root_module<P: Exports>() -> PluginRootRef {
    PluginRootRef(Root::<P>::MODULE.as_prefix())
}
