//! `isolation: process`: a plugin that aborts, segfaults, runs out of memory or gets stuck takes
//! down its own child process only. The daemon lives, other modules deliver, the child is
//! restarted and serves the next event; a crash loop opens the circuit and says why; a call past
//! its deadline gets its child killed and replaced instead of pinning a thread.

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::harness::*;

/// Module `name`: source `<name>-in` → transform `t` (`transform`, a `plugin::symbol` with its
/// config) → `http::webhook` posting to `sink` at `/<name>`. The transform's plugin runs in a
/// process of its own (`plugin_entry` gives its `plugins:` line); `http` runs in the daemon.
pub(crate) fn module(dir: &Path, name: &str, sink: &Sink, plugin_entry: &str, transform: &str) {
    let project = format!(
        "apiVersion: orgloop/v1alpha1\nkind: Project\nmetadata:\n  name: {name}\nplugins:\n  - {plugin_entry}\n  - {{name: http, path: \"{}\", isolation: in_process}}\nconnectors: [connectors/c.yaml]\ntransforms: [transforms/t.yaml]\n",
        plugin("http").display()
    );
    let connectors = format!(
        "sources: [{{id: {name}-in, connector: webhook}}]\nactors: [{{id: out, connector: http::webhook, config: {{url: \"{}\"}}}}]\n",
        sink.url(&format!("/{name}"))
    );
    let transforms = format!(
        "transforms:\n  - name: t\n    type: plugin\n    on_error: drop\n    {transform}\n"
    );
    let routes = format!(
        "routes:\n  - name: r\n    when: {{source: {name}-in, events: [resource.changed]}}\n    transforms: [{{ref: t}}]\n    then: {{actor: out}}\n"
    );
    write_files(
        dir,
        &[
            ("orgloop.yaml", &project),
            ("connectors/c.yaml", &connectors),
            ("transforms/t.yaml", &transforms),
            ("routes/r.yaml", &routes),
        ],
    );
}

/// A module whose transform is the fixture's `crash`, in a process limited to 256 MiB.
fn crashy_module(dir: &Path, name: &str, sink: &Sink) {
    let entry = format!(
        "{{name: crashy, path: \"{}\", isolation: process, max_memory: 256MiB}}",
        plugin("fixture_crashy").display()
    );
    module(dir, name, sink, &entry, "symbol: crashy::crash");
}

/// The status of plugin `plugin`'s process in module `m`.
fn process(status: &Value, plugin: &str) -> Value {
    status["generation"]["plugins"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == plugin)
        .unwrap_or_else(|| panic!("no plugin {plugin}: {status:#}"))["process"]
        .clone()
}

/// Posts a `note` numbered `n` to `source` and waits until the sink has it.
fn delivers(daemon: &Daemon, sink: &Sink, source: &str, n: u64) {
    assert_eq!(
        daemon.post(source, &json!({"kind": "note", "n": n})).status,
        202
    );
    sink.wait_delivered(&[n]);
}

