//! The webhook source over real HTTP: status codes, HMAC signatures, body limits.

use serde_json::json;

use crate::harness::*;

fn webhook_module(dir: &std::path::Path, config: &str) {
    let connectors = format!("sources:\n  - id: hook\n    connector: webhook\n    config: {config}\nactors:\n  - id: out\n    connector: agent::session\n    config: {{duration: 0s}}\n");
    let project = project_yaml("hooks", &["agent"], "connectors: [connectors/c.yaml]\n");
    let routes = "routes:\n  - name: r\n    when: {source: hook, events: [resource.changed]}\n    then: {actor: out}\n";
    write_files(
        dir,
        &[
            ("orgloop.yaml", &project),
            ("connectors/c.yaml", &connectors),
            ("routes/r.yaml", routes),
        ],
    );
}

#[test]
fn bad_requests_get_clear_4xx_answers() {
    let dir = test_dir("webhook_errors");
    webhook_module(&dir.join("m"), "{max_body_bytes: 64}");
    let daemon = Daemon::start(&[&dir.join("m")], &base_env(&dir.join("home")));
    let url = daemon.url("/webhook/hook");

    let bad_json = request("POST", &url, &[], b"{not json");
    assert_eq!(bad_json.status, 400);
    assert_contains(
        bad_json.json["error"].as_str().unwrap(),
        "invalid JSON body",
    );
    assert_eq!(
        request("POST", &daemon.url("/webhook/nope"), &[], b"{}").json["error"],
        "unknown source: nope"
    );
    assert_eq!(request("GET", &url, &[], b"").status, 405);
    assert_eq!(request("POST", &url, &[], &[b'1'; 100]).status, 413);
    assert_eq!(
        request("GET", &daemon.url("/nothing"), &[], b"").status,
        404
    );
    let ok = daemon.post("hook", &json!({"fine": true}));
    assert_eq!(ok.status, 202);
    assert_eq!(ok.json["ok"], true);
    assert_eq!(daemon.get("/api/status").json["health"], "ok");
}

#[test]
fn a_secret_requires_a_valid_hmac_signature() {
    let dir = test_dir("webhook_hmac");
    webhook_module(&dir.join("m"), "{secret: s3cret}");
    let daemon = Daemon::start(&[&dir.join("m")], &base_env(&dir.join("home")));
    let url = daemon.url("/webhook/hook");
    let body = br#"{"action":"opened"}"#;
    assert_eq!(request("POST", &url, &[], body).status, 401);
    assert_eq!(
        request("POST", &url, &[("x-hub-signature-256", "sha256=00")], body).status,
        401
    );
    let sig = hmac_sha256(b"s3cret", body);
    assert_eq!(
        request(
            "POST",
            &url,
            &[("x-hub-signature-256", &format!("sha256={sig}"))],
            body
        )
        .status,
        202
    );
}

fn hmac_sha256(key: &[u8], body: &[u8]) -> String {
    use hmac::Mac;
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(key).unwrap();
    mac.update(body);
    mac.finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}
