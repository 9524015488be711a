//! # filters — orgloop's general-purpose transforms
//!
//! A plugin (`filters`) with the transforms most routes need, compatible with the YAML of upstream
//! OrgLoop's `@orgloop/transform-filter`, `-dedup` and `-enrich`:
//!
//! - `filters::filter` ([`Filter`]): keeps or drops events by field values (`match`, `match_any`,
//!   `exclude`).
//! - `filters::dedup` ([`Dedup`]): drops repeats of an event key within a time window.
//! - `filters::enrich` ([`Enrich`]): sets fixed values and copies fields.
//! - `filters::fault` ([`Fault`]): fails on command, to test error handling. Not for production.
//!
//! ## Matching field values
//!
//! `filter` and `fault` take maps of event dot paths (`provenance.author_type`,
//! `payload.pr.number`, `payload.labels.0`) to expected values. The value rules are upstream
//! OrgLoop's (`transforms/filter/src/matcher.ts`), so that filter configs written for it keep
//! their meaning:
//!
//! | expected value | matches when the field ... |
//! |---|---|
//! | `"text"` | is exactly that string |
//! | `"/re/flags"` | is a string (or number or boolean, as text) the regex finds a match in; flags `i` (case-insensitive), `m`, `s`, and `g`/`u` (no effect). An invalid regex or flag falls back to exact comparison, with a warning in the log |
//! | `"a, b"` (a comma, top level only) | matches any of the trimmed parts (each part may be a regex) |
//! | `[x, y]` | matches any item (items follow these same rules, except comma splitting) |
//! | `null` | is `null` or missing |
//! | number, boolean, object | is strictly equal (`1` equals `1.0`; `"1"` does not equal `1`) |
//!
//! Two deliberate differences from upstream, both for cases where upstream's behaviour is an
//! accident rather than a feature: a regex-shaped value is not split at commas (upstream would
//! break `/x{1,3}/` into two halves), and a missing field, an object or an array never matches a
//! regex (upstream tests the text `"undefined"` or `"[object Object]"`).
//!
//! Durations are written as upstream does: `500ms`, `30s`, `5m`, `1h`, `1d`.
//!
//! Like every orgloop plugin these transforms keep all state in their objects, start no threads,
//! and read time only from the host, so the daemon can swap and unload this library at will.

mod dedup;
use orgloop_plugin_sdk::duration;
mod enrich;
mod fault;
mod filter;
mod matcher;

pub use dedup::{Dedup, DedupConfig};
pub use enrich::{Enrich, EnrichConfig};
pub use fault::{Fault, FaultConfig};
pub use filter::{Filter, FilterConfig};

orgloop_plugin_sdk::export_plugin! {
    name: "filters",
    transforms: {
        "filter" => Filter,
        "dedup" => Dedup,
        "enrich" => Enrich,
        "fault" => Fault,
    },
}
