//! Durable delivery: a `202` is a promise. Events accepted while a sink is down, across a
//! SIGKILL, a restart, a full queue, a reload in a retry storm or a torn write arrive, or are in
//! the dead letters with a reason — counted by event, never assumed.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use orgloop::queue::record;
use serde_json::{json, Value};

use crate::harness::*;

/// Fast retries, so that the tests heal in well under a second.
const FAST_RETRY: &str = "retry: {initial: 50ms, max: 200ms}";

/// A module `name` with webhook source `in` and actor `out` posting to `sink` (route `deliver`);
/// `extra_actors` and `extra_routes` are YAML list items added after them.
fn write_module(dir: &Path, name: &str, sink: &Sink, defaults: &str, extra: (&str, &str)) {
    let (extra_actors, extra_routes) = extra;
    let project = project_yaml(
        name,
        &["http"],
        &format!("connectors: [connectors/c.yaml]\nloggers: [loggers/l.yaml]\n{defaults}"),
    );
    let connectors = format!(
        "sources:\n  - {{id: in, connector: webhook}}\nactors:\n  - {{id: out, connector: http::webhook, config: {{url: \"{}\"}}, {FAST_RETRY}}}\n{extra_actors}",
        sink.url("/a")
    );
    let routes = format!(
        "routes:\n  - name: deliver\n    when: {{source: in, events: [resource.changed]}}\n    then: {{actor: out}}\n{extra_routes}"
    );
    write_files(
        dir,
        &[
            ("orgloop.yaml", &project),
            ("connectors/c.yaml", &connectors),
            ("routes/r.yaml", &routes),
            (
                "loggers/l.yaml",
                "loggers: [{name: console, type: console, config: {level: warn}}]\n",
            ),
        ],
    );
}

struct Setup {
    module: PathBuf,
    env: Vec<(String, String)>,
    sink: Sink,
}

fn setup(test: &str) -> Setup {
    let dir = test_dir(test);
    let sink = Sink::start();
    let module = dir.join("m");
    write_module(&module, "m", &sink, "", ("", ""));
    Setup {
        module,
        env: base_env(&dir.join("home")),
        sink,
    }
}

impl Setup {
    fn start(&self) -> Daemon {
        Daemon::start(&[&self.module], &self.env)
    }
}

/// Posts events `ns` to source `in`; every one must be accepted.
fn post_all(daemon: &Daemon, ns: impl IntoIterator<Item = u64>) -> Vec<u64> {
    let ns: Vec<u64> = ns.into_iter().collect();
    for &n in &ns {
        let reply = daemon.post("in", &json!({ "n": n }));
        assert_eq!(reply.status, 202, "event {n}: {:?}", reply.json);
    }
    ns
}

/// Events that arrived more than once, as the test reports them.
fn duplicates(counts: &HashMap<u64, usize>) -> usize {
    counts.values().map(|c| c - 1).sum()
}

fn dead_letters(daemon: &Daemon) -> Vec<Value> {
    let (code, list) = daemon.cli_json(&["dlq", "list", "--json"]);
    assert_eq!(code, 0);
    list.as_array().cloned().unwrap()
}

