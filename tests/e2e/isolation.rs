//! Under a steady stream of webhooks to two modules, twenty reloads of one of them alternating two
//! plugin builds: every accepted event of both modules is delivered exactly once, and the other
//! module never sees an error.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::harness::*;
use crate::swap::*;

#[test]
fn reloading_one_module_under_load_loses_nothing_and_leaves_the_other_alone() {
    let (v1, v2) = builds("http");
    let dir = test_dir("isolation_under_load");
    let sink = Sink::start();
    swap_module(&dir.join("a"), "a", &sink, "1s");
    swap_module(&dir.join("b"), "b", &sink, "1s");
    let daemon = Daemon::start(
        &[&dir.join("a"), &dir.join("b")],
        &base_env(&dir.join("home")),
    );
    let url = |m: &str| daemon.url(&format!("/webhook/{m}-in"));
    let (url_a, url_b) = (url("a"), url("b"));

    // The load: alternating posts to a and b until the reloads are done (bounded in count/time).
    let stop = Arc::new(AtomicBool::new(false));
    let load = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut accepted: HashMap<&str, Vec<String>> = HashMap::new();
            let mut refused = Vec::new();
            let deadline = Instant::now() + Duration::from_secs(120);
            let mut n = 0u64;
            while !stop.load(Ordering::SeqCst) && n < 20_000 && Instant::now() < deadline {
                n += 1;
                for (m, url) in [("a", &url_a), ("b", &url_b)] {
                    let r = request(
                        "POST",
                        url,
                        &[("content-type", "application/json")],
                        note(n).to_string().as_bytes(),
                    );
                    match r.status {
                        202 => accepted
                            .entry(m)
                            .or_default()
                            .push(r.json["event_id"].as_str().unwrap().to_owned()),
                        s => refused.push((m, s, r.json)),
                    }
                }
            }
            (accepted, refused)
        })
    };

    for i in 0..20u32 {
        install(
            &dir.join("a"),
            "http",
            if i.is_multiple_of(2) { &v2 } else { &v1 },
        );
        let (code, report) = daemon.cli_json(&["module", "reload", "a", "--json"]);
        assert_eq!(
            (code, report["outcome"].as_str()),
            (0, Some("swapped")),
            "reload {i}: {report:#}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    stop.store(true, Ordering::SeqCst);
    let (accepted, refused) = load.join().unwrap();
    assert!(refused.is_empty(), "refused webhooks: {refused:?}");
    let total: usize = accepted.values().map(Vec::len).sum();
    assert!(
        accepted["a"].len() >= 20 && accepted["b"].len() >= 20,
        "too little load to mean anything"
    );

    let got = sink.wait_for(total);
    let mut seen: HashMap<String, usize> = HashMap::new();
    for r in &got {
        *seen
            .entry(r.body["event"]["id"].as_str().unwrap().to_owned())
            .or_default() += 1;
    }
    for (m, ids) in &accepted {
        for id in ids {
            assert_eq!(
                seen.get(id),
                Some(&1),
                "module {m}: event {id} delivered {:?} times",
                seen.get(id)
            );
        }
    }
    assert_eq!(got.len(), total, "no extra deliveries");
    let versions: std::collections::HashSet<&str> = got
        .iter()
        .filter(|r| r.path == "/a")
        .map(delivered_by)
        .collect();
    assert_eq!(
        versions.len(),
        2,
        "a's events went through both builds: {versions:?}"
    );
    assert!(got
        .iter()
        .filter(|r| r.path == "/b")
        .all(|r| delivered_by(r) == "0.1.0"));
    let b = daemon.module_status("b");
    assert_eq!(b["generation"]["number"], 1, "b was never touched");
    assert!(b["last_reload"].is_null());
    assert_eq!(daemon.module_status("a")["generation"]["number"], 21);
}
