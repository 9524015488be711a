//! Reloads that protect themselves: a canary share chosen by event id, an automatic rollback
//! when the new generation does worse, promotion when it does not, and `module rollback`.

use std::collections::HashSet;
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::harness::*;
use crate::swap::{builds, install};

/// Module `m`: webhook source `m-in` → `http::webhook` posting to `url`; retries are quick, and
/// a comparison needs 10 samples.
fn module(dir: &Path, url: &str) {
    install(dir, "http", &plugin("http"));
    let project = "apiVersion: orgloop/v1alpha1\nkind: Project\nmetadata:\n  name: m\ndefaults:\n  retry: {initial: 100ms, max: 300ms}\n  reload: {min_samples: 10}\nplugins:\n  - {name: http, path: plugins/libhttp.so}\nconnectors: [connectors/c.yaml]\n";
    write_files(
        dir,
        &[
            ("orgloop.yaml", project),
            ("routes/r.yaml", "routes:\n  - name: deliver\n    when: {source: m-in, events: [resource.changed]}\n    then: {actor: out}\n"),
        ],
    );
    point_at(dir, url);
}

/// Points the actor at `url` (a new generation at the next reload).
fn point_at(dir: &Path, url: &str) {
    write_files(
        dir,
        &[(
            "connectors/c.yaml",
            &format!("sources: [{{id: m-in, connector: webhook}}]\nactors: [{{id: out, connector: http::webhook, config: {{url: \"{url}\"}}}}]\n"),
        )],
    );
}

fn post_notes(daemon: &Daemon, ns: std::ops::Range<u64>) {
    for n in ns {
        assert_eq!(
            daemon.post("m-in", &json!({"kind": "note", "n": n})).status,
            202
        );
    }
}

/// `module reload m --auto-rollback --bake <bake>`, which must be taken; its report.
fn reload_with_auto_rollback(daemon: &Daemon, bake: &str) -> Value {
    let args = [
        "module",
        "reload",
        "m",
        "--auto-rollback",
        "--bake",
        bake,
        "--json",
    ];
    let (code, report) = daemon.cli_json(&args);
    assert_eq!(code, 0, "{report:#}");
    report
}

fn rollout(daemon: &Daemon) -> Value {
    daemon.module_status("m")["rollout"].clone()
}

#[test]
fn a_failing_new_generation_is_rolled_back_and_every_event_arrives_through_the_old_one() {
    let dir = test_dir("rollout_back");
    let (good, bad) = (Sink::start(), Sink::start());
    bad.respond_with(500);
    let m = dir.join("m");
    module(&m, &good.url("/v1"));
    let daemon = Daemon::start(&[&m], &base_env(&dir.join("home")));
    post_notes(&daemon, 0..10);
    good.wait_delivered(&(0..10).collect::<Vec<_>>());

    point_at(&m, &bad.url("/v2"));
    let report = reload_with_auto_rollback(&daemon, "30s");
    assert_eq!(report["rollout"]["phase"], "baking", "{report:#}");
    let started = Instant::now();
    post_notes(&daemon, 10..40);

    let ended = daemon.wait_status("m", "the rollback", |s| {
        s["rollout"]["phase"] == "rolled_back"
    });
    let r = &ended["rollout"];
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "rolled back within the bake window"
    );
    assert_contains(
        r["reason"].as_str().unwrap(),
        "delivery failure rate 100.0%",
    );
    assert_eq!(r["comparison"]["new"]["failure_rate"], 1.0, "{r:#}");
    assert_eq!(r["comparison"]["previous"]["failure_rate"], 0.0, "{r:#}");
    assert_eq!(ended["generation"]["number"], 1, "{ended:#}");
    assert!(!bad.received().is_empty(), "v2 did get traffic");

    // Every accepted event arrives, once, through v1: those v2 failed were retried there.
    let counts = good.wait_delivered(&(0..40).collect::<Vec<_>>());
    assert!(counts.values().all(|&c| c == 1), "{counts:?}");
    let text = daemon.cli_ok(&["module", "status", "m"]);
    assert_contains(&text, "ROLLED BACK to generation 1");

    // The next reload is numbered above the rolled-back generation.
    point_at(&m, &good.url("/v3"));
    let (code, report) = daemon.cli_json(&["module", "reload", "m", "--json"]);
    assert_eq!(code, 0, "{report:#}");
    assert_eq!(report["to_generation"], 3, "{report:#}");
}

