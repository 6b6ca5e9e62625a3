//! Faults: SIGKILL at random points during publishes, SIGTERM during an upload, a full disk
//! and a read-only store. Nothing acknowledged is lost, nothing half-written is visible, and
//! serving goes on.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use suitcase_store::{LocalStore, Sha256, Store};
use support::*;

/// (publish-id, version, file name, digest) of every publish the server acknowledged.
type Acked = Arc<Mutex<Vec<(String, u64, String, Sha256)>>>;

fn publisher(
    http: String,
    token: String,
    id: String,
    dir: std::path::PathBuf,
    seed: u64,
    stop: Arc<AtomicBool>,
    acked: Acked,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let mut i = 0u64;
        while !stop.load(Ordering::Relaxed) {
            i += 1;
            let size = 1000 + (seed.wrapping_mul(31).wrapping_add(i * 7919) % (3 << 20)) as usize;
            let data = random_bytes(size, seed ^ i);
            let name = format!("fw{}.bin", i % 3);
            let path = dir.join(&name);
            std::fs::write(&path, &data).unwrap();
            let out = Command::new(bin())
                .env("SUITCASE_TOKEN", &token)
                .args([
                    "publish",
                    "--quiet",
                    "--json",
                    "--server",
                    &http,
                    "--publish-id",
                    &id,
                    "--publish",
                ])
                .arg(&path)
                .output()
                .unwrap();
            if !out.status.success() {
                return; // the server is gone
            }
            let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
            acked
                .lock()
                .unwrap()
                .push((id.clone(), v["version"].as_u64().unwrap(), name, Sha256::of(&data)));
        }
    })
}

/// Every acknowledged version is there with the right content; every visible version is whole.
fn check_store(data: &Path, acked: &Acked) {
    let store = LocalStore::open(data).unwrap();
    for (id, seq, name, digest) in acked.lock().unwrap().iter() {
        let v = store
            .version(id, *seq)
            .unwrap_or_else(|| panic!("acknowledged {id} v{seq} is gone"));
        let f = v.file(name).unwrap_or_else(|| panic!("{id} v{seq} lost {name}"));
        assert_eq!(f.sha256, *digest, "{id} v{seq} {name}");
        assert_eq!(Sha256::of(&store.read(digest).unwrap()), *digest);
    }
    for id in store.publish_ids() {
        for v in store.versions(&id) {
            for f in v.files.iter().chain(v.manifest.as_ref().map(|m| &m.file)) {
                store
                    .read(&f.sha256)
                    .unwrap_or_else(|e| panic!("{id} v{} {}: {e}", v.seq, f.name));
            }
        }
    }
}

#[test]
fn sigkill_during_publishes_loses_nothing_acknowledged() {
    if !require_coap_client() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let acked: Acked = Arc::default();
    let mut rng = 0x9e37_79b9_u64;
    for round in 0..6u64 {
        let server = TestServer::start(&data, &[]);
        let stop = Arc::new(AtomicBool::new(false));
        let workers: Vec<_> = (0..2u64)
            .map(|w| {
                let d = dir.path().join(format!("w{w}"));
                std::fs::create_dir_all(&d).unwrap();
                publisher(
                    server.http(),
                    server.token(),
                    format!("crash/{w}"),
                    d,
                    round * 10 + w,
                    stop.clone(),
                    acked.clone(),
                )
            })
            .collect();
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        std::thread::sleep(Duration::from_millis(150 + rng % 700));
        drop(server); // SIGKILL, wherever the publishes are
        stop.store(true, Ordering::Relaxed);
        for w in workers {
            w.join().unwrap();
        }
        check_store(&data, &acked);
    }
    let n = acked.lock().unwrap().len();
    assert!(n >= 6, "only {n} publishes were acknowledged across the rounds");
    // And the server comes back and serves the newest acknowledged version.
    let server = TestServer::start(&data, &[]);
    let (id, _, name, digest) = acked.lock().unwrap().last().cloned().unwrap();
    let got = coap_get(
        &server.coap(&format!("{id}/{name}")),
        Some(1024),
        &dir.path().join("got"),
    );
    let store_latest = LocalStore::open(&data).unwrap().latest(&id).unwrap();
    assert_eq!(
        Sha256::of(&got),
        store_latest.file(&name).map(|f| f.sha256).unwrap_or(digest)
    );
}

