//! A module for reload tests: its plugin libraries are copies inside the test directory, so a
//! test can replace them with another build the way `cargo build` replaces its output.

use std::path::{Path, PathBuf};

use serde_json::{json, Value};

use crate::harness::*;

/// Writes module `name` into `dir`: webhook source `<name>-in`; `note` events go to an
/// `http::webhook` actor posting to `sink` at `/<name>`; `task` events start an `agent::session`
/// of `session` length whose `actor.stopped` goes to the sink too.
pub fn swap_module(dir: &Path, name: &str, sink: &Sink, session: &str) {
    install(dir, "http", &plugin("http"));
    install(dir, "agent", &plugin("agent"));
    let project = format!(
        "apiVersion: orgloop/v1alpha1\nkind: Project\nmetadata:\n  name: {name}\ndefaults:\n  drain_timeout: 30s\nplugins:\n  - {{name: http, path: plugins/libhttp.so}}\n  - {{name: agent, path: plugins/libagent.so}}\nconnectors: [connectors/c.yaml]\n"
    );
    let connectors = format!(
        "sources:\n  - {{id: {name}-in, connector: webhook}}\nactors:\n  - {{id: out, connector: http::webhook, config: {{url: \"{}\"}}}}\n  - {{id: worker, connector: agent::session, config: {{duration: {session}}}}}\n",
        sink.url(&format!("/{name}"))
    );
    let routes = format!(
        "routes:\n  - name: deliver\n    when: {{source: {name}-in, events: [resource.changed], filter: {{payload.kind: note}}}}\n    then: {{actor: out, config: {{tag: note}}}}\n  - name: work\n    when: {{source: {name}-in, events: [resource.changed], filter: {{payload.kind: task}}}}\n    then: {{actor: worker}}\n  - name: done\n    when: {{source: worker, events: [actor.stopped]}}\n    then: {{actor: out, config: {{tag: done}}}}\n"
    );
    write_files(
        dir,
        &[
            ("orgloop.yaml", &project),
            ("connectors/c.yaml", &connectors),
            ("routes/r.yaml", &routes),
        ],
    );
}

/// Replaces plugin `name`'s library in the module with `build` (write beside, then rename).
pub fn install(dir: &Path, name: &str, build: &Path) {
    let target = dir.join("plugins").join(format!("lib{name}.so"));
    std::fs::create_dir_all(target.parent().unwrap()).unwrap();
    let tmp = target.with_extension("tmp");
    std::fs::copy(build, &tmp).unwrap();
    std::fs::rename(&tmp, &target).unwrap();
}

/// Builds of the example plugins: (v1 = 0.1.0, v2 = 0.2.0).
pub fn builds(name: &str) -> (PathBuf, PathBuf) {
    (plugin(name), build_variant(name, "0.2.0"))
}

pub fn note(n: u64) -> Value {
    json!({"kind": "note", "n": n})
}

/// The http plugin version that delivered a request the sink received.
pub fn delivered_by(r: &Received) -> &str {
    r.body["delivered_by"]["version"]
        .as_str()
        .unwrap_or_default()
}