#[test]
fn a_crashing_plugin_takes_down_only_its_own_process() {
    let dir = test_dir("crashes_contained");
    let sink = Sink::start();
    crashy_module(&dir.join("a"), "a", &sink);
    crashy_module(&dir.join("b"), "b", &sink);
    let mut daemon = Daemon::start(
        &[&dir.join("a"), &dir.join("b")],
        &base_env(&dir.join("home")),
    );
    let first_pid = process(&daemon.module_status("a"), "crashy")["pid"].clone();
    assert!(first_pid.is_u64(), "{first_pid}");

    let crashes = [("abort", 6), ("segfault", 11), ("allocate", 6)];
    for (i, (kind, signal)) in crashes.into_iter().enumerate() {
        let n = i as u64 * 10;
        assert_eq!(
            daemon.post("a-in", &json!({"kind": kind, "n": n})).status,
            202
        );
        let after = daemon.wait_status("a", &format!("a's plugin to restart after {kind}"), |s| {
            let p = process(s, "crashy");
            p["restarts"] == i as u64 + 1 && p["state"] == "up"
        });
        let exit = &process(&after, "crashy")["last_exit"];
        assert_eq!(exit["signal"], signal, "{kind}: {exit:#}");
        if kind == "allocate" {
            assert_contains(exit["reason"].as_str().unwrap_or_default(), "max_memory");
            assert_contains(&exit["stderr"].to_string(), "memory allocation of");
        }
        // The other module never noticed, and this one serves its next event.
        delivers(&daemon, &sink, "b-in", n + 1);
        delivers(&daemon, &sink, "a-in", n + 2);
    }

    // A plugin's stdout is not the protocol: the line lands in the daemon's log.
    delivers(&daemon, &sink, "a-in", 100);
    assert_eq!(
        daemon
            .post("a-in", &json!({"kind": "print", "n": 101}))
            .status,
        202
    );
    sink.wait_delivered(&[101]);
    daemon.wait_log("a plugin writing to stdout");

    // Every note arrived once; the events that crashed the plugin were dropped (`on_error`).
    let mut expected = vec![1, 2, 11, 12, 21, 22, 100, 101];
    expected.sort_unstable();
    assert_eq!(sink.delivered_ns(), expected);
    assert_ne!(
        process(&daemon.module_status("a"), "crashy")["pid"],
        first_pid
    );
    let metrics = daemon.get("/metrics").text;
    assert_contains(
        &metrics,
        "orgloop_plugin_process_exits_total{module=\"a\",plugin=\"crashy\"} 3",
    );
    assert_contains(&daemon.log(), "SIGSEGV");
}

#[test]
fn a_crash_loop_opens_the_circuit_and_says_why() {
    let dir = test_dir("crashes_circuit");
    let sink = Sink::start();
    crashy_module(&dir.join("a"), "a", &sink);
    crashy_module(&dir.join("b"), "b", &sink);
    let daemon = Daemon::start(
        &[&dir.join("a"), &dir.join("b")],
        &base_env(&dir.join("home")),
    );
    // One at a time (calls in flight together die in one crash): each event waits for the
    // restarted process and crashes it again.
    for n in 1..=5u64 {
        assert_eq!(
            daemon
                .post("a-in", &json!({"kind": "abort", "n": n}))
                .status,
            202
        );
        daemon.wait_status("a", &format!("crash {n}"), |s| {
            process(s, "crashy")["crashes_in_a_row"] == n
        });
    }
    let open = daemon.wait_status("a", "the circuit to open", |s| {
        process(s, "crashy")["state"] == "circuit_open"
    });
    assert_eq!(open["health"], "degraded", "{open:#}");
    let why = open["degraded"].as_str().unwrap();
    assert_contains(why, "SIGABRT");
    assert_contains(why, "crashed 5 times in a row");
    let text = daemon.cli_ok(&["module", "status", "a"]);
    assert_contains(&text, "process circuit_open");
    assert_contains(&text, "SIGABRT");

    // While it is open, A's events fail at once (and are dropped by `on_error`), B delivers.
    assert_eq!(
        daemon
            .post("a-in", &json!({"kind": "note", "n": 50}))
            .status,
        202
    );
    delivers(&daemon, &sink, "b-in", 51);
    daemon.wait_status("a", "the note to be handled", |s| {
        s["queue"]["entries"] == 0
    });
    assert_eq!(sink.delivered_ns(), [51]);
}

