//! The binary interface between the orgloop daemon and a plugin library. Plugin authors never use
//! this module: [`export_plugin!`](crate::export_plugin) generates everything in it.
//!
//! # Compatibility rules
//!
//! - A plugin exports two symbols: [`ABI_STAMP_SYMBOL`], a plain [`AbiStamp`] the host reads before
//!   anything else (so that a plugin built against another ABI gets a clear refusal instead of a
//!   layout error), and abi_stable's root module loader, which yields a [`PluginRootRef`].
//! - [`PluginRoot`] is a prefix type: new entry points may only be **appended after the last
//!   field**, with `#[sabi(last_prefix_field)]` moved to the new last field. Anything else (changing
//!   a field, a signature, or any type reachable from one) is a breaking change: bump
//!   [`ABI_VERSION`].
//! - Every value a plugin returns is converted into host-owned memory by the host right away (see
//!   [`Doc::rehome`](crate::Doc::rehome)); every object and future a plugin returns is dropped by the
//!   host before the plugin's library is closed.

// `#[sabi_trait]` expands to impls inside a generated const, which this lint flags.
#![allow(non_local_definitions)]

use abi_stable::library::RootModule;
use abi_stable::sabi_trait;
use abi_stable::sabi_types::VersionStrings;
use abi_stable::std_types::{RBox, ROption, RResult, RStr, RString, RVec, Tuple2};
use abi_stable::{package_version_strings, StableAbi};
use async_ffi::FfiFuture;

use crate::event::Event;

pub(crate) mod glue;

#[doc(hidden)]
pub mod __private {
    pub use crate::abi::glue::{
        new_actor, new_source, new_transform, root_module, symbol, Exports,
    };
    pub use abi_stable::library::{
        __call_root_module_loader, CheckTypeLayout, LibHeader, RootModuleResult,
    };
}

/// The version of this interface. A host refuses plugins whose stamp carries another one.
///
/// 2: deliveries carry an idempotency key and an attempt number; a failed delivery says whether
/// it may be retried, and after how long.
pub const ABI_VERSION: u32 = 2;

/// Name of the exported [`AbiStamp`] static.
pub const ABI_STAMP_SYMBOL: &[u8] = b"ORGLOOP_PLUGIN_ABI\0";

/// The plain, never-changing header a plugin exports under [`ABI_STAMP_SYMBOL`].
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AbiStamp {
    /// Always [`AbiStamp::MAGIC`]: tells an orgloop plugin from any other library.
    pub magic: u32,
    /// The [`ABI_VERSION`] the plugin was built with.
    pub abi_version: u32,
    /// The version of `orgloop-plugin-sdk` the plugin was built with: major, minor, patch.
    pub sdk_version: [u32; 3],
}

impl AbiStamp {
    /// `"orgl"` in ASCII.
    pub const MAGIC: u32 = 0x6f72_676c;

    /// The stamp of the SDK compiled into the caller.
    pub const CURRENT: AbiStamp = AbiStamp {
        magic: AbiStamp::MAGIC,
        abi_version: ABI_VERSION,
        sdk_version: [
            parse_u32(env!("CARGO_PKG_VERSION_MAJOR")),
            parse_u32(env!("CARGO_PKG_VERSION_MINOR")),
            parse_u32(env!("CARGO_PKG_VERSION_PATCH")),
        ],
    };
}

const fn parse_u32(s: &str) -> u32 {
    let b = s.as_bytes();
    let (mut i, mut n) = (0, 0);
    while i < b.len() {
        n = n * 10 + (b[i] - b'0') as u32;
        i += 1;
    }
    n
}

/// Log levels, as numbers on the wire.
pub mod level {
    pub const TRACE: u8 = 0;
    pub const DEBUG: u8 = 1;
    pub const INFO: u8 = 2;
    pub const WARN: u8 = 3;
    pub const ERROR: u8 = 4;
}

/// What a symbol is, as a number on the wire.
pub mod kind {
    pub const TRANSFORM: u8 = 0;
    pub const ACTOR: u8 = 1;
    pub const SOURCE: u8 = 2;
}

/// The services the host lends to every plugin object. Implemented by the host.
#[sabi_trait]
pub trait HostServices: Send + Sync {
    /// Writes a log line, tagged by the host with module, plugin and symbol.
    fn log(&self, level: u8, message: RStr<'_>);
    /// Milliseconds since the Unix epoch.
    fn now_ms(&self) -> i64;
    /// Completes after `ms` milliseconds on the host's timer.
    fn sleep(&self, ms: u64) -> FfiFuture<()>;
    /// Emits an event into the plugin object's module.
    fn emit(&self, event: Event) -> RResult<(), RString>;
    /// Sends an HTTP request with the host's client.
    #[sabi(last_prefix_field)]
    fn http(&self, request: FfiHttpRequest) -> FfiFuture<RResult<FfiHttpResponse, RString>>;
}

/// Boxed [`HostServices`].
pub type HostBox = HostServices_TO<'static, RBox<()>>;

/// An HTTP request on the wire.
#[repr(C)]
#[derive(StableAbi)]
pub struct FfiHttpRequest {
    pub method: RString,
    pub url: RString,
    pub headers: RVec<Tuple2<RString, RString>>,
    pub body: RVec<u8>,
    pub timeout_ms: u64,
}

/// An HTTP response on the wire.
#[repr(C)]
#[derive(StableAbi)]
pub struct FfiHttpResponse {
    pub status: u16,
    pub headers: RVec<Tuple2<RString, RString>>,
    pub body: RVec<u8>,
}

/// A cancellation signal handed to each actor delivery. Implemented by the host.
#[sabi_trait]
pub trait CancelSignal: Send + Sync {
    /// Whether cancellation was requested.
    fn is_cancelled(&self) -> bool;
    /// Completes once cancellation is requested.
    #[sabi(last_prefix_field)]
    fn cancelled(&self) -> FfiFuture<()>;
}

/// Boxed [`CancelSignal`].
pub type CancelBox = CancelSignal_TO<'static, RBox<()>>;

/// Where a transform call happens.
#[repr(C)]
#[derive(StableAbi, Clone, Copy)]
pub struct FfiTransformCtx<'a> {
    pub source: RStr<'a>,
    pub route: RStr<'a>,
    pub actor: RStr<'a>,
    pub module: RStr<'a>,
}

