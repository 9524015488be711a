//! What the lifecycle operations report: to the control API as JSON, and from there to
//! `orgloop module ...`.

use serde::Serialize;

use crate::config::diff::ConfigDiff;
use crate::config::ConfigError;
use crate::plugin::library::short;
use crate::plugin::{Library, UnloadReport};

/// One build of a plugin.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PluginBuild {
    pub version: String,
    /// Hex SHA-256 of the library (the first 12 digits are enough to tell builds apart).
    pub hash: String,
}

impl PluginBuild {
    pub fn of(lib: &Library) -> Self {
        PluginBuild {
            version: lib.manifest().version.clone(),
            hash: lib.hash().to_owned(),
        }
    }
}

impl std::fmt::Display for PluginBuild {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.version, short(&self.hash))
    }
}

/// A plugin before and after a reload.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PluginChange {
    pub name: String,
    pub old: Option<PluginBuild>,
    pub new: Option<PluginBuild>,
}

impl PluginChange {
    pub fn changed(&self) -> bool {
        self.old != self.new
    }
}

/// The old generation a swap left draining.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct DrainStart {
    pub generation: u64,
    /// Deliveries still running on it at the swap.
    pub inflight: usize,
    pub drain_timeout_ms: u64,
}

/// A drain that a newer reload cut short (at most two generations live at once).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ForcedDrain {
    pub generation: u64,
    pub cancelled: usize,
}

/// The result of one reload request.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum ReloadOutcome {
    /// The new generation serves; the old one drains.
    Swapped(ReloadReport),
    /// Nothing changed; the current generation keeps serving.
    Unchanged(ReloadReport),
    /// `dry_run`: validated and compared, not applied.
    DryRun(ReloadReport),
    /// Refused; the current generation keeps serving untouched.
    Rejected {
        module: String,
        errors: Vec<ConfigError>,
    },
}

impl ReloadOutcome {
    pub fn report(&self) -> Option<&ReloadReport> {
        match self {
            ReloadOutcome::Swapped(r) | ReloadOutcome::Unchanged(r) | ReloadOutcome::DryRun(r) => {
                Some(r)
            }
            ReloadOutcome::Rejected { .. } => None,
        }
    }
}

/// What a reload found and did.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ReloadReport {
    pub module: String,
    pub from_generation: u64,
    /// The generation now serving (equal to `from_generation` unless swapped).
    pub to_generation: u64,
    pub plugins: Vec<PluginChange>,
    pub diff: ConfigDiff,
    /// Reading, validating and staging the new generation (plugin loads and constructors).
    pub stage_ms: f64,
    /// The switch itself: new events go to the new generation from then on.
    pub swap_us: f64,
    pub draining: Option<DrainStart>,
    pub forced_previous_drain: Option<ForcedDrain>,
    /// A rollout that was in progress, ended by this reload before its swap.
    pub ended_rollout: Option<crate::module::rollout::RolloutReport>,
    /// The rollout this reload started (canary, bake), instead of a plain swap.
    pub rollout: Option<crate::module::rollout::RolloutReport>,
    /// This request arrived while another reload ran, and that reload already covered it.
    pub coalesced: bool,
}

/// How one retired library ended.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct LibraryUnload {
    pub plugin: String,
    pub build: PluginBuild,
    pub result: UnloadReport,
}

/// The end of a drained generation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct DrainReport {
    pub generation: u64,
    /// Deliveries cancelled at the drain timeout (or at once, when forced).
    pub cancelled: usize,
    pub forced: bool,
    pub duration_ms: u64,
    /// Libraries no newer generation uses, closed and checked.
    pub libraries: Vec<LibraryUnload>,
}

impl std::fmt::Display for LibraryUnload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}: {}", self.plugin, self.build, self.result)
    }
}
