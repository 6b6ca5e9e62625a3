//! A real RIOT device: RIOT's own `examples/advanced/suit_update`, built for `native64` (a
//! Linux process with a tap interface; see `shared/riot-native/README.md`), in a network
//! namespace of its own with suitcase. suitcase builds and signs riot09 manifests for a VFS
//! file and a RAM region, triggers them with `suitcase notify`, and the device installs them
//! (console `update successful`, the installed bytes compared); a replayed and an older
//! manifest are refused by the device (`seq_nr <= running image`); then a manifest signed
//! offline with `suitcase manifest create --profile riot09` and uploaded the way RIOT's
//! tooling does (curl multipart, `riot.suit.<seq>.bin`) installs too.
//!
//! Needs root, /dev/net/tun, iproute2 and the device binary (`SUITCASE_RIOT_NATIVE`, default
//! `../shared/riot-native` beside the repository). Without them the test says why and
//! returns, except under `CI=true`, where a missing prerequisite fails it.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::io::{Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use support::netns::{self, Netns};
use support::*;

const SERVER_ADDR: &str = "fd00:dead:beef::1";
const DEVICE_ADDR: &str = "fd00:dead:beef::2";
const DEVICE: &str = "[fd00:dead:beef::2]";
const PUBLISH_ID: &str = "fw/suit_update/native64";

fn riot_dir() -> PathBuf {
    std::env::var_os("SUITCASE_RIOT_NATIVE").map_or_else(
        || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/riot-native"),
        PathBuf::from,
    )
}

fn device_binary() -> PathBuf {
    riot_dir().join("suit_update-native64")
}

/// Why the test cannot run on this machine, if it cannot.
fn missing_prerequisite() -> Option<String> {
    if let Some(why) = netns::missing_prerequisite() {
        return Some(why);
    }
    if !device_binary().is_file() {
        return Some(format!(
            "no RIOT device binary at {} (set SUITCASE_RIOT_NATIVE)",
            device_binary().display()
        ));
    }
    if !riot_dir().join("riot-test-key.pem").is_file() {
        return Some(format!("no riot-test-key.pem in {}", riot_dir().display()));
    }
    if Command::new("curl").arg("--version").output().is_err() {
        return Some("no curl".into());
    }
    None
}

/// The RIOT device, its shell on a pty in non-canonical mode, its console collected.
struct Device {
    child: Child,
    tty: std::fs::File,
    console: Arc<Mutex<Vec<u8>>>,
    dir: PathBuf,
}

impl Device {
    fn start(ns: &Netns, dir: &Path) -> Device {
        use nix::sys::termios::{tcgetattr, tcsetattr, LocalFlags, SetArg};
        let pty = nix::pty::openpty(None, None).expect("openpty");
        let mut t = tcgetattr(&pty.slave).unwrap();
        t.local_flags.remove(LocalFlags::ICANON | LocalFlags::ECHO);
        tcsetattr(&pty.slave, SetArg::TCSANOW, &t).unwrap();
        let slave = pty.slave;
        let child = ns
            .command(device_binary())
            .arg("tap0")
            .current_dir(dir)
            .stdin(Stdio::from(slave.try_clone().unwrap()))
            .stdout(Stdio::from(slave.try_clone().unwrap()))
            .stderr(Stdio::from(slave))
            .spawn()
            .expect("start the RIOT device");
        let tty = std::fs::File::from(pty.master);
        let console = Arc::new(Mutex::new(Vec::new()));
        let (mut reader, sink) = (tty.try_clone().unwrap(), console.clone());
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            // EIO once the device is gone.
            while let Ok(n @ 1..) = reader.read(&mut buf) {
                sink.lock().unwrap().extend_from_slice(&buf[..n]);
            }
        });
        Device {
            child,
            tty,
            console,
            dir: dir.to_path_buf(),
        }
    }

    /// Type a line: the device's stdin buffer is 64 bytes, so in chunks with pauses.
    fn send(&mut self, line: &str) {
        let data = format!("{line}\n");
        for chunk in data.as_bytes().chunks(24) {
            self.tty.write_all(chunk).unwrap();
            std::thread::sleep(Duration::from_millis(40));
        }
    }

    /// Where the console is now: later waits look only at what comes after.
    fn mark(&self) -> usize {
        self.console.lock().unwrap().len()
    }

    fn text_since(&self, since: usize) -> String {
        let c = self.console.lock().unwrap();
        String::from_utf8_lossy(&c[since.min(c.len())..]).into_owned()
    }

    /// The file `path` of the device's VFS (`nvm0/` in its working directory).
    fn vfs_file(&self, path: &str) -> Vec<u8> {
        let p = self.dir.join(path.trim_start_matches('/'));
        std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
    }

    /// Wait until one of `needles` appears after `since`: (which, offset after it).
    fn wait_for(&self, since: usize, needles: &[&str], limit: Duration) -> (usize, usize) {
        let deadline = Instant::now() + limit;
        loop {
            // Byte offsets: the console is matched as bytes (progress bars are not ASCII).
            let text = {
                let c = self.console.lock().unwrap();
                c[since.min(c.len())..].to_vec()
            };
            let first = needles
                .iter()
                .enumerate()
                .filter_map(|(i, n)| {
                    text.windows(n.len())
                        .position(|w| w == n.as_bytes())
                        .map(|at| (at, i, n.len()))
                })
                .min();
            if let Some((at, i, len)) = first {
                return (i, since + at + len);
            }
            assert!(
                Instant::now() < deadline,
                "the device printed none of {needles:?} within {limit:?}; console since then:\n{}",
                String::from_utf8_lossy(&text)
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Run a shell command and return its output (up to the next prompt).
    fn shell(&mut self, line: &str) -> String {
        let mark = self.mark();
        self.send(line);
        let (_, end) = self.wait_for(mark, &["\n> "], Duration::from_secs(20));
        let c = self.console.lock().unwrap();
        String::from_utf8_lossy(&c[mark..end - 3]).into_owned()
    }

    /// What `storage_content <location> 0 <len>` prints, as bytes.
    fn storage_content(&mut self, location: &str, len: usize) -> Vec<u8> {
        let out = self.shell(&format!("storage_content {location} 0 {len}"));
        // The first line is the shell's echo of the command.
        let hex: String = out
            .split_once('\n')
            .map_or("", |(_, rest)| rest)
            .chars()
            .filter(char::is_ascii_hexdigit)
            .collect();
        hex::decode(&hex).unwrap_or_else(|e| panic!("storage_content output {out:?}: {e}"))
    }
}

impl Drop for Device {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            let from = self.mark().saturating_sub(8000);
            eprintln!(
                "--- RIOT device console (its last 8000 bytes) ---\n{}",
                self.text_since(from)
            );
        }
    }
}