/// Waits until there are at least `n` dead letters; returns them all.
fn wait_dead_letters(daemon: &Daemon, n: usize) -> Vec<Value> {
    let deadline = Instant::now() + WAIT;
    loop {
        let letters = dead_letters(daemon);
        if letters.len() >= n || Instant::now() > deadline {
            return letters;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn events_accepted_during_a_sink_outage_arrive_once_it_recovers() {
    let s = setup("durable_outage");
    let daemon = s.start();
    let mut accepted = post_all(&daemon, 0..20);
    s.sink.respond_with(503);
    accepted.extend(post_all(&daemon, 20..40));
    // The failing sink is probed, not hammered: one attempt at a time.
    let status = daemon.wait_status("m", "deliveries to wait for the failing sink", |st| {
        st["actors"]["out"]["failing"] == true
    });
    assert!(
        status["queue"]["entries"].as_u64().unwrap() > 0,
        "{status:#}"
    );
    std::thread::sleep(Duration::from_millis(800));
    s.sink.respond_with(200);
    accepted.extend(post_all(&daemon, 40..60));

    let counts = s.sink.wait_delivered(&accepted);
    assert_eq!(counts.len(), 60);
    assert_eq!(
        duplicates(&counts),
        0,
        "a 503 is not a delivery: {counts:?}"
    );
    let failed = s.sink.received().iter().filter(|r| r.status == 503).count();
    assert!(failed >= 1, "the outage was seen");
    assert!(
        failed < 60,
        "{failed} attempts during 0.8 s of outage: retries must back off"
    );
    assert_contains(&daemon.log(), "deliver.retry");
    daemon.wait_status("m", "the queue to empty", |st| st["queue"]["entries"] == 0);
}

#[test]
fn a_sigkill_with_events_waiting_loses_none_of_them() {
    let s = setup("durable_sigkill");
    let daemon = s.start();
    s.sink.respond_with(503);
    let accepted = post_all(&daemon, 0..50);
    daemon.wait_status("m", "retries to be under way", |st| {
        st["actors"]["out"]["failing"] == true
    });
    daemon.kill();

    s.sink.respond_with(200);
    let daemon = s.start();
    let counts = s.sink.wait_delivered(&accepted);
    assert_eq!(counts.len(), 50, "every accepted event arrived");
    eprintln!(
        "after SIGKILL: {} accepted, {} delivered, {} duplicates",
        accepted.len(),
        counts.len(),
        duplicates(&counts)
    );
    // Every attempt of one event carries the same idempotency key, across the restart too.
    let mut keys: HashMap<u64, Vec<String>> = HashMap::new();
    for r in s.sink.received() {
        let n = r.body["event"]["payload"]["n"].as_u64().unwrap();
        keys.entry(n)
            .or_default()
            .push(r.headers["idempotency-key"].clone());
    }
    for (n, k) in &keys {
        assert!(k.iter().all(|x| x == &k[0]), "event {n} had keys {k:?}");
        assert!(k[0].ends_with(":deliver"), "{}", k[0]);
    }
    daemon.wait_status("m", "the queue to empty", |st| st["queue"]["entries"] == 0);
}

#[test]
fn a_planned_restart_keeps_what_waits() {
    let s = setup("durable_restart");
    let daemon = s.start();
    s.sink.respond_with(503);
    let accepted = post_all(&daemon, 0..30);
    assert_eq!(daemon.stop(), 0);
    s.sink.respond_with(200);
    let daemon = s.start();
    let counts = s.sink.wait_delivered(&accepted);
    assert_eq!((counts.len(), duplicates(&counts)), (30, 0));
    drop(daemon);
}

#[test]
fn a_client_error_dead_letters_at_once_and_replay_delivers_it() {
    let s = setup("durable_dead_letter");
    let daemon = s.start();
    s.sink.respond_with(400);
    post_all(&daemon, [7]);
    let letters = wait_dead_letters(&daemon, 1);
    assert_eq!(letters.len(), 1, "{letters:#?}");
    let d = &letters[0];
    assert_eq!(
        (d["module"].as_str(), d["route"].as_str()),
        (Some("m"), Some("deliver"))
    );
    assert_eq!(d["attempts"], 1, "a 400 is not retried");
    assert_eq!(d["reason"], "failed permanently");
    assert_contains(d["last_error"].as_str().unwrap(), "HTTP 400");
    assert_eq!(d["event"]["payload"]["n"], 7);
    assert_eq!(daemon.module_status("m")["actors"]["out"]["dead"], 1);
    assert_contains(&daemon.log(), "deliver.dead");

    let id = d["id"].as_str().unwrap();
    assert_contains(&daemon.cli_ok(&["dlq", "show", id]), "failed permanently");

    s.sink.respond_with(200);
    let out = daemon.cli_ok(&["dlq", "replay", "--all", "--module", "m"]);
    assert_contains(&out, "replayed 1 dead letter");
    s.sink.wait_delivered(&[7]);
    assert!(dead_letters(&daemon).is_empty());
    let keys: Vec<String> = s
        .sink
        .received()
        .iter()
        .map(|r| r.headers["idempotency-key"].clone())
        .collect();
    assert_eq!(keys.len(), 2);
    assert_eq!(keys[0], keys[1], "the replay is the same delivery");
    assert_eq!(
        daemon.cli(&["dlq", "show", "dl_nope"]).status.code(),
        Some(1)
    );

    // A purge deletes for good.
    s.sink.respond_with(400);
    post_all(&daemon, [8]);
    daemon.wait_status("m", "the second dead letter", |st| {
        st["actors"]["out"]["dead"] == 1
    });
    assert_contains(
        &daemon.cli_ok(&["dlq", "purge", "--all"]),
        "purged 1 dead letter",
    );
    assert!(dead_letters(&daemon).is_empty());
}

#[test]
fn a_full_queue_answers_503_and_keeps_what_it_accepted() {
    let dir = test_dir("durable_full");
    let sink = Sink::start();
    let module = dir.join("m");
    write_module(
        &module,
        "m",
        &sink,
        "defaults: {max_queue_bytes: 12000}\n",
        ("", ""),
    );
    let daemon = Daemon::start(&[&module], &base_env(&dir.join("home")));
    sink.respond_with(503);
    let mut accepted = Vec::new();
    let refused = (0..100)
        .map(|n| (n, daemon.post("in", &json!({ "n": n }))))
        .find(|(n, reply)| {
            if reply.status == 202 {
                accepted.push(*n);
            }
            reply.status != 202
        })
        .expect("the queue filled up");
    let reply = refused.1;
    assert_eq!(reply.status, 503, "{:?}", reply.json);
    assert!(
        reply.headers.contains_key("retry-after"),
        "{:?}",
        reply.headers
    );
    assert_contains(reply.json["error"].as_str().unwrap(), "max_queue_bytes");
    assert!(accepted.len() >= 3, "only {} accepted", accepted.len());

    sink.respond_with(200);
    let counts = sink.wait_delivered(&accepted);
    assert_eq!(counts.len(), accepted.len());
    assert_eq!(duplicates(&counts), 0);
    // Room again once delivered.
    daemon.wait_status("m", "the queue to empty", |st| st["queue"]["entries"] == 0);
    assert_eq!(daemon.post("in", &json!({"n": 1000})).status, 202);
}

#[test]
fn a_reload_in_a_retry_storm_loses_nothing_and_dead_letters_removed_routes() {
    let dir = test_dir("durable_reload_storm");
    let sink = Sink::start();
    let module = dir.join("m");
    let second = (
        format!(
            "  - {{id: audit, connector: http::webhook, config: {{url: \"{}\"}}, {FAST_RETRY}}}\n",
            sink.url("/b")
        ),
        "  - name: audit\n    when: {source: in, events: [resource.changed]}\n    then: {actor: audit}\n".to_owned(),
    );
    write_module(&module, "m", &sink, "", (&second.0, &second.1));
    let daemon = Daemon::start(&[&module], &base_env(&dir.join("home")));
    sink.respond_with(503);
    let accepted = post_all(&daemon, 0..30);
    daemon.wait_status("m", "both actors to fail", |st| {
        st["actors"]["out"]["failing"] == true && st["actors"]["audit"]["failing"] == true
    });
    // v2 drops the audit route and actor while their deliveries are retrying.
    write_module(&module, "m", &sink, "", ("", ""));
    let (code, report) = daemon.cli_json(&["module", "reload", "m", "--json"]);
    assert_eq!(code, 0, "{report:#}");
    sink.respond_with(200);

    let counts = sink.wait_delivered(&accepted);
    assert_eq!(counts.len(), 30);
    let letters = wait_dead_letters(&daemon, 30);
    let mut dead_ns: Vec<u64> = letters
        .iter()
        .map(|d| {
            assert_eq!(d["route"], "audit");
            assert_contains(d["reason"].as_str().unwrap(), "removed by a reload");
            d["event"]["payload"]["n"].as_u64().unwrap()
        })
        .collect();
    dead_ns.sort_unstable();
    assert_eq!(
        dead_ns, accepted,
        "every removed delivery is a dead letter, once"
    );
    let to_b = sink
        .received()
        .iter()
        .filter(|r| r.path == "/b" && r.status == 200)
        .count();
    assert_eq!(to_b, 0, "nothing reached the removed actor");
}

#[test]
fn a_torn_write_at_the_tail_costs_only_the_torn_record() {
    let s = setup("durable_torn");
    let daemon = s.start();
    s.sink.respond_with(503);
    let accepted = post_all(&daemon, 0..20);
    daemon.kill();
    // Cut the last record of the newest segment in half, as a crash during its write would.
    let queue = s.module.parent().unwrap().join("home/data/queue");
    let last = std::fs::read_dir(&queue)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "seg"))
        .max()
        .unwrap();
    let bytes = std::fs::read(&last).unwrap();
    let (mut at, mut last_record) = (record::MAGIC.len(), None);
    while let Ok((_, len)) = record::decode(&bytes[at..]) {
        last_record = Some((at, len));
        at += len;
    }
    let (start, len) = last_record.expect("the segment holds records");
    let file = std::fs::OpenOptions::new().write(true).open(&last).unwrap();
    file.set_len((start + len / 2) as u64).unwrap();

    s.sink.respond_with(200);
    let mut daemon = s.start();
    daemon.wait_log("cut a truncated record at the end of the last segment");
    let earlier = &accepted[..accepted.len() - 1];
    let counts = s.sink.wait_delivered(earlier);
    assert_eq!(
        counts.len(),
        earlier.len(),
        "every record before the torn one survived"
    );
}

#[test]
fn an_interrupted_session_can_go_to_the_dead_letters_instead_of_running_twice() {
    let dir = test_dir("durable_interrupted");
    let module = dir.join("m");
    let project = project_yaml("m", &["agent"], "connectors: [connectors/c.yaml]\n");
    write_files(
        &module,
        &[
            ("orgloop.yaml", &project),
            (
                "connectors/c.yaml",
                "sources: [{id: in, connector: webhook}]\nactors:\n  - {id: coder, connector: agent::session, config: {duration: 60s}, interrupted: dead_letter}\n",
            ),
            (
                "routes/r.yaml",
                "routes:\n  - name: work\n    when: {source: in, events: [resource.changed]}\n    then: {actor: coder}\n",
            ),
        ],
    );
    let env = base_env(&dir.join("home"));
    let start = || {
        Daemon::try_start_with(&[&module], &["--shutdown-timeout", "200ms"], &env)
            .unwrap_or_else(|log| panic!("daemon did not start:\n{log}"))
    };
    let mut daemon = start();
    assert_eq!(daemon.post("in", &json!({"n": 1})).status, 202);
    daemon.wait_log("session ses_");
    assert_eq!(daemon.stop(), 0);

    // A shutdown cancelled it: a dead letter, and no second session.
    let mut daemon = start();
    let letters = dead_letters(&daemon);
    assert_eq!(letters.len(), 1, "{letters:#?}");
    assert_contains(letters[0]["reason"].as_str().unwrap(), "interrupted");
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        !daemon.log().contains("session ses_"),
        "the session did not start again:\n{}",
        daemon.log()
    );

    // A crash cut the next one short: the same, though nothing could cancel it.
    assert_eq!(daemon.post("in", &json!({"n": 2})).status, 202);
    daemon.wait_log("session ses_");
    daemon.kill();
    let daemon = start();
    let letters = wait_dead_letters(&daemon, 2);
    let crashed: Vec<&Value> = letters
        .iter()
        .filter(|d| d["event"]["payload"]["n"] == 2)
        .collect();
    assert_eq!(crashed.len(), 1, "{letters:#?}");
    assert_contains(
        crashed[0]["reason"].as_str().unwrap(),
        "the daemon stopped during its attempt",
    );
    assert!(!daemon.log().contains("session ses_"), "{}", daemon.log());
}

