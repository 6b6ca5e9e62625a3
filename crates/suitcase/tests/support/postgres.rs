//! A real PostgreSQL server for tests: Debian's `postgresql` binaries, a cluster made with
//! initdb in a temporary directory (as the unprivileged `postgres` user when run as root), on
//! a free loopback port, stopped and removed on drop.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Postgres {
    child: Child,
    _dir: tempfile::TempDir,
    pub url: String,
}

/// The directory of initdb/postgres/pg_isready (the newest installed major version).
fn bindir() -> Option<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
        .filter(|p| p.join("initdb").exists() && p.join("postgres").exists())
        .collect();
    dirs.sort_by_key(|p| {
        p.parent()
            .and_then(|v| v.file_name())
            .and_then(|v| v.to_str())
            .and_then(|v| v.parse::<u32>().ok())
            .unwrap_or(0)
    });
    dirs.pop()
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .map(|u| u.split_whitespace().nth(1) == Some("0"))
        })
        .unwrap_or(false)
}

impl Postgres {
    /// Start one, or `None` (skipped with a printed reason; a failure in CI) when PostgreSQL
    /// is not installed.
    pub fn start() -> Option<Postgres> {
        let Some(bin) = bindir() else {
            super::netns::skip("PostgreSQL is not installed (Debian: apt-get install postgresql)");
            return None;
        };
        let dir = tempfile::Builder::new()
            .prefix("suitcase-pg")
            .tempdir()
            .expect("tempdir");
        let data = dir.path().join("data");
        let root = is_root();
        // initdb and postgres refuse to run as root: as root, run them as `postgres`.
        let run = |program: &str| {
            if root {
                let mut c = Command::new("runuser");
                c.args(["-u", "postgres", "--"]).arg(bin.join(program));
                c
            } else {
                Command::new(bin.join(program))
            }
        };
        if root {
            let ok = Command::new("chown")
                .args(["postgres:postgres"])
                .arg(dir.path())
                .status()
                .is_ok_and(|s| s.success());
            assert!(ok, "chown of the PostgreSQL directory to postgres failed");
        }
        let out = run("initdb")
            .arg("-D")
            .arg(&data)
            .args(["-U", "suitcase", "--auth=trust", "-E", "UTF8", "--no-sync"])
            .output()
            .expect("initdb");
        assert!(out.status.success(), "initdb: {}", String::from_utf8_lossy(&out.stderr));
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("a free port");
        let child = run("postgres")
            .arg("-D")
            .arg(&data)
            .args(["-p", &port.to_string(), "-h", "127.0.0.1", "-k"])
            .arg(dir.path())
            .args(["-c", "fsync=off", "-c", "max_connections=50"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("postgres");
        let pg = Postgres {
            child,
            url: format!("postgres://suitcase@127.0.0.1:{port}/postgres"),
            _dir: dir,
        };
        let start = Instant::now();
        loop {
            let ready = Command::new(bin.join("pg_isready"))
                .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-U", "suitcase"])
                .stdout(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            if ready {
                return Some(pg);
            }
            assert!(start.elapsed() < Duration::from_secs(30), "PostgreSQL did not start");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Postgres {
    /// `psql` running `sql` (to spawn: a session that holds a lock while a test goes on).
    #[allow(dead_code)] // (not every test binary that includes the support module uses it)
    pub fn sql_command(&self, sql: &str) -> Command {
        let psql = bindir().map_or_else(|| PathBuf::from("psql"), |b| b.join("psql"));
        let mut c = Command::new(psql);
        c.args([self.url.as_str(), "-tAc", sql]).stdout(Stdio::null());
        c
    }

    /// Run `sql` with psql; its output (unaligned, tuples only).
    #[allow(dead_code)] // (not every test binary that includes the support module uses it)
    pub fn sql(&self, sql: &str) -> String {
        let out = self.sql_command(sql).stdout(Stdio::piped()).output().expect("psql");
        assert!(
            out.status.success(),
            "psql {sql}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        // SIGINT: PostgreSQL's fast shutdown.
        let _ = Command::new("kill")
            .args(["-INT", &self.child.id().to_string()])
            .status();
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(10) {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
