//! `orgloop start --watch`: edits to routes, SOPs and plugin builds apply after the debounce; a
//! burst of writes gives one reload; a broken save is rejected and the next good one applies.

use std::time::Duration;

use crate::harness::*;
use crate::swap::*;

fn generation(daemon: &Daemon) -> u64 {
    daemon.module_status("m")["generation"]["number"]
        .as_u64()
        .unwrap()
}

#[test]
fn watched_edits_apply_after_the_debounce() {
    let (_, v2) = builds("http");
    let dir = test_dir("watch");
    let module = dir.join("m");
    let sink = Sink::start();
    swap_module(&module, "m", &sink, "1s");
    let routes = std::fs::read_to_string(module.join("routes/r.yaml"))
        .unwrap()
        .replace(
            "    then: {actor: out, config: {tag: note}}",
            "    then: {actor: out, config: {tag: note}}\n    with: {prompt_file: ../sops/s.md}",
        );
    write_files(
        &module,
        &[
            ("routes/r.yaml", &routes),
            ("sops/s.md", "---\nv: 1\n---\nfirst version\n"),
        ],
    );
    let mut daemon = Daemon::try_start_with(
        &[&module],
        &["--watch", "--debounce", "200ms"],
        &base_env(&dir.join("home")),
    )
    .unwrap();
    let mut sent = 0;
    let mut send = |daemon: &Daemon| {
        sent += 1;
        assert_eq!(daemon.post("m-in", &note(sent)).status, 202);
        sink.wait_for(sent as usize).pop().unwrap()
    };
    assert_eq!(send(&daemon).body["prompt"], "first version\n");

    // An SOP edit needs no reload at all: SOPs are read at each delivery.
    write_files(&module, &[("sops/s.md", "second version\n")]);
    assert_eq!(send(&daemon).body["prompt"], "second version\n");

    // A route edit: one reload, after the debounce.
    write_files(
        &module,
        &[("routes/r.yaml", &routes.replace("tag: note", "tag: edited"))],
    );
    daemon.wait_status("m", "the route edit to apply", |s| {
        s["generation"]["number"] == 2
    });
    assert_eq!(send(&daemon).body["config"]["tag"], "edited");

    // Ten quick writes: one reload.
    for i in 0..10 {
        write_files(
            &module,
            &[(
                "routes/r.yaml",
                &routes.replace("tag: note", &format!("tag: burst-{i}")),
            )],
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    daemon.wait_status("m", "the burst to apply", |s| {
        s["generation"]["number"] == 3
    });
    std::thread::sleep(Duration::from_millis(600));
    assert_eq!(generation(&daemon), 3, "a burst of writes gives one reload");
    assert_eq!(send(&daemon).body["config"]["tag"], "burst-9");

    // A new plugin build.
    install(&module, "http", &v2);
    daemon.wait_status("m", "the new build to apply", |s| {
        s["generation"]["number"] == 4
    });
    assert_eq!(delivered_by(&send(&daemon)), "0.2.0");

    // A broken save is rejected, the old generation serves on, and the next good save applies.
    write_files(&module, &[("routes/r.yaml", "routes: [{name: x")]);
    daemon.wait_log("automatic reload rejected");
    assert_eq!(generation(&daemon), 4);
    assert_eq!(send(&daemon).body["config"]["tag"], "burst-9");
    write_files(
        &module,
        &[("routes/r.yaml", &routes.replace("tag: note", "tag: fixed"))],
    );
    daemon.wait_status("m", "the good save to apply", |s| {
        s["generation"]["number"] == 5
    });
    assert_eq!(send(&daemon).body["config"]["tag"], "fixed");
}
