//! deploy/: the systemd unit and the container image definition. Each is parsed here and
//! checked for the hardening it promises, and the command line it runs is handed to the
//! real binary (with the data directory and the ports swapped for a temporary directory and
//! loopback port 0), so a flag that does not exist or a value the server refuses fails here
//! rather than on a production host. `systemd-analyze` checks the unit when it is installed;
//! a container engine builds the image only when asked (`SUITCASE_TEST_CONTAINER=1`).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::BTreeSet;
use std::io::{Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use support::TestServer;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(root().join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

/// A test that cannot run here says why and passes (unlike `support::netns::skip`, also in
/// CI: these tools are optional).
fn skipped(reason: &str) {
    eprintln!("SKIPPED: {reason}");
}

// ---------------------------------------------------------------------------------------
// A unit file, as systemd reads it: `[Section]`, `Key=Value`, `#`/`;` comments, a trailing
// backslash continues a line. Keys may repeat (list settings accumulate).

struct Entry {
    key: String,
    value: String,
    /// The comment lines right above it.
    comment: String,
    line: usize,
}

struct Unit {
    sections: Vec<(String, Vec<Entry>)>,
}

impl Unit {
    fn parse(text: &str) -> Result<Unit, String> {
        let mut sections: Vec<(String, Vec<Entry>)> = Vec::new();
        let mut comment = String::new();
        let mut lines = text.lines().enumerate();
        while let Some((i, raw)) = lines.next() {
            let line = raw.trim();
            if line.is_empty() {
                comment.clear();
                continue;
            }
            if line.starts_with('#') || line.starts_with(';') {
                comment.push_str(line.trim_start_matches(['#', ';']).trim());
                comment.push('\n');
                continue;
            }
            if let Some(name) = line.strip_prefix('[') {
                let name = name
                    .strip_suffix(']')
                    .ok_or(format!("line {}: bad section `{line}`", i + 1))?;
                sections.push((name.to_string(), Vec::new()));
                comment.clear();
                continue;
            }
            let mut logical = line.to_string();
            while logical.ends_with('\\') {
                logical.pop();
                logical.push(' ');
                let (_, next) = lines.next().ok_or(format!("line {}: continuation at the end", i + 1))?;
                logical.push_str(next.trim());
            }
            let (key, value) = logical
                .split_once('=')
                .ok_or(format!("line {}: not Key=Value: `{line}`", i + 1))?;
            let (_, entries) = sections
                .last_mut()
                .ok_or(format!("line {}: `{line}` before any section", i + 1))?;
            entries.push(Entry {
                key: key.trim().to_string(),
                value: value.trim().to_string(),
                comment: std::mem::take(&mut comment),
                line: i + 1,
            });
        }
        Ok(Unit { sections })
    }

    fn section(&self, name: &str) -> &[Entry] {
        let found: Vec<_> = self.sections.iter().filter(|(n, _)| n == name).collect();
        assert_eq!(found.len(), 1, "exactly one [{name}] section");
        &found[0].1
    }

    /// Every assignment of `key` in `section`, in order.
    fn all<'a>(&'a self, section: &str, key: &str) -> Vec<&'a Entry> {
        self.section(section).iter().filter(|e| e.key == key).collect()
    }

    /// The single assignment of `key` (a single-valued setting set twice is a mistake here).
    fn one(&self, section: &str, key: &str) -> &Entry {
        let all = self.all(section, key);
        assert_eq!(
            all.len(),
            1,
            "[{section}] {key}= must be set exactly once, is set {} times",
            all.len()
        );
        all[0]
    }

    fn get(&self, section: &str, key: &str) -> &str {
        &self.one(section, key).value
    }
}

fn unit() -> Unit {
    Unit::parse(&read("deploy/suitcase.service")).unwrap_or_else(|e| panic!("deploy/suitcase.service: {e}"))
}

