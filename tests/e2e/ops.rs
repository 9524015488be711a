//! Running it like the tools users already run: health probes, systemd notifications, JSON logs,
//! the version with its plugin ABI, and suggestions for typos.

use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::time::{Duration, Instant};

use crate::harness::*;

/// A module named `name` with webhook source `in` → `agent::noop` actor `sink`.
fn module(dir: &Path, name: &str, actor_ref: &str) {
    let project = project_yaml(name, &["agent"], "connectors: [connectors/c.yaml]\n");
    let routes = format!(
        "routes:\n  - name: r\n    when: {{source: in, events: [resource.changed]}}\n    then: {{actor: {actor_ref}}}\n"
    );
    write_files(
        dir,
        &[
            ("orgloop.yaml", &project),
            (
                "connectors/c.yaml",
                "sources: [{id: in, connector: webhook}]\nactors: [{id: sink, connector: agent::noop}]\n",
            ),
            ("routes/r.yaml", &routes),
        ],
    );
}

#[test]
fn status_summarises_the_daemon_and_completions_cover_every_shell() {
    let dir = test_dir("ops_status");
    module(&dir.join("m"), "m", "sink");
    let daemon = Daemon::start(&[&dir.join("m")], &base_env(&dir.join("home")));
    let text = daemon.cli_ok(&["status"]);
    assert_contains(&text, "durability disk");
    assert_contains(&text, "generation 1");
    assert_contains(&text, "dead letters: 0");
    let (code, json) = daemon.cli_json(&["status", "--json"]);
    assert_eq!(code, 0);
    assert_eq!(json["modules"][0]["name"], "m");
    for shell in ["bash", "zsh", "fish"] {
        let out = orgloop(&["completions", shell], &base_env(&dir.join("home")));
        let script = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && script.contains("dlq"),
            "{shell}: {script}"
        );
    }
}

/// The value of the sample `name{labels}` in a Prometheus text exposition.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
}

