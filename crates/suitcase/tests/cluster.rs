//! Several suitcase nodes on one shared store: a real PostgreSQL (versions) and a real
//! S3-compatible server (s3s-fs, file contents), three nodes on loopback. A publish on one
//! node is served byte for byte by another and notified to an observer of a third; a
//! removal on one stops the others serving it; a node killed during an upload leaves
//! nothing half-published and comes back numbering where the cluster is; with the object
//! store down, a publish is a clear 503 while what the nodes cached is still served.
//! The fleet is one for all nodes: devices added on one are known to all, and a rollout
//! created on a follower goes on from another node when its leader is SIGKILLed.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod support;

use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use coap_lite::{CoapOption, MessageClass, MessageType, Packet, RequestType, ResponseType};
use support::postgres::Postgres;
use support::s3::S3;
use support::simdevice::{Behaviour, Link, SimDevice};
use support::TestServer;

fn node(dir: &std::path::Path, name: &str, pg: &Postgres, s3: &S3, key: Option<&str>) -> TestServer {
    node_on(false, "cluster", dir, name, pg, s3, key)
}

/// A node on IPv4 loopback (simulated devices on 127.0.9.x are told apart).
fn node_v4(dir: &std::path::Path, name: &str, pg: &Postgres, s3: &S3, key: Option<&str>) -> TestServer {
    node_on(true, "fleet", dir, name, pg, s3, key)
}

fn node_on(
    v4: bool,
    prefix: &str,
    dir: &std::path::Path,
    name: &str,
    pg: &Postgres,
    s3: &S3,
    key: Option<&str>,
) -> TestServer {
    let blobs = format!("s3://{}/{prefix}", s3.bucket);
    let mut args = vec!["--database", &pg.url, "--blobs", &blobs, "--s3-endpoint", &s3.endpoint];
    if let Some(k) = key {
        args.extend(["--key", k]);
    }
    let env = s3.env();
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    if v4 {
        TestServer::start_env_v4(&dir.join(name), &args, &env)
    } else {
        TestServer::start_env(&dir.join(name), &args, &env)
    }
}

/// Whether `s` runs the fleet's tracker (its `/metrics`).
fn leads(s: &TestServer) -> bool {
    let (code, body) = support::curl_text(&format!("{}/metrics", s.http()), &[]);
    assert_eq!(code, 200, "{body}");
    body.lines()
        .find_map(|l| l.strip_prefix("suitcase_fleet_leading "))
        .unwrap_or_else(|| panic!("no suitcase_fleet_leading in {body}"))
        .trim()
        == "1"
}

fn rollout_status(s: &TestServer, id: u64) -> serde_json::Value {
    serde_json::from_str(&s.cli(&["rollout", "status", &id.to_string(), "--json"])).unwrap()
}

fn wait_for(what: &str, secs: u64, mut done: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !done() {
        assert!(
            start.elapsed() < Duration::from_secs(secs),
            "{what}: not within {secs} s"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    start.elapsed()
}

/// GET `path` from `server` over CoAP with 1024-byte blocks: the code and the whole payload.
fn coap_fetch(server: SocketAddr, path: &str) -> (ResponseType, Vec<u8>) {
    let sock = UdpSocket::bind("[::1]:0").unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(500))).unwrap();
    let mut link = Link {
        sock,
        mid: 0,
        pause: Duration::ZERO,
    };
    match link.fetch(server, path) {
        Some(Ok(body)) => (ResponseType::Content, body),
        Some(Err(code)) => (code, Vec::new()),
        None => panic!("no answer from {server} for {path}"),
    }
}

/// The version numbers a node lists for `id`, newest first.
fn listed_versions_of(s: &TestServer, id: &str) -> Vec<u64> {
    let (_, body) = support::curl_text(&format!("{}/api/v1/publish-ids/{id}", s.http()), &[]);
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    v.as_array()
        .unwrap()
        .iter()
        .map(|v| v["version"].as_u64().unwrap())
        .collect()
}

fn listed_versions(s: &TestServer) -> Vec<u64> {
    listed_versions_of(s, "fw/cluster")
}

fn coap_addr(s: &TestServer) -> SocketAddr {
    format!("[::1]:{}", s.coap_port).parse().unwrap()
}

