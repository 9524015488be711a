//! The README's quickstart, end to end: webhooks in, filtered and deduplicated, delivered to a
//! real HTTP sink with the SOP; a task runs an agent session whose `actor.stopped` event is routed
//! again; everything lands in the JSONL log.

use serde_json::{json, Value};

use crate::harness::*;

fn comment(id: u64, login: &str, kind: &str) -> Value {
    json!({"kind": "comment", "id": id, "text": format!("hello {id}"), "sender": {"login": login, "type": kind}})
}

#[test]
fn quickstart_filters_dedups_delivers_and_round_trips_an_agent_session() {
    let dir = test_dir("quickstart");
    let module = dir.join("quickstart");
    copy_tree(&workspace().join("examples/quickstart"), &module);
    let _ = std::fs::remove_dir_all(module.join("logs")); // from a manual run of the quickstart
    let sink = Sink::start();
    let mut env = base_env(&dir.join("home"));
    env.push(("NOTIFY_URL".into(), sink.url("/hook")));

    let validate = orgloop(&["validate", module.to_str().unwrap()], &env);
    assert!(
        validate.status.success(),
        "{}",
        String::from_utf8_lossy(&validate.stdout)
    );

    let mut daemon = Daemon::start(&[&module], &env);
    let accepted = daemon.post("inbox", &comment(1, "alice", "User"));
    assert_eq!(accepted.status, 202, "{:?}", accepted.json);
    let first_id = accepted.json["event_id"].as_str().unwrap().to_owned();
    assert!(first_id.starts_with("evt_"));
    assert_eq!(
        daemon.post("inbox", &comment(1, "alice", "User")).status,
        202
    ); // duplicate id
    assert_eq!(
        daemon
            .post("inbox", &comment(2, "dependabot", "Bot"))
            .status,
        202
    ); // a bot
    assert_eq!(daemon.post("inbox", &comment(3, "bob", "User")).status, 202);

    let mut got = sink.wait_for(2);
    // The two deliveries run side by side: either may arrive first.
    got.sort_by_key(|r| r.body["config"]["summary"].to_string());
    let summaries: Vec<&str> = got
        .iter()
        .map(|r| r.body["config"]["summary"].as_str().unwrap())
        .collect();
    assert_eq!(
        summaries,
        ["alice: hello 1", "bob: hello 3"],
        "the bot and the duplicate are filtered"
    );
    let first = &got[0].body;
    assert_eq!(first["event"]["id"], first_id.as_str());
    assert_eq!(first["route"], "notify-people");
    assert_eq!(first["config"]["channel"], "#eng");
    let prompt = first["prompt"].as_str().unwrap();
    assert!(
        prompt.starts_with("Read the comment."),
        "front matter stripped: {prompt:?}"
    );
    assert_eq!(got[0].path, "/hook");
    assert_eq!(
        got[0].headers.get("content-type").map(String::as_str),
        Some("application/json")
    );

    let task = daemon.post(
        "inbox",
        &json!({"kind": "task", "id": 10, "text": "fix the build"}),
    );
    assert_eq!(task.status, 202);
    let task_id = task.json["event_id"].as_str().unwrap().to_owned();
    let got = sink.wait_for(3);
    let followup = &got[2].body;
    assert_eq!(followup["route"], "session-finished");
    let stopped = &followup["event"];
    assert_eq!(stopped["type"], "actor.stopped");
    assert_eq!(
        stopped["source"], "coder",
        "events an actor emits carry its id"
    );
    assert_eq!(stopped["payload"]["trigger_event_id"], task_id.as_str());
    assert_eq!(stopped["payload"]["lifecycle"]["outcome"], "success");
    assert!(followup["config"]["summary"]
        .as_str()
        .unwrap()
        .ends_with("success"));

    let routes = daemon.get("/api/routes");
    let notify = routes
        .json
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == "notify-people")
        .unwrap();
    assert_eq!(
        notify["fire_count"], 4,
        "every comment matched the route before its transforms"
    );
    let status = daemon.get("/api/status");
    assert_eq!(status.json["modules"][0]["name"], "quickstart");
    assert_eq!(status.json["sources"][0]["event_count"], 5);

    daemon.wait_log("deliver.success");
    assert_eq!(daemon.stop(), 0);
    let log = std::fs::read_to_string(module.join("logs/events.jsonl")).unwrap();
    let entries: Vec<Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(entries.iter().all(|e| e["module"] == "quickstart"));
    let phases_of = |id: &str| -> Vec<String> {
        entries
            .iter()
            .filter(|e| e["event_id"] == id)
            .map(|e| e["phase"].as_str().unwrap().to_owned())
            .collect()
    };
    let phases = phases_of(&first_id);
    for phase in [
        "source.emit",
        "route.match",
        "transform.start",
        "transform.pass",
        "deliver.attempt",
        "deliver.success",
    ] {
        assert!(
            phases.iter().any(|p| p == phase),
            "{phase} missing from {phases:?}"
        );
    }
    let drops: Vec<&Value> = entries
        .iter()
        .filter(|e| e["phase"] == "transform.drop")
        .collect();
    let dropped_by: Vec<&str> = drops
        .iter()
        .map(|e| e["transform"].as_str().unwrap())
        .collect();
    assert_eq!(dropped_by, ["dedup", "drop-bots"]);
}
