//! [`Manifest`]: what a plugin says about itself — name, version, and each exported symbol.

use serde::{Deserialize, Serialize};
use serde_json::Value as Json;

use crate::abi::{kind, FfiManifest};

/// What a symbol is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SymbolKind {
    /// A [`Transform`](crate::Transform).
    Transform,
    /// An [`Actor`](crate::Actor).
    Actor,
    /// A [`Source`](crate::Source).
    Source,
}

impl SymbolKind {
    pub(crate) fn to_wire(self) -> u8 {
        match self {
            SymbolKind::Transform => kind::TRANSFORM,
            SymbolKind::Actor => kind::ACTOR,
            SymbolKind::Source => kind::SOURCE,
        }
    }

    fn from_wire(n: u8) -> Option<SymbolKind> {
        match n {
            kind::TRANSFORM => Some(SymbolKind::Transform),
            kind::ACTOR => Some(SymbolKind::Actor),
            kind::SOURCE => Some(SymbolKind::Source),
            _ => None,
        }
    }

    /// `transform`, `actor` or `source`.
    pub fn as_str(self) -> &'static str {
        match self {
            SymbolKind::Transform => "transform",
            SymbolKind::Actor => "actor",
            SymbolKind::Source => "source",
        }
    }
}

/// One exported symbol.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SymbolInfo {
    /// The name after `::` in YAML.
    pub name: String,
    /// What it is.
    pub kind: SymbolKind,
    /// One line about it.
    pub description: String,
    /// A JSON schema of its config, when the plugin gives one.
    pub config_schema: Option<Json>,
}

/// What a plugin exports.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// The plugin name.
    pub name: String,
    /// The plugin version (semver text).
    pub version: String,
    /// Its symbols, in declaration order.
    pub symbols: Vec<SymbolInfo>,
}

impl Manifest {
    /// Copies a manifest off the wire into memory owned by the caller. Symbols of a kind this SDK
    /// does not know (from a newer plugin) are skipped.
    #[doc(hidden)]
    pub fn from_wire(m: &FfiManifest) -> Manifest {
        Manifest {
            name: m.name.to_string(),
            version: m.version.to_string(),
            symbols: m
                .symbols
                .iter()
                .filter_map(|s| {
                    Some(SymbolInfo {
                        name: s.name.to_string(),
                        kind: SymbolKind::from_wire(s.kind)?,
                        description: s.description.to_string(),
                        config_schema: serde_json::from_str(s.config_schema.as_str()).ok(),
                    })
                })
                .collect(),
        }
    }

    /// The symbol with this name, if exported.
    pub fn symbol(&self, name: &str) -> Option<&SymbolInfo> {
        self.symbols.iter().find(|s| s.name == name)
    }
}
