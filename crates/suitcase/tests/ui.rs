//! The management page in a real headless Chromium (WebDriver through chromedriver) against
//! the real binary: sign in with the keyboard, publish through the form (file picker and a
//! drop) and fetch the result over CoAP byte for byte, see the server's error, remove a
//! version after the confirmation, notify a simulated device and see its result, watch its
//! download progress and a rollout's wave fill without a reload, pause, resume and abort a
//! rollout; and the page read without JavaScript and on a 375 px wide screen.
//!
//! Screenshots land in `SUITCASE_SCREENSHOTS` (the README's come from
//! `SUITCASE_SCREENSHOTS=docs/screenshots cargo test -p suitcase --test ui`).

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod support;

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::browser::{self, Browser, Options, ENTER, TAB};
use support::simdevice::{Behaviour, SimDevice};
use support::TestServer;

fn sign_in(b: &Browser, server: &TestServer) {
    // With the keyboard: the token, then Enter.
    b.type_into("#token", &format!("{}{ENTER}", server.token()));
    b.wait("document.body.classList.contains('signed-in')", 15);
}

fn text(b: &Browser, css: &str) -> String {
    b.js_with(
        "const e = document.querySelector(arguments[0]); return e ? e.textContent : null;",
        vec![json!(css)],
    )
    .as_str()
    .unwrap_or_else(|| panic!("no element {css}"))
    .to_string()
}

/// Whether the element `css` matches is displayed at all.
fn shown(b: &Browser, css: &str) -> bool {
    b.js_with(
        "const e = document.querySelector(arguments[0]); return !!e && e.getClientRects().length > 0;",
        vec![json!(css)],
    ) == json!(true)
}

/// Narrow the window to a 375 px phone and check that nothing scrolls sideways.
fn fits_a_phone(b: &Browser, what: &str) {
    b.set_size(375, 812);
    b.wait("window.innerWidth <= 400", 5);
    let widths = b.js("[document.documentElement.scrollWidth, window.innerWidth, document.body.scrollWidth]");
    let w: Vec<u64> = widths.as_array().unwrap().iter().map(|v| v.as_u64().unwrap()).collect();
    assert!(w[1] <= 400, "{what}: the window is {} px wide, not a phone's", w[1]);
    assert!(
        w[0] <= w[1] && w[2] <= w[1],
        "{what}: the page scrolls sideways at {} px: {w:?}",
        w[1]
    );
}