/// ExecStart's command line split as systemd does for the plain words used here (no
/// quoting, no `%` specifiers, no `$` expansion: each would change what is run).
fn exec_start(unit: &Unit) -> Vec<String> {
    let line = unit.get("Service", "ExecStart");
    assert!(
        !line.contains(['"', '\'', '%', '$', ';']),
        "ExecStart uses quoting, specifiers or variables this test does not model: {line}"
    );
    // `+` and `!` prefixes run the command with full privileges; `-` ignores failures.
    assert!(
        line.starts_with('/'),
        "ExecStart must be an absolute path without prefixes: {line}"
    );
    line.split_whitespace().map(str::to_string).collect()
}

/// `--flag VALUE` or `--flag=VALUE` in `args`.
fn flag_value<'a>(args: &'a [String], flag: &str) -> Option<&'a str> {
    let eq = format!("{flag}=");
    args.iter().enumerate().find_map(|(i, a)| {
        if a == flag {
            args.get(i + 1).map(String::as_str)
        } else {
            a.strip_prefix(&eq)
        }
    })
}

/// `serve ARGS…` with the flags TestServer sets itself (`--data`, `--coap`, `--http`)
/// removed, in either spelling; panics unless `args` starts with `serve`.
fn serve_extra(args: &[String]) -> Vec<String> {
    assert_eq!(
        args.first().map(String::as_str),
        Some("serve"),
        "not a serve command line: {args:?}"
    );
    let own = ["--data", "--coap", "--http"];
    let mut out = Vec::new();
    let mut rest = args[1..].iter();
    while let Some(a) = rest.next() {
        if own.contains(&a.as_str()) {
            rest.next().unwrap_or_else(|| panic!("{a} without a value in {args:?}"));
        } else if !own.iter().any(|f| a.starts_with(&format!("{f}="))) {
            out.push(a.clone());
        }
    }
    out
}