/// A transform's answer on the wire.
#[repr(C, u8)]
#[derive(StableAbi)]
pub enum FfiVerdict {
    Pass,
    Replace(Event),
    Drop,
    Error(RString),
}

/// A transform object. Implemented by the plugin glue.
#[sabi_trait]
pub trait TransformObj: Send + Sync {
    #[sabi(last_prefix_field)]
    fn apply(&self, event: &Event, ctx: FfiTransformCtx<'_>) -> FfiVerdict;
}

/// Boxed [`TransformObj`].
pub type TransformBox = TransformObj_TO<'static, RBox<()>>;

/// One delivery to an actor on the wire.
#[repr(C)]
#[derive(StableAbi)]
pub struct FfiDelivery {
    pub event: Event,
    /// The route's `then.config` after interpolation, as JSON text.
    pub config_json: RString,
    pub prompt: ROption<RString>,
    pub prompt_file: ROption<RString>,
    pub route: RString,
    /// Stable across every attempt of this delivery: `<event id>:<route>`.
    pub idempotency_key: RString,
    /// 1 for the first attempt, then 2, 3, ...
    pub attempt: u32,
}

/// How a delivery ended, on the wire.
#[repr(C, u8)]
#[derive(StableAbi)]
pub enum FfiOutcome {
    Delivered,
    Rejected(RString),
    Error(FfiFailure),
}

/// A failed delivery, on the wire.
#[repr(C)]
#[derive(StableAbi)]
pub struct FfiFailure {
    pub message: RString,
    /// Retrying cannot help: dead-letter it.
    pub permanent: bool,
    /// The least wait before the next attempt, in milliseconds; 0 for none.
    pub retry_after_ms: u64,
}

/// An actor object. Implemented by the plugin glue.
#[sabi_trait]
pub trait ActorObj: Send + Sync {
    #[sabi(last_prefix_field)]
    fn deliver(&self, delivery: FfiDelivery, cancel: CancelBox) -> FfiFuture<FfiOutcome>;
}

/// Boxed [`ActorObj`].
pub type ActorBox = ActorObj_TO<'static, RBox<()>>;

/// The result of one poll, on the wire.
#[repr(C, u8)]
#[derive(StableAbi)]
pub enum FfiPolled {
    Ok {
        events: RVec<Event>,
        checkpoint: ROption<RString>,
    },
    Error(RString),
}

/// A source object. Implemented by the plugin glue.
#[sabi_trait]
pub trait SourceObj: Send + Sync {
    #[sabi(last_prefix_field)]
    fn poll(&self, checkpoint: ROption<RString>) -> FfiFuture<FfiPolled>;
}

/// Boxed [`SourceObj`].
pub type SourceBox = SourceObj_TO<'static, RBox<()>>;

/// One exported symbol, on the wire.
#[repr(C)]
#[derive(StableAbi)]
pub struct FfiSymbol {
    pub name: RString,
    pub kind: u8,
    pub description: RString,
    /// JSON schema of the config as text; empty when the plugin gives none.
    pub config_schema: RString,
}

/// The plugin's manifest, on the wire.
#[repr(C)]
#[derive(StableAbi)]
pub struct FfiManifest {
    pub name: RString,
    pub version: RString,
    pub symbols: RVec<FfiSymbol>,
}

/// The root module. Append-only; see the [module docs](self).
#[repr(C)]
#[derive(StableAbi)]
#[sabi(kind(Prefix(prefix_ref = PluginRootRef)))]
#[sabi(missing_field(panic))]
pub struct PluginRoot {
    pub manifest: extern "C" fn() -> FfiManifest,
    pub new_transform: extern "C" fn(
        symbol: RStr<'_>,
        config_json: RStr<'_>,
        host: HostBox,
    ) -> RResult<TransformBox, RString>,
    pub new_actor: extern "C" fn(
        symbol: RStr<'_>,
        config_json: RStr<'_>,
        host: HostBox,
    ) -> RResult<ActorBox, RString>,
    #[sabi(last_prefix_field)]
    pub new_source: extern "C" fn(
        symbol: RStr<'_>,
        config_json: RStr<'_>,
        host: HostBox,
    ) -> RResult<SourceBox, RString>,
}

impl RootModule for PluginRootRef {
    abi_stable::declare_root_module_statics! {PluginRootRef}
    const BASE_NAME: &'static str = "orgloop_plugin";
    const NAME: &'static str = "orgloop_plugin";
    const VERSION_STRINGS: VersionStrings = package_version_strings!();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn export_macro_uses_abi_stables_loader_symbol() {
        // `export_plugin!` spells this name out, because an attribute cannot take a constant.
        assert_eq!(
            abi_stable::library::ROOT_MODULE_LOADER_NAME,
            crate::export::ROOT_LOADER_SYMBOL
        );
    }

    #[test]
    fn stamp_carries_this_sdk_version() {
        let v = AbiStamp::CURRENT.sdk_version;
        assert_eq!(
            format!("{}.{}.{}", v[0], v[1], v[2]),
            env!("CARGO_PKG_VERSION")
        );
    }
}
