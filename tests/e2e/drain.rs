//! Draining: sessions in flight on the old generation finish on the old code, its library unloads
//! (verified) only afterwards; the drain timeout and `--force` cancel what still runs, and the
//! interrupted delivery runs again on the new generation.

use serde_json::json;

use crate::harness::*;
use crate::swap::*;

fn task() -> serde_json::Value {
    json!({"kind": "task"})
}

/// The `actor.stopped` events the sink received, as (agent build version, outcome).
fn stopped(sink: &Sink) -> Vec<(String, String)> {
    sink.received()
        .iter()
        .filter(|r| r.body["config"]["tag"] == "done")
        .map(|r| {
            let p = &r.body["event"]["payload"];
            (
                p["session"]["adapter_version"].as_str().unwrap().to_owned(),
                p["lifecycle"]["outcome"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

/// Starts module `m` whose sessions last `session`, starts one session on v1 and installs the v2
/// build of the agent plugin (not yet reloaded).
fn session_running_on_v1(test: &str, session: &str) -> (Sink, Daemon) {
    let (_, v2) = builds("agent");
    let dir = test_dir(test);
    let module = dir.join("m");
    let sink = Sink::start();
    swap_module(&module, "m", &sink, session);
    // A short shutdown: the 60 s sessions of these tests are still running when the test ends.
    let mut daemon = Daemon::try_start_with(
        &[&module],
        &["--shutdown-timeout", "1s"],
        &base_env(&dir.join("home")),
    )
    .unwrap_or_else(|log| panic!("daemon did not start:\n{log}"));
    assert_eq!(daemon.post("m-in", &task()).status, 202);
    daemon.wait_log("session ses_");
    install(&module, "agent", &v2);
    (sink, daemon)
}

#[test]
fn a_session_in_flight_finishes_on_v1_and_v1_unloads_only_afterwards() {
    let (sink, daemon) = session_running_on_v1("drain_finishes_on_v1", "2s");
    let (code, report) = daemon.cli_json(&["module", "reload", "m", "--json"]);
    assert_eq!(code, 0, "{report:#}");
    assert_eq!(report["draining"]["generation"], 1);
    assert_eq!(
        report["draining"]["inflight"], 1,
        "the session runs on in generation 1"
    );

    // While it runs, the old library is still there, and new sessions start on v2.
    let status = daemon.module_status("m");
    assert_eq!(status["draining"][0]["generation"], 1);
    assert_eq!(status["draining"][0]["inflight"], 1);
    assert!(
        status["last_drain"].is_null(),
        "nothing unloaded yet: {status:#}"
    );
    assert_eq!(daemon.post("m-in", &task()).status, 202);

    let drained = daemon.wait_status("m", "generation 1 to drain", |s| {
        s["last_drain"]["generation"] == 1
    });
    let drain = &drained["last_drain"];
    assert_eq!(drain["cancelled"], 0);
    assert!(
        drain["duration_ms"].as_u64().unwrap() >= 1000,
        "unloaded only after the session ended: {drain:#}"
    );
    assert_eq!(drain["libraries"][0]["plugin"], "agent");
    assert_eq!(drain["libraries"][0]["build"]["version"], "0.1.0");
    assert_eq!(drain["libraries"][0]["result"]["state"], retired());

    sink.wait_for(2);
    let mut sessions = stopped(&sink);
    sessions.sort();
    assert_eq!(
        sessions,
        [
            ("0.1.0".to_owned(), "success".to_owned()),
            ("0.2.0".to_owned(), "success".to_owned())
        ]
    );
}

#[test]
fn the_drain_timeout_cancels_what_still_runs_and_reports_it() {
    let (sink, daemon) = session_running_on_v1("drain_timeout", "60s");
    let (code, report) = daemon.cli_json(&[
        "module",
        "reload",
        "m",
        "--drain-timeout",
        "300ms",
        "--wait",
        "--json",
    ]);
    assert_eq!(code, 0, "{report:#}");
    assert_eq!(report["draining"]["drain_timeout_ms"], 300);
    let drain = &report["drain"];
    assert_eq!(
        (drain["cancelled"].as_u64(), drain["forced"].as_bool()),
        (Some(1), Some(false)),
        "{drain:#}"
    );
    assert_eq!(drain["libraries"][0]["result"]["state"], retired());
    // The cancelled session still reported its end, from v1, through its cancellation signal.
    sink.wait_for(1);
    assert_eq!(
        stopped(&sink),
        [("0.1.0".to_owned(), "cancelled".to_owned())]
    );
    // And its delivery was interrupted, not lost: it runs again, on generation 2.
    let rerun = daemon.wait_status("m", "the session to run again on v2", |s| {
        s["generation"]["number"] == 2 && s["generation"]["inflight"] == 1
    });
    assert_eq!(rerun["actors"]["worker"]["inflight"], 1, "{rerun:#}");
    daemon.wait_log_count("started (route \"work\"", 2);
}

#[test]
fn force_cancels_at_once() {
    let (_sink, daemon) = session_running_on_v1("drain_force", "60s");
    let out = daemon.cli(&["module", "reload", "m", "--force", "--wait"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert_contains(&text, "1 delivery cancelled (forced)");
    assert_contains(&text, "plugin agent 0.1.0 (");
    assert_contains(&text, retired_text());
    let drain = daemon.module_status("m")["last_drain"].clone();
    assert!(drain["duration_ms"].as_u64().unwrap() < 5000, "{drain:#}");
}