#[test]
fn publish_copy_and_remove_in_chromium() {
    if !browser::available() || !support::require_coap_client() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(&dir.path().join("data"), &[]);
    let b = Browser::start(Options::default());
    b.goto(&format!("{}/", server.http()));

    // Before signing in: the listing, no publisher controls.
    b.wait("document.documentElement.classList.contains('js')", 10);
    assert!(!shown(&b, "#publish"), "the publish form shows before signing in");
    assert!(shown(&b, "#signin"));

    // A wrong token is refused with the server's word for it.
    b.type_into("#token", &format!("not-a-token{ENTER}"));
    b.wait("document.querySelector('#session-status.error')", 10);
    assert!(
        text(&b, "#session-status").contains("publisher token"),
        "{}",
        text(&b, "#session-status")
    );

    sign_in(&b, &server);
    assert!(shown(&b, "#publish"));
    assert!(!text(&b, "#who").is_empty());
    b.click("#publish summary");
    // Kept for the tab's session only, never in a cookie.
    assert_eq!(
        b.js("sessionStorage.getItem('suitcase.publisher-token')"),
        json!(server.token())
    );
    assert_eq!(b.js("document.cookie"), json!(""));

    // Publish: one file through the picker, one dropped onto the form.
    let app = support::random_bytes(70_000, 17);
    let app_path = dir.path().join("app.bin");
    std::fs::write(&app_path, &app).unwrap();
    let dropped = support::random_bytes(3_000, 18);
    b.type_into("#publish-form [name=publish_id]", "fw/ui/board");
    b.type_into("#publish-form [name=version]", "1.2.3");
    b.type_into("#files", app_path.to_str().unwrap());
    let listed = b.js_with(
        "const dt = new DataTransfer();
         dt.items.add(new File([new Uint8Array(arguments[0])], 'extra.bin'));
         const zone = document.querySelector('#drop');
         for (const type of ['dragenter', 'dragover', 'drop']) {
           zone.dispatchEvent(new DragEvent(type, { dataTransfer: dt, bubbles: true, cancelable: true }));
         }
         return Array.from(document.querySelectorAll('#file-list li')).map((li) => li.textContent);",
        vec![json!(dropped)],
    );
    let listed = listed.to_string();
    assert!(listed.contains("app.bin") && listed.contains("extra.bin"), "{listed}");
    b.click("#publish-submit");
    b.wait(
        "document.querySelector('#publish-status.ok, #publish-status.error')",
        30,
    );
    let status = text(&b, "#publish-status");
    assert!(status.contains("Published version 1 of fw/ui/board"), "{status}");
    // The bar followed the browser's upload progress events to the end.
    assert_eq!(b.js("document.querySelector('#upload-progress').value"), json!(100));
    let loaded: u64 = b
        .js("document.querySelector('#upload-progress').dataset.loaded")
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(loaded > 73_000, "the last progress event counted {loaded} bytes");
    b.screenshot("publish");

    // Listed without a reload, with URLs that serve exactly what was uploaded.
    let row = "[data-publish-id='fw/ui/board'] tr[data-version='1']";
    b.wait(&format!("document.querySelector(\"{row}\")"), 15);
    let urls = |file: &str| -> Vec<String> {
        let v = b.js_with(
            "return Array.from(document.querySelectorAll(arguments[0])).map((i) => i.value);",
            vec![json!(format!("{row} li[data-file='{file}'] .copy input"))],
        );
        v.as_array()
            .unwrap()
            .iter()
            .map(|s| s.as_str().unwrap().to_string())
            .collect()
    };
    for (name, bytes) in [("app.bin", &app), ("extra.bin", &dropped)] {
        let u = urls(name);
        assert_eq!(u.len(), 2, "{name}: {u:?}");
        assert!(u[0].starts_with("coap://"), "{u:?}");
        let got = support::coap_get(&u[0], Some(1024), &dir.path().join("got"));
        assert!(
            got == **bytes,
            "{name} over CoAP differs from the upload ({} bytes)",
            got.len()
        );
        assert!(u[1].starts_with("http://"), "{u:?}");
        let out = dir.path().join("got-http");
        let st = std::process::Command::new("curl")
            .args(["-sf", "-o"])
            .arg(&out)
            .arg(&u[1])
            .status()
            .unwrap();
        assert!(st.success(), "GET {}", u[1]);
        assert!(std::fs::read(&out).unwrap() == **bytes, "{name} over HTTP differs");
    }

    // Copy a URL (the button says whether it could).
    b.click(&format!("{row} li[data-file='app.bin'] details summary"));
    b.click(&format!("{row} li[data-file='app.bin'] .copy button"));
    let copied = b.wait(
        &format!("document.querySelector(\"{row} li[data-file='app.bin'] .copy button\").dataset.copied"),
        5,
    );
    assert_eq!(copied, json!("yes"), "copying the URL failed");

    // The server's error comes back to the form.
    b.type_into("#publish-form [name=publish_id]", "fw/ui/board");
    b.type_into("#publish-form [name=version]", "not-a-version");
    b.type_into("#files", app_path.to_str().unwrap());
    b.click("#publish-submit");
    b.wait("document.querySelector('#publish-status.error')", 30);
    let status = text(&b, "#publish-status");
    assert!(status.contains("not semver"), "{status}");
    b.js("document.querySelector('#publish-form').reset()");

    // A second version, so the page says what the devices get after the removal.
    server.publish("fw/ui/board", &app_path, &[]);
    b.js("window.samePage = 'yes'");
    b.wait(
        "document.querySelector(\"[data-publish-id='fw/ui/board'] tr[data-version='2']\")",
        20,
    );
    assert_eq!(b.js("window.samePage"), json!("yes"), "the page reloaded");

    // On a phone: nothing scrolls sideways, signed in, with the long URLs open.
    fits_a_phone(&b, "signed in");
    b.screenshot("phone-top");
    b.js("document.querySelector(\"[data-publish-id='fw/ui/board']\").scrollIntoView()");
    b.screenshot("phone");
    b.set_size(1280, 900);

    // Remove version 2 with the keyboard: focus its button, Enter; the dialog names exactly
    // what goes; Cancel has the focus, Tab reaches Remove.
    b.js("document.querySelector(\"button[data-remove='fw/ui/board'][data-version='2']\").focus()");
    b.keys(ENTER);
    b.wait("document.querySelector('#confirm').open", 5);
    let title = text(&b, "#confirm-title");
    assert_eq!(title, "Remove version 2 of fw/ui/board?");
    let list = text(&b, "#confirm-list");
    assert!(list.contains("app.bin") && list.contains(".suit"), "{list}");
    assert!(
        text(&b, "#confirm-text").contains("get version 1 instead"),
        "{}",
        text(&b, "#confirm-text")
    );
    b.screenshot("remove-confirm");
    assert_eq!(b.js("document.activeElement.textContent"), json!("Cancel"));
    b.keys(TAB);
    assert_eq!(b.js("document.activeElement.id"), json!("confirm-ok"));
    b.keys(ENTER);
    b.wait(
        "!document.querySelector(\"[data-publish-id='fw/ui/board'] tr[data-version='2']\")",
        15,
    );
    assert!(text(&b, "#firmware-status").contains("Removed version 2 of fw/ui/board"));
    let (code, _) = support::curl_text(&format!("{}/files/fw/ui/board/v/2/app.bin", server.http()), &[]);
    assert_eq!(code, 404, "version 2 is still served");

    // Cancel keeps it.
    b.click("button[data-remove='fw/ui/board'][data-version='1']");
    b.wait("document.querySelector('#confirm').open", 5);
    b.keys("\u{E00C}"); // Escape
    b.wait("!document.querySelector('#confirm').open", 5);
    assert!(shown(&b, "[data-publish-id='fw/ui/board'] tr[data-version='1']"));
    drop(b);

    // Without JavaScript: the read-only listing, no controls.
    let plain = Browser::start(Options {
        javascript: false,
        ..Options::default()
    });
    plain.goto(&format!("{}/", server.http()));
    assert!(shown(&plain, "[data-publish-id='fw/ui/board'] tr[data-version='1']"));
    assert!(!shown(&plain, "#signin"));
    assert!(!shown(&plain, "#publish"));
    assert!(!shown(&plain, "button[data-remove]"));
    assert_eq!(
        plain.js("document.documentElement.classList.contains('js')"),
        json!(false)
    );
}