#[test]
fn a_call_past_its_deadline_gets_its_process_replaced() {
    let dir = test_dir("crashes_deadline");
    let sink = Sink::start();
    let entry = format!(
        "{{name: filters, path: \"{}\", isolation: process}}",
        plugin("filters").display()
    );
    let stall = "symbol: filters::fault\n    timeout_ms: 300\n    config: {block_when: {payload.kind: stall}, block_for: 10s}";
    module(&dir.join("a"), "a", &sink, &entry, stall);
    module(&dir.join("b"), "b", &sink, &entry, stall);
    let daemon = Daemon::start(
        &[&dir.join("a"), &dir.join("b")],
        &base_env(&dir.join("home")),
    );

    // Eight calls that would block for 10 s each.
    let started = Instant::now();
    let posts: Vec<_> = (0..8)
        .map(|n| {
            let url = daemon.url("/webhook/a-in");
            let body = json!({"kind": "stall", "n": n}).to_string();
            std::thread::spawn(move || {
                request(
                    "POST",
                    &url,
                    &[("content-type", "application/json")],
                    body.as_bytes(),
                )
                .status
            })
        })
        .collect();
    for p in posts {
        assert_eq!(p.join().unwrap(), 202);
    }
    // B answers and delivers while A's calls are stuck.
    let asked = Instant::now();
    assert_eq!(
        daemon
            .post("b-in", &json!({"kind": "note", "n": 100}))
            .status,
        202
    );
    assert!(asked.elapsed() < Duration::from_secs(1));
    sink.wait_delivered(&[100]);

    // A stuck call is cut at its deadline: its process is killed (failing the calls it held,
    // which their route's `on_error` drops) and replaced. So all eight are over and A serves
    // again long before even one of them would have returned by itself.
    let after = daemon.wait_status("a", "a's stalled events to be handled", |s| {
        s["queue"]["entries"] == 0
    });
    delivers(&daemon, &sink, "a-in", 200);
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "the stuck calls were not cut short"
    );
    assert!(
        after["transform_overruns"].as_u64().unwrap() >= 1,
        "{after:#}"
    );
    let p = process(&after, "filters");
    assert!(p["restarts"].as_u64().unwrap() >= 1, "{p:#}");
    assert_eq!(p["last_exit"]["signal"], 9, "{p:#}");
    assert_contains(
        p["last_exit"]["reason"].as_str().unwrap(),
        "past its deadline of 0.3 s",
    );
    assert_eq!(
        p["crashes_in_a_row"], 0,
        "kills at a deadline are not crashes: {p:#}"
    );
    assert_eq!(sink.delivered_ns(), [100, 200]);
    let b = process(&daemon.module_status("b"), "filters");
    assert_eq!(b["restarts"], 0, "B's process is its own: {b:#}");
}

#[test]
fn the_plugin_processes_die_with_the_daemon() {
    let dir = test_dir("crashes_daemon_killed");
    let sink = Sink::start();
    crashy_module(&dir.join("a"), "a", &sink);
    let daemon = Daemon::start(&[&dir.join("a")], &base_env(&dir.join("home")));
    let children = plugin_processes(daemon.pid());
    assert_eq!(children.len(), 1, "one process for crashy");
    daemon.kill();
    let deadline = Instant::now() + WAIT;
    while children.iter().any(|pid| alive(*pid)) {
        assert!(
            Instant::now() < deadline,
            "plugin process {children:?} outlived the daemon"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_slow_constructor_in_a_reload_does_not_hold_up_the_calls_of_its_process() {
    let dir = test_dir("crashes_slow_constructor");
    let sink = Sink::start();
    let a = dir.join("a");
    let entry = format!(
        "{{name: crashy, path: \"{}\", isolation: process}}",
        plugin("fixture_crashy").display()
    );
    let transform = |ms: u64| {
        format!(
            "symbol: crashy::crash\n    timeout_ms: 500\n    config: {{construct_for_ms: {ms}}}"
        )
    };
    module(&a, "a", &sink, &entry, &transform(0));
    let daemon = Daemon::start(&[&a], &base_env(&dir.join("home")));
    let pid = process(&daemon.module_status("a"), "crashy")["pid"].clone();

    // A config change only: the new transform is built in the same process, for 2 s, while
    // the current one goes on serving there with its 500 ms deadline.
    module(&a, "a", &sink, &entry, &transform(2000));
    let n = std::thread::scope(|scope| {
        let reload =
            scope.spawn(|| daemon.control("POST", "/control/modules/a/reload", Some(&json!({}))));
        let started = Instant::now();
        let mut n = 0;
        while started.elapsed() < Duration::from_millis(1500) {
            assert_eq!(
                daemon.post("a-in", &json!({"kind": "note", "n": n})).status,
                202
            );
            n += 1;
            std::thread::sleep(Duration::from_millis(50));
        }
        let reloaded = reload.join().unwrap();
        assert_eq!(reloaded.json["outcome"], "swapped", "{}", reloaded.text);
        n
    });
    sink.wait_delivered(&(0..n).collect::<Vec<_>>());
    let p = process(&daemon.module_status("a"), "crashy");
    assert_eq!(p["pid"], pid, "the same process: {p:#}");
    assert_eq!(p["restarts"], 0, "{p:#}");
}

/// Process `pid` exists and is not a zombie (dead, waiting to be reaped).
fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        stat.rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z")
    })
}