#[test]
fn a_canary_takes_its_share_by_event_id_and_retries_stay_with_it() {
    let dir = test_dir("rollout_canary");
    let (v1, v2) = (Sink::start(), Sink::start());
    let m = dir.join("m");
    module(&m, &v1.url("/v1"));
    let daemon = Daemon::start(&[&m], &base_env(&dir.join("home")));

    // v2's target fails at first: its events are retried, and must come back to v2.
    v2.respond_with(503);
    point_at(&m, &v2.url("/v2"));
    let (code, report) = daemon.cli_json(&[
        "module",
        "reload",
        "m",
        "--canary",
        "20%",
        "--canary-for",
        "10m",
        "--json",
    ]);
    assert_eq!(code, 0, "{report:#}");
    assert_eq!(report["rollout"]["phase"], "canary");
    assert_eq!(report["rollout"]["share_percent"], 20.0);
    let total = 2000u64;
    let senders: Vec<_> = (0..4)
        .map(|t| {
            let url = daemon.url("/webhook/m-in");
            std::thread::spawn(move || {
                for n in (t..total).step_by(4) {
                    let body = json!({"kind": "note", "n": n}).to_string();
                    let r = request(
                        "POST",
                        &url,
                        &[("content-type", "application/json")],
                        body.as_bytes(),
                    );
                    assert_eq!(r.status, 202);
                }
            })
        })
        .collect();
    for s in senders {
        s.join().unwrap();
    }
    let failed_once: HashSet<u64> = payload_ns(&v2.received()).into_iter().collect();
    assert!(!failed_once.is_empty());
    v2.respond_with(200);

    let all: Vec<u64> = (0..total).collect();
    let deadline = Instant::now() + WAIT;
    while v1.delivered_ns().len() + v2.delivered_ns().len() < total as usize {
        assert!(Instant::now() < deadline, "not every event arrived");
        std::thread::sleep(Duration::from_millis(50));
    }
    let (at_v1, at_v2): (HashSet<u64>, HashSet<u64>) = (
        v1.received()
            .iter()
            .flat_map(|r| r.body["event"]["payload"]["n"].as_u64())
            .collect(),
        v2.received()
            .iter()
            .flat_map(|r| r.body["event"]["payload"]["n"].as_u64())
            .collect(),
    );
    assert!(
        at_v1.is_disjoint(&at_v2),
        "an event went through both generations"
    );
    assert!(failed_once.is_subset(&at_v2));
    assert_eq!(
        at_v1.union(&at_v2).count(),
        all.len(),
        "every event arrived"
    );
    let share = v2.delivered_ns().len() as f64 / total as f64;
    assert!(
        (0.16..=0.24).contains(&share),
        "v2 got {share:.3} of the events"
    );
    assert_eq!(rollout(&daemon)["phase"], "canary");
}

#[test]
fn a_healthy_new_generation_is_promoted_and_the_old_build_unloads() {
    let (_, v2) = builds("http");
    let dir = test_dir("rollout_promote");
    let sink = Sink::start();
    let m = dir.join("m");
    module(&m, &sink.url("/v1"));
    let daemon = Daemon::start(&[&m], &base_env(&dir.join("home")));
    post_notes(&daemon, 0..5);

    install(&m, "http", &v2);
    point_at(&m, &sink.url("/v2"));
    let (code, report) = daemon.cli_json(&[
        "module",
        "reload",
        "m",
        "--canary",
        "50%",
        "--canary-for",
        "1s",
        "--auto-rollback",
        "--bake",
        "1s",
        "--wait",
        "--json",
    ]);
    assert_eq!(code, 0, "{report:#}");
    assert_eq!(report["rollout"]["phase"], "promoted", "{report:#}");
    assert_contains(
        report["rollout"]["reason"].as_str().unwrap(),
        "did no worse",
    );
    // The previous generation drained, and its http build left.
    assert_eq!(report["drain"]["generation"], 1, "{report:#}");
    let libraries = report["drain"]["libraries"].as_array().unwrap();
    assert_eq!(libraries.len(), 1, "{report:#}");
    assert_eq!(libraries[0]["build"]["version"], "0.1.0");
    assert_eq!(libraries[0]["result"]["state"], retired());
    post_notes(&daemon, 5..10);
    let got = sink.wait_delivered(&(0..10).collect::<Vec<_>>());
    assert!(got.values().all(|&c| c == 1));
    let last: Vec<String> = sink
        .received()
        .iter()
        .filter(|r| r.body["event"]["payload"]["n"].as_u64() >= Some(5))
        .map(|r| r.path.clone())
        .collect();
    assert!(last.iter().all(|p| p == "/v2"), "{last:?}");
}

