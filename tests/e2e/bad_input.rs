//! Bad input: every mistake is reported with file, line, column and field (and a suggestion for
//! a misspelled name), `validate` exits 2, and a bad module never takes the daemon or another
//! module down.

use std::path::Path;

use serde_json::{json, Value};

use crate::harness::*;

const CONNECTORS: &str = "sources:\n  - id: in\n    connector: webhook\nactors:\n  - id: out\n    connector: agent::session\n    config: {duration: 0s}\n";
const TRANSFORMS: &str = "transforms:\n  - name: drop-authors\n    type: plugin\n    symbol: filters::filter\n    config: {exclude: {provenance.author: bot}}\n";
const ROUTES: &str = "routes:\n  - name: r\n    when:\n      source: in\n      events: [resource.changed]\n    transforms:\n      - ref: drop-authors\n    then:\n      actor: out\n";

/// A valid module named `name` in `dir`, with `overrides` replacing or adding files.
fn module(dir: &Path, name: &str, overrides: &[(&str, &str)]) {
    let project = project_yaml(
        name,
        &["filters", "agent"],
        "connectors: [connectors/c.yaml]\ntransforms: [transforms/t.yaml]\n",
    );
    write_files(
        dir,
        &[
            ("orgloop.yaml", &project),
            ("connectors/c.yaml", CONNECTORS),
            ("transforms/t.yaml", TRANSFORMS),
            ("routes/r.yaml", ROUTES),
        ],
    );
    write_files(dir, overrides);
}