#[test]
fn sigterm_stops_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let server = TestServer::start(&data, &[]);
    let f = dir.path().join("big.bin");
    let image = random_bytes(64 << 20, 3);
    std::fs::write(&f, &image).unwrap();
    let mut cmd = server.publish_command("term", &f);
    cmd.arg("--json");
    let upload = std::thread::spawn(move || cmd.output().unwrap());
    // SIGTERM once the upload is under way (the server logs its start), not after a guess.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !server.log().iter().any(|l| l.contains("publish upload started")) {
        assert!(
            std::time::Instant::now() < deadline,
            "the upload never started: {:?}",
            server.log()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    let (status, log) = server.terminate(Duration::from_secs(20));
    assert_eq!(status, Some(0), "exit status after SIGTERM; log: {log:?}");
    assert!(log.iter().any(|l| l.contains("shutting down")), "{log:?}");
    let out = upload.join().unwrap();
    // The upload either completed (and is stored whole) or failed (and left nothing).
    let store = LocalStore::open(&data).unwrap();
    if out.status.success() {
        let v = store.latest("term").expect("an acknowledged upload is stored");
        assert_eq!(v.files[0].sha256, Sha256::of(&image));
    } else {
        assert!(store.latest("term").is_none(), "a failed upload left a version");
    }
    assert_eq!(std::fs::read_dir(data.join("tmp")).unwrap().count(), 0);
}

/// A small tmpfs, unmounted on drop.
struct Tmpfs(std::path::PathBuf);

impl Tmpfs {
    fn mount(path: &Path, size: &str) -> Tmpfs {
        std::fs::create_dir_all(path).unwrap();
        let st = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(path)
            .status();
        assert!(
            st.is_ok_and(|s| s.success()),
            "mounting a tmpfs needs root (CI runs as root); this test checks disk-full and read-only stores"
        );
        Tmpfs(path.to_path_buf())
    }
    fn remount_ro(&self) {
        assert!(Command::new("mount")
            .args(["-o", "remount,ro"])
            .arg(&self.0)
            .status()
            .unwrap()
            .success());
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

fn publish_status(server: &TestServer, id: &str, file: &Path) -> (bool, String) {
    let out = server.publish_command(id, file).output().unwrap();
    (out.status.success(), String::from_utf8_lossy(&out.stderr).into_owned())
}

#[test]
fn full_and_read_only_disks_refuse_publishes_and_keep_serving() {
    if !require_root("mounting a tmpfs (disk-full and read-only stores)") {
        return;
    }
    if !require_coap_client() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let fs = Tmpfs::mount(&dir.path().join("small"), "4m");
    // The fleet database lives off the small disk: it keeps a file open for writing, and a
    // remount read-only of a disk with such a file fails ("busy"); this test is about the store.
    let database = format!("sqlite:{}?mode=rwc", dir.path().join("fleet.db").display());
    let server = TestServer::start(&fs.0.join("data"), &["--database", &database]);
    let small = random_bytes(500_000, 1);
    let f = dir.path().join("app.bin");
    std::fs::write(&f, &small).unwrap();
    let (ok, err) = publish_status(&server, "disk", &f);
    assert!(ok, "{err}");

    // Disk full: a clear error, nothing half-written, the old version still served.
    std::fs::write(&f, random_bytes(6 << 20, 2)).unwrap();
    let (ok, err) = publish_status(&server, "disk", &f);
    assert!(!ok);
    assert!(err.contains("507") && err.contains("no space"), "{err}");
    let got = coap_get(&server.coap("disk/app.bin"), Some(1024), &dir.path().join("got"));
    assert!(got == small);
    assert_eq!(
        std::fs::read_dir(fs.0.join("data/tmp")).unwrap().count(),
        0,
        "staged files are removed"
    );

    // Read-only: the same.
    fs.remount_ro();
    std::fs::write(&f, random_bytes(1000, 3)).unwrap();
    let (ok, err) = publish_status(&server, "disk", &f);
    assert!(!ok);
    assert!(err.contains("read-only"), "{err}");
    let got = coap_get(&server.coap("disk/app.bin"), Some(64), &dir.path().join("got"));
    assert!(got == small);
    drop(server);
}
