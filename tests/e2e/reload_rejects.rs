//! Every kind of bad reload is refused with exit code 2 and a clear message, while the current
//! generation keeps delivering every event sent during the attempt.

use crate::harness::*;
use crate::swap::*;

/// Breaks the module in one way.
type Breakage<'a> = Box<dyn Fn() + 'a>;

#[test]
fn bad_reloads_are_rejected_and_the_old_generation_keeps_serving() {
    let dir = test_dir("reload_rejects");
    let module = dir.join("m");
    let sink = Sink::start();
    swap_module(&module, "m", &sink, "1s");
    let daemon = Daemon::start(&[&module], &base_env(&dir.join("home")));
    let good_routes = std::fs::read_to_string(module.join("routes/r.yaml")).unwrap();
    let good_connectors = std::fs::read_to_string(module.join("connectors/c.yaml")).unwrap();
    let good_project = std::fs::read_to_string(module.join("orgloop.yaml")).unwrap();
    let fixture = build_dir().join("liborgloop_fixture_abi_mismatch.so");
    let cases: Vec<(&str, Breakage, &str)> = vec![
        (
            "malformed YAML",
            Box::new(|| write_files(&module, &[("routes/r.yaml", "routes: [{name: x")])),
            "routes/r.yaml:2:1",
        ),
        (
            "unknown reference",
            Box::new(|| {
                write_files(
                    &module,
                    &[(
                        "routes/r.yaml",
                        &good_routes.replace("actor: out", "actor: outt"),
                    )],
                )
            }),
            "unknown actor \"outt\"; did you mean \"out\"?",
        ),
        (
            "missing symbol",
            Box::new(|| {
                write_files(
                    &module,
                    &[(
                        "connectors/c.yaml",
                        &good_connectors.replace("http::webhook", "http::webhok"),
                    )],
                )
            }),
            "exports no actor \"webhok\"; did you mean \"webhook\"?",
        ),
        (
            "incompatible ABI",
            Box::new(|| install(&module, "http", &fixture)),
            "incompatible plugin ABI",
        ),
        (
            "failing constructor",
            Box::new(|| {
                write_files(
                    &module,
                    &[(
                        "connectors/c.yaml",
                        &good_connectors.replace("duration: 1s", "duration: 1s, fail_init: true"),
                    )],
                )
            }),
            "fail_init",
        ),
        (
            "plugin file missing",
            Box::new(|| std::fs::remove_file(module.join("plugins/libhttp.so")).unwrap()),
            "plugins/libhttp.so does not exist",
        ),
    ];
    let mut sent = 0;
    for (what, break_it, expected) in &cases {
        break_it();
        for _ in 0..3 {
            sent += 1;
            assert_eq!(
                daemon.post("m-in", &note(sent)).status,
                202,
                "{what}: event refused"
            );
        }
        let out = daemon.cli(&["module", "reload", "m"]);
        let text = String::from_utf8_lossy(&out.stdout);
        assert_eq!(out.status.code(), Some(2), "{what}: {text}");
        assert_contains(
            &text,
            "reload rejected; the current generation keeps serving",
        );
        assert_contains(&text, expected);
        for _ in 0..3 {
            sent += 1;
            assert_eq!(
                daemon.post("m-in", &note(sent)).status,
                202,
                "{what}: event refused after the attempt"
            );
        }
        let status = daemon.module_status("m");
        assert_eq!(
            status["generation"]["number"], 1,
            "{what}: the module was changed"
        );
        assert_contains(
            &status["last_failed_reload"].to_string(),
            &expected.replace('"', "\\\""),
        );
        // Repair for the next case.
        write_files(
            &module,
            &[
                ("routes/r.yaml", &good_routes),
                ("connectors/c.yaml", &good_connectors),
                ("orgloop.yaml", &good_project),
            ],
        );
        install(&module, "http", &plugin("http"));
    }
    let got = sink.wait_for(sent as usize);
    assert_eq!(
        payload_ns(&got),
        (1..=sent).collect::<Vec<_>>(),
        "every event delivered exactly once"
    );
    assert!(got.iter().all(|r| delivered_by(r) == "0.1.0"));
    let (code, report) = daemon.cli_json(&["module", "reload", "m", "--json"]);
    assert_eq!(
        (code, report["outcome"].as_str()),
        (0, Some("unchanged")),
        "{report:#}"
    );
}
