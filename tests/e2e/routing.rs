//! Routing semantics through the real daemon: fan-out, `when.filter`, and a panicking or failing
//! plugin transform handled by each route's `on_error` while the daemon keeps serving.

use serde_json::{json, Value};

use crate::harness::*;

fn fault_module(dir: &std::path::Path, sink: &Sink) {
    let connectors = format!(
        "sources:\n  - id: in\n    connector: webhook\nactors:\n  - id: sink\n    connector: http::webhook\n    config:\n      url: {}\n",
        sink.url("/in")
    );
    let routes = r#"
routes:
  - name: r-pass
    when: {source: in, events: [resource.changed]}
    transforms: [{ref: boom, on_error: pass}]
    then: {actor: sink, config: {tag: pass}}
  - name: r-drop
    when: {source: in, events: [resource.changed]}
    transforms: [{ref: boom, on_error: drop}]
    then: {actor: sink, config: {tag: drop}}
  - name: r-halt
    when: {source: in, events: [resource.changed]}
    transforms: [{ref: boom, on_error: halt}]
    then: {actor: sink, config: {tag: halt}}
  - name: r-plain
    when:
      source: in
      events: [resource.changed]
      filter: {payload.kind: plain}
    then: {actor: sink, config: {tag: plain}}
  - name: r-never
    when: {source: in, events: [actor.stopped]}
    then: {actor: sink, config: {tag: never}}
"#;
    let transforms = "transforms:\n  - name: boom\n    type: plugin\n    symbol: filters::fault\n    config:\n      panic_when: {payload.boom: true}\n";
    let loggers = "loggers:\n  - name: file\n    type: file\n    config: {path: events.jsonl, level: debug}\n";
    let project = project_yaml(
        "faults",
        &["filters", "http"],
        "connectors: [connectors/c.yaml]\ntransforms: [transforms/t.yaml]\nloggers: [loggers/l.yaml]\n",
    );
    write_files(
        dir,
        &[
            ("orgloop.yaml", &project),
            ("connectors/c.yaml", &connectors),
            ("routes/r.yaml", routes),
            ("transforms/t.yaml", transforms),
            ("loggers/l.yaml", loggers),
        ],
    );
}

fn tags(received: &[Received]) -> Vec<String> {
    let mut t: Vec<String> = received
        .iter()
        .map(|r| r.body["config"]["tag"].as_str().unwrap().to_owned())
        .collect();
    t.sort();
    t
}

#[test]
fn a_panicking_transform_is_handled_by_each_routes_on_error_and_the_daemon_keeps_serving() {
    let dir = test_dir("routing_on_error");
    let module = dir.join("m");
    let sink = Sink::start();
    fault_module(&module, &sink);
    let daemon = Daemon::start(&[&module], &base_env(&dir.join("home")));

    // Panics in the transform: `pass` delivers the event as it was, `drop` and `halt` stop their
    // route; the route without transforms is unaffected.
    let boom = daemon.post("in", &json!({"boom": true, "kind": "plain"}));
    assert_eq!(boom.status, 202);
    assert_eq!(tags(&sink.wait_for(2)), ["pass", "plain"]);

    // The daemon is still there, and the same transform works for the next event.
    let calm = daemon.post("in", &json!({"boom": false}));
    assert_eq!(calm.status, 202);
    assert_eq!(
        tags(&sink.wait_for(5)),
        ["drop", "halt", "pass", "pass", "plain"]
    );
    assert!(sink
        .received()
        .iter()
        .all(|r| r.body["config"]["tag"] != "never"));

    let boom_id = boom.json["event_id"].as_str().unwrap().to_owned();
    let passed = sink
        .received()
        .into_iter()
        .find(|r| r.body["event"]["id"] == boom_id.as_str() && r.body["config"]["tag"] == "pass")
        .unwrap();
    assert_eq!(
        passed.body["event"]["payload"]["boom"], true,
        "on_error: pass keeps the event unchanged"
    );

    assert_eq!(daemon.stop(), 0);
    let log = std::fs::read_to_string(module.join("events.jsonl")).unwrap();
    let entries: Vec<Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let phase_of = |route: &str| -> Vec<&str> {
        entries
            .iter()
            .filter(|e| {
                e["event_id"] == boom_id.as_str()
                    && e["route"] == route
                    && e["phase"].as_str().unwrap().starts_with("transform.error")
            })
            .map(|e| e["phase"].as_str().unwrap())
            .collect()
    };
    assert_eq!(phase_of("r-pass"), ["transform.error"]);
    assert_eq!(phase_of("r-drop"), ["transform.error_drop"]);
    assert_eq!(phase_of("r-halt"), ["transform.error_halt"]);
    let error = entries
        .iter()
        .find(|e| e["phase"] == "transform.error")
        .unwrap()["error"]
        .as_str()
        .unwrap();
    assert_contains(error, "panicked");
}

#[test]
fn a_failed_delivery_is_logged_as_deliver_failure() {
    let dir = test_dir("routing_delivery_failure");
    let module = dir.join("m");
    let sink = Sink::start();
    fault_module(&module, &sink);
    sink.respond_with(503);
    let mut daemon = Daemon::start(&[&module], &base_env(&dir.join("home")));
    assert_eq!(daemon.post("in", &json!({"kind": "other"})).status, 202);
    sink.wait_for(3);
    daemon.wait_log("delivery failed");
    assert_eq!(daemon.stop(), 0);
    let log = std::fs::read_to_string(module.join("events.jsonl")).unwrap();
    let failures: Vec<Value> = log
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|e| e["phase"] == "deliver.failure")
        .collect();
    assert_eq!(failures.len(), 3, "{log}");
    assert_contains(failures[0]["error"].as_str().unwrap(), "HTTP 503");
}

#[test]
fn an_actor_runs_at_most_max_inflight_deliveries_at_once() {
    let dir = test_dir("routing_max_inflight");
    let module = dir.join("m");
    let sink = Sink::start();
    crate::swap::swap_module(&module, "m", &sink, "700ms");
    let connectors = std::fs::read_to_string(module.join("connectors/c.yaml")).unwrap();
    let connectors = connectors.replace(
        "connector: agent::session,",
        "connector: agent::session, max_inflight: 1,",
    );
    assert!(connectors.contains("max_inflight: 1"));
    write_files(&module, &[("connectors/c.yaml", &connectors)]);
    let daemon = Daemon::start(&[&module], &base_env(&dir.join("home")));
    for _ in 0..2 {
        assert_eq!(daemon.post("m-in", &json!({"kind": "task"})).status, 202);
    }
    let got = sink.wait_for(2);
    let mut spans: Vec<(String, String)> = got
        .iter()
        .map(|r| {
            let s = &r.body["event"]["payload"]["session"];
            (
                s["started_at"].as_str().unwrap().to_owned(),
                s["ended_at"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    spans.sort();
    assert!(
        spans[1].0 >= spans[0].1,
        "the second session started before the first ended: {spans:?}"
    );
}