#[test]
fn a_plugin_s_own_children_and_oversized_answers_do_not_wedge_its_process() {
    let dir = test_dir("crashes_orphans_and_oversize");
    let sink = Sink::start();
    crashy_module(&dir.join("a"), "a", &sink);
    let mut daemon = Daemon::start(&[&dir.join("a")], &base_env(&dir.join("home")));

    // The plugin starts a process that keeps its stderr open for a minute, then aborts: the
    // crash is handled (and the plugin restarted) without waiting for that stderr to end.
    assert_eq!(
        daemon
            .post("a-in", &json!({"kind": "orphan", "n": 0}))
            .status,
        202
    );
    daemon.wait_status("a", "a's plugin to restart after the abort", |s| {
        let p = process(s, "crashy");
        p["restarts"] == 1 && p["state"] == "up"
    });
    delivers(&daemon, &sink, "a-in", 1);
    let log = daemon.wait_log("orphan pid ");
    let orphan: u32 = log
        .split("orphan pid ")
        .nth(1)
        .and_then(|rest| rest.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|pid| pid.parse().ok())
        .unwrap_or_else(|| panic!("no orphan pid in the log"));
    assert!(alive(orphan), "the orphan still holds the stderr pipe");

    // An answer longer than a frame may be fails its call (`on_error: drop`) instead of
    // breaking the pipe: the process is not restarted, and serves the next event.
    assert_eq!(
        daemon.post("a-in", &json!({"kind": "huge", "n": 2})).status,
        202
    );
    daemon.wait_status("a", "the huge event to be handled", |s| {
        s["queue"]["entries"] == 0
    });
    delivers(&daemon, &sink, "a-in", 3);
    let p = process(&daemon.module_status("a"), "crashy");
    assert_eq!(p["restarts"], 1, "{p:#}");
    // The huge event, and the one whose call the abort failed.
    assert_contains(
        &daemon.get("/metrics").text,
        "orgloop_transform_calls_total{module=\"a\",transform=\"t\",verdict=\"error\"} 2",
    );
    assert_eq!(sink.delivered_ns(), [1, 3]);

    // A graceful stop retires the process without waiting for the orphan either.
    let stopped = Instant::now();
    daemon.stop();
    assert!(
        stopped.elapsed() < Duration::from_secs(30),
        "the stop waited for the orphan"
    );
    // SAFETY: plain syscall on the fixture's own sleeper.
    unsafe { libc::kill(orphan as i32, libc::SIGKILL) };
}

#[test]
fn validate_refuses_unknown_isolation_and_a_memory_limit_without_a_process() {
    let dir = test_dir("crashes_validate");
    let sink = Sink::start();
    let entry = |extra: &str| {
        format!(
            "{{name: crashy, path: \"{}\", {extra}}}",
            plugin("fixture_crashy").display()
        )
    };
    let home = base_env(&dir.join("home"));
    for (extra, error) in [
        ("isolation: proces", "did you mean \"process\""),
        ("max_memory: 1GiB", "max_memory needs isolation: process"),
        ("isolation: process, max_memory: lots", "is not a size"),
    ] {
        let m = dir.join("m");
        module(&m, "m", &sink, &entry(extra), "symbol: crashy::crash");
        let out = orgloop(&["validate", m.to_str().unwrap()], &home);
        let text = String::from_utf8_lossy(&out.stdout).to_string()
            + &String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{extra}: {text}");
        assert_contains(&text, error);
    }
    // A valid entry validates in its own process.
    let m = dir.join("m");
    module(
        &m,
        "m",
        &sink,
        &entry("isolation: process, max_memory: 64MiB"),
        "symbol: crashy::crash",
    );
    let out = orgloop(&["validate", m.to_str().unwrap()], &home);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}