/// `GET path` over plain HTTP/1.0 on loopback; the status line and body.
fn http_get(port: u16, path: &str) -> String {
    let mut s = std::net::TcpStream::connect(("::1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(s, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

/// Start the real server with `serve_args` (the data directory and the ports replaced),
/// check that it answers, and that SIGTERM stops it cleanly within `stop_within`.
fn serve_with(serve_args: &[String], stop_within: Duration) {
    let dir = tempfile::tempdir().unwrap();
    let extra = serve_extra(serve_args);
    let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
    // Panics with the server's log unless it reports listening on both ports.
    let server = TestServer::start(dir.path(), &extra);
    let health = http_get(server.http_port, "/healthz");
    assert!(health.starts_with("HTTP/1.") && health.contains(" 200 "), "{health}");
    // deploy/README.md tells where the local publisher token ends up.
    let token = dir.path().join("local-publisher.token");
    let mode = std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&token).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o600, "{}", token.display());
    let (status, log) = server.terminate(stop_within);
    assert_eq!(
        status,
        Some(0),
        "exit status after SIGTERM within {stop_within:?}; log: {log:?}"
    );
}

// ---------------------------------------------------------------------------------------
// The systemd unit.

#[test]
fn the_unit_is_hardened() {
    let u = unit();
    let expect = [
        ("Type", "exec"),
        ("DynamicUser", "yes"),
        ("StateDirectory", "suitcase"),
        ("NoNewPrivileges", "yes"),
        ("CapabilityBoundingSet", ""),
        ("AmbientCapabilities", ""),
        ("ProtectSystem", "strict"),
        ("ProtectHome", "yes"),
        ("PrivateTmp", "yes"),
        ("PrivateDevices", "yes"),
        ("ProtectKernelTunables", "yes"),
        ("ProtectKernelModules", "yes"),
        ("ProtectKernelLogs", "yes"),
        ("ProtectControlGroups", "yes"),
        ("ProtectClock", "yes"),
        ("ProtectHostname", "yes"),
        ("RestrictNamespaces", "yes"),
        ("LockPersonality", "yes"),
        ("MemoryDenyWriteExecute", "yes"),
        ("RestrictRealtime", "yes"),
        ("RestrictSUIDSGID", "yes"),
        ("SystemCallArchitectures", "native"),
        ("UMask", "0077"),
        ("LimitNOFILE", "65536"),
        ("Restart", "on-failure"),
        ("KillSignal", "SIGTERM"),
    ];
    let mut wrong = Vec::new();
    for (key, want) in expect {
        let all = u.all("Service", key);
        match all.as_slice() {
            [e] if e.value == want => {}
            [e] => wrong.push(format!("line {}: {key}={} (want {key}={want})", e.line, e.value)),
            other => wrong.push(format!("{key}= set {} times (want once: {key}={want})", other.len())),
        }
    }
    assert!(wrong.is_empty(), "deploy/suitcase.service:\n{}", wrong.join("\n"));

    // No account of its own to run as: DynamicUser's, nothing that would override it.
    for key in ["User", "Group", "SupplementaryGroups"] {
        assert!(u.all("Service", key).is_empty(), "{key}= with DynamicUser=yes");
    }

    // Why no capability is needed is said where they are dropped.
    let caps = u.one("Service", "CapabilityBoundingSet");
    for word in ["5683", "8080", "1024"] {
        assert!(
            caps.comment.contains(word),
            "the comment on CapabilityBoundingSet= should explain ({word}): {:?}",
            caps.comment
        );
    }

    let families = u.one("Service", "RestrictAddressFamilies");
    let got: BTreeSet<&str> = families.value.split_whitespace().collect();
    let want: BTreeSet<&str> = ["AF_INET", "AF_INET6", "AF_UNIX", "AF_NETLINK"].into();
    assert_eq!(got, want, "RestrictAddressFamilies");
    assert!(
        families.comment.contains("netlink") && families.comment.contains("--mdns"),
        "the comment on RestrictAddressFamilies= should say why netlink: {:?}",
        families.comment
    );

    // An allow list, then a deny list (`~`) that takes out privileged and resource calls.
    let filters: Vec<&str> = u
        .all("Service", "SystemCallFilter")
        .iter()
        .map(|e| e.value.as_str())
        .collect();
    assert!(
        filters
            .iter()
            .any(|f| f.split_whitespace().any(|w| w == "@system-service")),
        "{filters:?}"
    );
    let denied: BTreeSet<&str> = filters
        .iter()
        .filter_map(|f| f.strip_prefix('~'))
        .flat_map(str::split_whitespace)
        .collect();
    for group in ["@privileged", "@resources"] {
        assert!(
            denied.contains(group),
            "SystemCallFilter=~ should remove {group}: {filters:?}"
        );
    }

    let stop = u.get("Service", "TimeoutStopSec");
    let secs: u64 = stop
        .trim_end_matches('s')
        .parse()
        .unwrap_or_else(|_| panic!("TimeoutStopSec={stop}: seconds"));
    assert!((5..=300).contains(&secs), "TimeoutStopSec={secs}");

    let env: Vec<&str> = u
        .all("Service", "Environment")
        .iter()
        .flat_map(|e| e.value.split_whitespace())
        .collect();
    assert!(env.contains(&"SUITCASE_LOG=info"), "Environment: {env:?}");

    assert_eq!(u.get("Install", "WantedBy"), "multi-user.target");
}

#[test]
fn the_units_exec_start_runs_the_real_server() {
    let u = unit();
    let argv = exec_start(&u);
    assert_eq!(
        argv[0], "/usr/local/bin/suitcase",
        "deploy/README.md installs the binary there"
    );
    // The data directory is the StateDirectory, the one place ProtectSystem=strict leaves
    // writable.
    let data = flag_value(&argv, "--data").expect("ExecStart without --data");
    assert_eq!(data, format!("/var/lib/{}", u.get("Service", "StateDirectory")));
    for (flag, port) in [("--coap", 5683), ("--http", 8080)] {
        if let Some(addr) = flag_value(&argv, flag) {
            let addr: std::net::SocketAddr = addr.parse().unwrap_or_else(|e| panic!("{flag} {addr}: {e}"));
            assert_eq!(addr.port(), port, "{flag}: the port the README and the comments name");
        }
    }
    let stop = u
        .get("Service", "TimeoutStopSec")
        .trim_end_matches('s')
        .parse()
        .unwrap();
    serve_with(&argv[1..], Duration::from_secs(stop));
}

#[test]
fn systemd_analyze_verifies_the_unit() {
    if Command::new("systemd-analyze")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_err()
    {
        skipped("systemd-analyze is not installed (Debian: systemd); the unit was only parsed by this test");
        return;
    }
    // verify checks that ExecStart's program exists: point it at the binary under test, in
    // a copy with the same name (verify names units by their file).
    let dir = tempfile::tempdir().unwrap();
    let text = read("deploy/suitcase.service");
    let copy = dir.path().join("suitcase.service");
    std::fs::write(
        &copy,
        text.replace(
            "ExecStart=/usr/local/bin/suitcase ",
            &format!("ExecStart={} ", support::bin()),
        ),
    )
    .unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&copy)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!("systemd-analyze verify: {:?}\n{stderr}", out.status);
    assert!(out.status.success(), "systemd-analyze verify: {stderr}");
    // Unknown keys and bad values are warnings with exit status 0: any line about the unit
    // is a failure. (Lines about other units, e.g. a target missing on this machine, are not.)
    let about_it: Vec<&str> = stderr.lines().filter(|l| l.contains("suitcase.service")).collect();
    assert!(about_it.is_empty(), "systemd-analyze verify:\n{}", about_it.join("\n"));

    // The exposure score systemd computes from the same settings: "OK" is 2.0 or less.
    let help = Command::new("systemd-analyze")
        .args(["security", "--help"])
        .output()
        .unwrap();
    if !String::from_utf8_lossy(&help.stdout).contains("--offline") {
        skipped("systemd-analyze security has no --offline here (systemd < 250)");
        return;
    }
    let out = Command::new("systemd-analyze")
        .args(["security", "--offline=true", "--threshold=20", "--no-pager"])
        .arg(&copy)
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&out.stdout);
    let summary = report
        .lines()
        .find(|l| l.contains("Overall exposure level"))
        .unwrap_or("");
    eprintln!("systemd-analyze security: {summary}");
    assert!(
        out.status.success(),
        "exposure above 2.0:\n{report}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

// ---------------------------------------------------------------------------------------
// The container image: a Dockerfile is instructions, one a line (`\` continues one),
// `#` comments; `FROM image [AS name]` starts a stage.

struct Instruction {
    op: String,
    args: String,
}

struct Stage {
    image: String,
    name: Option<String>,
    body: Vec<Instruction>,
}

impl Stage {
    fn all(&self, op: &str) -> Vec<&str> {
        self.body
            .iter()
            .filter(|i| i.op == op)
            .map(|i| i.args.as_str())
            .collect()
    }

    /// The last `op` (the one in force: USER, ENTRYPOINT, CMD).
    fn last(&self, op: &str) -> &str {
        self.all(op)
            .last()
            .copied()
            .unwrap_or_else(|| panic!("no {op} in the stage FROM {}", self.image))
    }
}

fn containerfile() -> Vec<Stage> {
    let text = read("deploy/Containerfile");
    let mut stages: Vec<Stage> = Vec::new();
    let mut logical = String::new();
    for line in text.lines() {
        let t = line.trim();
        // Comments may sit between continuation lines; they are dropped there too.
        if t.starts_with('#') || (t.is_empty() && logical.is_empty()) {
            continue;
        }
        if let Some(part) = t.strip_suffix('\\') {
            logical.push_str(part);
            logical.push(' ');
            continue;
        }
        logical.push_str(t);
        let full = std::mem::take(&mut logical);
        let (op, args) = full.split_once(char::is_whitespace).unwrap_or((full.as_str(), ""));
        let (op, args) = (op.to_ascii_uppercase(), args.trim().to_string());
        if op == "FROM" {
            let words: Vec<&str> = args.split_whitespace().collect();
            let (image, name) = match words.as_slice() {
                [image] => (*image, None),
                [image, as_, name] if as_.eq_ignore_ascii_case("as") => (*image, Some(name.to_string())),
                _ => panic!("FROM {args}: not `image [AS name]`"),
            };
            stages.push(Stage {
                image: image.to_string(),
                name,
                body: Vec::new(),
            });
        } else {
            let stage = stages.last_mut().unwrap_or_else(|| panic!("{op} before FROM"));
            stage.body.push(Instruction { op, args });
        }
    }
    assert!(logical.is_empty(), "a continuation at the end of deploy/Containerfile");
    stages
}

/// The exec form (`["a", "b"]`) of ENTRYPOINT/CMD: a JSON array of strings. The shell form
/// would run under /bin/sh -c, which then gets SIGTERM instead of the server.
fn exec_form(op: &str, args: &str) -> Vec<String> {
    serde_json::from_str(args).unwrap_or_else(|e| panic!("{op} {args}: not a JSON array of strings ({e})"))
}

#[test]
fn the_containerfile_builds_in_one_stage_and_runs_unprivileged_in_another() {
    let stages = containerfile();
    assert!(stages.len() >= 2, "a build stage and a runtime stage");
    let builder = &stages[0];
    assert!(
        builder.image.starts_with("rust:1-bookworm"),
        "builder FROM {}",
        builder.image
    );
    let builder_name = builder
        .name
        .as_deref()
        .expect("the build stage is named (FROM … AS builder)");
    let builds = builder.all("RUN").iter().any(|r| {
        r.split("&&").any(|c| {
            c.split_whitespace().collect::<Vec<_>>() == ["cargo", "build", "--release", "--locked", "-p", "suitcase"]
        })
    });
    assert!(
        builds,
        "the build stage runs `cargo build --release --locked -p suitcase`: {:?}",
        builder.all("RUN")
    );

    let runtime = stages.last().unwrap();
    assert_eq!(runtime.image, "debian:bookworm-slim");
    // The binary comes from the build stage, to where ENTRYPOINT runs it.
    let entrypoint = exec_form("ENTRYPOINT", runtime.last("ENTRYPOINT"));
    assert_eq!(entrypoint, ["/usr/local/bin/suitcase"]);
    let copied = runtime.all("COPY").iter().any(|c| {
        let w: Vec<&str> = c.split_whitespace().collect();
        w.first() == Some(&format!("--from={builder_name}").as_str()) && w.last() == Some(&entrypoint[0].as_str())
    });
    assert!(
        copied,
        "COPY --from={builder_name} … {}: {:?}",
        entrypoint[0],
        runtime.all("COPY")
    );
    // Packages: ca-certificates and nothing else.
    let mut packages = Vec::new();
    for run in runtime.all("RUN") {
        for cmd in run.split("&&") {
            let w: Vec<&str> = cmd.split_whitespace().collect();
            if let Some(i) = w.windows(2).position(|p| p == ["apt-get", "install"]) {
                packages.extend(w[i + 2..].iter().filter(|a| !a.starts_with('-')).map(|a| a.to_string()));
            }
        }
    }
    assert_eq!(packages, ["ca-certificates"], "runtime packages");

    // A numeric user other than root, so the runtime can tell without a passwd lookup.
    let user = runtime.last("USER");
    for (what, id) in ["uid", "gid"].iter().zip(user.split(':')) {
        let id: u32 = id
            .parse()
            .unwrap_or_else(|_| panic!("USER {user}: the {what} must be numeric"));
        assert_ne!(id, 0, "USER {user}: not root");
    }

    let volumes: Vec<String> = runtime
        .all("VOLUME")
        .iter()
        .flat_map(|v| match serde_json::from_str::<Vec<String>>(v) {
            Ok(list) => list,
            Err(_) => v.split_whitespace().map(str::to_string).collect(),
        })
        .collect();
    assert_eq!(volumes, ["/data"], "VOLUME");
    let envs: Vec<&str> = runtime.all("ENV").iter().flat_map(|e| e.split_whitespace()).collect();
    assert!(envs.contains(&"SUITCASE_DATA=/data"), "ENV: {envs:?}");
    let exposed: BTreeSet<&str> = runtime
        .all("EXPOSE")
        .iter()
        .flat_map(|e| e.split_whitespace())
        .collect();
    assert!(exposed.contains("5683/udp"), "EXPOSE: {exposed:?}");
    assert!(
        exposed.contains("8080/tcp") || exposed.contains("8080"),
        "EXPOSE: {exposed:?}"
    );

    // A HEALTHCHECK would need a client in the image; there is none (see its comment).
    for hc in runtime.all("HEALTHCHECK") {
        assert!(
            !hc.contains("curl") && !hc.contains("wget"),
            "HEALTHCHECK {hc}: not installed in the image"
        );
    }

    let cmd = exec_form("CMD", runtime.last("CMD"));
    assert_eq!(
        flag_value(&cmd, "--data"),
        Some("/data"),
        "CMD {cmd:?}: the store on the volume"
    );

    let ignore = read(".dockerignore");
    let ignored: BTreeSet<&str> = ignore
        .lines()
        .map(|l| l.trim().trim_end_matches('/'))
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    for path in ["target", "fuzz/target", ".git"] {
        assert!(
            ignored.contains(path),
            ".dockerignore should leave out {path}: {ignored:?}"
        );
    }
}

#[test]
fn the_containers_cmd_runs_the_real_server() {
    let stages = containerfile();
    let runtime = stages.last().unwrap();
    let cmd = exec_form("CMD", runtime.last("CMD"));
    // `docker stop` waits 10 s before SIGKILL.
    serve_with(&cmd, Duration::from_secs(10));
}

/// A container engine that answers (`docker info` reaches a daemon).
fn container_engine() -> Option<&'static str> {
    ["docker", "podman"].into_iter().find(|e| {
        Command::new(e)
            .arg("info")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    })
}

