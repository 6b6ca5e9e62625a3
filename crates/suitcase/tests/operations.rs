//! Running suitcase as an operator does: metrics that move during a download, readiness,
//! JSON logs with audit fields, and the example configuration file.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod support;

use std::process::Command;

use support::{coap_get, curl_text as curl, require_coap_client, TestServer};

/// The value of the first sample of `name` (with its labels, if any) in Prometheus text.
fn sample(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with([' ', '{']))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

#[test]
fn metrics_move_during_a_download_and_the_server_is_ready() {
    if !require_coap_client() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(&dir.path().join("data"), &[]);
    let image = support::random_bytes(64 * 1024, 3);
    let file = dir.path().join("app.bin");
    std::fs::write(&file, &image).unwrap();
    server.publish("ops/app", &file, &[]);

    let (status, before) = curl(&format!("{}/metrics", server.http()), &[]);
    assert_eq!(status, 200, "{before}");
    let blocks_before = sample(&before, "suitcase_coap_blocks_served_total").unwrap();
    let got = coap_get(&server.coap("ops/app/app.bin"), Some(1024), &dir.path().join("got"));
    assert_eq!(got, image);
    let (_, after) = curl(&format!("{}/metrics", server.http()), &[]);
    let blocks_after = sample(&after, "suitcase_coap_blocks_served_total").unwrap();
    assert!(
        blocks_after >= blocks_before + 64.0,
        "{blocks_before} → {blocks_after}\n{after}"
    );
    assert!(
        sample(&after, "suitcase_coap_replies_total{code=\"2.05\"}").unwrap() >= 64.0,
        "{after}"
    );
    assert!(sample(&after, "suitcase_coap_datagrams_in_total").unwrap() >= 64.0);
    assert_eq!(sample(&after, "suitcase_uploads_total"), Some(1.0));
    assert!(
        after.contains("suitcase_http_requests_total{route=\"/publish\",method=\"POST\",status=\"200\"} 1"),
        "{after}"
    );
    assert_eq!(sample(&after, "suitcase_store_versions"), Some(1.0));
    assert!(sample(&after, "suitcase_store_cache_hits_total").unwrap() > 0.0);
    assert!(after.contains("suitcase_fleet_devices{state=\"installed\"}"), "{after}");

    let (status, ready) = curl(&format!("{}/readyz", server.http()), &[]);
    assert_eq!(status, 200, "{ready}");
    let ready: serde_json::Value = serde_json::from_str(&ready).unwrap();
    assert_eq!(ready["ready"], true);
    for check in ["store", "coap", "database"] {
        assert_eq!(ready["checks"][check], "ok", "{ready}");
    }
    assert_eq!(curl(&format!("{}/healthz", server.http()), &[]).0, 200);

    // Once device tokens exist, metrics are read like downloads: with a token.
    let data = server.data.display().to_string();
    let token = server
        .cli(&["token", "create", "probe", "--device", "--data", &data])
        .trim()
        .to_string();
    std::thread::sleep(std::time::Duration::from_millis(1200));
    assert_eq!(curl(&format!("{}/metrics", server.http()), &[]).0, 403);
    let auth = format!("Authorization: token {token}");
    assert_eq!(curl(&format!("{}/metrics", server.http()), &["-H", &auth]).0, 200);
}

#[test]
fn json_logs_carry_the_audit_fields() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(&dir.path().join("data"), &["--log-format", "json"]);
    let file = dir.path().join("app.bin");
    std::fs::write(&file, support::random_bytes(1000, 4)).unwrap();
    server.publish("ops/json", &file, &[]);
    std::thread::sleep(std::time::Duration::from_millis(200));
    let log = server.log();
    assert!(!log.is_empty());
    let mut audit = 0;
    for line in &log {
        let v: serde_json::Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        assert!(v["timestamp"].is_string() && v["level"].is_string(), "{line}");
        if v["target"] == "suitcase::audit" && v["action"] == "publish" {
            audit += 1;
            assert!(v["who"].as_str().unwrap().starts_with("token:local"), "{line}");
            assert_eq!(v["publish_id"], "ops/json", "{line}");
            assert_eq!(v["version"], 1, "{line}");
            assert_eq!(v["sha256"].as_str().map(str::len), Some(64), "{line}");
        }
    }
    assert_eq!(audit, 2, "one line per stored file (image and manifest): {log:#?}");
}

#[test]
fn the_example_configuration_starts_the_server() {
    let dir = tempfile::tempdir().unwrap();
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples/suitcase.toml");
    // The example's data directory and ports are a real host's: the command line wins.
    let server = TestServer::start(&dir.path().join("data"), &["--config", example]);
    let file = dir.path().join("app.bin");
    std::fs::write(&file, support::random_bytes(1000, 5)).unwrap();
    server.publish("ops/conf", &file, &[]);
    assert_eq!(curl(&format!("{}/readyz", server.http()), &[]).0, 200);
    // A key the flags do not give took effect: the example's vendor domain is the default,
    // so check a file written to the data directory instead: the fleet database is there.
    assert!(server.data.join("fleet.db").exists());

    // A mistyped key stops the server before it starts, naming the key.
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "max-conections = 3\n").unwrap();
    let out = Command::new(support::bin())
        .args(["serve", "--config"])
        .arg(&bad)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("max-conections"));
}
