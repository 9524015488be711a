//! Nothing of an unloaded plugin may be left inside the daemon's machinery: an actor waiting on an
//! HTTP request that never answers is force-cancelled by a reload, its library unloads, and when
//! the connection it used finally closes, the daemon is still fine.

use std::io::Read;
use std::net::TcpListener;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;

use crate::harness::*;
use crate::swap::*;

#[test]
fn a_request_in_flight_at_a_forced_reload_leaves_nothing_of_the_old_plugin_behind() {
    let (_, v2) = builds("http");
    let dir = test_dir("unload_safety");
    let module = dir.join("m");
    let sink = Sink::start();
    swap_module(&module, "m", &sink, "1s");

    // A server that accepts connections and never answers, until told to hang up.
    let silent = TcpListener::bind("127.0.0.1:0").unwrap();
    let silent_url = format!(
        "http://127.0.0.1:{}/never",
        silent.local_addr().unwrap().port()
    );
    let hang_up = Arc::new(AtomicBool::new(false));
    let server = {
        let hang_up = hang_up.clone();
        silent.set_nonblocking(true).unwrap();
        std::thread::spawn(move || {
            let mut held = Vec::new();
            for _ in 0..400 {
                if hang_up.load(Ordering::SeqCst) {
                    break; // dropping `held` closes every connection
                }
                if let Ok((mut conn, _)) = silent.accept() {
                    conn.set_read_timeout(Some(Duration::from_millis(50)))
                        .unwrap();
                    let _ = conn.read(&mut [0u8; 4096]);
                    held.push(conn);
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        })
    };
    let routes = std::fs::read_to_string(module.join("routes/r.yaml")).unwrap()
        + &format!("  - name: stuck\n    when: {{source: m-in, events: [resource.changed], filter: {{payload.kind: stuck}}}}\n    then: {{actor: out, config: {{url: \"{silent_url}\"}}}}\n");
    write_files(&module, &[("routes/r.yaml", &routes)]);
    let daemon = Daemon::start(&[&module], &base_env(&dir.join("home")));

    assert_eq!(daemon.post("m-in", &json!({"kind": "stuck"})).status, 202);
    daemon.wait_status("m", "the stuck delivery", |s| {
        s["generation"]["inflight"] == 1
    });
    install(&module, "http", &v2);
    let (code, report) = daemon.cli_json(&["module", "reload", "m", "--force", "--wait", "--json"]);
    assert_eq!(code, 0, "{report:#}");
    assert_eq!(report["drain"]["cancelled"], 1, "{report:#}");
    assert_eq!(
        report["drain"]["libraries"][0]["result"]["state"],
        retired(),
        "{report:#}"
    );

    // The old library is gone; now the connection it used closes.
    hang_up.store(true, Ordering::SeqCst);
    server.join().unwrap();
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        daemon.post("m-in", &note(1)).status,
        202,
        "the daemon survived"
    );
    assert_eq!(delivered_by(&sink.wait_for(1)[0]), "0.2.0");
    assert_eq!(daemon.stop(), 0);
}