/// Builds the image (a release build: minutes) and runs it, only when asked.
#[test]
fn the_container_image_builds_and_serves() {
    if std::env::var_os("SUITCASE_TEST_CONTAINER").is_none_or(|v| v != "1") {
        skipped("set SUITCASE_TEST_CONTAINER=1 to build deploy/Containerfile (a release build in a container)");
        return;
    }
    let Some(engine) = container_engine() else {
        skipped("no container engine answers (docker info / podman info)");
        return;
    };
    let tag = format!("suitcase-deploy-test:{}", std::process::id());
    let st = Command::new(engine)
        .args(["build", "-f", "deploy/Containerfile", "-t", &tag, "."])
        .current_dir(root())
        .status()
        .unwrap();
    assert!(st.success(), "{engine} build: {st}");
    let name = format!("suitcase-deploy-test-{}", std::process::id());
    let run = Command::new(engine)
        .args(["run", "-d", "--name", &name, &tag])
        .output()
        .unwrap();
    assert!(
        run.status.success(),
        "{engine} run: {}",
        String::from_utf8_lossy(&run.stderr)
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut logs = String::new();
    while Instant::now() < deadline && !logs.contains("listening for HTTP on") {
        std::thread::sleep(Duration::from_millis(200));
        let out = Command::new(engine).args(["logs", &name]).output().unwrap();
        logs = String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout);
    }
    let uid = Command::new(engine)
        .args(["exec", &name, "sh", "-c", "id -u"])
        .output()
        .unwrap();
    let _ = Command::new(engine).args(["rm", "-f", &name]).status();
    let _ = Command::new(engine).args(["rmi", &tag]).status();
    assert!(
        logs.contains("listening for HTTP on"),
        "the container did not start:\n{logs}"
    );
    assert_eq!(
        String::from_utf8_lossy(&uid.stdout).trim(),
        "10001",
        "the server's uid in the container"
    );
}

