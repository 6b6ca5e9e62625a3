//! The device inventory end to end, with the real binary, on SQLite and on a real
//! PostgreSQL: devices added with the CLI, simulated devices that fetch a manifest and an
//! image block-wise over CoAP and report, `device list --json` read back, and all of it
//! again after SIGKILL and a restart.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod support;

use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use coap_lite::{CoapOption, MessageClass, MessageType, Packet, RequestType, ResponseType};
use support::TestServer;

/// A device of this test: one UDP socket on its own loopback address, CON requests with
/// retransmission, 64-byte blocks (as RIOT asks).
struct SimDevice {
    sock: UdpSocket,
    server: SocketAddr,
    mid: u16,
}

impl SimDevice {
    fn new(ip: &str, server: SocketAddr) -> SimDevice {
        let sock = UdpSocket::bind((ip, 0)).unwrap();
        sock.set_read_timeout(Some(Duration::from_millis(500))).unwrap();
        SimDevice { sock, server, mid: 100 }
    }

    fn exchange(&mut self, mut p: Packet) -> Packet {
        self.mid = self.mid.wrapping_add(1);
        p.header.message_id = self.mid;
        p.header.set_type(MessageType::Confirmable);
        let bytes = p.to_bytes().unwrap();
        let mut buf = [0u8; 1500];
        for _ in 0..8 {
            self.sock.send_to(&bytes, self.server).unwrap();
            let deadline = Instant::now() + Duration::from_millis(500);
            while Instant::now() < deadline {
                let Ok((n, _)) = self.sock.recv_from(&mut buf) else {
                    break;
                };
                let r = Packet::from_bytes(&buf[..n]).unwrap();
                if r.header.message_id == self.mid {
                    return r;
                }
            }
        }
        panic!("no answer from the server");
    }

    fn request(code: RequestType, path: &str) -> Packet {
        let mut p = Packet::new();
        p.header.code = MessageClass::Request(code);
        for s in path.split('/') {
            p.add_option(CoapOption::UriPath, s.as_bytes().to_vec());
        }
        p
    }

    /// GET `path` block-wise (64-byte blocks), the first `limit` blocks at most.
    fn get(&mut self, path: &str, limit: u32) -> Vec<u8> {
        let mut out = Vec::new();
        for num in 0..limit {
            let mut p = Self::request(RequestType::Get, path);
            let v = (num << 4) | 2;
            let bytes: Vec<u8> = if v < 256 {
                vec![v as u8]
            } else {
                vec![(v >> 8) as u8, v as u8]
            };
            p.add_option(CoapOption::Block2, bytes);
            let r = self.exchange(p);
            assert_eq!(
                r.header.code,
                MessageClass::Response(ResponseType::Content),
                "{path} block {num}"
            );
            out.extend_from_slice(&r.payload);
            let b2 = r.get_first_option(CoapOption::Block2).unwrap();
            if b2.last().unwrap() & 0x08 == 0 {
                break;
            }
        }
        out
    }

    fn post(&mut self, path: &str, content_format: u8, payload: &[u8]) -> Packet {
        let mut p = Self::request(RequestType::Post, path);
        p.add_option(CoapOption::ContentFormat, vec![content_format]);
        p.payload = payload.to_vec();
        self.exchange(p)
    }
}

/// RIOT's `GET /suit/slot/active` as a test device serves it: one ASCII digit, which the
/// test changes to say the device rebooted into the other slot.
struct SlotResponder {
    addr: SocketAddr,
    slot: std::sync::Arc<std::sync::atomic::AtomicU8>,
    reads: std::sync::Arc<std::sync::atomic::AtomicU32>,
}