/// Wait until `server` serves `path` as `want`; how long it took.
fn until_served(server: &TestServer, path: &str, want: &[u8], secs: u64) -> Duration {
    let start = Instant::now();
    loop {
        let (code, body) = coap_fetch(coap_addr(server), path);
        if code == ResponseType::Content && body == want {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < Duration::from_secs(secs),
            "{path} not served by the node after {secs} s: {code:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The manifests an observer was shown, with when.
type Shown = Arc<Mutex<Vec<(Vec<u8>, Instant)>>>;

/// An observer of `path` on `server`.
fn observe(server: SocketAddr, path: &str) -> Shown {
    let sock = UdpSocket::bind("[::1]:0").unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
    let mut p = Packet::new();
    p.header.set_type(MessageType::Confirmable);
    p.header.code = MessageClass::Request(RequestType::Get);
    p.header.message_id = 77;
    p.set_token(vec![7, 7]);
    p.add_option(CoapOption::Observe, vec![]);
    for s in path.split('/') {
        p.add_option(CoapOption::UriPath, s.as_bytes().to_vec());
    }
    p.add_option(CoapOption::Block2, vec![0x06]);
    sock.send_to(&p.to_bytes().unwrap(), server).unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let out = seen.clone();
    std::thread::spawn(move || {
        let mut buf = [0u8; 1500];
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(120) {
            let Ok((n, peer)) = sock.recv_from(&mut buf) else {
                continue;
            };
            let Ok(note) = Packet::from_bytes(&buf[..n]) else {
                continue;
            };
            support::simdevice::ack_if_confirmable(&sock, &note, peer);
            if note.header.code == MessageClass::Response(ResponseType::Content) {
                out.lock().unwrap().push((note.payload, Instant::now()));
            }
        }
    });
    seen
}

#[test]
fn three_nodes_share_one_store() {
    let Some(pg) = Postgres::start() else { return };
    let Some(mut s3) = S3::start() else { return };
    let dir = tempfile::tempdir().unwrap();
    let a = node(dir.path(), "a", &pg, &s3, None);
    // One signing key for the cluster: the first node's.
    let key = dir.path().join("a/keys/signing-key.pem");
    let key = key.to_str().unwrap();
    let b = node(dir.path(), "b", &pg, &s3, Some(key));
    let c = node(dir.path(), "c", &pg, &s3, Some(key));

    // Version 1, published on A, served by C.
    let v1 = support::random_bytes(200_000, 31);
    let file = dir.path().join("app.bin");
    std::fs::write(&file, &v1).unwrap();
    a.publish("fw/cluster", &file, &["--version", "1.0.0"]);
    until_served(&c, "fw/cluster/app.bin", &v1, 10);
    let (_, manifest1) = coap_fetch(coap_addr(&c), "fw/cluster/manifest");
    let (_, on_a) = coap_fetch(coap_addr(&a), "fw/cluster/manifest");
    assert_eq!(manifest1, on_a, "two nodes serve different manifests");

    // An observer of the manifest on B; version 2 published on A.
    let seen = observe(coap_addr(&b), "fw/cluster/manifest");
    let start = Instant::now();
    while seen.lock().unwrap().is_empty() {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "the observation was not accepted"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let v2 = support::random_bytes(300_000, 32);
    std::fs::write(&file, &v2).unwrap();
    a.publish("fw/cluster", &file, &["--version", "2.0.0"]);
    let published = Instant::now();
    // C serves it, byte for byte, at both block sizes libcoap asks for.
    let took = until_served(&c, "fw/cluster/app.bin", &v2, 10);
    eprintln!("publish on A to its first byte-identical download from C: {took:?}");
    // The nodes poll every 5 s as a backstop: sooner means LISTEN/NOTIFY carried it.
    assert!(
        took < Duration::from_secs(3),
        "C learnt of the publish only after {took:?}"
    );
    if support::require_coap_client() {
        let got = support::coap_get(&c.coap("fw/cluster/v/2/app.bin"), Some(64), &dir.path().join("out64"));
        assert!(got == v2, "64-byte blocks from C differ");
        let got = support::coap_get(&c.coap("fw/cluster/v/1/app.bin"), Some(1024), &dir.path().join("out1k"));
        assert!(got == v1, "version 1 from C differs");
    }
    // B's observer was shown version 2's manifest.
    let (_, manifest2) = coap_fetch(coap_addr(&a), "fw/cluster/manifest");
    assert_ne!(manifest1, manifest2);
    let start = Instant::now();
    loop {
        if let Some((_, at)) = seen.lock().unwrap().iter().find(|(m, _)| *m == manifest2) {
            eprintln!(
                "publish on A to the notification from B: {:?}",
                at.duration_since(published)
            );
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "B never notified its observer of version 2"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // Version numbers come from one sequence across nodes.
    let listed: serde_json::Value =
        serde_json::from_str(&support::curl_text(&format!("{}/api/v1/publish-ids/fw/cluster", c.http()), &[]).1)
            .unwrap();
    let numbers: Vec<u64> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["version"].as_u64().unwrap())
        .collect();
    assert_eq!(numbers, vec![2, 1]);
    let v3 = support::random_bytes(1000, 33);
    std::fs::write(&file, &v3).unwrap();
    b.publish("fw/cluster", &file, &[]);
    until_served(&a, "fw/cluster/v/3/app.bin", &v3, 10);

    // Publishes of one publish-id on two nodes at once: every one gets its own number.
    let before = listed_versions(&c).len();
    std::thread::scope(|scope| {
        for (n, node) in [&a, &b].into_iter().enumerate() {
            let path = dir.path().join(format!("race{n}.bin"));
            scope.spawn(move || {
                for i in 0..5 {
                    std::fs::write(&path, support::random_bytes(2000, 100 + n as u64 * 10 + i)).unwrap();
                    node.publish("fw/race", &path, &[]);
                }
            });
        }
    });
    let start = Instant::now();
    let mut raced = listed_versions_of(&c, "fw/race");
    while raced.len() < 10 && start.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(20));
        raced = listed_versions_of(&c, "fw/race");
    }
    assert_eq!(
        raced,
        (1..=10).rev().collect::<Vec<u64>>(),
        "numbers taken twice or skipped"
    );
    assert_eq!(listed_versions(&c).len(), before);

    // A change in flight (a slow node that holds the change lock from drawing its number
    // to its commit): a publish on B waits for it, so changes commit in the order of their
    // numbers and a node that read up to n never sees a smaller one appear later.
    let mut holder = pg
        .sql_command("BEGIN; SELECT pg_advisory_xact_lock(8319671835241313125); SELECT pg_sleep(2); COMMIT;")
        .spawn()
        .unwrap();
    wait_for("the change lock held", 10, || {
        pg.sql(
            "SELECT COUNT(*) FROM pg_locks WHERE locktype = 'advisory' AND granted \
             AND classid::bigint = 1937074548 AND objid::bigint = 1667330917",
        ) == "1"
    });
    let late = support::random_bytes(3000, 36);
    std::fs::write(&file, &late).unwrap();
    b.publish("fw/ordered", &file, &[]);
    assert!(
        holder.try_wait().unwrap().is_some(),
        "a publish committed while another change held the change lock"
    );
    until_served(&c, "fw/ordered/app.bin", &late, 10);

    // A removal on B: A stops serving the version.
    let auth = format!("Authorization: Bearer {}", b.token());
    let (code, body) = support::curl_text(
        &format!("{}/remove", b.http()),
        &[
            "-H",
            &auth,
            "-H",
            "Content-Type: application/json",
            "-d",
            r#"{"publish_id": "fw/cluster", "version": 3}"#,
        ],
    );
    assert_eq!(code, 200, "{body}");
    let start = Instant::now();
    while coap_fetch(coap_addr(&a), "fw/cluster/v/3/app.bin").0 != ResponseType::NotFound {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "A still serves a removed version"
        );
        std::thread::sleep(Duration::from_millis(20));
    }

    // SIGKILL A in the middle of an upload: nothing half-published shows anywhere, and A
    // comes back (same data directory) to go on numbering where the cluster is.
    let big = dir.path().join("big.bin");
    std::fs::write(&big, support::random_bytes(4 << 20, 34)).unwrap();
    let auth_a = format!("Authorization: Bearer {}", a.token());
    let mut upload = std::process::Command::new("curl")
        .args(["-s", "-o", "/dev/null", "--limit-rate", "512k", "-H", &auth_a])
        .args(["-F", "publish_id=fw/cluster"])
        .arg("-F")
        .arg(format!("file=@{}", big.display()))
        .arg(format!("{}/publish", a.http()))
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    let killed = std::process::Command::new("kill")
        .args(["-9", &a.pid().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let _ = upload.wait();
    drop(a);
    let listed = |s: &TestServer| -> Vec<u64> {
        let v: serde_json::Value =
            serde_json::from_str(&support::curl_text(&format!("{}/api/v1/publish-ids/fw/cluster", s.http()), &[]).1)
                .unwrap();
        v.as_array()
            .unwrap()
            .iter()
            .map(|v| v["version"].as_u64().unwrap())
            .collect()
    };
    assert_eq!(listed(&b), vec![2, 1], "a killed publish left a version behind");
    let a = node(dir.path(), "a", &pg, &s3, Some(key));
    assert_eq!(listed(&a), vec![2, 1]);
    let v4 = support::random_bytes(5000, 35);
    std::fs::write(&file, &v4).unwrap();
    a.publish("fw/cluster", &file, &[]);
    until_served(&b, "fw/cluster/v/4/app.bin", &v4, 10);
    assert_eq!(listed(&c).first(), Some(&4), "numbers are never reused");

    // A node that never had version 1 in its cache (it prefetches only the newest): the
    // CoAP thread's miss fetches it, and the download is whole and exact.
    let d = node(dir.path(), "d", &pg, &s3, Some(key));
    until_served(&d, "fw/cluster/v/1/app.bin", &v1, 10);
    assert!(d.log().iter().all(|l| !l.contains("panicked")), "{:?}", d.log());

    // The object store down: a publish is refused with the reason, cached contents still
    // come from every node.
    let (code, body) = support::curl_text(&format!("{}/readyz", c.http()), &[]);
    assert_eq!(code, 200, "{body}");
    s3.stop();
    let (code, body) = support::curl_text(&format!("{}/readyz", c.http()), &[]);
    assert_eq!(code, 503, "a node without its object store says it is ready: {body}");
    assert!(body.contains("shared-store"), "{body}");
    let out = a.publish_command("fw/cluster", &file).output().unwrap();
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && said.contains("503"), "{said}");
    assert!(said.contains("unavailable"), "{said}");
    until_served(&c, "fw/cluster/app.bin", &v4, 5);
    until_served(&c, "fw/cluster/v/2/app.bin", &v2, 5);
    until_served(&b, "fw/cluster/v/1/app.bin", &v1, 5);
    // A file D never fetched (it prefetched only each publish-id's newest): 5.03 with a
    // Max-Age, so a device tries again, not a 4.04 that says it does not exist.
    let listed: serde_json::Value =
        serde_json::from_str(&support::curl_text(&format!("{}/api/v1/publish-ids/fw/race", d.http()), &[]).1).unwrap();
    let mut codes = Vec::new();
    for v in listed.as_array().unwrap().iter().skip(1) {
        let name = v["files"][0]["name"].as_str().unwrap();
        let path = format!("fw/race/v/{}/{name}", v["version"]);
        codes.push(coap_fetch(coap_addr(&d), &path).0);
    }
    assert!(
        codes.contains(&ResponseType::ServiceUnavailable)
            && codes
                .iter()
                .all(|c| matches!(c, ResponseType::ServiceUnavailable | ResponseType::Content)),
        "{codes:?}"
    );
}

#[test]
fn one_fleet_whose_rollout_outlives_its_leader() {
    let Some(pg) = Postgres::start() else { return };
    let Some(s3) = S3::start() else { return };
    let dir = tempfile::tempdir().unwrap();
    // A starts first and takes the fleet's lease; B and C follow.
    let a = node_v4(dir.path(), "a", &pg, &s3, None);
    let key = dir.path().join("a/keys/signing-key.pem");
    let key = key.to_str().unwrap();
    let b = node_v4(dir.path(), "b", &pg, &s3, Some(key));
    let c = node_v4(dir.path(), "c", &pg, &s3, Some(key));
    assert_eq!((leads(&a), leads(&b), leads(&c)), (true, false, false));

    // A publisher token made for the cluster (in PostgreSQL) holds on every node; so does
    // its revocation, within a second or two.
    let dir_cli = dir.path().join("cli");
    let token = support::suitcase(&[
        "token",
        "create",
        "ci",
        "--database",
        &pg.url,
        "--data",
        dir_cli.to_str().unwrap(),
    ]);
    let token = token.trim().to_string();
    let remove_with = |n: &TestServer, token: &str| -> u16 {
        support::curl_text(
            &format!("{}/remove", n.http()),
            &[
                "-H",
                &format!("Authorization: Bearer {token}"),
                "-H",
                "Content-Type: application/json",
                "-d",
                r#"{"publish_id": "no/such/id"}"#,
            ],
        )
        .0
    };
    for n in [&a, &b, &c] {
        wait_for("the cluster's token honoured", 5, || remove_with(n, &token) == 404);
    }
    assert_eq!(remove_with(&b, "0123456789abcdef0123456789abcdef01234567"), 401);
    let listed = support::suitcase(&["token", "list", "--database", &pg.url]);
    assert!(listed.contains("ci") && listed.contains("publisher"), "{listed}");
    assert!(!listed.contains(&token), "{listed}");
    support::suitcase(&["token", "revoke", "ci", "--database", &pg.url]);
    for n in [&a, &b, &c] {
        let took = wait_for("the revocation in force", 5, || remove_with(n, &token) == 401);
        eprintln!("token revoked in PostgreSQL to refused by a node: {took:?}");
    }

    // Two versions, published on C (their manifests name C: the node the devices use).
    let file = dir.path().join("roll.bin");
    let mut seqs = Vec::new();
    for seed in [41, 42] {
        std::fs::write(&file, support::random_bytes(6000, seed)).unwrap();
        c.publish("fw/roll", &file, &[]);
        let listed: serde_json::Value = serde_json::from_str(&c.cli(&["list", "fw/roll", "--json"])).unwrap();
        seqs.push(
            listed
                .as_array()
                .unwrap()
                .iter()
                .filter_map(|v| v["sequence_number"].as_u64())
                .max()
                .unwrap(),
        );
    }
    let (old, new) = (seqs[0], seqs[1]);

    // Four devices that wait to be let go after a trigger, added through C (a follower:
    // the leader adds them) and known to every node.
    let devices: Vec<SimDevice> = (0..4)
        .map(|i| {
            SimDevice::start(
                &format!("r{i}"),
                &format!("127.0.9.{}", 10 + i),
                "fw/roll",
                Behaviour::Slow,
            )
        })
        .collect();
    let mut csv = String::from("id,coap,publish_id,groups,running_seq\n");
    for d in &devices {
        csv += &format!("{},{},fw/roll,lab,{old}\n", d.id, d.addr);
    }
    let list = dir.path().join("devices.csv");
    std::fs::write(&list, csv).unwrap();
    c.cli(&["device", "import", list.to_str().unwrap()]);
    for n in [&a, &b] {
        let listed: serde_json::Value = serde_json::from_str(&n.cli(&["device", "list", "--json"])).unwrap();
        assert_eq!(listed.as_array().unwrap().len(), 4, "{listed:#}");
    }

    // A rollout created on C, one device at a time: A (the leader) triggers r0, which
    // downloads from C (let through by the gates A handed to C) and reports to C.
    let created: serde_json::Value = serde_json::from_str(&c.cli(&[
        "rollout",
        "create",
        "--publish-id",
        "fw/roll",
        "--json",
        "--max-concurrent",
        "1",
    ]))
    .unwrap();
    let id = created["id"].as_u64().unwrap();
    wait_for("r0 triggered", 15, || devices[0].triggers() == 1);
    devices[0].go.store(true, Ordering::Relaxed);
    wait_for("r0 installed", 20, || {
        rollout_status(&b, id)["totals"]["installed"] == 1
    });
    wait_for("r1 triggered", 15, || devices[1].triggers() == 1);

    // SIGKILL the leader while r1 works: B or C takes the lease and runs the rollout on.
    let killed = std::process::Command::new("kill")
        .args(["-9", &a.pid().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    drop(a);
    let took = wait_for("a new leader", 15, || leads(&b) || leads(&c));
    eprintln!("SIGKILL of the leader to a new one: {took:?}");
    assert!(!(leads(&b) && leads(&c)), "two leaders");
    for d in &devices[1..] {
        d.go.store(true, Ordering::Relaxed);
    }
    let start = Instant::now();
    let r = loop {
        let r = rollout_status(&c, id);
        if r["state"] == "finished" || r["state"] == "halted" {
            break r;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "the rollout stopped with its leader: {r:#}\n{:#?}",
            b.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(r["state"], "finished", "{r:#}");
    assert_eq!(r["totals"]["installed"], 4, "{r:#}");
    assert_eq!(
        devices.iter().map(SimDevice::triggers).collect::<Vec<_>>(),
        vec![1, 1, 1, 1],
        "a device was triggered twice or never"
    );
    for n in [&b, &c] {
        let d3: serde_json::Value = serde_json::from_str(&n.cli(&["device", "show", "r3", "--json"])).unwrap();
        assert_eq!(
            (d3["state"].as_str(), d3["running_seq"].as_u64()),
            (Some("installed"), Some(new)),
            "{d3:#}"
        );
    }

    // The lease connection cut while the leader's process lives (a network fault): it
    // steps down, one node leads in a new term, and a device added through C arrives.
    let term = || pg.sql("SELECT term FROM fleet_leader").parse::<i64>().unwrap();
    let before = term();
    let cut = pg.sql(
        "SELECT COUNT(pg_terminate_backend(pid)) FROM pg_locks WHERE locktype = 'advisory' \
         AND classid::bigint = 1937074548 AND objid::bigint = 1718379877",
    );
    assert_eq!(cut, "1");
    wait_for("a leader in a new term", 15, || {
        term() > before && [&b, &c].iter().filter(|n| leads(n)).count() == 1
    });
    c.cli(&["device", "add", "late", "--coap", "127.0.9.99:5683"]);
    let late: serde_json::Value = serde_json::from_str(&b.cli(&["device", "show", "late", "--json"])).unwrap();
    assert_eq!(late["id"], "late", "{late:#}");
    for n in [&b, &c] {
        assert!(n.log().iter().all(|l| !l.contains("panicked")), "{:?}", n.log());
    }
}

#[test]
fn blobs_nobody_references_are_collected_but_never_one_a_publish_claimed() {
    use suitcase_store::{NewFile, PublishRequest, Store};
    use suitcase_store_shared::{S3Credentials, SharedConfig, SharedStore};
    let Some(pg) = Postgres::start() else { return };
    let Some(s3) = S3::start() else { return };
    let dir = tempfile::tempdir().unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let env = s3.env();
    let var = |k: &str| env.iter().find(|(n, _)| *n == k).unwrap().1.clone();
    let config = |cache: &str| SharedConfig {
        database: pg.url.clone(),
        blobs: format!("s3://{}/gc", s3.bucket),
        endpoint: Some(s3.endpoint.clone()),
        cache_dir: dir.path().join(cache),
        memory_bytes: 1 << 20,
        disk_bytes: 1 << 26,
        credentials: Some(S3Credentials {
            access_key_id: var("AWS_ACCESS_KEY_ID"),
            secret_access_key: var("AWS_SECRET_ACCESS_KEY"),
            region: var("AWS_REGION"),
        }),
    };
    let store = rt.block_on(SharedStore::open(&config("a"))).unwrap();
    let publish = |data: &[u8], fail: bool| {
        store.publish(
            PublishRequest {
                publish_id: "fw/gc".into(),
                files: vec![NewFile {
                    name: "app.bin".into(),
                    data: bytes::Bytes::copy_from_slice(data),
                }],
                ..Default::default()
            },
            Box::new(move |_| if fail { Err("refused".into()) } else { Ok(None) }),
        )
    };
    let (kept, removed, orphan) = (
        support::random_bytes(70_000, 51),
        support::random_bytes(80_000, 52),
        support::random_bytes(90_000, 53),
    );
    publish(&kept, false).unwrap();
    let gone = publish(&removed, false).unwrap();
    store.remove("fw/gc", gone.seq).unwrap();
    // A publish that fails after its contents were stored leaves them behind.
    assert!(publish(&orphan, true).is_err());

    // The first run marks the two blobs nobody references; the second deletes them.
    let first = rt.block_on(store.collect_garbage(Duration::ZERO)).unwrap();
    assert_eq!((first.marked, first.deleted), (2, 0), "{first:?}");
    // A publish of the orphan's bytes claims the blob between the two runs: it is spared.
    let again = publish(&orphan, false).unwrap();
    let second = rt.block_on(store.collect_garbage(Duration::ZERO)).unwrap();
    assert_eq!(
        (second.deleted, second.deleted_bytes, second.marked),
        (1, removed.len() as u64, 0),
        "{second:?}"
    );
    let third = rt.block_on(store.collect_garbage(Duration::ZERO)).unwrap();
    assert_eq!((third.marked, third.deleted), (0, 0), "{third:?}");

    // A node with an empty cache still reads every version that is served.
    let fresh = rt.block_on(SharedStore::open(&config("b"))).unwrap();
    for (seq, want) in [(1, &kept), (again.seq, &orphan)] {
        let v = fresh.version("fw/gc", seq).unwrap();
        let blob = fresh.blob(&v.files[0]).unwrap();
        assert!(blob.range(0, blob.len()).unwrap() == want[..], "version {seq} differs");
    }
    assert!(fresh.version("fw/gc", gone.seq).is_none());
}