// ---------------------------------------------------------------------------------------

#[test]
fn the_docs_point_to_deploy() {
    let readme = read("README.md");
    assert!(
        readme.contains("## Running as a service") && readme.contains("(deploy/"),
        "README.md"
    );
    let deploy = read("deploy/README.md");
    for must in [
        "install -m 0755",
        "systemctl enable --now suitcase",
        "/var/lib/private/suitcase/local-publisher.token",
        "deploy/Containerfile",
    ] {
        assert!(deploy.contains(must), "deploy/README.md should say `{must}`");
    }
}

// ---------------------------------------------------------------------------------------
// The cluster examples (deploy/cluster/): each node's command line, from the compose file
// and from the systemd drop-in, run for real against a real PostgreSQL and a real S3
// server, with their hosts swapped for the test's.

/// The `command:` lists of the compose file's suitcase services.
fn compose_commands() -> Vec<Vec<String>> {
    read("deploy/cluster/compose.yaml")
        .lines()
        .filter_map(|l| l.trim().strip_prefix("command: "))
        .map(|list| serde_json::from_str(list).unwrap_or_else(|e| panic!("command: {list}: {e}")))
        .collect()
}

/// The drop-in's ExecStart, without the program.
fn dropin_command() -> Vec<String> {
    let text = read("deploy/cluster/suitcase-node.conf");
    let line = text
        .lines()
        .filter_map(|l| l.strip_prefix("ExecStart="))
        .find(|l| !l.is_empty())
        .expect("the drop-in sets ExecStart");
    let mut words = line.split_whitespace().map(str::to_string);
    assert_eq!(words.next().as_deref(), Some("/usr/local/bin/suitcase"));
    assert!(
        text.contains("LoadCredential=signing-key.pem:"),
        "the key must come as a credential"
    );
    assert!(
        !line.contains("--database") && text.contains("EnvironmentFile="),
        "the database password must not be on the command line: {line}"
    );
    words.collect()
}