impl SlotResponder {
    fn start(ip: &str) -> SlotResponder {
        use std::sync::atomic::Ordering;
        let sock = UdpSocket::bind((ip, 0)).unwrap();
        let addr = sock.local_addr().unwrap();
        let slot = std::sync::Arc::new(std::sync::atomic::AtomicU8::new(b'0'));
        let reads = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
        let (s, r) = (slot.clone(), reads.clone());
        std::thread::spawn(move || {
            let mut buf = [0u8; 1500];
            while let Ok((n, peer)) = sock.recv_from(&mut buf) {
                let Ok(req) = Packet::from_bytes(&buf[..n]) else {
                    continue;
                };
                let path: Vec<String> = req
                    .get_option(CoapOption::UriPath)
                    .map(|v| v.iter().map(|s| String::from_utf8_lossy(s).to_string()).collect())
                    .unwrap_or_default();
                let mut reply = Packet::new();
                reply.header.set_type(MessageType::Acknowledgement);
                reply.header.message_id = req.header.message_id;
                reply.set_token(req.get_token().to_vec());
                if path == ["suit", "trigger"] && req.header.code == MessageClass::Request(RequestType::Post) {
                    reply.header.code = MessageClass::Response(ResponseType::Changed);
                } else if path == ["suit", "slot", "active"] {
                    r.fetch_add(1, Ordering::Relaxed);
                    reply.header.code = MessageClass::Response(ResponseType::Content);
                    reply.payload = vec![s.load(Ordering::Relaxed)];
                } else {
                    reply.header.code = MessageClass::Response(ResponseType::NotFound);
                }
                let _ = sock.send_to(&reply.to_bytes().unwrap(), peer);
            }
        });
        SlotResponder { addr, slot, reads }
    }
}

fn devices(server: &TestServer) -> serde_json::Value {
    serde_json::from_str(&server.cli(&["device", "list", "--json"])).unwrap()
}

fn device<'a>(all: &'a serde_json::Value, id: &str) -> &'a serde_json::Value {
    all.as_array()
        .unwrap()
        .iter()
        .find(|d| d["id"] == id)
        .unwrap_or_else(|| panic!("{id} in {all}"))
}

