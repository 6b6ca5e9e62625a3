//! A real S3-compatible server for tests: `s3s-fs` (the s3s project's file-system backed S3
//! server; `.ci/run` installs it with `cargo install s3s-fs --features binary`), on a free
//! loopback port with its own directory and credentials, stopped on drop.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct S3 {
    child: Child,
    _dir: tempfile::TempDir,
    /// `http://127.0.0.1:<port>`.
    pub endpoint: String,
    pub bucket: String,
    pub access_key: String,
    pub secret_key: String,
}

impl Drop for S3 {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn binary() -> Option<std::path::PathBuf> {
    if let Some(p) = std::env::var_os("SUITCASE_S3S_FS") {
        return Some(p.into());
    }
    let home = std::env::var_os("CARGO_HOME")
        .map(std::path::PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| std::path::PathBuf::from(h).join(".cargo")))?;
    let p = home.join("bin").join("s3s-fs");
    if p.exists() {
        return Some(p);
    }
    super::have("s3s-fs", "--help").then(|| "s3s-fs".into())
}

impl S3 {
    /// Start one with an empty bucket, or `None` (skipped with a printed reason; a failure
    /// in CI) when s3s-fs is not installed.
    pub fn start() -> Option<S3> {
        let Some(bin) = binary() else {
            super::netns::skip("s3s-fs is not installed (cargo install s3s-fs --features binary)");
            return None;
        };
        let dir = tempfile::tempdir().expect("tempdir");
        let bucket = "suitcase-test".to_string();
        std::fs::create_dir_all(dir.path().join(&bucket)).unwrap();
        let port = super::mosquitto::free_port();
        let (access_key, secret_key) = ("suitcase-test-key".to_string(), "suitcase-test-secret".to_string());
        let child = Command::new(bin)
            .args(["--host", "127.0.0.1", "--port", &port.to_string()])
            .args(["--access-key", &access_key, "--secret-key", &secret_key])
            .arg(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start s3s-fs");
        let start = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "s3s-fs did not listen on {port}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Some(S3 {
            child,
            _dir: dir,
            endpoint: format!("http://127.0.0.1:{port}"),
            bucket,
            access_key,
            secret_key,
        })
    }

    /// The AWS_* variables a node needs.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ACCESS_KEY_ID", self.access_key.clone()),
            ("AWS_SECRET_ACCESS_KEY", self.secret_key.clone()),
            ("AWS_REGION", "us-east-1".to_string()),
        ]
    }

    /// Stop it (the object store goes down); [`S3`] can't be restarted.
    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
