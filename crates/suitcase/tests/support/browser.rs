//! A real headless Chromium, driven over WebDriver (Debian's `chromium` and `chromium-driver`;
//! `.ci/run` installs both). Each [`Browser`] starts its own chromedriver on a free loopback
//! port with a fresh profile, and kills it (and the browser) on drop. The calls are blocking
//! wrappers around fantoccini on a runtime of the browser's own, like the rest of the harness.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{json, Value};

/// The Chromium binary (`SUITCASE_CHROMIUM` overrides).
fn chromium() -> PathBuf {
    std::env::var_os("SUITCASE_CHROMIUM").map_or_else(|| PathBuf::from("/usr/bin/chromium"), PathBuf::from)
}

/// The chromedriver binary (`SUITCASE_CHROMEDRIVER` overrides).
fn chromedriver() -> PathBuf {
    std::env::var_os("SUITCASE_CHROMEDRIVER").map_or_else(|| PathBuf::from("chromedriver"), PathBuf::from)
}

/// Whether both are here; if not, the test is skipped with a printed reason (a failure in CI).
pub fn available() -> bool {
    if chromium().exists() && super::have(chromedriver().to_str().unwrap_or("chromedriver"), "--version") {
        return true;
    }
    super::netns::skip("Chromium or ChromeDriver is not installed (Debian: apt-get install chromium chromium-driver)");
    false
}

/// Where the tests save screenshots: `SUITCASE_SCREENSHOTS` (docs/screenshots when taking
/// them for the README), else a folder under the target directory.
pub fn screenshot_dir() -> PathBuf {
    let dir = std::env::var_os("SUITCASE_SCREENSHOTS").map_or_else(
        || Path::new(env!("CARGO_TARGET_TMPDIR")).join("ui-screenshots"),
        PathBuf::from,
    );
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

pub struct Browser {
    driver: Child,
    client: Option<Client>,
    rt: tokio::runtime::Runtime,
    _profile: tempfile::TempDir,
}

impl Drop for Browser {
    fn drop(&mut self) {
        if let Some(c) = self.client.take() {
            let _ = self
                .rt
                .block_on(async { tokio::time::timeout(Duration::from_secs(5), c.close()).await });
        }
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

/// Options of a browser.
#[derive(Clone, Copy, Debug)]
pub struct Options {
    pub width: u32,
    pub height: u32,
    pub javascript: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            width: 1280,
            height: 900,
            javascript: true,
        }
    }
}

impl Browser {
    pub fn start(options: Options) -> Browser {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let driver = Command::new(chromedriver())
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver starts");
        let profile = tempfile::tempdir().unwrap();
        let mut args = vec![
            "--headless=new".to_string(),
            "--no-sandbox".into(),
            "--disable-gpu".into(),
            "--disable-dev-shm-usage".into(),
            "--disable-quic".into(),
            "--no-first-run".into(),
            "--disable-background-networking".into(),
            "--disable-component-update".into(),
            "--disable-sync".into(),
            "--hide-scrollbars".into(),
            format!("--window-size={},{}", options.width, options.height),
            format!("--user-data-dir={}", profile.path().display()),
        ];
        if !options.javascript {
            args.push("--blink-settings=scriptEnabled=false".into());
        }
        let caps = json!({
            "browserName": "chrome",
            "goog:chromeOptions": { "binary": chromium(), "args": args },
        });
        let serde_json::Value::Object(caps) = caps else {
            unreachable!()
        };
        let url = format!("http://127.0.0.1:{port}");
        let start = Instant::now();
        let client = loop {
            let attempt = rt.block_on(async {
                ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
                    .capabilities(caps.clone())
                    .connect(&url)
                    .await
            });
            match attempt {
                Ok(c) => break c,
                Err(e) if start.elapsed() < Duration::from_secs(30) => {
                    let _ = e;
                    std::thread::sleep(Duration::from_millis(200));
                }
                Err(e) => panic!("no WebDriver session from chromedriver on {url}: {e}"),
            }
        };
        Browser {
            driver,
            client: Some(client),
            rt,
            _profile: profile,
        }
    }

    fn client(&self) -> &Client {
        self.client.as_ref().unwrap()
    }

    pub fn goto(&self, url: &str) {
        self.rt.block_on(self.client().goto(url)).unwrap();
    }

    /// Run `script` (a function body: `return …`) with `args` (`arguments[i]`).
    pub fn js_with(&self, script: &str, args: Vec<Value>) -> Value {
        self.rt
            .block_on(self.client().execute(script, args))
            .unwrap_or_else(|e| panic!("script failed: {e}\n{script}"))
    }

    /// The value of a JavaScript expression.
    pub fn js(&self, expr: &str) -> Value {
        self.js_with(&format!("return ({expr});"), vec![])
    }

    /// Wait until `expr` is truthy; its value.
    pub fn wait(&self, expr: &str, secs: u64) -> Value {
        let start = Instant::now();
        loop {
            let v = self.js(expr);
            let truthy = !matches!(v, Value::Null | Value::Bool(false)) && v != json!(0) && v != json!("");
            if truthy {
                return v;
            }
            if start.elapsed() > Duration::from_secs(secs) {
                let body = self.js("document.body ? document.body.innerText : ''");
                panic!(
                    "waited {secs} s for `{expr}`; the page says:\n{}",
                    body.as_str().unwrap_or_default()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Click the element `css` matches, as a user would (WebDriver element click). A live
    /// section may replace the element between finding and clicking it: then it is found
    /// again.
    pub fn click(&self, css: &str) {
        let mut tries = 0;
        loop {
            let r = self
                .rt
                .block_on(async { self.client().find(Locator::Css(css)).await?.click().await });
            match r {
                Ok(()) => return,
                Err(e) if tries < 10 && e.to_string().contains("stale") => {
                    tries += 1;
                    std::thread::sleep(Duration::from_millis(50));
                }
                Err(e) => panic!("click {css}: {e}"),
            }
        }
    }

    /// Type `text` into the element `css` matches (keys; for a file input, a path per line).
    pub fn type_into(&self, css: &str, text: &str) {
        self.rt
            .block_on(async { self.client().find(Locator::Css(css)).await?.send_keys(text).await })
            .unwrap_or_else(|e| panic!("type into {css}: {e}"));
    }

    /// Press keys on whatever has the focus (`\u{E007}` is Enter, `\u{E004}` Tab).
    pub fn keys(&self, text: &str) {
        self.rt
            .block_on(async { self.client().active_element().await?.send_keys(text).await })
            .unwrap_or_else(|e| panic!("keys: {e}"));
    }

    pub fn set_size(&self, width: u32, height: u32) {
        self.rt.block_on(self.client().set_window_size(width, height)).unwrap();
    }

    /// Save a screenshot of the viewport as `name`.png in [`screenshot_dir`]; checks it is a PNG.
    pub fn screenshot(&self, name: &str) -> PathBuf {
        let png = self.rt.block_on(self.client().screenshot()).unwrap();
        assert!(
            png.starts_with(b"\x89PNG\r\n\x1a\n") && png.len() > 1000,
            "{name}: not a PNG"
        );
        let path = screenshot_dir().join(format!("{name}.png"));
        std::fs::write(&path, png).unwrap();
        path
    }
}

/// Enter.
pub const ENTER: &str = "\u{E007}";
/// Tab.
pub const TAB: &str = "\u{E004}";