/// `suitcase ARGS…` inside the namespace, as the publisher on the server's host.
fn cli(ns: &Netns, server: &TestServer, args: &[&str]) -> (bool, String) {
    let out = ns
        .command(bin())
        .env("SUITCASE_TOKEN", server.token())
        .args(args)
        .output()
        .expect("run suitcase");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        eprintln!("suitcase {args:?}: {stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    }
    (out.status.success(), stdout)
}

/// Publish `file` with a riot09 manifest the server builds for `component`; its sequence number.
fn publish_riot09(ns: &Netns, server: &TestServer, file: &Path, component: &str) -> u64 {
    let (ok, out) = cli(
        ns,
        server,
        &[
            "publish",
            "--json",
            "--quiet",
            "--server",
            &server.http(),
            "--publish-id",
            PUBLISH_ID,
            "--profile",
            "riot09",
            "--component",
            component,
            "--publish",
            file.to_str().unwrap(),
        ],
    );
    assert!(ok, "publish: {out}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let name = v["manifest"]["name"].as_str().unwrap_or_default().to_string();
    let seq = v["sequence_number"].as_u64().unwrap();
    assert_eq!(name, format!("riot.suit.{seq}.bin"), "{v}");
    seq
}

/// `suitcase notify` the device of `version`; the sequence number sent. The device must
/// answer the trigger with 2.01, whether it will install the manifest or not.
/// Notify the device of `version`, watching what it downloads: (sequence number sent, what
/// suitcase saw the device download: `downloaded` or `refused`).
fn notify(ns: &Netns, server: &TestServer, version: &str) -> (u64, String) {
    let (_, out) = cli(
        ns,
        server,
        &[
            "notify",
            "--json",
            "--watch",
            "5",
            "--server",
            &server.http(),
            "--publish-id",
            PUBLISH_ID,
            "--version",
            version,
            DEVICE,
        ],
    );
    let v: serde_json::Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{out}: {e}"));
    let r = &v["results"][0];
    assert_eq!(
        (r["result"].as_str(), r["code"].as_str()),
        (Some("ok"), Some("2.01")),
        "{v}"
    );
    let url = v["manifest_url"].as_str().unwrap();
    assert!(url.len() < 128, "RIOT's URL buffer: {url}");
    (
        v["sequence_number"].as_u64().unwrap(),
        r["download"].as_str().unwrap_or("-").to_string(),
    )
}

/// The installed bytes are the published ones (lengths and digests in the message).
fn assert_same(what: &str, got: &[u8], want: &[u8]) {
    let digest = |b: &[u8]| suitcase_store::Sha256::of(b).to_hex();
    assert!(
        got == want,
        "{what}: the device holds {} bytes (sha256 {}), the published image is {} bytes (sha256 {})",
        got.len(),
        digest(got),
        want.len(),
        digest(want)
    );
}

const SUCCESS: &str = "update successful";
const REFUSED: &str = "seq_nr <= running image";
/// What the device prints when an update goes wrong in other ways.
const FAILURES: [&str; 4] = [
    "error getting manifest",
    "update failed",
    "No storage handler found",
    "Unable to validate signature",
];

/// Trigger `version` and wait for the device's verdict: `Ok(seq)` installed, `Err(seq)`
/// refused as not newer than the running image; anything else fails the test.
fn trigger(dev: &Device, ns: &Netns, server: &TestServer, version: &str) -> Result<u64, u64> {
    let mark = dev.mark();
    let (seq, download) = notify(ns, server, version);
    let mut needles = vec![SUCCESS, REFUSED];
    needles.extend(FAILURES);
    let (which, end) = dev.wait_for(mark, &needles, Duration::from_secs(60));
    // What suitcase reports agrees with the device: it fetched manifest and image, or only
    // the manifest.
    let expected = if which == 0 { "downloaded" } else { "refused" };
    assert_eq!(
        download, expected,
        "suitcase's notify report for {version} (sequence number {seq})"
    );
    match which {
        0 => Ok(seq),
        1 => {
            // The worker ends its run with `update failed, hdr invalid`; wait for it so the
            // next trigger does not find it busy.
            dev.wait_for(end, &["suit_worker: update failed"], Duration::from_secs(10));
            Err(seq)
        }
        _ => panic!(
            "update of {version} (sequence number {seq}) failed on the device:\n{}",
            dev.text_since(mark)
        ),
    }
}

#[test]
fn a_real_riot_device_installs_what_suitcase_publishes_and_refuses_replays() {
    if let Some(why) = missing_prerequisite() {
        netns::skip(&format!("riot_device: {why}"));
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let dev_dir = d.join("device");
    std::fs::create_dir_all(&dev_dir).unwrap();
    // Dropped last: kills whatever is left in the namespace and deletes it.
    let ns = Netns::new("sr");
    ns.tap("tap0", &[&format!("{SERVER_ADDR}/64")]);

    let mut dev = Device::start(&ns, &dev_dir);
    dev.wait_for(0, &["Starting the shell"], Duration::from_secs(20));
    let ifconfig = dev.shell("ifconfig");
    let iface = ifconfig
        .split("Iface")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .unwrap_or_else(|| panic!("no interface in {ifconfig:?}"))
        .to_string();
    let added = dev.shell(&format!("ifconfig {iface} add {DEVICE_ADDR}/64"));
    assert!(added.contains("success: added"), "{added}");

    // The server, inside the namespace, signing with the key the device trusts.
    let key = riot_dir().join("riot-test-key.pem");
    let server = TestServer::start_in_netns(
        &ns.name,
        &format!("[{SERVER_ADDR}]"),
        &d.join("data"),
        &["--key", key.to_str().unwrap(), "--notify-ack-timeout-ms", "1000"],
    );
    // The device answers CoAP once its address is usable (DAD).
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let out = ns
            .command(coap_client())
            .args(["-m", "get", "-B", "2", &format!("coap://{DEVICE}/riot/board")])
            .output()
            .unwrap();
        if String::from_utf8_lossy(&out.stdout).contains("native64") {
            break;
        }
        assert!(Instant::now() < deadline, "the device never answered CoAP: {out:?}");
        std::thread::sleep(Duration::from_millis(200));
    }

    // 1. A VFS file, from a manifest the server built and signed.
    let vfs_a = random_bytes(3000, 1);
    std::fs::write(d.join("app-a.bin"), &vfs_a).unwrap();
    let seq_a = publish_riot09(&ns, &server, &d.join("app-a.bin"), "/nvm0/SLOT0.txt");
    assert!(seq_a <= u64::from(u32::MAX));
    // Without the NUL after the URL, stock RIOT reads stale bytes after it (issue 12).
    let mark = dev.mark();
    let (ok, out) = cli(
        &ns,
        &server,
        &[
            "notify",
            "--server",
            &server.http(),
            "--publish-id",
            PUBLISH_ID,
            "--trigger-nul",
            "never",
            DEVICE,
        ],
    );
    assert!(ok && out.contains("2.01"), "{out}");
    let (which, _) = dev.wait_for(mark, &[SUCCESS, "error getting manifest"], Duration::from_secs(60));
    assert_eq!(which, 1, "without the NUL: {}", dev.text_since(mark));
    dev.wait_for(mark, &["suit_worker: update failed"], Duration::from_secs(10));
    // With it (the default), the update goes through.
    assert_eq!(trigger(&dev, &ns, &server, "latest"), Ok(seq_a));
    assert_same("/nvm0/SLOT0.txt", &dev.vfs_file("/nvm0/SLOT0.txt"), &vfs_a);
    // The server logged the device's downloads: the manifest and the image, in RIOT's
    // 64-byte blocks (3,000 bytes: 47 blocks).
    let log = server.log();
    assert!(
        log.iter().any(|l| l.contains("coap transfer complete")
            && l.contains("path=fw/suit_update/native64/")
            && l.contains("blocks=47")
            && l.contains("block_size=64")),
        "no transfer line for the image: {log:#?}"
    );

    // 2. A RAM region (.ram.0 holds 2048 bytes): a higher sequence number.
    let ram = random_bytes(2048, 2);
    std::fs::write(d.join("ram.bin"), &ram).unwrap();
    let seq_ram = publish_riot09(&ns, &server, &d.join("ram.bin"), "ram,0");
    assert!(seq_ram > seq_a);
    assert_eq!(trigger(&dev, &ns, &server, "latest"), Ok(seq_ram));
    assert_same(".ram.0", &dev.storage_content(".ram.0", ram.len()), &ram);

    // 3. The VFS file again, new contents, a higher sequence number: installed.
    let vfs_b = random_bytes(5000, 3);
    std::fs::write(d.join("app-b.bin"), &vfs_b).unwrap();
    let seq_b = publish_riot09(&ns, &server, &d.join("app-b.bin"), "/nvm0/SLOT0.txt");
    assert!(seq_b > seq_ram);
    assert_eq!(trigger(&dev, &ns, &server, "latest"), Ok(seq_b));
    assert_same("/nvm0/SLOT0.txt", &dev.vfs_file("/nvm0/SLOT0.txt"), &vfs_b);

    // 4. The same manifest again, and an older one: the device accepts the trigger (2.01),
    // fetches the manifest and refuses it; nothing changes.
    let mark = dev.mark();
    assert_eq!(trigger(&dev, &ns, &server, "latest"), Err(seq_b));
    assert_eq!(trigger(&dev, &ns, &server, &seq_a.to_string()), Err(seq_a));
    assert_same("/nvm0/SLOT0.txt", &dev.vfs_file("/nvm0/SLOT0.txt"), &vfs_b);
    let console = dev.text_since(mark);
    for seq in [seq_b, seq_a] {
        let line = format!("Manifest seq_no: {seq}, highest available: {seq_b}");
        assert!(console.contains(&line), "no {line:?} in:\n{console}");
    }

    // 5. Signed offline with the device's key and uploaded as RIOT's tooling does.
    let seq_c = seq_b + 100;
    // Larger than the file it replaces: RIOT's VFS storage writes the image over the file
    // without truncating it (a 4000-byte image over this 5000-byte file leaves its last 1000
    // bytes), and checks only the image's bytes.
    let vfs_c = random_bytes(6000, 4);
    let image = d.join(format!("slot.{seq_c}.bin"));
    std::fs::write(&image, &vfs_c).unwrap();
    let manifest = d.join(format!("riot.suit.{seq_c}.bin"));
    let uri = format!(
        "coap://[{SERVER_ADDR}]:{}/{PUBLISH_ID}/slot.{seq_c}.bin",
        server.coap_port
    );
    suitcase(&[
        "manifest",
        "create",
        "--profile",
        "riot09",
        "--seq",
        &seq_c.to_string(),
        "--vendor-domain",
        "riot-os.org",
        "--class",
        "native64",
        "--component",
        "/nvm0/SLOT0.txt",
        "--image",
        &format!("{uri}={}", image.display()),
        "--key",
        key.to_str().unwrap(),
        "-o",
        manifest.to_str().unwrap(),
    ]);
    let out = ns
        .command("curl")
        .args(["-sS", "--fail-with-body", "-X", "POST"])
        .args(["-H", &format!("Authorization: Bearer {}", server.token())])
        .args(["-F", &format!("publish_id={PUBLISH_ID}")])
        .args(["-F", &format!("riot.suit.{seq_c}.bin=@{}", manifest.display())])
        .args(["-F", &format!("file=@{}", image.display())])
        .arg(format!("{}/publish", server.http()))
        .output()
        .unwrap();
    let body = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "curl publish: {body} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["sequence_number"].as_u64(), Some(seq_c), "{v}");
    assert_eq!(trigger(&dev, &ns, &server, "latest"), Ok(seq_c));
    assert_same("/nvm0/SLOT0.txt", &dev.vfs_file("/nvm0/SLOT0.txt"), &vfs_c);
    // And the hexdump the device itself shows of the file begins with its first bytes.
    let dump = dev.shell("vfs r /nvm0/SLOT0.txt");
    let first: String = vfs_c[..4].iter().map(|b| format!("{b:02x}")).collect();
    assert!(dump.to_lowercase().replace(' ', "").contains(&first), "vfs r: {dump}");
}
