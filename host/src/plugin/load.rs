//! Opening a plugin library: the only place, besides the SDK's export glue, with `unsafe` code.
//!
//! The sequence follows what was measured to work on this platform (see the design notes):
//! `RawLibrary::load_at` on a private copy → read the plain [`AbiStamp`] → abi_stable's header
//! check → a layout check with **fresh** `CheckingGlobals` for each load (the global cache used by
//! `RootModule::load_from_file` keeps pointers into libraries that may be unloaded later) →
//! `unchecked_layout` to get the root module. `load_from_file`/`load_from_directory` are never used:
//! they cache one module per interface type and leak every library on purpose.
//! abi_stable is pinned to `=0.11.3` because some of these items are public but doc-hidden.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex, Weak};

use abi_stable::abi_stability::abi_checking::{
    check_layout_compatibility_with_globals, CheckingGlobals,
};
use abi_stable::library::{lib_header_from_raw_library, RawLibrary};
use orgloop_plugin_sdk::abi::{AbiStamp, PluginRootRef, ABI_STAMP_SYMBOL, ABI_VERSION};
use orgloop_plugin_sdk::Manifest;

use super::library::Library;
use super::process::Supervisor;
use super::store::PluginStore;
use crate::config::spec::{Isolation, PluginSpec};

/// Why a plugin library was refused.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub enum PluginLoadError {
    /// The file could not be read or copied.
    Io(String),
    /// `dlopen` failed (not a shared library, missing dependency, truncated file, ...).
    Open(String),
    /// A shared library, but not an orgloop plugin.
    NotAPlugin,
    /// Built against another version of the plugin interface.
    AbiMismatch { found: u32, sdk: [u32; 3] },
    /// Built with an incompatible abi_stable.
    AbiStable(String),
    /// The root module's layout differs from this daemon's.
    Layout(String),
    /// The plugin's root module failed to initialize.
    Init(String),
}

impl std::fmt::Display for PluginLoadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let host_sdk = env!("CARGO_PKG_VERSION");
        match self {
            PluginLoadError::Io(e) => write!(f, "cannot read the plugin file: {e}"),
            PluginLoadError::Open(e) => write!(f, "cannot load the library: {e}"),
            PluginLoadError::NotAPlugin => {
                write!(f, "not an orgloop plugin (no ORGLOOP_PLUGIN_ABI symbol; was it built with orgloop_plugin_sdk::export_plugin!?)")
            }
            PluginLoadError::AbiMismatch { found, sdk: [a, b, c] } => write!(
                f,
                "incompatible plugin ABI: the plugin was built with orgloop-plugin-sdk {a}.{b}.{c} (ABI v{found}), this daemon needs ABI v{ABI_VERSION} (orgloop {host_sdk}); rebuild the plugin against a matching orgloop-plugin-sdk"
            ),
            PluginLoadError::AbiStable(e) => write!(f, "incompatible abi_stable in the plugin: {e}"),
            PluginLoadError::Layout(e) => write!(f, "the plugin's interface layout does not match this daemon's (rebuild it against orgloop-plugin-sdk {host_sdk}): {e}"),
            PluginLoadError::Init(e) => write!(f, "the plugin failed to initialize: {e}"),
        }
    }
}

/// A build of a module's plugin: the module's name, the content hash, and how it is isolated
/// (with a process's memory limit).
type BuildKey = (String, String, Isolation, Option<u64>);

/// Loads plugin libraries for one daemon. A build that is already loaded for a module is shared
/// (by content hash), not opened twice — also when it was mapped from a copy of its own.
#[derive(Clone)]
pub struct Loader {
    store: PluginStore,
    loaded: Arc<Mutex<HashMap<BuildKey, Weak<Library>>>>,
    /// For plugin entries that do not say (`orgloop start --isolation`).
    default_isolation: Isolation,
}

impl Loader {
    pub fn new(store: PluginStore) -> Self {
        Loader {
            store,
            loaded: Default::default(),
            default_isolation: Isolation::InProcess,
        }
    }

    /// Loads plugins whose entry says nothing about `isolation` this way.
    pub fn with_default_isolation(mut self, isolation: Isolation) -> Self {
        self.default_isolation = isolation;
        self
    }

    pub fn store(&self) -> &PluginStore {
        &self.store
    }