#[test]
fn the_cluster_examples_run_the_real_server() {
    let Some(pg) = support::postgres::Postgres::start() else {
        return;
    };
    let Some(s3) = support::s3::S3::start() else { return };
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("signing-key.pem");
    support::suitcase(&["keygen", "--out", key.to_str().unwrap()]);
    let mut commands = compose_commands();
    assert_eq!(commands.len(), 3, "three nodes");
    assert!(
        commands.windows(2).all(|w| w[0] == w[1]),
        "the nodes' command lines differ"
    );
    commands.push(dropin_command());
    // What the drop-in's EnvironmentFile holds (the compose file's flags win over it).
    let mut env = s3.env();
    env.push(("SUITCASE_DATABASE", pg.url.clone()));
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    for (i, args) in commands.iter().enumerate() {
        let mut args = serve_extra(args);
        let swap = |args: &mut Vec<String>, flag: &str, value: &str| {
            let at = args
                .iter()
                .position(|a| a == flag)
                .unwrap_or_else(|| panic!("{flag} missing in {args:?}"));
            args[at + 1] = value.to_string();
        };
        if args.iter().any(|a| a == "--database") {
            swap(&mut args, "--database", &pg.url);
        }
        swap(&mut args, "--blobs", &format!("s3://{}/suitcase", s3.bucket));
        swap(&mut args, "--s3-endpoint", &s3.endpoint);
        swap(&mut args, "--key", key.to_str().unwrap());
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let node = TestServer::start_env(&dir.path().join(format!("node{i}")), &args, &env);
        let health = http_get(node.http_port, "/readyz");
        assert!(health.contains(" 200 "), "{health}");
        assert!(
            node.log().iter().any(|l| l.contains("shared store open")),
            "{:?}",
            node.log()
        );
        let (status, log) = node.terminate(Duration::from_secs(20));
        assert_eq!(status, Some(0), "{log:?}");
    }
}