#[test]
fn a_bake_compares_with_the_previous_generation_s_own_traffic_not_with_none() {
    let dir = test_dir("rollout_flaky_target");
    // One delivery in four fails, whichever generation makes it: a target that was flaky
    // before the reload, and is no worse after it.
    let sink = Sink::start();
    sink.fail_every(4);
    let m = dir.join("m");
    module(&m, &sink.url("/v1"));
    let daemon = Daemon::start(&[&m], &base_env(&dir.join("home")));
    post_notes(&daemon, 0..30);
    sink.wait_delivered(&(0..30).collect::<Vec<_>>());

    // After the full swap the previous generation gets no traffic; its figures from before
    // the swap are the ones to beat.
    point_at(&m, &sink.url("/v2"));
    let report = reload_with_auto_rollback(&daemon, "2s");
    assert_eq!(report["rollout"]["phase"], "baking", "{report:#}");
    post_notes(&daemon, 30..60);
    let ended = daemon.wait_status("m", "the rollout to end", |s| {
        matches!(
            s["rollout"]["phase"].as_str(),
            Some("promoted" | "rolled_back")
        )
    });
    let r = &ended["rollout"];
    assert_eq!(r["phase"], "promoted", "{r:#}");
    let (previous, new) = (&r["comparison"]["previous"], &r["comparison"]["new"]);
    assert!(previous["attempts"].as_u64().unwrap() >= 30, "{r:#}");
    assert!(previous["failure_rate"].as_f64().unwrap() > 0.1, "{r:#}");
    assert!(new["failure_rate"].as_f64().unwrap() > 0.1, "{r:#}");
    let got = sink.wait_delivered(&(0..60).collect::<Vec<_>>());
    assert!(got.values().all(|&c| c == 1), "{got:?}");
}

#[test]
fn rollback_by_hand_during_the_bake_and_a_reload_during_a_canary_ends_it() {
    let dir = test_dir("rollout_by_hand");
    let sink = Sink::start();
    let m = dir.join("m");
    module(&m, &sink.url("/v1"));
    let daemon = Daemon::start(&[&m], &base_env(&dir.join("home")));

    // Nothing to roll back yet.
    let out = daemon.cli(&["module", "rollback", "m"]);
    assert_ne!(out.status.code(), Some(0));
    assert_contains(
        &String::from_utf8_lossy(&out.stderr),
        "no rollout is in progress",
    );

    point_at(&m, &sink.url("/v2"));
    let (code, _) = daemon.cli_json(&[
        "module",
        "reload",
        "m",
        "--auto-rollback",
        "--bake",
        "5m",
        "--json",
    ]);
    assert_eq!(code, 0);
    assert_eq!(daemon.module_status("m")["generation"]["number"], 2);
    let (code, back) = daemon.cli_json(&["module", "rollback", "m", "--json"]);
    assert_eq!(code, 0, "{back:#}");
    assert_eq!(back["rollout"]["phase"], "rolled_back");
    assert_eq!(back["rollout"]["reason"], "rolled back by hand");
    assert_eq!(daemon.module_status("m")["generation"]["number"], 1);
    post_notes(&daemon, 0..1);
    assert_eq!(sink.wait_for(1)[0].path, "/v1");

    // A canary, then another reload: the canary ends first (promoted: nothing did worse).
    let (code, _) = daemon.cli_json(&["module", "reload", "m", "--canary", "50%", "--json"]);
    assert_eq!(code, 0);
    assert_eq!(rollout(&daemon)["phase"], "canary");
    point_at(&m, &sink.url("/v4"));
    let (code, report) = daemon.cli_json(&["module", "reload", "m", "--json"]);
    assert_eq!(code, 0, "{report:#}");
    assert_eq!(report["ended_rollout"]["phase"], "promoted", "{report:#}");
    assert_eq!(report["ended_rollout"]["new_generation"], 3);
    assert_eq!(report["from_generation"], 3);
    assert_eq!(report["to_generation"], 4);
    let s = daemon.module_status("m");
    assert_eq!(s["generation"]["number"], 4);
    assert_eq!(
        s["rollout"]["phase"], "promoted",
        "the last rollout's end stays visible"
    );
    post_notes(&daemon, 1..2);
    assert_eq!(sink.wait_for(2)[1].path, "/v4");
}

#[test]
fn defaults_reload_makes_a_rollout_the_modules_default_and_is_validated() {
    let dir = test_dir("rollout_defaults");
    let sink = Sink::start();
    let m = dir.join("m");
    module(&m, &sink.url("/v1"));
    let with_defaults = |reload: &str| {
        let project = std::fs::read_to_string(m.join("orgloop.yaml")).unwrap();
        let start = project.find("  reload:").unwrap();
        let end = start + project[start..].find('\n').unwrap();
        std::fs::write(
            m.join("orgloop.yaml"),
            format!("{}  reload: {reload}{}", &project[..start], &project[end..]),
        )
        .unwrap();
    };
    with_defaults("{canary: 0%}");
    let out = orgloop(
        &["validate", m.to_str().unwrap()],
        &base_env(&dir.join("home")),
    );
    assert_eq!(out.status.code(), Some(2));
    assert_contains(
        &String::from_utf8_lossy(&out.stdout),
        "must be more than 0% and at most 100%",
    );

    with_defaults("{canary: 25%, canary_for: 10m}");
    let daemon = Daemon::start(&[&m], &base_env(&dir.join("home")));
    point_at(&m, &sink.url("/v2"));
    let (code, report) = daemon.cli_json(&["module", "reload", "m", "--json"]);
    assert_eq!(code, 0, "{report:#}");
    assert_eq!(report["rollout"]["phase"], "canary");
    assert_eq!(report["rollout"]["share_percent"], 25.0);
}
