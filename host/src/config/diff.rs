//! [`ConfigDiff`]: what a reload changes, component by component — added, removed, changed, or
//! kept. A component is *kept* when its definition is the same (where it is written in its file
//! does not count) and, for plugin objects, its plugin library is the same build; kept objects
//! carry over into the new generation with their state.

use serde::Serialize;

use super::spec::{ActorSpec, ModuleSpec, RouteSpec, SourceKind, SourceSpec, TransformSpec};

/// The fate of one kind of component.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Difference {
    pub added: Vec<String>,
    pub removed: Vec<String>,
    pub changed: Vec<String>,
    pub kept: Vec<String>,
}

impl Difference {
    /// Compares two lists of named items with `same`.
    fn of<T>(
        old: &[T],
        new: &[T],
        name: impl Fn(&T) -> &str,
        same: impl Fn(&T, &T) -> bool,
    ) -> Difference {
        let mut d = Difference::default();
        for n in new {
            match old.iter().find(|o| name(o) == name(n)) {
                None => d.added.push(name(n).to_owned()),
                Some(o) if same(o, n) => d.kept.push(name(n).to_owned()),
                Some(_) => d.changed.push(name(n).to_owned()),
            }
        }
        d.removed = old
            .iter()
            .filter(|o| !new.iter().any(|n| name(n) == name(o)))
            .map(|o| name(o).to_owned())
            .collect();
        d
    }

    /// Whether anything was added, removed or changed.
    pub fn touched(&self) -> bool {
        !(self.added.is_empty() && self.removed.is_empty() && self.changed.is_empty())
    }

    pub fn is_kept(&self, name: &str) -> bool {
        self.kept.iter().any(|k| k == name)
    }
}

/// Component-by-component differences between two versions of a module.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ConfigDiff {
    pub routes: Difference,
    pub transforms: Difference,
    pub sources: Difference,
    pub actors: Difference,
    /// Loggers, module settings (drain timeout, description): anything else in the files.
    pub settings_changed: bool,
}

impl ConfigDiff {
    /// Compares `old` with `new`. `plugin_rebuilt(name)` says whether plugin `name` is now a
    /// different build (or was added): every object from it then counts as changed.
    pub fn between(
        old: &ModuleSpec,
        new: &ModuleSpec,
        plugin_rebuilt: impl Fn(&str) -> bool,
    ) -> ConfigDiff {
        ConfigDiff {
            routes: Difference::of(&old.routes, &new.routes, |r| &r.name, same_route),
            transforms: Difference::of(
                &old.transforms,
                &new.transforms,
                |t| &t.name,
                |a, b| same_transform(a, b) && !plugin_rebuilt(&b.symbol.plugin),
            ),
            sources: Difference::of(
                &old.sources,
                &new.sources,
                |s| &s.id,
                |a, b| same_source(a, b) && source_plugin(b).is_none_or(|p| !plugin_rebuilt(p)),
            ),
            actors: Difference::of(
                &old.actors,
                &new.actors,
                |a| &a.id,
                |a, b| same_actor(a, b) && !plugin_rebuilt(&b.symbol.plugin),
            ),
            settings_changed: old.loggers != new.loggers
                || old.drain_timeout != new.drain_timeout
                || old.description != new.description,
        }
    }

    /// Whether the reload would change nothing at all.
    pub fn is_empty(&self) -> bool {
        ![&self.routes, &self.transforms, &self.sources, &self.actors]
            .iter()
            .any(|d| d.touched())
            && !self.settings_changed
    }
}

fn same_route(a: &RouteSpec, b: &RouteSpec) -> bool {
    (
        &a.source,
        &a.events,
        &a.filter,
        &a.transforms,
        &a.actor,
        &a.config,
        &a.prompt_file,
    ) == (
        &b.source,
        &b.events,
        &b.filter,
        &b.transforms,
        &b.actor,
        &b.config,
        &b.prompt_file,
    )
}

pub fn same_transform(a: &TransformSpec, b: &TransformSpec) -> bool {
    (&a.symbol, &a.config, a.on_error, a.timeout) == (&b.symbol, &b.config, b.on_error, b.timeout)
}

pub fn same_actor(a: &ActorSpec, b: &ActorSpec) -> bool {
    (
        &a.symbol,
        &a.config,
        a.max_inflight,
        &a.retry,
        a.interrupted,
    ) == (
        &b.symbol,
        &b.config,
        b.max_inflight,
        &b.retry,
        b.interrupted,
    )
}

pub fn same_source(a: &SourceSpec, b: &SourceSpec) -> bool {
    a.kind == b.kind
}

fn source_plugin(s: &SourceSpec) -> Option<&str> {
    match &s.kind {
        SourceKind::Plugin { symbol, .. } => Some(&symbol.plugin),
        SourceKind::Webhook(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::load_module;

    fn module(dir: &std::path::Path, route_actor: &str, threshold: u32) -> ModuleSpec {
        let _ = std::fs::remove_dir_all(dir);
        std::fs::create_dir_all(dir.join("routes")).unwrap();
        std::fs::create_dir_all(dir.join("connectors")).unwrap();
        std::fs::write(dir.join("lib.so"), b"").unwrap();
        std::fs::write(
            dir.join("orgloop.yaml"),
            "apiVersion: orgloop/v1alpha1\nkind: Project\nmetadata: {name: m}\nplugins: [{name: p, path: lib.so}]\nconnectors: [connectors/c.yaml]\ntransforms: [t.yaml]\n",
        )
        .unwrap();
        std::fs::write(
            dir.join("connectors/c.yaml"),
            "sources: [{id: s, connector: webhook}]\nactors: [{id: a, connector: p::act}, {id: b, connector: p::act}]\n",
        )
        .unwrap();
        std::fs::write(dir.join("t.yaml"), format!("transforms:\n  - {{name: t, type: plugin, symbol: p::f, config: {{n: {threshold}}}}}\n")).unwrap();
        std::fs::write(
            dir.join("routes/r.yaml"),
            format!("routes:\n  - name: r\n    when: {{source: s, events: [resource.changed]}}\n    transforms: [{{ref: t}}]\n    then: {{actor: {route_actor}}}\n"),
        )
        .unwrap();
        load_module(dir).unwrap()
    }

    #[test]
    fn tells_kept_from_changed_and_sees_rebuilt_plugins() {
        let dir = std::env::temp_dir().join(format!("orgloop-diff-{}", std::process::id()));
        let v1 = module(&dir.join("1"), "a", 1);
        let same = module(&dir.join("2"), "a", 1);
        assert!(ConfigDiff::between(&v1, &same, |_| false).is_empty());

        let v2 = module(&dir.join("3"), "b", 2);
        let d = ConfigDiff::between(&v1, &v2, |_| false);
        assert_eq!(d.routes.changed, ["r"]);
        assert_eq!(d.transforms.changed, ["t"]);
        assert_eq!(d.actors.kept, ["a", "b"]);
        assert_eq!(d.sources.kept, ["s"]);

        let rebuilt = ConfigDiff::between(&v1, &same, |p| p == "p");
        assert_eq!(rebuilt.actors.changed, ["a", "b"]);
        assert_eq!(
            rebuilt.sources.kept,
            ["s"],
            "webhook sources are not plugin objects"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
