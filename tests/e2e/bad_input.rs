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

/// Ten aliases of the level below, nine levels deep: 10^9 values from 11 lines.
fn alias_bomb() -> String {
    let mut text = String::from("a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
    for i in 1..10 {
        let refs = vec![format!("*a{}", i - 1); 10].join(", ");
        text.push_str(&format!("a{i}: &a{i} [{refs}]\n"));
    }
    text
}

#[test]
fn an_alias_bomb_and_an_oversized_file_are_config_errors() {
    assert_invalid(
        "bad_input_alias_bomb",
        &[("routes/bomb.yaml", &alias_bomb())],
        &["routes/bomb.yaml:5:", "values once aliases are expanded"],
    );
    let big = format!("# {}\nA=1\n", "x".repeat(2 << 20));
    assert_invalid(
        "bad_input_big_env",
        &[(".env", &big)],
        &[".env: cannot read: larger than 1024 KiB"],
    );
    let dir = test_dir("bad_input_big_sop");
    let routes = ROUTES.replace(
        "    then:\n",
        "    with: {prompt_file: ../sops/s.md}\n    then:\n",
    );
    module(
        &dir.join("m"),
        "m",
        &[("routes/r.yaml", &routes), ("sops/s.md", &big)],
    );
    let (code, out) = validate(&dir.join("m"), &dir.join("home"));
    assert_eq!(code, 2, "{out}");
    assert_contains(&out, "larger than 1024 KiB");
}

#[test]
fn a_reload_with_an_alias_bomb_is_refused_and_the_module_serves_on() {
    let dir = test_dir("bad_input_bomb_reload");
    let m = dir.join("m");
    module(&m, "m", &[]);
    let daemon = Daemon::start(&[&m], &base_env(&dir.join("home")));
    write_files(&m, &[("routes/bomb.yaml", &alias_bomb())]);
    let (code, report) = daemon.cli_json(&["module", "reload", "m", "--json"]);
    assert_eq!(code, 2, "{report:#}");
    assert_contains(&report.to_string(), "values once aliases are expanded");
    assert_eq!(daemon.post("in", &json!({"n": 1})).status, 202);
    assert_eq!(daemon.module_status("m")["generation"]["number"], 1);
}

/// A raw connection to the daemon, for clients that misbehave.
fn connect(daemon: &Daemon) -> std::net::TcpStream {
    let tcp = std::net::TcpStream::connect(("127.0.0.1", daemon.port)).unwrap();
    tcp.set_read_timeout(Some(WAIT)).unwrap();
    tcp
}

/// Reads until the daemon closes the connection; returns what it sent.
fn read_to_close(tcp: &mut std::net::TcpStream) -> String {
    use std::io::Read;
    let mut got = Vec::new();
    match tcp.read_to_end(&mut got) {
        Ok(_) => String::from_utf8_lossy(&got).into_owned(),
        Err(e) => panic!("the connection was not closed within {WAIT:?}: {e}"),
    }
}

/// A daemon with the bad-input module and `flags` (short limits).
fn guarded_daemon(test: &str, flags: &[&str]) -> Daemon {
    let dir = test_dir(test);
    module(&dir.join("m"), "m", &[]);
    Daemon::try_start_with(&[&dir.join("m")], flags, &base_env(&dir.join("home")))
        .unwrap_or_else(|log| panic!("daemon did not start:\n{log}"))
}

/// Every event accepted so far is delivered: nothing waits, nothing is dead.
fn all_delivered(daemon: &Daemon) {
    let status = daemon.wait_status("m", "every accepted event to be delivered", |s| {
        s["queue"]["entries"] == 0
    });
    assert_eq!(status["actors"]["out"]["dead"], 0, "{status:#}");
}

#[test]
fn slow_and_idle_clients_are_cut_off_while_others_are_served() {
    use std::io::Write;
    let daemon = guarded_daemon(
        "bad_input_slow_clients",
        &["--header-timeout", "500ms", "--body-timeout", "500ms"],
    );
    // Half a request header, then nothing (slowloris).
    let mut slow = connect(&daemon);
    slow.write_all(b"POST /webhook/in HTTP/1.1\r\nhost: x\r\n")
        .unwrap();
    // A body announced and trickled.
    let mut trickle = connect(&daemon);
    trickle
        .write_all(b"POST /webhook/in HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n{\"n\":")
        .unwrap();
    // A keep-alive connection that goes idle after one request.
    let mut idle = connect(&daemon);
    idle.write_all(b"GET /api/status HTTP/1.1\r\nhost: x\r\n\r\n")
        .unwrap();

    // Meanwhile a well-behaved client is served.
    assert_eq!(daemon.post("in", &json!({"n": 1})).status, 202);

    assert_eq!(read_to_close(&mut slow), "", "no answer to half a header");
    assert_contains(&read_to_close(&mut trickle), "HTTP/1.1 408");
    assert_contains(&read_to_close(&mut idle), "HTTP/1.1 200");
    // On a new connection: the harness client's pooled one went idle past the timeout too, and
    // the daemon may be closing it just as the client reuses it.
    let mut fresh = connect(&daemon);
    fresh
        .write_all(b"POST /webhook/in HTTP/1.1\r\nhost: x\r\nconnection: close\r\ncontent-type: application/json\r\ncontent-length: 7\r\n\r\n{\"n\":2}")
        .unwrap();
    assert_contains(&read_to_close(&mut fresh), "HTTP/1.1 202");
    all_delivered(&daemon);
}

#[test]
fn connections_beyond_the_cap_get_503_and_the_admitted_ones_are_served() {
    use std::io::Write;
    // A long idle timeout: the harness's pooled connection must outlive a slow run, or the
    // client would open a new one, which the full cap refuses.
    let daemon = guarded_daemon(
        "bad_input_connection_cap",
        &["--max-connections", "8", "--header-timeout", "60s"],
    );
    // The harness's client keeps one connection; seven more fill the cap.
    assert_eq!(daemon.post("in", &json!({"n": 1})).status, 202);
    let mut held: Vec<std::net::TcpStream> = (0..7).map(|_| connect(&daemon)).collect();
    // The admitted connections are not starved: each can still make a request.
    held[0]
        .write_all(b"GET /api/status HTTP/1.1\r\nhost: x\r\n\r\n")
        .unwrap();
    let mut answer = [0u8; 12];
    std::io::Read::read_exact(&mut held[0], &mut answer).unwrap();
    assert_eq!(&answer, b"HTTP/1.1 200");
    let mut extra = connect(&daemon);
    extra
        .write_all(b"GET /api/status HTTP/1.1\r\nhost: x\r\n\r\n")
        .unwrap();
    let refused = read_to_close(&mut extra);
    assert_contains(&refused, "HTTP/1.1 503");
    assert_contains(&refused, "retry-after: 1");
    // The admitted connections go on working, for webhooks too. (On one of the held ones: the
    // harness's pooled client may open a new connection on a busy machine, which the full cap
    // would refuse.)
    held[1]
        .write_all(b"POST /webhook/in HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: 7\r\n\r\n{\"n\":2}")
        .unwrap();
    std::io::Read::read_exact(&mut held[1], &mut answer).unwrap();
    assert_eq!(&answer, b"HTTP/1.1 202");
    held.clear();
    // Room again once they are gone.
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let mut probe = connect(&daemon);
        probe
            .write_all(b"GET /api/status HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
            .unwrap();
        if read_to_close(&mut probe).starts_with("HTTP/1.1 200") {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no room after the connections closed"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    all_delivered(&daemon);
}
