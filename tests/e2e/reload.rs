//! `orgloop module reload`: a new plugin build and new config swap in while the daemon runs.

use serde_json::Value;

use crate::harness::*;
use crate::swap::*;

#[test]
fn reload_swaps_v1_for_v2_and_the_sink_sees_which_delivered() {
    let (v1, v2) = builds("http");
    let dir = test_dir("reload_v1_v2");
    let module = dir.join("m");
    let sink = Sink::start();
    swap_module(&module, "m", &sink, "1s");
    let daemon = Daemon::start(&[&module], &base_env(&dir.join("home")));

    assert_eq!(daemon.post("m-in", &note(1)).status, 202);
    assert_eq!(delivered_by(&sink.wait_for(1)[0]), "0.1.0");

    install(&module, "http", &v2);
    let (code, report) = daemon.cli_json(&["module", "reload", "m", "--wait", "--json"]);
    assert_eq!(code, 0, "{report:#}");
    assert_eq!(report["outcome"], "swapped");
    assert_eq!(
        (
            report["from_generation"].as_u64(),
            report["to_generation"].as_u64()
        ),
        (Some(1), Some(2))
    );
    let http = report["plugins"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "http")
        .unwrap();
    assert_eq!(
        (
            http["old"]["version"].as_str(),
            http["new"]["version"].as_str()
        ),
        (Some("0.1.0"), Some("0.2.0"))
    );
    assert_ne!(http["old"]["hash"], http["new"]["hash"]);
    let agent = report["plugins"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "agent")
        .unwrap();
    assert_eq!(agent["old"], agent["new"], "the agent build did not change");
    assert_eq!(
        report["diff"]["actors"]["changed"],
        serde_json::json!(["out"])
    );
    assert_eq!(
        report["diff"]["actors"]["kept"],
        serde_json::json!(["worker"])
    );
    assert_eq!(
        report["diff"]["routes"]["kept"].as_array().unwrap().len(),
        3
    );
    let unloaded: Vec<&Value> = report["drain"]["libraries"]
        .as_array()
        .unwrap()
        .iter()
        .collect();
    assert_eq!(
        unloaded.len(),
        1,
        "only the old http build retires: {report:#}"
    );
    assert_eq!(unloaded[0]["plugin"], "http");
    assert_eq!(unloaded[0]["build"]["version"], "0.1.0");
    assert_eq!(unloaded[0]["result"]["state"], retired());

    assert_eq!(daemon.post("m-in", &note(2)).status, 202);
    assert_eq!(delivered_by(&sink.wait_for(2)[1]), "0.2.0");

    // Nothing changed since: a no-op.
    let (code, again) = daemon.cli_json(&["module", "reload", "m", "--json"]);
    assert_eq!((code, again["outcome"].as_str()), (0, Some("unchanged")));
    assert_eq!(daemon.module_status("m")["generation"]["number"], 2);

    // And back to v1, with the human-readable report.
    install(&module, "http", &v1);
    let out = daemon.cli(&["module", "reload", "m"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert_contains(&text, "✓ m: generation 2 → 3");
    assert_contains(&text, "plugin http         0.2.0 (");
    assert_contains(&text, ") → 0.1.0 (");
    assert_eq!(daemon.post("m-in", &note(3)).status, 202);
    assert_eq!(delivered_by(&sink.wait_for(3)[2]), "0.1.0");
}

#[test]
fn a_config_change_applies_to_the_next_event_and_unchanged_objects_keep_their_state() {
    let dir = test_dir("reload_config");
    let module = dir.join("m");
    let sink = Sink::start();
    swap_module(&module, "m", &sink, "1s");
    // A dedup transform on the route: its window must survive a reload that does not touch it.
    let project = std::fs::read_to_string(module.join("orgloop.yaml")).unwrap()
        + "transforms: [transforms/t.yaml]\n";
    let project = project.replace(
        "plugins:\n",
        &format!(
            "plugins:\n  - {{name: filters, path: {}}}\n",
            plugin("filters").display()
        ),
    );
    let routes = std::fs::read_to_string(module.join("routes/r.yaml"))
        .unwrap()
        .replace(
            "    then: {actor: out, config: {tag: note}}",
            "    transforms: [{ref: dedup}]\n    then: {actor: out, config: {tag: note}}",
        );
    write_files(
        &module,
        &[
            ("orgloop.yaml", &project),
            ("routes/r.yaml", &routes),
            ("transforms/t.yaml", "transforms:\n  - {name: dedup, type: plugin, symbol: filters::dedup, config: {key: [payload.n]}}\n"),
        ],
    );
    let daemon = Daemon::start(&[&module], &base_env(&dir.join("home")));
    assert_eq!(daemon.post("m-in", &note(1)).status, 202);
    assert_eq!(sink.wait_for(1)[0].body["config"]["tag"], "note");

    write_files(
        &module,
        &[(
            "routes/r.yaml",
            &routes.replace("tag: note", "tag: changed"),
        )],
    );
    let (code, report) = daemon.cli_json(&["module", "reload", "m", "--json"]);
    assert_eq!(code, 0, "{report:#}");
    assert_eq!(
        report["diff"]["routes"]["changed"],
        serde_json::json!(["deliver"])
    );
    assert_eq!(
        report["diff"]["transforms"]["kept"],
        serde_json::json!(["dedup"])
    );
    assert!(report["drain"].is_null() && report["draining"]["generation"] == 1);

    assert_eq!(
        daemon.post("m-in", &note(1)).status,
        202,
        "a duplicate of the first note"
    );
    assert_eq!(daemon.post("m-in", &note(2)).status, 202);
    let got = sink.wait_for(2);
    assert_eq!(got[1].body["config"]["tag"], "changed");
    assert_eq!(
        got[1].body["event"]["payload"]["n"], 2,
        "the dedup window carried over and dropped note 1"
    );
}