#[test]
fn metrics_count_what_happened() {
    let dir = test_dir("ops_metrics");
    module(&dir.join("m"), "m", "sink");
    let daemon = Daemon::start(&[&dir.join("m")], &base_env(&dir.join("home")));
    for n in 0..5 {
        assert_eq!(
            daemon.post("in", &serde_json::json!({ "n": n })).status,
            202
        );
    }
    assert_eq!(daemon.post("nope", &serde_json::json!({})).status, 404);
    daemon.wait_status("m", "the events to be delivered", |s| {
        s["queue"]["entries"] == 0
    });
    let reply = request("GET", &daemon.url("/metrics"), &[], b"");
    assert_eq!(reply.status, 200);
    assert!(reply.headers["content-type"].starts_with("text/plain; version=0.0.4"));
    let text = reply.text;
    let value =
        |series: &str| sample(&text, series).unwrap_or_else(|| panic!("no {series} in:\n{text}"));
    assert_eq!(
        value(r#"orgloop_webhooks_total{source="in",code="202"}"#),
        5.0
    );
    assert_eq!(
        value(r#"orgloop_webhooks_total{source="(unknown)",code="404"}"#),
        1.0
    );
    assert_eq!(
        value(r#"orgloop_route_matches_total{module="m",route="r"}"#),
        5.0
    );
    assert_eq!(
        value(r#"orgloop_deliveries_total{module="m",actor="sink",outcome="delivered"}"#),
        5.0
    );
    assert_eq!(
        value(r#"orgloop_delivery_seconds_count{module="m",actor="sink"}"#),
        5.0
    );
    assert_eq!(value(r#"orgloop_queue_entries{module="m"}"#), 0.0);
    assert_eq!(value(r#"orgloop_generation{module="m"}"#), 1.0);
}

#[test]
fn health_and_readiness_probes_follow_the_daemon() {
    let dir = test_dir("ops_probes");
    module(&dir.join("m"), "m", "sink");
    let daemon = Daemon::start(&[&dir.join("m")], &base_env(&dir.join("home")));
    assert_eq!(daemon.get("/healthz").status, 200);
    assert_eq!(daemon.get("/readyz").json["status"], "ready");

    daemon.cli_ok(&["module", "unload", "m"]);
    let not_ready = daemon.get("/readyz");
    assert_eq!(not_ready.status, 503);
    assert_eq!(not_ready.json["reasons"][0], "no module is loaded");
    assert_eq!(daemon.get("/healthz").status, 200, "it still serves");

    daemon.cli_ok(&["module", "load", dir.join("m").to_str().unwrap()]);
    assert_eq!(daemon.get("/readyz").status, 200);
}

/// The next message on `socket` that is not a watchdog beat.
fn next_state(socket: &UnixDatagram, watchdog_beats: &mut usize) -> String {
    let mut buf = [0u8; 4096];
    loop {
        let n = socket
            .recv(&mut buf)
            .expect("a notification within the wait");
        let message = String::from_utf8_lossy(&buf[..n]).into_owned();
        if message == "WATCHDOG=1\n" {
            *watchdog_beats += 1;
            continue;
        }
        return message;
    }
}

#[test]
fn a_service_manager_hears_ready_reloading_and_stopping_in_order() {
    let dir = test_dir("ops_sd_notify");
    module(&dir.join("m"), "m", "sink");
    let path = dir.join("notify.sock");
    let socket = UnixDatagram::bind(&path).unwrap();
    socket.set_read_timeout(Some(WAIT)).unwrap();
    let mut env = base_env(&dir.join("home"));
    env.push(("NOTIFY_SOCKET".into(), path.display().to_string()));
    env.push(("WATCHDOG_USEC".into(), "200000".into()));
    let daemon = Daemon::start(&[&dir.join("m")], &env);
    let mut beats = 0;

    let ready = next_state(&socket, &mut beats);
    assert!(
        ready.starts_with("READY=1\nSTATUS=listening on 127.0.0.1:"),
        "{ready:?}"
    );

    // SIGHUP: RELOADING=1 with the monotonic clock, then READY=1 again.
    // SAFETY: plain kill(2) on the daemon's pid.
    unsafe { libc::kill(daemon.pid() as i32, libc::SIGHUP) };
    let reloading = next_state(&socket, &mut beats);
    assert!(
        reloading.starts_with("RELOADING=1\nMONOTONIC_USEC="),
        "{reloading:?}"
    );
    assert!(next_state(&socket, &mut beats).starts_with("READY=1"));

    // The watchdog beats at half of WATCHDOG_USEC.
    let deadline = Instant::now() + WAIT;
    while beats == 0 && Instant::now() < deadline {
        let mut buf = [0u8; 64];
        socket
            .set_read_timeout(Some(Duration::from_millis(500)))
            .unwrap();
        if let Ok(n) = socket.recv(&mut buf) {
            beats += usize::from(&buf[..n] == b"WATCHDOG=1\n");
        }
    }
    assert!(beats > 0, "no watchdog beat");
    socket.set_read_timeout(Some(WAIT)).unwrap();

    assert_eq!(daemon.stop(), 0);
    assert_eq!(next_state(&socket, &mut beats), "STOPPING=1\n");
}

#[test]
fn the_daemon_logs_json_when_asked() {
    let dir = test_dir("ops_json_log");
    module(&dir.join("m"), "m", "sink");
    let mut daemon = Daemon::try_start_with(
        &[&dir.join("m")],
        &["--log-format", "json"],
        &base_env(&dir.join("home")),
    )
    .unwrap_or_else(|log| panic!("daemon did not start:\n{log}"));
    let line = daemon.wait_log("module loaded");
    let entry: serde_json::Value =
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line}"));
    assert_eq!(entry["fields"]["module"], "m");
    assert_eq!(entry["level"], "INFO");
}

#[test]
fn version_names_the_plugin_abi_and_typos_get_suggestions() {
    let dir = test_dir("ops_version_typos");
    let out = orgloop(&["--version"], &base_env(&dir.join("home")));
    assert_contains(
        &String::from_utf8_lossy(&out.stdout),
        &format!("(plugin ABI {}", orgloop_plugin_sdk::abi::ABI_VERSION),
    );
    // A transposition (`snik` for `sink`) is one typo away.
    module(&dir.join("m"), "m", "snik");
    let out = orgloop(
        &["validate", dir.join("m").to_str().unwrap()],
        &base_env(&dir.join("home")),
    );
    assert_eq!(out.status.code(), Some(2));
    assert_contains(
        &String::from_utf8_lossy(&out.stdout),
        "did you mean \"sink\"?",
    );
}

#[test]
fn a_scaffolded_plugin_builds_passes_its_test_and_loads() {
    let dir = test_dir("ops_plugin_new");
    let env = base_env(&dir.join("home"));
    let sdk = workspace().join("plugin-sdk");
    let out = orgloop(
        &[
            "plugin",
            "new",
            "ops-greet",
            "--kind",
            "transform",
            "--sdk-path",
            sdk.to_str().unwrap(),
            "--dir",
            dir.to_str().unwrap(),
        ],
        &env,
    );
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let crate_dir = dir.join("ops-greet");
    for file in ["Cargo.toml", "src/lib.rs", "README.md", "module.yaml"] {
        assert!(crate_dir.join(file).is_file(), "{file} was not written");
    }
    // The workspace's lock file and target directory: only the new crate is compiled.
    std::fs::copy(workspace().join("Cargo.lock"), crate_dir.join("Cargo.lock")).unwrap();
    let cargo = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO"))
            .args(args)
            .arg("--manifest-path")
            .arg(crate_dir.join("Cargo.toml"))
            .env("CARGO_TARGET_DIR", target_dir())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "cargo {args:?}:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert_contains(&cargo(&["test"]), "test result: ok. 1 passed");
    cargo(&["build", "--lib"]);

    // The snippet's YAML, pointed at this build, loads in a module.
    let m = dir.join("m");
    let project = format!(
        "apiVersion: orgloop/v1alpha1\nkind: Project\nmetadata: {{name: m}}\nplugins:\n  - {{name: ops-greet, path: {}}}\ntransforms: [transforms/t.yaml]\n",
        target_dir().join("debug/libops_greet.so").display()
    );
    let snippet = std::fs::read_to_string(crate_dir.join("module.yaml")).unwrap();
    let transforms = &snippet[snippet.find("transforms:").unwrap()..];
    write_files(
        &m,
        &[
            ("orgloop.yaml", &project),
            ("transforms/t.yaml", transforms),
        ],
    );
    let out = orgloop(&["validate", m.to_str().unwrap()], &env);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}