/// The state and progress the page shows for `device`.
fn device_row(b: &Browser, device: &str) -> (String, Option<u64>) {
    let v = b.js_with(
        "const r = document.querySelector(`tr[data-device='${arguments[0]}']`);
         if (!r) return null;
         const p = r.querySelector('progress');
         return [r.dataset.state, p ? p.value : null];",
        vec![json!(device)],
    );
    match v {
        Value::Array(a) => (a[0].as_str().unwrap().to_string(), a[1].as_u64()),
        _ => (String::new(), None),
    }
}

fn rollout_state(b: &Browser, id: u64) -> String {
    b.js(&format!(
        "(document.querySelector(\"tr[data-rollout='{id}']\") || {{dataset: {{}}}}).dataset.state || ''"
    ))
    .as_str()
    .unwrap()
    .to_string()
}

fn wait_rollout(b: &Browser, id: u64, state: &str, secs: u64) {
    b.wait(
        &format!("document.querySelector(\"tr[data-rollout='{id}'][data-state='{state}']\")"),
        secs,
    );
}

#[test]
fn notify_progress_and_rollouts_in_chromium() {
    if !browser::available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start_v4(&dir.path().join("data"), &[]);
    let image = dir.path().join("fw.bin");
    std::fs::write(&image, support::random_bytes(64 * 1024, 5)).unwrap();
    server.publish("fw/ui/sim", &image, &["--version", "1.0.0"]);

    // A device on a slow link (64 blocks, 200 ms each: the fleet records progress every 5 s) and two that wait to be let go.
    let slow_link = SimDevice::start_with(
        "sim-1",
        "127.0.3.10",
        "fw/ui/sim",
        Behaviour::Install,
        Duration::from_millis(200),
    );
    let waiting = SimDevice::start("sim-2", "127.0.3.11", "fw/ui/sim", Behaviour::Slow);
    let aborted = SimDevice::start("sim-3", "127.0.3.12", "fw/ui/sim", Behaviour::Slow);
    for d in [&slow_link, &waiting, &aborted] {
        let addr = d.addr.to_string();
        server.cli(&[
            "device",
            "add",
            &d.id,
            "--coap",
            &addr,
            "--publish-id",
            "fw/ui/sim",
            "--class",
            "board-a",
        ]);
    }

    let b = Browser::start(Options {
        height: 1400,
        ..Options::default()
    });
    b.goto(&format!("{}/", server.http()));
    sign_in(&b, &server);
    b.js("window.samePage = 'yes'");

    // Notify sim-1, picked from the fleet.
    b.click("button[data-notify='fw/ui/sim']");
    b.wait("document.querySelector('#notify').open", 5);
    b.wait("document.querySelector(\"#notify-picker input[value='sim-1']\")", 10);
    b.click("#notify-picker input[value='sim-1']");
    b.click("#notify-send");
    b.wait("document.querySelector('#notify-results tbody tr')", 30);
    let result = text(&b, "#notify-results tbody tr");
    assert!(
        result.contains("sim-1") && result.contains("ok") && result.contains("2.04"),
        "{result}"
    );
    assert!(result.contains(&slow_link.addr.to_string()), "{result}");
    assert!(
        text(&b, "#notify-status").starts_with("1 of 1 accepted"),
        "{}",
        text(&b, "#notify-status")
    );
    b.screenshot("notify");
    fits_a_phone(&b, "the notify dialog");
    b.set_size(1280, 1400);
    b.click("#notify-close");

    // Its download, watched live: a progress between 0 and 100, then installed.
    let start = Instant::now();
    let mut seen = Vec::new();
    let mut shot = false;
    loop {
        let (state, p) = device_row(&b, "sim-1");
        if seen.last() != Some(&(state.clone(), p)) {
            seen.push((state.clone(), p));
        }
        if !shot && state == "downloading" && p.is_some_and(|p| p > 0 && p < 100) {
            b.js("document.querySelector('#fleet').scrollIntoView()");
            b.screenshot("devices");
            shot = true;
        }
        if state == "installed" {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "sim-1 never installed: {seen:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let partial: Vec<u64> = seen
        .iter()
        .filter(|(s, _)| s == "downloading")
        .filter_map(|(_, p)| *p)
        .filter(|p| *p > 0 && *p < 100)
        .collect();
    assert!(!partial.is_empty(), "no progress between 0 and 100 was shown: {seen:?}");
    assert_eq!(b.js("window.samePage"), json!("yes"), "the page reloaded");

    // A rollout of version 2 to sim-2, created from the form; paused, resumed, finished.
    server.publish("fw/ui/sim", &image, &["--version", "2.0.0"]);
    b.click("#new-rollout summary");
    b.type_into("#rollout-form [name=publish_id]", "fw/ui/sim");
    b.js("document.querySelector('#rollout-form [name=target]').value = 'devices'");
    b.type_into("#rollout-form [name=target_value]", "sim-2");
    b.js("document.querySelector('#rollout-form [name=trigger]').value = 'coap'");
    b.type_into("#rollout-form [name=name]", "first <b>wave</b>");
    b.click("#rollout-form button[type=submit]");
    b.wait(
        "document.querySelector('#rollout-status.ok, #rollout-status.error')",
        15,
    );
    let status = text(&b, "#rollout-status");
    assert!(status.contains("Rollout #1 created for 1 device"), "{status}");
    wait_rollout(&b, 1, "running", 15);
    // The name is shown as text, never as markup.
    assert!(text(&b, "tr[data-rollout='1']").contains("first <b>wave</b>"));
    let start = Instant::now();
    while waiting.triggers() == 0 {
        assert!(start.elapsed() < Duration::from_secs(30), "sim-2 was never triggered");
        std::thread::sleep(Duration::from_millis(50));
    }
    b.click("button[data-rollout-action='pause'][data-id='1']");
    wait_rollout(&b, 1, "paused", 15);
    b.click("button[data-rollout-action='resume'][data-id='1']");
    wait_rollout(&b, 1, "running", 15);
    assert_eq!(
        b.js("document.querySelector(\"tr[data-rollout='1'] .wave\").dataset.installed"),
        json!("0")
    );
    waiting.go.store(true, std::sync::atomic::Ordering::Relaxed);
    wait_rollout(&b, 1, "finished", 60);
    assert_eq!(
        b.js("document.querySelector(\"tr[data-rollout='1'] .wave\").dataset.installed"),
        json!("1")
    );
    assert_eq!(
        b.js("document.querySelector(\"tr[data-rollout='1'] .wave progress\").value"),
        json!(1)
    );
    assert!(
        !shown(&b, "button[data-rollout-action][data-id='1']"),
        "a finished rollout offers controls"
    );

    // A refused rollout says why and creates nothing.
    b.js("document.querySelector('#rollout-form [name=name]').value = ''");
    b.type_into("#rollout-form [name=waves]", "50%,20%");
    b.click("#rollout-form button[type=submit]");
    b.wait("document.querySelector('#rollout-status.error')", 15);
    assert!(
        text(&b, "#rollout-status").starts_with("Not created:"),
        "{}",
        text(&b, "#rollout-status")
    );
    b.js("document.querySelector('#rollout-form [name=waves]').value = ''");

    // Another, aborted after the confirmation.
    server.publish("fw/ui/sim", &image, &["--version", "3.0.0"]);
    b.js("document.querySelector('#rollout-form [name=target_value]').value = 'sim-3'");
    b.click("#rollout-form button[type=submit]");
    b.wait("document.querySelector('#rollout-status.ok') && document.querySelector('#rollout-status').textContent.includes('#2')", 15);
    wait_rollout(&b, 2, "running", 15);
    b.js("document.querySelector('#rollouts-live').scrollIntoView()");
    b.screenshot("rollouts");
    b.click("button[data-rollout-action='abort'][data-id='2']");
    b.wait("document.querySelector('#confirm').open", 5);
    assert!(
        text(&b, "#confirm-title").contains("rollout #2 of fw/ui/sim"),
        "{}",
        text(&b, "#confirm-title")
    );
    b.click("#confirm-ok");
    wait_rollout(&b, 2, "aborted", 15);
    assert_eq!(rollout_state(&b, 1), "finished");
    assert_eq!(b.js("window.samePage"), json!("yes"), "the page reloaded");

    // On a phone, with devices and rollouts listed.
    fits_a_phone(&b, "devices and rollouts");
    b.set_size(1280, 1400);

    // The overview, signed in, at the top.
    b.js("window.scrollTo(0, 0)");
    b.screenshot("overview");
    drop(aborted);
}