/// The end of a failed attempt is stored too, though nothing waits for it: a crash during the
/// retry wait of an actor with `interrupted: dead_letter` interrupted no attempt, so the event
/// is retried after the restart, not dead-lettered.
#[test]
fn a_crash_while_a_delivery_waits_for_its_retry_interrupts_nothing() {
    let dir = test_dir("durable_crash_in_backoff");
    let sink = Sink::start();
    let module = dir.join("m");
    let careful = format!(
        "  - {{id: careful, connector: http::webhook, config: {{url: \"{}\"}}, interrupted: dead_letter, retry: {{initial: 60s, max: 60s}}}}\n",
        sink.url("/careful")
    );
    let route = "  - name: carefully\n    when: {source: in, events: [resource.changed]}\n    then: {actor: careful}\n";
    write_module(&module, "m", &sink, "", (&careful, route));
    let env = base_env(&dir.join("home"));
    let daemon = Daemon::start(&[&module], &env);
    sink.respond_with(503);
    post_all(&daemon, [1]);
    daemon.wait_status("m", "the careful actor's first attempt to fail", |st| {
        st["actors"]["careful"]["failing"] == true
    });
    // Nothing else happens meanwhile that would carry the end of the attempt to the disk with
    // it; the store writes it by itself within milliseconds.
    std::thread::sleep(Duration::from_millis(500));
    daemon.kill();

    sink.respond_with(200);
    let daemon = Daemon::start(&[&module], &env);
    let arrived = || {
        sink.received()
            .iter()
            .filter(|r| r.path == "/careful" && r.body["event"]["payload"]["n"] == 1)
            .count()
    };
    let deadline = Instant::now() + WAIT;
    while arrived() < 2 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    // The failed attempt before the crash, and the retry after it.
    assert_eq!(arrived(), 2, "{}", daemon.log());
    assert_eq!(dead_letters(&daemon), Vec::<Value>::new());
}

#[test]
fn an_unload_puts_what_waits_in_the_dead_letters_for_a_later_replay() {
    let s = setup("durable_unload");
    let daemon = s.start();
    s.sink.respond_with(503);
    let accepted = post_all(&daemon, 0..10);
    daemon.wait_status("m", "retries to be under way", |st| {
        st["actors"]["out"]["failing"] == true
    });
    daemon.cli_ok(&["module", "unload", "m"]);
    let letters = wait_dead_letters(&daemon, accepted.len());
    assert_eq!(letters.len(), accepted.len(), "{letters:#?}");
    for d in &letters {
        assert_contains(d["reason"].as_str().unwrap(), "the module was unloaded");
    }

    // Loaded again and the sink healthy: the replay delivers every one.
    s.sink.respond_with(200);
    daemon.cli_ok(&["module", "load", s.module.to_str().unwrap()]);
    assert_contains(
        &daemon.cli_ok(&["dlq", "replay", "--all"]),
        "replayed 10 dead letters",
    );
    let counts = s.sink.wait_delivered(&accepted);
    assert_eq!(counts.len(), accepted.len());
    assert!(dead_letters(&daemon).is_empty());
}
