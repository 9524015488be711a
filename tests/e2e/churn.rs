//! Two hundred rapid reloads: at most two generations at a time, and memory and mappings stay
//! flat (asserted generously; the benchmark measures them exactly).

use serde_json::json;

use crate::harness::*;
use crate::swap::*;

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

fn mappings(pid: u32) -> usize {
    std::fs::read_to_string(format!("/proc/{pid}/maps"))
        .unwrap()
        .lines()
        .count()
}

#[test]
fn two_hundred_rapid_reloads_keep_generations_memory_and_mappings_bounded() {
    let (v1, v2) = builds("http");
    let dir = test_dir("churn");
    let module = dir.join("m");
    let sink = Sink::start();
    swap_module(&module, "m", &sink, "1s");
    let daemon = Daemon::start(&[&module], &base_env(&dir.join("home")));
    let reload = |i: usize| {
        install(&module, "http", if i.is_multiple_of(2) { &v2 } else { &v1 });
        let r = daemon.control("POST", "/control/modules/m/reload", Some(&json!({})));
        assert_eq!(
            (r.status, r.json["outcome"].as_str()),
            (200, Some("swapped")),
            "reload {i}: {:?}",
            r.json
        );
        let status = daemon.module_status("m");
        assert!(
            status["draining"].as_array().unwrap().len() <= 1,
            "more than two generations: {status:#}"
        );
    };
    for i in 0..20 {
        reload(i);
    }
    let (rss0, maps0) = (rss_kib(daemon.pid()), mappings(daemon.pid()));
    for i in 20..200 {
        reload(i);
        if i % 10 == 0 {
            assert_eq!(daemon.post("m-in", &note(i as u64)).status, 202);
        }
    }
    daemon.wait_status("m", "the last drain", |s| {
        s["draining"].as_array().unwrap().is_empty()
    });
    let (rss1, maps1) = (rss_kib(daemon.pid()), mappings(daemon.pid()));
    assert!(
        rss1 < rss0 + rss0 / 2 + 20_000,
        "RSS grew from {rss0} KiB to {rss1} KiB"
    );
    assert!(maps1 < maps0 + 40, "mappings grew from {maps0} to {maps1}");
    let last = daemon.module_status("m")["last_drain"].clone();
    assert_eq!(
        last["libraries"][0]["result"]["state"],
        retired(),
        "{last:#}"
    );
    assert_eq!(daemon.module_status("m")["generation"]["number"], 201);
    if isolated() {
        // One child per plugin of the current generation: every retired one has exited.
        assert_eq!(plugin_processes(daemon.pid()).len(), 2);
    }
    sink.wait_for(18);
}
