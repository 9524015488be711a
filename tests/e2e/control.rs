//! The control API's contract: auth, typed errors, load and unload; `orgloop start` against a
//! running daemon; SIGHUP.

use serde_json::json;

use crate::harness::*;
use crate::swap::*;

#[test]
fn control_requests_need_the_token_and_get_typed_errors() {
    let dir = test_dir("control_errors");
    let sink = Sink::start();
    swap_module(&dir.join("a"), "a", &sink, "1s");
    let daemon = Daemon::start(&[&dir.join("a")], &base_env(&dir.join("home")));

    assert_eq!(
        request("GET", &daemon.url("/control/modules"), &[], b"").status,
        401
    );
    assert_eq!(
        request(
            "GET",
            &daemon.url("/control/modules"),
            &[("authorization", "Bearer nope")],
            b""
        )
        .status,
        401
    );
    assert_eq!(
        daemon.control("GET", "/control/modules", None).json[0]["name"],
        "a"
    );
    assert_eq!(
        daemon.control("GET", "/control/modules/zzz", None).status,
        404
    );
    assert_eq!(
        daemon
            .control("POST", "/control/modules/zzz/reload", Some(&json!({})))
            .status,
        404
    );
    let conflict = daemon.control(
        "POST",
        "/control/modules",
        Some(&json!({"path": dir.join("a")})),
    );
    assert_eq!(conflict.status, 409, "{:?}", conflict.json);

    // Another module reusing the source id "a-in" conflicts too.
    swap_module(&dir.join("b"), "b", &sink, "1s");
    let project_b = std::fs::read_to_string(dir.join("b/connectors/c.yaml"))
        .unwrap()
        .replace("b-in", "a-in");
    write_files(
        &dir.join("b"),
        &[
            ("connectors/c.yaml", &project_b),
            ("routes/r.yaml", "routes: []\n"),
        ],
    );
    let dup = daemon.control(
        "POST",
        "/control/modules",
        Some(&json!({"path": dir.join("b")})),
    );
    assert_eq!(dup.status, 409);
    assert_contains(
        dup.json["error"].as_str().unwrap(),
        "source id \"a-in\" is already used by module \"a\"",
    );

    let invalid = daemon.control(
        "POST",
        "/control/modules",
        Some(&json!({"path": dir.join("c")})),
    );
    assert_eq!(
        invalid.status, 422,
        "a missing directory is an invalid module: {:?}",
        invalid.json
    );
    assert_eq!(
        daemon
            .control("POST", "/control/modules", Some(&json!({"pth": 1})))
            .status,
        400
    );
}

#[test]
fn modules_load_and_unload_at_run_time_without_touching_the_others() {
    let dir = test_dir("control_load_unload");
    let sink = Sink::start();
    swap_module(&dir.join("a"), "a", &sink, "1s");
    swap_module(&dir.join("b"), "b", &sink, "1s");
    let daemon = Daemon::start(&[&dir.join("a")], &base_env(&dir.join("home")));

    let out = daemon.cli_ok(&["module", "load", dir.join("b").to_str().unwrap()]);
    assert_contains(&out, "✓ module b loaded (generation 1)");
    assert_eq!(daemon.post("b-in", &note(1)).status, 202);
    assert_eq!(sink.wait_for(1)[0].path, "/b");

    let (code, list) = daemon.cli_json(&["module", "list", "--json"]);
    assert_eq!(code, 0);
    assert_eq!(
        list.as_array()
            .unwrap()
            .iter()
            .map(|m| m["name"].as_str().unwrap())
            .collect::<Vec<_>>(),
        ["a", "b"]
    );

    let out = daemon.cli(&["module", "unload", "b"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert_contains(&text, "✓ module b unloaded");
    assert_contains(&text, "plugin http 0.1.0 (");
    assert_eq!(
        daemon.post("b-in", &note(2)).status,
        404,
        "b's source is gone"
    );
    assert_eq!(daemon.post("a-in", &note(3)).status, 202, "a is untouched");
    assert_eq!(sink.wait_for(2)[1].path, "/a");
    // The libraries a still uses stay (shared builds are loaded once).
    assert!(!text.contains("PINNED"), "{text}");
}

#[test]
fn start_against_a_running_daemon_registers_the_modules_and_sighup_reloads() {
    let dir = test_dir("control_start_twice");
    let sink = Sink::start();
    swap_module(&dir.join("a"), "a", &sink, "1s");
    swap_module(&dir.join("b"), "b", &sink, "1s");
    let mut daemon = Daemon::start(&[&dir.join("a")], &base_env(&dir.join("home")));
    let port = daemon.port.to_string();
    let out = orgloop(
        &["start", dir.join("b").to_str().unwrap(), "--port", &port],
        &base_env(&dir.join("home")),
    );
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_contains(&String::from_utf8_lossy(&out.stdout), "✓ module b loaded");
    assert_eq!(daemon.post("b-in", &note(1)).status, 202);

    let routes = std::fs::read_to_string(dir.join("a/routes/r.yaml"))
        .unwrap()
        .replace("tag: note", "tag: hup");
    write_files(&dir.join("a"), &[("routes/r.yaml", &routes)]);
    // SAFETY: kill(2) on the daemon child.
    unsafe { libc::kill(daemon.pid() as i32, libc::SIGHUP) };
    daemon.wait_status("a", "the SIGHUP reload", |s| s["generation"]["number"] == 2);
    daemon.wait_log("nothing changed"); // b, reloaded too
    assert_eq!(daemon.post("a-in", &note(2)).status, 202);
    let got = sink.wait_for(2);
    assert!(
        got.iter()
            .any(|r| r.path == "/a" && r.body["config"]["tag"] == "hup"),
        "{got:#?}"
    );
}
