//! Network namespaces for tests with real device binaries (RIOT native, Zephyr native_sim):
//! each test makes its own, with a tap interface, and removes it (killing every process in
//! it) when dropped, also when the test fails.

use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};

/// Why device tests cannot run here, if they cannot: not root, no /dev/net/tun, no `ip`.
pub fn missing_prerequisite() -> Option<String> {
    let root = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .map(|u| u.split_whitespace().nth(1) == Some("0"))
        })
        .unwrap_or(false);
    if !root {
        return Some("not root (network namespaces and tap devices need it)".into());
    }
    if !std::path::Path::new("/dev/net/tun").exists() {
        return Some("no /dev/net/tun".into());
    }
    if Command::new("ip").arg("-V").output().is_err() {
        return Some("no `ip` command (Debian: iproute2)".into());
    }
    None
}

/// Skip a device test with a printed reason; in CI (`CI=true`) a missing prerequisite is a
/// failure, so the test can never pass there without running.
pub fn skip(reason: &str) {
    if std::env::var("CI").is_ok_and(|v| v == "true" || v == "1") {
        panic!("device test cannot run in CI: {reason}");
    }
    eprintln!("SKIPPED: {reason}");
}

/// A network namespace, deleted on drop.
pub struct Netns {
    pub name: String,
}

fn ip(args: &[&str]) -> Output {
    let out = Command::new("ip").args(args).output().expect("run ip");
    assert!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

impl Netns {
    /// A fresh namespace with loopback up.
    pub fn new(prefix: &str) -> Netns {
        static N: AtomicU32 = AtomicU32::new(0);
        let name = format!("{prefix}-{}-{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed));
        ip(&["netns", "add", &name]);
        let ns = Netns { name };
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }

    /// `ip ARGS` inside the namespace.
    pub fn ip(&self, args: &[&str]) -> Output {
        let mut all = vec!["netns", "exec", &self.name, "ip"];
        all.extend_from_slice(args);
        ip(&all)
    }

    /// A tap interface `name`, up, with `addrs` (`2001:db8::2/64`, `192.0.2.2/24`, …; IPv6
    /// ones without duplicate address detection).
    pub fn tap(&self, name: &str, addrs: &[&str]) {
        self.ip(&["tuntap", "add", name, "mode", "tap"]);
        self.ip(&["link", "set", name, "up"]);
        for a in addrs {
            if a.contains(':') {
                self.ip(&["-6", "addr", "add", a, "dev", name, "nodad"]);
            } else {
                self.ip(&["addr", "add", a, "dev", name]);
            }
        }
    }

    /// A command that runs `program` inside the namespace.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name]).arg(program);
        c
    }

    fn pids(&self) -> Vec<String> {
        Command::new("ip")
            .args(["netns", "pids", &self.name])
            .output()
            .map(|o| {
                String::from_utf8_lossy(&o.stdout)
                    .split_whitespace()
                    .map(String::from)
                    .collect()
            })
            .unwrap_or_default()
    }
}

impl Drop for Netns {
    /// Every process in the namespace is killed with SIGKILL (devices fork helpers, so
    /// until none is left, for 10 s at most), then the namespace is deleted.
    fn drop(&mut self) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            let pids = self.pids();
            if pids.is_empty() || std::time::Instant::now() > deadline {
                break;
            }
            let _ = Command::new("kill").arg("-9").args(&pids).output();
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        let _ = Command::new("ip").args(["netns", "del", &self.name]).status();
    }
}
