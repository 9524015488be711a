//! Stalls stay inside their module: a plugin call that blocks its thread holds up only its own
//! module, past its deadline it is an error under the route's `on_error`, and meanwhile the
//! module is reported degraded while every other module — and the webhooks of this one — go on.

use std::path::Path;

use serde_json::json;

use crate::harness::*;

/// Module `name` with source `<name>-in` → (transform `stall`, which blocks on `kind: stall`) →
/// `http::webhook` to `sink`.
fn module(dir: &Path, name: &str, sink: &Sink) {
    let project = project_yaml(
        name,
        &["filters", "http"],
        "connectors: [connectors/c.yaml]\ntransforms: [transforms/t.yaml]\n",
    );
    let connectors = format!(
        "sources: [{{id: {name}-in, connector: webhook}}]\nactors: [{{id: out, connector: http::webhook, config: {{url: \"{}\"}}}}]\n",
        sink.url(&format!("/{name}"))
    );
    let transforms = "transforms:\n  - name: stall\n    type: plugin\n    symbol: filters::fault\n    timeout_ms: 300\n    on_error: drop\n    config: {block_when: {payload.kind: stall}, block_for: 1500ms}\n";
    let routes = format!(
        "routes:\n  - name: r\n    when: {{source: {name}-in, events: [resource.changed]}}\n    transforms: [{{ref: stall}}]\n    then: {{actor: out}}\n"
    );
    write_files(
        dir,
        &[
            ("orgloop.yaml", &project),
            ("connectors/c.yaml", &connectors),
            ("transforms/t.yaml", transforms),
            ("routes/r.yaml", &routes),
        ],
    );
}

#[test]
fn a_blocked_transform_stalls_only_its_own_module() {
    let dir = test_dir("stalls_transform");
    let sink = Sink::start();
    module(&dir.join("a"), "a", &sink);
    module(&dir.join("b"), "b", &sink);
    let daemon = Daemon::start(
        &[&dir.join("a"), &dir.join("b")],
        &base_env(&dir.join("home")),
    );

    // Three calls that block A's dispatcher for 1.5 s each.
    for n in 0..3 {
        assert_eq!(
            daemon
                .post("a-in", &json!({"kind": "stall", "n": n}))
                .status,
            202
        );
    }
    let stalled = daemon.wait_status("a", "a to be degraded", |s| !s["degraded"].is_null());
    assert_contains(stalled["degraded"].as_str().unwrap(), "past its deadline");

    // Meanwhile B delivers, and A itself still takes webhooks (they wait their turn).
    assert_eq!(
        daemon
            .post("b-in", &json!({"kind": "note", "n": 10}))
            .status,
        202
    );
    assert_eq!(
        daemon
            .post("a-in", &json!({"kind": "note", "n": 11}))
            .status,
        202
    );
    let to_b = sink.wait_for(1);
    assert_eq!(
        (
            to_b[0].path.as_str(),
            &to_b[0].body["event"]["payload"]["n"]
        ),
        ("/b", &json!(10))
    );
    assert!(
        !daemon.module_status("a")["degraded"].is_null(),
        "B delivered while A was still stuck"
    );

    // After the stalls: the overrunning calls were errors under on_error: drop, the next event
    // went through, and A is healthy again.
    let after = daemon.wait_status("a", "a to recover", |s| {
        s["queue"]["entries"] == 0 && s["degraded"].is_null()
    });
    assert_eq!(after["transform_overruns"], 3, "{after:#}");
    let to_a: Vec<u64> = sink
        .wait_for(2)
        .iter()
        .filter(|r| r.path == "/a")
        .map(|r| r.body["event"]["payload"]["n"].as_u64().unwrap())
        .collect();
    assert_eq!(
        to_a,
        [11],
        "the stalled events were dropped by on_error, the note delivered"
    );
    assert_contains(&daemon.log(), "past its deadline");
}
