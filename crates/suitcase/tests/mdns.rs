//! mDNS/DNS-SD: `--mdns NAME` announces `_coap._udp` and `_http._tcp` so devices on the
//! link find the server; an independent implementation (python-zeroconf) resolves them, in a
//! network namespace of its own. Without `--mdns` nothing is announced.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::process::Command;

use support::netns::{self, Netns};
use support::*;

fn browse(ns: &Netns, seconds: &str) -> String {
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/interop/mdns_browse.py");
    let out = ns
        .command("python3")
        .arg(script)
        .arg(seconds)
        .output()
        .expect("python3");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn prerequisites() -> bool {
    if let Some(why) = netns::missing_prerequisite() {
        netns::skip(&why);
        return false;
    }
    let zeroconf = Command::new("python3").args(["-c", "import zeroconf"]).output();
    if !zeroconf.is_ok_and(|o| o.status.success()) {
        netns::skip("python-zeroconf is not installed (pip install zeroconf)");
        return false;
    }
    true
}

#[test]
fn the_server_is_found_by_an_independent_mdns_resolver() {
    if !prerequisites() {
        return;
    }
    let ns = Netns::new("sm");
    ns.ip(&["link", "set", "lo", "multicast", "on"]);
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start_in(
        &ns.name,
        &dir.path().join("data"),
        "[::]:0",
        &["--mdns", "testbox", "--mdns-loopback"],
    );
    let found = browse(&ns, "10");
    assert!(
        found.contains(&format!(
            "testbox._coap._udp.local. port={} host=testbox.local.",
            server.coap_port
        )),
        "{found}"
    );
    assert!(
        found.contains(&format!(
            "testbox._http._tcp.local. port={} host=testbox.local.",
            server.http_port
        )),
        "{found}"
    );
}

#[test]
fn nothing_is_announced_without_mdns() {
    if !prerequisites() {
        return;
    }
    let ns = Netns::new("sm");
    ns.ip(&["link", "set", "lo", "multicast", "on"]);
    let dir = tempfile::tempdir().unwrap();
    let _server = TestServer::start_in(&ns.name, &dir.path().join("data"), "[::]:0", &[]);
    assert_eq!(browse(&ns, "3"), "");
}

#[test]
fn a_bad_name_is_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(bin())
        .args(["serve", "--coap", "[::1]:0", "--http", "[::1]:0", "--mdns", "no spaces"])
        .arg("--data")
        .arg(dir.path().join("data"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--mdns"), "{out:?}");
}