    /// Copies the build of `plugin` into the store for `module` and opens the copy, here or in
    /// a plugin process.
    pub fn load(&self, module: &str, plugin: &PluginSpec) -> Result<Arc<Library>, PluginLoadError> {
        let source = plugin.path.as_path();
        let import = |own_copy| {
            self.store
                .import(module, source, own_copy)
                .map_err(|e| PluginLoadError::Io(e.to_string()))
        };
        let stored = import(false)?;
        let mut loaded = self.loaded.lock().unwrap_or_else(|e| e.into_inner());
        let isolation = plugin.isolation.unwrap_or(self.default_isolation);
        let key = (
            module.to_owned(),
            stored.hash.clone(),
            isolation,
            plugin.max_memory,
        );
        if let Some(lib) = loaded.get(&key).and_then(Weak::upgrade) {
            return Ok(lib);
        }
        loaded.retain(|_, w| w.strong_count() > 0);
        if isolation == Isolation::Process {
            // A child may take seconds to start: other loads must not wait for it meanwhile.
            drop(loaded);
            // The child maps the copy; the daemon never does, so any copy will do.
            let (sup, manifest) =
                Supervisor::start(module, &plugin.name, stored.path.clone(), plugin.max_memory)?;
            let lib = Arc::new(Library::isolated(
                sup,
                manifest,
                stored,
                source.to_path_buf(),
            ));
            let mut loaded = self.loaded.lock().unwrap_or_else(|e| e.into_inner());
            // Started twice at once: the first one wins, the other child is retired.
            if let Some(first) = loaded.get(&key).and_then(Weak::upgrade) {
                return Ok(first);
            }
            loaded.insert(key, Arc::downgrade(&lib));
            return Ok(lib);
        }
        // Leased by a library no one uses any more: it is being closed (see `super::close`).
        let stored = if self.store.leases(&stored.path) > 1 {
            drop(stored);
            import(true)?
        } else {
            stored
        };
        let (raw, root, manifest) = open(&stored.path)?;
        let lib = Arc::new(Library::new(
            raw,
            root,
            manifest,
            stored,
            source.to_path_buf(),
        ));
        loaded.insert(key, Arc::downgrade(&lib));
        Ok(lib)
    }
}

/// Opens and checks one library file.
pub(super) fn open(path: &Path) -> Result<(RawLibrary, PluginRootRef, Manifest), PluginLoadError> {
    let raw = RawLibrary::load_at(path).map_err(|e| PluginLoadError::Open(e.to_string()))?;

    // SAFETY: the symbol, when present, is the `AbiStamp` static that `export_plugin!` defines:
    // a `#[repr(C)]` struct of plain integers that never changes shape. It is copied out at once.
    let stamp: AbiStamp = unsafe {
        match raw.get::<*const AbiStamp>(ABI_STAMP_SYMBOL) {
            Ok(sym) => **sym,
            Err(_) => return Err(PluginLoadError::NotAPlugin),
        }
    };
    if stamp.magic != AbiStamp::MAGIC {
        return Err(PluginLoadError::NotAPlugin);
    }
    if stamp.abi_version != ABI_VERSION {
        return Err(PluginLoadError::AbiMismatch {
            found: stamp.abi_version,
            sdk: stamp.sdk_version,
        });
    }

    // SAFETY: the header reference points into `raw`, which outlives every use below; nothing
    // derived from it is kept once this function returns except the root module, which the
    // `Library` stores together with `raw`.
    let header = unsafe { lib_header_from_raw_library(&raw) }
        .map_err(|e| PluginLoadError::AbiStable(e.to_string()))?;
    let layout = header.layout().ok_or_else(|| {
        PluginLoadError::Layout("the library carries no layout information".into())
    })?;
    // A fresh CheckingGlobals per load: the shared one would keep pointers into this library.
    check_layout_compatibility_with_globals(
        <PluginRootRef as abi_stable::StableAbi>::LAYOUT,
        layout,
        &CheckingGlobals::new(),
    )
    // Rendered to a String now: the error refers to static data inside the library.
    .map_err(|e| PluginLoadError::Layout(e.to_string()))?;
    // SAFETY: the layout was checked just above against this daemon's `PluginRootRef`.
    let root = unsafe { header.unchecked_layout::<PluginRootRef>() }
        .map_err(|e| PluginLoadError::Init(e.to_string()))?;

    let wire = root.manifest()();
    let manifest = Manifest::from_wire(&wire);
    // Plugin-allocated: dropped here, while the library is certainly loaded.
    drop(wire);
    Ok((raw, root, manifest))
}