/// Wait until `check` holds for the listing.
fn until(server: &TestServer, what: &str, check: impl Fn(&serde_json::Value) -> bool) -> serde_json::Value {
    let start = Instant::now();
    loop {
        let all = devices(server);
        if check(&all) {
            return all;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "{what}: {all:#}\n{:#?}",
            server.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn fleet_end_to_end(extra: &[&str]) {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let server = TestServer::start_v4(&data, extra);
    let image = support::random_bytes(3000, 7);
    let file = dir.path().join("image.bin");
    std::fs::write(&file, &image).unwrap();
    server.publish("fw/sim", &file, &[]);
    let versions: serde_json::Value = serde_json::from_str(&server.cli(&["list", "fw/sim", "--json"])).unwrap();
    let seq = versions[0]["sequence_number"].as_u64().unwrap();

    server.cli(&[
        "device",
        "add",
        "d1",
        "--coap",
        "127.0.0.2:5683",
        "--class",
        "sim",
        "--group",
        "lab",
        "--publish-id",
        "fw/sim",
    ]);
    server.cli(&["device", "add", "d2", "--coap", "127.0.0.3:5683", "--class", "sim"]);
    let coap: SocketAddr = format!("127.0.0.1:{}", server.coap_port).parse().unwrap();

    // d1: manifest, the whole image, a report of success.
    let mut d1 = SimDevice::new("127.0.0.2", coap);
    let manifest = d1.get("fw/sim/manifest", 100);
    assert!(!manifest.is_empty());
    assert_eq!(d1.get("fw/sim/v/1/image.bin", 1000), image);
    // A bad report: 4.00 with the reason, and nothing changes.
    let bad = d1.post("fw/sim/report", 50, br#"{"seq": "three", "result": "ok"}"#);
    assert_eq!(bad.header.code, MessageClass::Response(ResponseType::BadRequest));
    assert!(
        String::from_utf8_lossy(&bad.payload).contains("seq"),
        "{:?}",
        bad.payload
    );
    let all = until(&server, "d1 downloaded", |all| {
        device(all, "d1")["state"] == "downloaded"
    });
    assert_eq!(device(&all, "d1")["progress"], 100);
    let ok = d1.post(
        "fw/sim/report",
        50,
        format!(r#"{{"sequence_number": {seq}, "result": "ok"}}"#).as_bytes(),
    );
    assert_eq!(ok.header.code, MessageClass::Response(ResponseType::Changed));

    // d2: manifest and 24 of the image's 47 blocks (1536 of 3000 bytes), then silence.
    let mut d2 = SimDevice::new("127.0.0.3", coap);
    d2.get("fw/sim/manifest", 100);
    assert_eq!(d2.get("fw/sim/v/1/image.bin", 24), image[..1536]);

    let check = |all: &serde_json::Value| {
        let (a, b) = (device(all, "d1"), device(all, "d2"));
        a["state"] == "installed" && a["running_seq"] == seq && b["state"] == "downloading" && b["progress"] == 51
    };
    let all = until(&server, "d1 installed, d2 at 51 %", check);
    let d = device(&all, "d1");
    assert_eq!(
        (d["target_seq"].as_u64(), d["class"].as_str()),
        (Some(seq), Some("sim"))
    );
    assert_eq!(d["groups"], serde_json::json!(["lab"]));
    assert_eq!(device(&all, "d2")["bytes_done"], 1536);
    // Filters.
    let lab: serde_json::Value =
        serde_json::from_str(&server.cli(&["device", "list", "--group", "lab", "--json"])).unwrap();
    assert_eq!(lab.as_array().unwrap().len(), 1);
    let downloading: serde_json::Value =
        serde_json::from_str(&server.cli(&["device", "list", "--state", "downloading", "--json"])).unwrap();
    assert_eq!(downloading[0]["id"], "d2");
    // The table and the page show it too.
    let table = server.cli(&["device", "list"]);
    assert!(table.contains("d2") && table.contains("51%"), "{table}");

    // An unknown peer that fetches the manifest is recorded as a device.
    let mut stranger = SimDevice::new("127.0.0.4", coap);
    stranger.get("fw/sim/manifest", 100);
    until(&server, "the stranger recorded", |all| {
        all.as_array()
            .unwrap()
            .iter()
            .any(|d| d["id"] == "coap-127.0.0.4" && d["registered"] == false)
    });

    // A RIOT-like device without reports: its slot is read when it fetches the manifest and
    // polled after the download; once it says another slot, the device is installed.
    let riot = SlotResponder::start("127.0.0.5");
    server.cli(&[
        "device",
        "add",
        "riot",
        "--coap",
        &riot.addr.to_string(),
        "--class",
        "native64",
    ]);
    // It goes straight from the manifest to the image, as RIOT does.
    let mut d5 = SimDevice::new("127.0.0.5", coap);
    d5.get("fw/sim/manifest", 100);
    assert_eq!(d5.get("fw/sim/v/1/image.bin", 1000), image);
    until(&server, "riot downloaded", |all| {
        device(all, "riot")["state"] == "downloaded"
    });
    let start = Instant::now();
    while riot.reads.load(std::sync::atomic::Ordering::Relaxed) == 0 {
        assert!(start.elapsed() < Duration::from_secs(10), "the slot was never read");
        std::thread::sleep(Duration::from_millis(50));
    }
    riot.slot.store(b'1', std::sync::atomic::Ordering::Relaxed);
    let all = until(&server, "riot installed by its slot", |all| {
        device(all, "riot")["state"] == "installed"
    });
    assert_eq!(device(&all, "riot")["running_seq"], seq);
    assert_eq!(device(&all, "riot")["slot_before"], "0");

    // SIGKILL and a restart: everything acknowledged is there.
    let port_free_data = data.clone();
    drop(server);
    let server = TestServer::start_v4(&port_free_data, extra);
    let all = devices(&server);
    assert!(check(&all), "after the restart: {all:#}");
    assert!(all.as_array().unwrap().iter().any(|d| d["id"] == "coap-127.0.0.4"));
    // Reports over HTTP: a bad one is refused with the reason and changes nothing; a
    // failure is recorded with its reason.
    let report_url = format!("{}/api/v1/devices/d2/report", server.http());
    let json = "Content-Type: application/json";
    let report = |body: &str| support::curl_text(&report_url, &["-H", json, "-d", body]);
    let (status, body) = report(r#"{"result": "perhaps"}"#);
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("result"), "{body}");
    assert_eq!(device(&devices(&server), "d2")["state"], "downloading");
    let (status, body) = report(r#"{"result": "error", "reason": "battery low"}"#);
    assert_eq!(status, 200, "{body}");
    let d2 = device(&devices(&server), "d2").clone();
    assert_eq!(
        (d2["state"].as_str(), d2["reason"].as_str()),
        (Some("failed"), Some("battery low"))
    );
    // Once device tokens exist, a device token reports for its own device only, and the
    // public page no longer lists devices.
    let data_arg = server.data.display().to_string();
    let token = server
        .cli(&["token", "create", "d1", "--device", "--data", &data_arg])
        .trim()
        .to_string();
    std::thread::sleep(Duration::from_millis(1200)); // the token file watcher's refresh
    let auth = format!("Authorization: token {token}");
    let report_as = |id: &str| {
        let url = format!("{}/api/v1/devices/{id}/report", server.http());
        support::curl_text(&url, &["-H", json, "-H", &auth, "-d", r#"{"result": "ok"}"#]).0
    };
    assert_eq!(report_as("d2"), 403);
    assert_eq!(device(&devices(&server), "d2")["state"], "failed");
    assert_eq!(report_as("d1"), 200);
    let (_, page) = support::curl_text(&format!("{}/", server.http()), &[]);
    assert!(
        page.contains("the list of devices is for publishers") && !page.contains(">d1<"),
        "{page}"
    );
    // Nothing is downloading or due: watch ends at once with the tally.
    let watched = server.cli(&["device", "watch", "--exit-when-idle", "--interval", "0.2"]);
    assert!(watched.contains("idle: 2 installed, 1 failed, 4 in all"), "{watched}");
    // A trigger the device acknowledges: notified, for the version sent.
    let notified = server.cli(&["notify", "--publish-id", "fw/sim", "riot", "--json"]);
    assert!(notified.contains("\"ok\""), "{notified}");
    let all = until(&server, "riot notified", |all| {
        device(all, "riot")["state"] == "notified"
    });
    assert_eq!(device(&all, "riot")["target_version"], 1);
    // Remove.
    server.cli(&["device", "rm", "d2"]);
    assert!(devices(&server).as_array().unwrap().iter().all(|d| d["id"] != "d2"));
}

#[test]
fn fleet_on_sqlite() {
    fleet_end_to_end(&[]);
}

#[test]
fn fleet_on_postgresql() {
    let Some(pg) = support::postgres::Postgres::start() else {
        return;
    };
    fleet_end_to_end(&["--database", &pg.url]);
}

/// An ESP device updating over HTTP (`/firmware/<publish-id>` with its MAC): its state and
/// the bytes sent are tracked like CoAP blocks; an unknown MAC is recorded as `http-<MAC>`.
#[test]
fn http_downloads_are_tracked_by_the_device_s_mac() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start_v4(&dir.path().join("data"), &[]);
    let image = support::random_bytes(200_000, 11);
    let file = dir.path().join("esp.bin");
    std::fs::write(&file, &image).unwrap();
    server.publish("esp/app", &file, &["--version", "1.1.0"]);
    server.cli(&[
        "device",
        "add",
        "esp-1",
        "--http-id",
        "AA:BB:CC:DD:EE:01",
        "--class",
        "esp32",
    ]);
    let fetch = |mac: &str| {
        let out = std::process::Command::new("curl")
            .args(["-s", "-o", "/dev/null", "-w", "%{http_code} %{size_download}"])
            .args(["-H", "x-ESP32-version: 1.0.0", "-H", &format!("x-ESP32-STA-MAC: {mac}")])
            .arg(format!("{}/firmware/esp/app", server.http()))
            .output()
            .expect("curl");
        String::from_utf8_lossy(&out.stdout).to_string()
    };
    assert_eq!(fetch("AA:BB:CC:DD:EE:01"), "200 200000");
    assert_eq!(fetch("11:22:33:44:55:66"), "200 200000");
    let all = until(&server, "both downloaded", |all| {
        let list = all.as_array().unwrap();
        list.iter().any(|d| d["id"] == "esp-1" && d["state"] == "downloaded")
            && list
                .iter()
                .any(|d| d["id"] == "http-11:22:33:44:55:66" && d["state"] == "downloaded")
    });
    let d = device(&all, "esp-1");
    assert_eq!(
        (d["bytes_done"].as_u64(), d["progress"].as_u64()),
        (Some(200_000), Some(100))
    );
    assert_eq!(d["running_semver"], "1.0.0", "what the device said it runs");
    assert_eq!(d["target_semver"], "1.1.0");
    let stranger = device(&all, "http-11:22:33:44:55:66");
    assert_eq!(
        (stranger["registered"].as_bool(), stranger["http_id"].as_str()),
        (Some(false), Some("11:22:33:44:55:66"))
    );
}