/// Runs `orgloop validate` on `dir`; returns (exit code, stdout).
fn validate(dir: &Path, home: &Path) -> (i32, String) {
    let out = orgloop(&["validate", dir.to_str().unwrap()], &base_env(home));
    (
        out.status.code().unwrap(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

#[track_caller]
fn assert_invalid(name: &str, overrides: &[(&str, &str)], expected: &[&str]) {
    let dir = test_dir(name);
    module(&dir.join("m"), "m", overrides);
    let (code, out) = validate(&dir.join("m"), &dir.join("home"));
    assert_eq!(code, 2, "{out}");
    for e in expected {
        assert_contains(&out, e);
    }
}

#[test]
fn a_valid_module_validates() {
    let dir = test_dir("bad_input_valid");
    module(&dir.join("m"), "m", &[]);
    let (code, out) = validate(&dir.join("m"), &dir.join("home"));
    assert_eq!(code, 0, "{out}");
    assert_contains(&out, "✓ module m");
    assert_contains(&out, "plugin filters 0.1.0");
}

#[test]
fn malformed_yaml_names_file_line_and_column() {
    assert_invalid(
        "bad_input_yaml",
        &[(
            "routes/r.yaml",
            "routes:\n  - name: r\n    when: {source: in, events: [resource.changed]\n",
        )],
        &["✗ routes/r.yaml:4:1: while parsing a flow mapping"],
    );
}

#[test]
fn unknown_references_suggest_the_closest_name() {
    let routes = ROUTES
        .replace("ref: drop-authors", "ref: drop-author")
        .replace("actor: out", "actor: outt")
        .replace("source: in", "source: inn");
    assert_invalid(
        "bad_input_refs",
        &[("routes/r.yaml", &routes)],
        &[
            "routes/r.yaml:4:7: routes[0].when.source: unknown source \"inn\"",
            "did you mean \"in\"?",
            "routes/r.yaml:7:9: routes[0].transforms[0].ref: unknown transform \"drop-author\"; did you mean \"drop-authors\"?",
            "routes/r.yaml:9:7: routes[0].then.actor: unknown actor \"outt\"; did you mean \"out\"?",
            "3 errors",
        ],
    );
}

#[test]
fn misspelled_fields_are_errors_with_a_suggestion() {
    let routes = ROUTES.replace("transforms:", "trasforms:");
    assert_invalid("bad_input_field", &[("routes/r.yaml", &routes)], &["routes/r.yaml:6:5: routes[0].trasforms: unknown field \"trasforms\"; did you mean \"transforms\"?"]);
}

#[test]
fn a_missing_plugin_file_is_reported() {
    let project = project_yaml(
        "m",
        &["filters", "agent"],
        "connectors: [connectors/c.yaml]\ntransforms: [transforms/t.yaml]\n",
    )
    .replace("liborgloop_agent.so", "liborgloop_nope.so");
    assert_invalid(
        "bad_input_missing_plugin",
        &[("orgloop.yaml", &project)],
        &[
            "orgloop.yaml:",
            "plugins[1].path: plugin file",
            "liborgloop_nope.so does not exist",
        ],
    );
}

#[test]
fn a_symbol_the_plugin_does_not_export_is_reported() {
    let transforms = TRANSFORMS.replace("filters::filter", "filters::filtr");
    assert_invalid(
        "bad_input_symbol",
        &[("transforms/t.yaml", &transforms)],
        &["transforms/t.yaml:4:5: transforms[0].symbol: transform drop-authors (filters::filtr): plugin filters 0.1.0 exports no transform \"filtr\"; did you mean \"filter\"?"],
    );
}

#[test]
fn a_failing_constructor_and_a_bad_config_are_reported() {
    let transforms = format!("{TRANSFORMS}  - name: broken\n    type: plugin\n    symbol: filters::fault\n    config: {{fail_init: true}}\n  - name: typo\n    type: plugin\n    symbol: filters::dedup\n    config: {{windw: 5m}}\n");
    assert_invalid(
        "bad_input_init",
        &[("transforms/t.yaml", &transforms)],
        &[
            "transform broken (filters::fault):",
            "fail_init",
            "transform typo (filters::dedup): invalid config: unknown field `windw`",
        ],
    );
}

#[test]
fn a_plugin_version_outside_the_requirement_is_reported() {
    let project = project_yaml(
        "m",
        &["filters", "agent"],
        "connectors: [connectors/c.yaml]\ntransforms: [transforms/t.yaml]\n",
    )
    .replacen("\"^0.1\"", "\">=0.2\"", 1);
    assert_invalid(
        "bad_input_version",
        &[("orgloop.yaml", &project)],
        &["plugin filters is version 0.1.0, which does not satisfy \">=0.2\""],
    );
}

#[test]
fn an_incompatible_abi_is_reported() {
    let fixture = build_dir().join("liborgloop_fixture_abi_mismatch.so");
    let project = project_yaml(
        "m",
        &["filters", "agent"],
        "connectors: [connectors/c.yaml]\ntransforms: [transforms/t.yaml]\n",
    )
    .replace(
        "${PLUGIN_DIR}/liborgloop_filters.so",
        fixture.to_str().unwrap(),
    );
    assert_invalid(
        "bad_input_abi",
        &[("orgloop.yaml", &project)],
        &["plugin filters: incompatible plugin ABI", "ABI v999"],
    );
}

#[test]
fn validate_json_lists_errors_with_positions() {
    let dir = test_dir("bad_input_json");
    module(
        &dir.join("m"),
        "m",
        &[(
            "routes/r.yaml",
            &ROUTES.replace("actor: out", "actor: nobody"),
        )],
    );
    let out = orgloop(
        &["validate", dir.join("m").to_str().unwrap(), "--json"],
        &base_env(&dir.join("home")),
    );
    assert_eq!(out.status.code(), Some(2));
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["valid"], false);
    let e = &report["errors"][0];
    assert_eq!(
        (e["file"].as_str(), e["line"].as_u64(), e["column"].as_u64()),
        (Some("routes/r.yaml"), Some(9), Some(7))
    );
    assert_eq!(e["field"], "routes[0].then.actor");
}

#[test]
fn a_bad_module_is_refused_while_the_good_one_serves() {
    let dir = test_dir("bad_input_isolation");
    let sink = Sink::start();
    let good = dir.join("good");
    let connectors = format!("sources:\n  - id: g\n    connector: webhook\nactors:\n  - id: out\n    connector: http::webhook\n    config: {{url: \"{}\"}}\n", sink.url("/good"));
    let project = project_yaml("good", &["http"], "connectors: [connectors/c.yaml]\n");
    let routes = "routes:\n  - name: r\n    when: {source: g, events: [resource.changed]}\n    then: {actor: out}\n";
    write_files(
        &good,
        &[
            ("orgloop.yaml", &project),
            ("connectors/c.yaml", &connectors),
            ("routes/r.yaml", routes),
        ],
    );
    let bad = dir.join("bad");
    module(&bad, "bad", &[("routes/r.yaml", "routes: [oops")]);

    let mut daemon = Daemon::start(&[&good, &bad], &base_env(&dir.join("home")));
    daemon.wait_log("/bad not loaded");
    assert_contains(
        &daemon.log(),
        "routes/r.yaml:2:1: while parsing a flow sequence",
    );
    assert_eq!(daemon.post("g", &json!({"n": 1})).status, 202);
    assert_eq!(sink.wait_for(1)[0].body["event"]["payload"]["n"], 1);
    assert_eq!(
        daemon.post("in", &json!({})).status,
        404,
        "the bad module's source does not exist"
    );

    let only_bad = Daemon::try_start(&[&bad], &base_env(&dir.join("home2")));
    let log = only_bad.err().expect("a daemon with no valid module exits");
    assert_contains(&log, "exit status: 2");
}
