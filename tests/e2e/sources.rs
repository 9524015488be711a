//! Plugin sources across a reload: a changed source's new version takes over the checkpoint where
//! the old one left it (nothing polled twice, nothing skipped); an unchanged one keeps polling.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::Query;
use axum::http::HeaderMap;
use serde_json::{json, Value};

use crate::harness::*;
use crate::swap::install;

/// Each request the feed got: its `since` and its `x-version` header.
pub(crate) type FeedLog = Arc<Mutex<Vec<(Option<u64>, String)>>>;

/// A feed of `total` notes, served one per request after `since`; records each request's
/// `since` and `x-version` header.
pub(crate) fn feed(total: u64) -> (u16, FeedLog) {
    let seen: FeedLog = Arc::default();
    let log = seen.clone();
    let app = axum::Router::new().route(
        "/feed",
        axum::routing::get(
            move |Query(q): Query<std::collections::HashMap<String, String>>,
                  headers: HeaderMap| {
                let log = log.clone();
                async move {
                    let since = q.get("since").and_then(|s| s.parse::<u64>().ok());
                    let version = headers
                        .get("x-version")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("")
                        .to_owned();
                    log.lock().unwrap().push((since, version));
                    let next = since.unwrap_or(0) + 1;
                    let (events, checkpoint) = if next <= total {
                        (
                            vec![json!({"kind": "note", "n": next})],
                            json!(next.to_string()),
                        )
                    } else {
                        (vec![], Value::Null)
                    };
                    axum::Json(json!({"events": events, "checkpoint": checkpoint}))
                }
            },
        ),
    );
    let listener = rt()
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let port = listener.local_addr().unwrap().port();
    rt().spawn(async move { axum::serve(listener, app).await.unwrap() });
    (port, seen)
}

pub(crate) fn module(dir: &std::path::Path, feed_port: u16, sink: &Sink, version: &str) {
    install(dir, "http", &plugin("http"));
    let project = "apiVersion: orgloop/v1alpha1\nkind: Project\nmetadata: {name: polled}\nplugins: [{name: http, path: plugins/libhttp.so}]\nconnectors: [connectors/c.yaml]\n";
    let connectors = format!(
        "sources:\n  - id: feed\n    connector: http::poll\n    poll: {{interval: 300ms}}\n    config: {{url: \"http://127.0.0.1:{feed_port}/feed\", headers: {{x-version: \"{version}\"}}}}\nactors:\n  - {{id: out, connector: http::webhook, config: {{url: \"{}\"}}}}\n",
        sink.url("/out")
    );
    let routes = "routes:\n  - {name: r, when: {source: feed, events: [resource.changed]}, then: {actor: out}}\n";
    write_files(
        dir,
        &[
            ("orgloop.yaml", project),
            ("connectors/c.yaml", &connectors),
            ("routes/r.yaml", routes),
        ],
    );
}

#[test]
fn a_changed_source_takes_over_the_checkpoint_of_the_old_one() {
    let dir = test_dir("sources_checkpoint");
    let (feed_port, requests) = feed(6);
    let sink = Sink::start();
    module(&dir.join("m"), feed_port, &sink, "1");
    let daemon = Daemon::start(&[&dir.join("m")], &base_env(&dir.join("home")));
    sink.wait_for(2);

    module(&dir.join("m"), feed_port, &sink, "2");
    let (code, report) = daemon.cli_json(&["module", "reload", "polled", "--json"]);
    assert_eq!(code, 0, "{report:#}");
    assert_eq!(report["diff"]["sources"]["changed"], json!(["feed"]));

    let got = sink.wait_for(6);
    std::thread::sleep(Duration::from_millis(700)); // a couple more polls: nothing new may arrive
    assert_eq!(
        payload_ns(&sink.received()),
        [1, 2, 3, 4, 5, 6],
        "every item exactly once across the reload"
    );
    assert!(got.iter().all(|r| r.body["event"]["source"] == "feed"));

    let requests = requests.lock().unwrap().clone();
    let first_v2 = requests
        .iter()
        .position(|(_, v)| v == "2")
        .expect("the new version polled");
    assert!(
        requests[first_v2].0.is_some_and(|since| since >= 2),
        "the new version started from the old checkpoint: {requests:?}"
    );
    // A poll the old version had in flight at the swap may still reach the feed; no more after it.
    let old_after = requests[first_v2..]
        .iter()
        .filter(|(_, v)| v == "1")
        .count();
    assert!(old_after <= 1, "the old version kept polling: {requests:?}");
    assert_eq!(
        requests.iter().filter(|(since, _)| since.is_none()).count(),
        1,
        "only the very first poll had no checkpoint"
    );
}
