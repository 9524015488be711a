//! A module's configuration: YAML files as written ([`raw`]), read with positions ([`load`],
//! [`yaml`]), checked into a [`spec::ModuleSpec`] ([`validate`]), with errors that point at the
//! file, line, column and field ([`error`]).

pub mod diff;
pub mod error;
pub mod load;
pub mod raw;
pub mod spec;
pub mod validate;
pub mod yaml;

use std::path::Path;

pub use error::{render as render_errors, ConfigError};
pub use spec::ModuleSpec;

/// Reads and validates the module in `dir`.
pub fn load_module(dir: &Path) -> Result<ModuleSpec, Vec<ConfigError>> {
    let raw = load::read_module(dir)?;
    validate::validate(&raw)
}
