//! [`export_plugin!`](crate::export_plugin): the one macro a plugin crate calls.

/// abi_stable's name for the static holding a library's root module header
/// (`abi_stable::library::ROOT_MODULE_LOADER_NAME`, checked by a test).
#[doc(hidden)]
pub const ROOT_LOADER_SYMBOL: &str = "_1as_0lib_1header_0root_bmodule_bloader";

/// Exports a plugin: its name and every transform, actor and source it offers, each under the name
/// users write after `<plugin>::` in YAML. The plugin version is the crate's version.
///
/// ```
/// # use orgloop_plugin_sdk::prelude::*;
/// # #[derive(Deserialize)] struct Noop {}
/// # impl Transform for Noop {
/// #     type Config = Self;
/// #     fn new(c: Self, _: Host) -> Result<Self, PluginError> { Ok(c) }
/// #     fn apply(&self, _: &Event, _: &TransformCtx) -> Result<Verdict, PluginError> { Ok(Verdict::Pass) }
/// # }
/// orgloop_plugin_sdk::export_plugin! {
///     name: "mine",
///     transforms: { "noop" => Noop },
/// }
/// ```
///
/// The crate must be built as a `cdylib` (`[lib] crate-type = ["cdylib", "rlib"]`; the `rlib` lets
/// its own tests and benchmarks link it directly).
#[macro_export]
macro_rules! export_plugin {
    (
        name: $name:literal
        $(, transforms: { $($tname:literal => $tty:ty),* $(,)? })?
        $(, actors: { $($aname:literal => $aty:ty),* $(,)? })?
        $(, sources: { $($sname:literal => $sty:ty),* $(,)? })?
        $(,)?
    ) => {
        const _: () = {
            use $crate::abi::__private as __p;

            struct __OrgloopExports;

            impl __p::Exports for __OrgloopExports {
                const NAME: &'static str = $name;
                const VERSION: &'static str = env!("CARGO_PKG_VERSION");

                fn symbols() -> ::std::vec::Vec<$crate::abi::FfiSymbol> {
                    ::std::vec![
                        $($(__p::symbol($tname, $crate::SymbolKind::Transform,
                            <$tty as $crate::Transform>::DESCRIPTION, <$tty as $crate::Transform>::config_schema()),)*)?
                        $($(__p::symbol($aname, $crate::SymbolKind::Actor,
                            <$aty as $crate::Actor>::DESCRIPTION, <$aty as $crate::Actor>::config_schema()),)*)?
                        $($(__p::symbol($sname, $crate::SymbolKind::Source,
                            <$sty as $crate::Source>::DESCRIPTION, <$sty as $crate::Source>::config_schema()),)*)?
                    ]
                }

                #[allow(unused_variables)]
                fn transform(symbol: &str, config: &str, host: $crate::Host)
                    -> ::std::option::Option<::std::result::Result<$crate::abi::TransformBox, ::std::string::String>> {
                    match symbol {
                        $($($tname => ::std::option::Option::Some(__p::new_transform::<$tty>(config, host)),)*)?
                        _ => ::std::option::Option::None,
                    }
                }

                #[allow(unused_variables)]
                fn actor(symbol: &str, config: &str, host: $crate::Host)
                    -> ::std::option::Option<::std::result::Result<$crate::abi::ActorBox, ::std::string::String>> {
                    match symbol {
                        $($($aname => ::std::option::Option::Some(__p::new_actor::<$aty>(config, host)),)*)?
                        _ => ::std::option::Option::None,
                    }
                }

                #[allow(unused_variables)]
                fn source(symbol: &str, config: &str, host: $crate::Host)
                    -> ::std::option::Option<::std::result::Result<$crate::abi::SourceBox, ::std::string::String>> {
                    match symbol {
                        $($($sname => ::std::option::Option::Some(__p::new_source::<$sty>(config, host)),)*)?
                        _ => ::std::option::Option::None,
                    }
                }
            }

            /// Read by the host before anything else; see `orgloop_plugin_sdk::abi`.
            #[unsafe(no_mangle)]
            pub static ORGLOOP_PLUGIN_ABI: $crate::abi::AbiStamp = $crate::abi::AbiStamp::CURRENT;

            /// abi_stable's root module header (what `#[export_root_module]` would generate).
            #[unsafe(no_mangle)]
            pub static _1as_0lib_1header_0root_bmodule_bloader: __p::LibHeader = {
                extern "C" fn constructor() -> __p::RootModuleResult {
                    __p::__call_root_module_loader(__p::root_module::<__OrgloopExports>)
                }
                // SAFETY: `constructor` yields a `PluginRootRef`, the type the header is declared
                // with, so the layout stored in the header describes what the constructor returns.
                unsafe {
                    __p::LibHeader::from_constructor::<$crate::abi::PluginRootRef>(
                        constructor,
                        __p::CheckTypeLayout::Yes,
                    )
                }
            };
        };
    };
}
