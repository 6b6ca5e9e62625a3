//! Router tests through `oneshot`.
#![allow(clippy::unwrap_used, clippy::expect_used)]
use super::*;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use suitcase_store::LocalStore;
use suitcase_suit::{Algorithm, SigningKey};
use tower::ServiceExt;

/// A notifier that records what it was asked and answers 2.01 for every device.
#[derive(Default)]
struct Recorder(std::sync::Mutex<Vec<(Vec<String>, String, NotifyOptions)>>);

impl Notifier for Recorder {
    fn notify(
        &self,
        devices: Vec<String>,
        url: String,
        options: NotifyOptions,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Vec<DeviceNotice>> + Send>> {
        self.0.lock().unwrap().push((devices.clone(), url, options));
        Box::pin(async move {
            devices
                .into_iter()
                .map(|d| DeviceNotice {
                    device: d,
                    address: None,
                    result: "ok".into(),
                    code: Some("2.01".into()),
                    transmissions: 1,
                    elapsed_ms: 0,
                    message: None,
                    download: None,
                    fetched: Vec::new(),
                })
                .collect()
        })
    }
}

fn state(dir: &std::path::Path) -> (AppState, SigningKey) {
    let key = SigningKey::generate(Algorithm::Ed25519);
    let store = Arc::new(LocalStore::open(dir).unwrap());
    let st = AppState {
        store,
        signer: Arc::new(Signer::new(key.clone(), "example.org")),
        config: Arc::new(Config {
            coap_base_url: None,
            coap_port: 5683,
            max_body_bytes: 1 << 20,
            public_http_url: None,
            tls: false,
            trusted_keys: Vec::new(),
        }),
        notifier: Some(Arc::new(Recorder::default())),
        tokens: Arc::new(auth::Tokens::new(dir.join("tokens.json"))),
        fleet: None,
        health: Default::default(),
        metrics: Default::default(),
    };
    // What `suitcase serve` does at start when no publisher token exists.
    st.tokens
        .create_local_publisher(&dir.join(auth::LOCAL_TOKEN_FILE))
        .unwrap();
    (st, key)
}

/// The `local` publisher token of `st` (what the CLI reads from the data directory).
fn local_token(st: &AppState) -> String {
    let file = st.tokens.path().with_file_name(auth::LOCAL_TOKEN_FILE);
    std::fs::read_to_string(file).unwrap().trim().to_string()
}

/// The router as the CLI on the server's host sees it: a loopback peer that sends the local
/// publisher token unless the request carries its own Authorization.
fn app(st: AppState) -> Router {
    let auth = format!("Bearer {}", local_token(&st));
    app_from(st, [127, 0, 0, 1]).layer(axum::middleware::map_request(move |mut req: Request<Body>| {
        let auth = auth.clone();
        async move {
            if !req.headers().contains_key("authorization") {
                req.headers_mut().insert("authorization", auth.parse().unwrap());
            }
            req
        }
    }))
}

fn app_from(st: AppState, ip: [u8; 4]) -> Router {
    router(st).layer(axum::extract::connect_info::MockConnectInfo(
        std::net::SocketAddr::from((ip, 40000)),
    ))
}

/// (field name, filename, content).
type Part<'a> = (&'a str, Option<&'a str>, &'a [u8]);

fn multipart(parts: &[Part<'_>]) -> (String, Vec<u8>) {
    let boundary = "XbOuNdArYx";
    let mut body = Vec::new();
    for (name, filename, data) in parts {
        body.extend_from_slice(format!("--{boundary}\r\n").as_bytes());
        match filename {
            Some(f) => body.extend_from_slice(
                format!("Content-Disposition: form-data; name=\"{name}\"; filename=\"{f}\"\r\nContent-Type: application/octet-stream\r\n\r\n").as_bytes(),
            ),
            None => body.extend_from_slice(format!("Content-Disposition: form-data; name=\"{name}\"\r\n\r\n").as_bytes()),
        }
        body.extend_from_slice(data);
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
    (format!("multipart/form-data; boundary={boundary}"), body)
}

async fn post(app: Router, parts: &[Part<'_>]) -> (StatusCode, serde_json::Value) {
    let (ct, body) = multipart(parts);
    let req = Request::post("/publish")
        .header("content-type", ct)
        .header("host", "ota.example:8080")
        .body(Body::from(body))
        .unwrap();
    send(app, req).await
}

#[tokio::test]
async fn publish_builds_a_signed_manifest_with_growing_sequence_numbers() {
    let dir = tempfile::tempdir().unwrap();
    let (st, key) = state(dir.path());
    let app = app(st.clone());
    let (s, v1) = post(
        app.clone(),
        &[
            ("publish_id", None, b"fw/app/board"),
            ("app.bin", Some("app.bin"), b"firmware one"),
        ],
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{v1}");
    assert_eq!(v1["version"], 1);
    assert_eq!(
        v1["files"][0]["url"],
        "coap://ota.example:5683/fw/app/board/v/1/app.bin"
    );
    let (_, v2) = post(
        app,
        &[
            ("publish_id", None, b"fw/app/board"),
            ("file", Some("app.bin"), b"firmware two"),
        ],
    )
    .await;
    assert_eq!(v2["version"], 2);
    assert!(v2["sequence_number"].as_u64() > v1["sequence_number"].as_u64());

    let latest = st.store.latest("fw/app/board").unwrap();
    let m = latest.manifest.as_ref().unwrap();
    let bytes = st.store.read(&m.file.sha256).unwrap();
    let env = suitcase_suit::Envelope::decode(&bytes)
        .unwrap()
        .verify(&key.verifying_key())
        .unwrap();
    let params = env.manifest().component_parameters();
    assert_eq!(
        params[0].1.get(14),
        Some(&suitcase_suit::manifest::ParamValue::Uint(12))
    );
    assert_eq!(
        params[0].1.get(21),
        Some(&suitcase_suit::manifest::ParamValue::Text(
            "coap://ota.example:5683/fw/app/board/v/2/app.bin".into()
        ))
    );
}

#[tokio::test]
async fn bad_publishes_get_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let (st, _) = state(dir.path());
    let app = app(st.clone());
    let cases: Vec<(Vec<Part<'_>>, StatusCode, &str)> = vec![
        (
            vec![("a.bin", Some("a.bin"), b"x")],
            StatusCode::BAD_REQUEST,
            "publish_id",
        ),
        (
            vec![("publish_id", None, b"../etc"), ("a.bin", Some("a.bin"), b"x")],
            StatusCode::BAD_REQUEST,
            "invalid publish-id",
        ),
        (vec![("publish_id", None, b"ok")], StatusCode::BAD_REQUEST, "No file"),
        (
            vec![
                ("publish_id", None, b"ok"),
                ("version", None, b"one"),
                ("a", Some("a"), b"x"),
            ],
            StatusCode::BAD_REQUEST,
            "semver",
        ),
        (
            vec![
                ("publish_id", None, b"ok"),
                ("manifest", Some("m"), b"\xff\x00"),
                ("a", Some("a"), b"x"),
            ],
            StatusCode::BAD_REQUEST,
            "manifest",
        ),
        (
            vec![("publish_id", None, b"ok"), (".hidden", Some("a"), b"x")],
            StatusCode::BAD_REQUEST,
            "file name",
        ),
    ];
    for (parts, status, needle) in cases {
        let (s, body) = post(app.clone(), &parts).await;
        assert_eq!(s, status, "{body}");
        assert!(
            body["error"].as_str().unwrap().contains(needle),
            "{body} lacks {needle}"
        );
    }
    assert!(st.store.publish_ids().is_empty());
    // Oversize upload.
    let big = vec![0u8; 2 << 20];
    let (s, _) = post(app, &[("publish_id", None, b"ok"), ("a", Some("a"), &big)]).await;
    assert_eq!(s, StatusCode::PAYLOAD_TOO_LARGE);
    assert!(st.store.publish_ids().is_empty());
}

#[tokio::test]
async fn coap_url_and_listing() {
    let dir = tempfile::tempdir().unwrap();
    let (st, _) = state(dir.path());
    let app = app(st);
    post(
        app.clone(),
        &[
            ("publish_id", None, b"samr21-xpro_suit"),
            ("slot0.1.bin", Some("x"), b"1"),
        ],
    )
    .await;
    let req = Request::get("/coap/url/samr21-xpro_suit")
        .header("host", "[2001:db8::1]:8080")
        .body(Body::empty())
        .unwrap();
    let resp = app.clone().oneshot(req).await.unwrap();
    let body = axum::body::to_bytes(resp.into_body(), 1000).await.unwrap();
    assert_eq!(&body[..], b"coap://[2001:db8::1]:5683/samr21-xpro_suit");
    let resp = app
        .clone()
        .oneshot(Request::get("/api/v1/publish-ids").body(Body::empty()).unwrap())
        .await
        .unwrap();
    let body = axum::body::to_bytes(resp.into_body(), 10000).await.unwrap();
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v[0]["publish_id"], "samr21-xpro_suit");
    assert_eq!(v[0]["latest"], 1);
    let resp = app
        .oneshot(Request::get("/api/v1/publish-ids/nope").body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
}

async fn send(app: Router, req: Request<Body>) -> (StatusCode, serde_json::Value) {
    let resp = app.oneshot(req).await.unwrap();
    let status = resp.status();
    let bytes = axum::body::to_bytes(resp.into_body(), usize::MAX).await.unwrap();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null),
    )
}

#[tokio::test]
async fn riot_publish_then_notify_and_remove() {
    let dir = tempfile::tempdir().unwrap();
    let (st, key) = state(dir.path());
    let app = app(st.clone());
    // A RIOT-profile manifest built like RIOT's build does, uploaded as riot.suit.<seq>.bin.
    let vendor = suitcase_suit::builder::vendor_id("riot-os.org");
    let class = suitcase_suit::builder::class_id(&vendor, "native");
    let m = suitcase_suit::ManifestBuilder::new(suitcase_suit::Profile::Riot09, 1700000000, vendor, class)
        .image(suitcase_suit::Image::from_bytes(
            "coap://[::1]/fw/app/native/slot0.1700000000.bin",
            b"slot0",
            Some(0x1000),
        ))
        .image(suitcase_suit::Image::from_bytes(
            "coap://[::1]/fw/app/native/slot1.1700000000.bin",
            b"slot1",
            Some(0x2000),
        ))
        .build()
        .unwrap();
    let env = suitcase_suit::Envelope::sign(suitcase_suit::Profile::Riot09, &m, &key)
        .unwrap()
        .encode();
    let (s, v) = post(
        app.clone(),
        &[
            ("publish_id", None, b"fw/app/native"),
            ("riot.suit_unsigned.1700000000.bin", Some("u"), b"unsigned"),
            ("riot.suit.1700000000.bin", Some("s"), &env),
            ("slot0.1700000000.bin", Some("a"), b"slot0"),
            ("slot1.1700000000.bin", Some("b"), b"slot1"),
        ],
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["sequence_number"], 1700000000);
    assert_eq!(v["manifest"]["name"], "riot.suit.1700000000.bin");
    assert_eq!(v["files"].as_array().unwrap().len(), 3);

    // Notify as RIOT's make target does (multipart fields).
    let (ct, body) = multipart(&[
        ("publish_id", None, b"fw/app/native"),
        ("urls", None, b"[fe80::1%tap0], 10.0.0.7:5683"),
        ("version", None, b"latest"),
    ]);
    let req = Request::post("/notify")
        .header("content-type", ct)
        .header("host", "[2001:db8::1]:8080")
        .body(Body::from(body))
        .unwrap();
    let (s, v) = send(app.clone(), req).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(
        v["manifest_url"],
        "coap://[2001:db8::1]:5683/fw/app/native/riot.suit.latest.bin"
    );
    assert_eq!(v["results"].as_array().unwrap().len(), 2);
    assert_eq!(v["results"][0]["code"], "2.01");
    // A form-encoded notify naming the sequence number.
    let req = Request::post("/notify")
        .header("content-type", "application/x-www-form-urlencoded")
        .header("host", "h:8080")
        .body(Body::from("publish_id=fw%2Fapp%2Fnative&urls=dev1&version=1700000000"))
        .unwrap();
    let (s, v) = send(app.clone(), req).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["manifest_url"], "coap://h:5683/fw/app/native/riot.suit.latest.bin");
    // Unknown version / id / no devices.
    for (body, status) in [
        ("publish_id=fw%2Fapp%2Fnative&urls=d&version=5", StatusCode::NOT_FOUND),
        ("publish_id=nope&urls=d", StatusCode::NOT_FOUND),
        ("publish_id=fw%2Fapp%2Fnative&urls=", StatusCode::BAD_REQUEST),
        ("urls=d", StatusCode::BAD_REQUEST),
    ] {
        let req = Request::post("/notify")
            .header("content-type", "application/x-www-form-urlencoded")
            .body(Body::from(body))
            .unwrap();
        let (s, v) = send(app.clone(), req).await;
        assert_eq!(s, status, "{body}: {v}");
        assert!(v["error"].is_string());
    }
    // Remove by RIOT sequence number.
    let req = Request::post("/remove")
        .header("content-type", "application/json")
        .body(Body::from(
            r#"{"publish_id":"fw/app/native","sequence_number":1700000000}"#,
        ))
        .unwrap();
    let (s, v) = send(app.clone(), req).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert!(st.store.publish_ids().is_empty());
}

async fn get_with(app: Router, uri: &str, headers: &[(&str, &str)]) -> axum::response::Response {
    let mut b = Request::get(uri).header("host", "ota.local:8080");
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    app.oneshot(b.body(Body::empty()).unwrap()).await.unwrap()
}

async fn body_of(r: axum::response::Response) -> Vec<u8> {
    axum::body::to_bytes(r.into_body(), usize::MAX).await.unwrap().to_vec()
}

async fn put_image(app: Router, filename: &str, data: &[u8], auth: Option<&str>) -> (StatusCode, serde_json::Value) {
    let (ct, body) = multipart(&[("image", Some(filename), data)]);
    let mut b = Request::put("/images")
        .header("content-type", ct)
        .header("host", "ota.local:8080");
    if let Some(a) = auth {
        b = b.header("authorization", a);
    }
    send(app, b.body(Body::from(body)).unwrap()).await
}

#[tokio::test]
async fn esp_http_update_contract() {
    let dir = tempfile::tempdir().unwrap();
    let (st, _) = state(dir.path());
    let app = app(st);
    let image: Vec<u8> = std::iter::once(0xE9)
        .chain((0..5000u32).map(|i| (i % 251) as u8))
        .collect();
    let (s, v) = put_image(app.clone(), "sensor_v1.9.0.bin", b"\xE9old", None).await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let (s, v) = put_image(app.clone(), "sensor_v1.10.0.bin", &image, None).await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    assert_eq!(v["url"], "http://ota.local:8080/images/sensor/sensor_v1.10.0.bin");
    // Immutable: the same version again is a conflict; a name without version is refused.
    assert_eq!(
        put_image(app.clone(), "sensor_v1.10.0.bin", b"x", None).await.0,
        StatusCode::CONFLICT
    );
    assert_eq!(
        put_image(app.clone(), "sensor.bin", b"x", None).await.0,
        StatusCode::BAD_REQUEST
    );

    // sglahn: 400 without the header, 304 when current (semver: 1.10 > 1.9), 200 + x-MD5 when not.
    let r = get_with(app.clone(), "/firmware/sensor", &[]).await;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    let r = get_with(app.clone(), "/firmware/sensor", &[("x-ESP8266-version", "banana")]).await;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    let r = get_with(app.clone(), "/firmware/sensor", &[("x-ESP32-version", "1.10.0")]).await;
    assert_eq!(r.status(), StatusCode::NOT_MODIFIED);
    let r = get_with(app.clone(), "/firmware/sensor", &[("x-ESP8266-version", "1.9.0")]).await;
    assert_eq!(r.status(), StatusCode::OK);
    let md5 = r.headers()["x-md5"].to_str().unwrap().to_string();
    assert_eq!(r.headers()["content-length"], image.len().to_string().as_str());
    let got = body_of(r).await;
    assert_eq!(got, image);
    use md5::Digest as _;
    assert_eq!(md5, hex::encode(md5::Md5::digest(&image)));
    assert_eq!(
        get_with(app.clone(), "/firmware/nope", &[("x-ESP32-version", "1.0")])
            .await
            .status(),
        StatusCode::NOT_FOUND
    );

    // esp32FOTA: the newest by semver; nothing when the device is current.
    let r = get_with(
        app.clone(),
        "/images/images.json?type=sensor&vers=1.9.0&addr=AA:BB",
        &[],
    )
    .await;
    let v: serde_json::Value = serde_json::from_slice(&body_of(r).await).unwrap();
    assert_eq!(
        v,
        serde_json::json!([{"type": "sensor", "version": "1.10.0", "url": "http://ota.local:8080/images/sensor/sensor_v1.10.0.bin"}])
    );
    let r = get_with(app.clone(), "/images/images.json?type=sensor&vers=1.10.0", &[]).await;
    assert_eq!(body_of(r).await, b"[]");
    let r = get_with(app.clone(), "/images/images.json?type=unknown", &[]).await;
    assert_eq!(body_of(r).await, b"[]");
    // Downloads: plain, the zlib copy, ranges, ETag.
    let r = get_with(app.clone(), "/images/sensor/sensor_v1.10.0.bin", &[]).await;
    let etag = r.headers()["etag"].to_str().unwrap().to_string();
    assert_eq!(body_of(r).await, image);
    let r = get_with(app.clone(), "/images/sensor_v1.10.0.bin.zz", &[]).await;
    let z = body_of(r).await;
    let mut inflated = Vec::new();
    std::io::Read::read_to_end(&mut flate2::read::ZlibDecoder::new(&z[..]), &mut inflated).unwrap();
    assert_eq!(inflated, image);
    let r = get_with(
        app.clone(),
        "/images/sensor/sensor_v1.10.0.bin",
        &[("range", "bytes=10-19")],
    )
    .await;
    assert_eq!(r.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(
        r.headers()["content-range"],
        format!("bytes 10-19/{}", image.len()).as_str()
    );
    assert_eq!(body_of(r).await, image[10..20]);
    let r = get_with(
        app.clone(),
        "/images/sensor/sensor_v1.10.0.bin",
        &[("range", "bytes=-5")],
    )
    .await;
    assert_eq!(body_of(r).await, image[image.len() - 5..]);
    let r = get_with(
        app.clone(),
        "/images/sensor/sensor_v1.10.0.bin",
        &[("range", "bytes=999999-")],
    )
    .await;
    assert_eq!(r.status(), StatusCode::RANGE_NOT_SATISFIABLE);
    let r = get_with(
        app.clone(),
        "/images/sensor/sensor_v1.10.0.bin",
        &[("if-none-match", &etag)],
    )
    .await;
    assert_eq!(r.status(), StatusCode::NOT_MODIFIED);
    let r = get_with(app.clone(), "/files/sensor/v/1/sensor_v1.9.0.bin", &[]).await;
    assert_eq!(body_of(r).await, b"\xE9old");
}

#[tokio::test]
async fn tokens_guard_mutations_and_downloads() {
    let dir = tempfile::tempdir().unwrap();
    let (st, _) = state(dir.path());
    // No implicit trust in loopback: without a token, 401 from everyone, a loopback peer
    // and one that claims to be forwarded for a loopback client included.
    for (ip, xff) in [
        ([127, 0, 0, 1], None),
        ([127, 0, 0, 1], Some("127.0.0.1")),
        ([192, 0, 2, 7], None),
    ] {
        let (ct, body) = multipart(&[("image", Some("a_v1.0.0.bin"), b"x")]);
        let mut b = Request::put("/images").header("content-type", ct);
        if let Some(x) = xff {
            b = b.header("x-forwarded-for", x);
        }
        let (s, v) = send(app_from(st.clone(), ip), b.body(Body::from(body)).unwrap()).await;
        assert_eq!(s, StatusCode::UNAUTHORIZED, "{ip:?} {xff:?}: {v}");
    }
    // The local token (written by the server) publishes, from wherever it comes.
    let local = format!("Bearer {}", local_token(&st));
    let (s, v) = put_image(app_from(st.clone(), [127, 0, 0, 1]), "a_v1.0.0.bin", b"x", Some(&local)).await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    // Another publisher token works alongside it; a wrong one does not.
    let tok = st.tokens.create("ci", auth::Role::Publisher).unwrap();
    assert_eq!(
        put_image(app(st.clone()), "a_v1.1.0.bin", b"x", Some("Bearer 0123"))
            .await
            .0,
        StatusCode::UNAUTHORIZED
    );
    let (s, _) = put_image(
        app_from(st.clone(), [192, 0, 2, 7]),
        "a_v1.1.0.bin",
        b"x",
        Some(&format!("Bearer {tok}")),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED);
    // Downloads are open until a device token exists.
    let r = get_with(
        app_from(st.clone(), [127, 0, 0, 1]),
        "/firmware/a",
        &[("x-ESP32-version", "0.1")],
    )
    .await;
    assert_eq!(r.status(), StatusCode::OK);
    let dev = st.tokens.create("fleet", auth::Role::Device).unwrap();
    let r = get_with(
        app_from(st.clone(), [127, 0, 0, 1]),
        "/firmware/a",
        &[("x-ESP32-version", "0.1")],
    )
    .await;
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    let r = get_with(
        app_from(st.clone(), [127, 0, 0, 1]),
        "/firmware/a",
        &[("x-ESP32-version", "0.1"), ("authorization", "token wrong")],
    )
    .await;
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    let r = get_with(
        app_from(st.clone(), [127, 0, 0, 1]),
        "/firmware/a",
        &[("x-ESP32-version", "0.1"), ("authorization", &format!("token {dev}"))],
    )
    .await;
    assert_eq!(r.status(), StatusCode::OK);
    // A device token does not publish.
    let (s, _) = put_image(app(st.clone()), "a_v2.0.0.bin", b"x", Some(&format!("Bearer {dev}"))).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    // The listing stays readable.
    let r = get_with(app(st), "/", &[]).await;
    let html = String::from_utf8(body_of(r).await).unwrap();
    assert!(
        html.contains("<h3 id=\"pid-a\">a</h3>") && html.contains("a_v1.1.0.bin"),
        "{html}"
    );
}

#[tokio::test]
async fn an_unreadable_token_file_refuses_every_guarded_route() {
    let dir = tempfile::tempdir().unwrap();
    let (st, _) = state(dir.path());
    let app = app(st.clone());
    let (s, _) = put_image(app.clone(), "a_v1.0.0.bin", b"x", None).await;
    assert_eq!(s, StatusCode::CREATED);
    // Truncated (a crash, a bad edit): downloads were opened (403 -> 200) before; now both
    // roles are refused, the holder of a valid publisher token included.
    st.tokens.create("fleet", auth::Role::Device).unwrap();
    let raw = std::fs::read(st.tokens.path()).unwrap();
    std::fs::write(st.tokens.path(), &raw[..raw.len() - 3]).unwrap();
    st.tokens.refresh();
    let r = get_with(app.clone(), "/firmware/a", &[("x-ESP32-version", "0.1")]).await;
    assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
    for path in ["/files/a/a_v1.0.0.bin", "/images/a/a_v1.0.0.bin", "/images/images.json"] {
        assert_eq!(
            get_with(app.clone(), path, &[]).await.status(),
            StatusCode::SERVICE_UNAVAILABLE,
            "{path}"
        );
    }
    let (s, v) = put_image(app.clone(), "a_v2.0.0.bin", b"x", None).await;
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE, "{v}");
    assert!(v["error"].as_str().unwrap().contains("token file is unreadable"), "{v}");
    // Fixed: served again.
    std::fs::write(st.tokens.path(), &raw).unwrap();
    st.tokens.refresh();
    let (s, _) = put_image(app, "a_v2.0.0.bin", b"x", None).await;
    assert_eq!(s, StatusCode::CREATED);
}

#[tokio::test]
async fn remove_names_one_version_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let (st, key) = state(dir.path());
    let app = app(st.clone());
    // Three versions; version 1's manifest has sequence number 2, version 2's has 3.
    for (seq, semver) in [(2u64, "1.0.0"), (3, "1.1.0"), (9, "1.1.0")] {
        let vendor = suitcase_suit::builder::vendor_id("example.org");
        let class = suitcase_suit::builder::class_id(&vendor, "x");
        let data = format!("image {seq}");
        let m = suitcase_suit::ManifestBuilder::new(suitcase_suit::Profile::Draft37, seq, vendor, class)
            .image(suitcase_suit::Image::from_bytes(
                "coap://h/x/a.bin",
                data.as_bytes(),
                None,
            ))
            .build()
            .unwrap();
        let env = suitcase_suit::Envelope::sign(suitcase_suit::Profile::Draft37, &m, &key)
            .unwrap()
            .encode();
        let (s, v) = post(
            app.clone(),
            &[
                ("publish_id", None, b"x"),
                ("version", None, semver.as_bytes()),
                ("manifest", Some("m.suit"), &env),
                ("a.bin", Some("a.bin"), data.as_bytes()),
            ],
        )
        .await;
        assert_eq!(s, StatusCode::OK, "{v}");
    }
    let remove = |body: &'static str| {
        let app = app.clone();
        async move {
            let req = Request::post("/remove")
                .header("content-type", "application/json")
                .body(Body::from(body))
                .unwrap();
            send(app, req).await
        }
    };
    // Refused: ambiguous or malformed requests.
    for (body, status) in [
        (r#"{"publish_id":"x"}"#, StatusCode::BAD_REQUEST),
        (
            r#"{"publish_id":"x","version":1,"sequence_number":2}"#,
            StatusCode::BAD_REQUEST,
        ),
        (r#"{"publish_id":"x","version":"banana"}"#, StatusCode::BAD_REQUEST),
        (r#"{"publish_id":"x","version":true}"#, StatusCode::BAD_REQUEST),
        (r#"{"publish_id":"x","version":-1}"#, StatusCode::BAD_REQUEST),
        (r#"{"publish_id":"x","version":7}"#, StatusCode::NOT_FOUND),
        (r#"{"publish_id":"x","sequence_number":1}"#, StatusCode::NOT_FOUND),
        (r#"{"publish_id":"x","version":"1.1.0"}"#, StatusCode::CONFLICT),
    ] {
        let (s, v) = remove(body).await;
        assert_eq!(s, status, "{body}: {v}");
        assert!(v["error"].is_string(), "{body}: {v}");
    }
    assert_eq!(st.store.versions("x").len(), 3, "nothing was removed");
    // A JSON number is the version number, not the sequence number (2 used to remove version 1).
    let (s, v) = remove(r#"{"publish_id":"x","version":2}"#).await;
    assert_eq!((s, v["version"].as_u64()), (StatusCode::OK, Some(2)), "{v}");
    // The sequence number has its own field.
    let (s, v) = remove(r#"{"publish_id":"x","sequence_number":2}"#).await;
    assert_eq!((s, v["version"].as_u64()), (StatusCode::OK, Some(1)), "{v}");
    // A decimal string is a version number too; "latest" the newest.
    let (s, v) = remove(r#"{"publish_id":"x","version":"latest"}"#).await;
    assert_eq!((s, v["version"].as_u64()), (StatusCode::OK, Some(3)), "{v}");
    assert!(st.store.versions("x").is_empty());
}

/// A signed envelope describing `images` (uri, content), draft-37 or RIOT profile.
fn envelope(profile: suitcase_suit::Profile, seq: u64, images: &[(&str, &[u8])], key: &SigningKey) -> Vec<u8> {
    let vendor = suitcase_suit::builder::vendor_id("example.org");
    let class = suitcase_suit::builder::class_id(&vendor, "x");
    let mut b = suitcase_suit::ManifestBuilder::new(profile, seq, vendor, class);
    for (i, (uri, data)) in images.iter().enumerate() {
        let slot = (profile == suitcase_suit::Profile::Riot09).then_some(0x1000 * (i as u64 + 1));
        b = b.image(suitcase_suit::Image::from_bytes(*uri, data, slot));
    }
    suitcase_suit::Envelope::sign(profile, &b.build().unwrap(), key)
        .unwrap()
        .encode()
}

#[tokio::test]
async fn uploaded_manifests_must_describe_the_files() {
    let dir = tempfile::tempdir().unwrap();
    let (st, key) = state(dir.path());
    let app = app(st.clone());
    let d37 = suitcase_suit::Profile::Draft37;
    // A digest of nothing uploaded: 400 naming the digest.
    let env = envelope(d37, 1, &[("coap://h/x/a.bin", b"other bytes")], &key);
    let (s, v) = post(
        app.clone(),
        &[
            ("publish_id", None, b"x"),
            ("manifest", Some("m"), &env),
            ("a.bin", Some("a.bin"), b"firmware"),
        ],
    )
    .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    let digest = suitcase_store::Sha256::of(b"other bytes").to_hex();
    assert!(v["error"].as_str().unwrap().contains(&digest), "{v}");
    // Right digest, wrong size: the builder's size is replaced by hand-editing the parameters.
    let mut m = suitcase_suit::Envelope::decode(&envelope(d37, 1, &[("coap://h/x/a.bin", b"firmware")], &key))
        .unwrap()
        .manifest()
        .clone();
    fn bump(s: &mut suitcase_suit::manifest::CommandSequence) {
        for c in &mut s.0 {
            match &mut c.arg {
                suitcase_suit::manifest::CommandArg::Params(p) => {
                    p.set(14, suitcase_suit::manifest::ParamValue::Uint(9))
                }
                suitcase_suit::manifest::CommandArg::Sequence(inner) => bump(inner),
                _ => {}
            }
        }
    }
    bump(m.common.shared_sequence.as_mut().unwrap());
    let bad_size = suitcase_suit::Envelope::sign(d37, &m, &key).unwrap().encode();
    let (s, v) = post(
        app.clone(),
        &[
            ("publish_id", None, b"x"),
            ("manifest", Some("m"), &bad_size),
            ("a.bin", Some("a.bin"), b"firmware"),
        ],
    )
    .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    assert!(v["error"].as_str().unwrap().contains("is 9 bytes"), "{v}");
    assert!(st.store.publish_ids().is_empty());
    // Matching: accepted; a later manifest may describe a file stored by an earlier publish.
    let env = envelope(d37, 1, &[("coap://h/x/a.bin", b"firmware")], &key);
    let (s, v) = post(
        app.clone(),
        &[
            ("publish_id", None, b"x"),
            ("manifest", Some("m"), &env),
            ("a.bin", Some("a.bin"), b"firmware"),
        ],
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let env = envelope(
        d37,
        2,
        &[("coap://h/x/a.bin", b"firmware"), ("coap://h/x/b.bin", b"more")],
        &key,
    );
    let (s, v) = post(
        app.clone(),
        &[
            ("publish_id", None, b"x"),
            ("manifest", Some("m2"), &env),
            ("b.bin", Some("b.bin"), b"more"),
        ],
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    // RIOT profile (riot.suit.<seq>.bin part): a slot that matches nothing is refused.
    let riot = suitcase_suit::Profile::Riot09;
    let env = envelope(
        riot,
        5,
        &[("coap://h/r/slot0.bin", b"slot0"), ("coap://h/r/slot1.bin", b"slotX")],
        &key,
    );
    let (s, v) = post(
        app,
        &[
            ("publish_id", None, b"r"),
            ("riot.suit.5.bin", Some("s"), &env),
            ("slot0.bin", Some("a"), b"slot0"),
            ("slot1.bin", Some("b"), b"slot1"),
        ],
    )
    .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    // RIOT's two slots are try-each alternatives of one component: each must match a file.
    let slot_x = suitcase_store::Sha256::of(b"slotX").to_hex();
    assert!(v["error"].as_str().unwrap().contains(&slot_x), "{v}");
}

#[tokio::test]
async fn trusted_keys_refuse_manifests_signed_by_others() {
    let dir = tempfile::tempdir().unwrap();
    let (mut st, _) = state(dir.path());
    let trusted = SigningKey::generate(Algorithm::Es256);
    let stranger = SigningKey::generate(Algorithm::Ed25519);
    let mut config = (*st.config).clone();
    config.trusted_keys = vec![trusted.verifying_key()];
    st.config = Arc::new(config);
    let app = app(st.clone());
    let d37 = suitcase_suit::Profile::Draft37;
    for (key, status) in [(&stranger, StatusCode::FORBIDDEN), (&trusted, StatusCode::OK)] {
        let env = envelope(d37, 1, &[("coap://h/x/a.bin", b"firmware")], key);
        let (s, v) = post(
            app.clone(),
            &[
                ("publish_id", None, b"x"),
                ("manifest", Some("m"), &env),
                ("a.bin", Some("a.bin"), b"firmware"),
            ],
        )
        .await;
        assert_eq!(s, status, "{v}");
    }
    // Publishes without a manifest are still signed by the server.
    let (s, v) = post(
        app,
        &[("publish_id", None, b"y"), ("a.bin", Some("a.bin"), b"firmware")],
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{v}");
}

#[tokio::test]
async fn the_server_builds_riot09_manifests_and_notify_takes_trigger_nul() {
    let dir = tempfile::tempdir().unwrap();
    let (st, key) = state(dir.path());
    let recorder = Arc::new(Recorder::default());
    let st = AppState {
        notifier: Some(recorder.clone()),
        ..st
    };
    let router = app(st.clone());
    let (s, v) = post(
        router.clone(),
        &[
            ("publish_id", None, b"fw/suit_update/native64"),
            ("profile", None, b"riot09"),
            ("component", None, b"ram,0"),
            ("image.bin", Some("image.bin"), b"ram image"),
        ],
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let seq = v["sequence_number"].as_u64().unwrap();
    assert!(seq <= u64::from(u32::MAX));
    assert_eq!(v["manifest"]["name"], format!("riot.suit.{seq}.bin"));
    let m = st.store.latest("fw/suit_update/native64").unwrap();
    let bytes = st.store.read(&m.manifest.as_ref().unwrap().file.sha256).unwrap();
    assert!(bytes.len() <= RIOT_MAX_MANIFEST);
    let env = suitcase_suit::Envelope::decode(&bytes).unwrap();
    assert_eq!(env.profile(), suitcase_suit::Profile::Riot09);
    let verified = env.verify(&key.verifying_key()).unwrap();
    assert_eq!(
        verified.manifest().common.components[0].0,
        [b"ram".to_vec(), b"0".to_vec()]
    );
    // RIOT's vendor domain and, by default, the publish-id's last segment as the class.
    let vendor = suitcase_suit::builder::vendor_id(RIOT_VENDOR_DOMAIN);
    let class = suitcase_suit::builder::class_id(&vendor, "native64");
    let params = verified.manifest().component_parameters();
    assert_eq!(
        params[0].1.get(1),
        Some(&suitcase_suit::manifest::ParamValue::Bytes(vendor.to_vec()))
    );
    assert_eq!(
        params[0].1.get(2),
        Some(&suitcase_suit::manifest::ParamValue::Bytes(class.to_vec()))
    );

    // notify: the server's setting unless the request says otherwise.
    for (field, want) in [
        (None, None),
        (Some("never"), Some(TriggerNul::Never)),
        (Some("always"), Some(TriggerNul::Always)),
    ] {
        let mut parts: Vec<Part<'_>> = vec![("publish_id", None, b"fw/suit_update/native64"), ("urls", None, b"d")];
        if let Some(f) = field {
            parts.push(("trigger_nul", None, f.as_bytes()));
        }
        let (ct, body) = multipart(&parts);
        let req = Request::post("/notify")
            .header("content-type", ct)
            .body(Body::from(body))
            .unwrap();
        let (s, v) = send(router.clone(), req).await;
        assert_eq!(s, StatusCode::OK, "{v}");
        assert_eq!(v["sequence_number"].as_u64(), Some(seq));
        let last = recorder.0.lock().unwrap().last().cloned().unwrap();
        assert!(
            last.1.ends_with("/fw/suit_update/native64/riot.suit.latest.bin"),
            "{}",
            last.1
        );
        assert_eq!(last.2.trigger_nul, want, "{field:?}");
    }
    let req = Request::post("/notify")
        .header("content-type", "application/x-www-form-urlencoded")
        .body(Body::from(
            "publish_id=fw%2Fsuit_update%2Fnative64&urls=d&trigger_nul=sometimes",
        ))
        .unwrap();
    let (s, v) = send(router.clone(), req).await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");

    // What RIOT cannot take is refused with a reason.
    let (s, v) = post(
        router.clone(),
        &[
            ("publish_id", None, b"fw/x/native64"),
            ("profile", None, b"riot09"),
            ("a.bin", Some("a.bin"), b"a"),
            ("b.bin", Some("b.bin"), b"b"),
        ],
    )
    .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{v}");
    assert!(v["error"].as_str().unwrap().contains("one image"), "{v}");
    let (s, v) = post(
        router.clone(),
        &[
            ("publish_id", None, b"fw/x/native64"),
            ("profile", None, b"riot09"),
            ("manifest", Some("m.suit"), &bytes),
            ("image.bin", Some("image.bin"), b"ram image"),
        ],
    )
    .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    assert!(v["error"].as_str().unwrap().contains("brings its own manifest"), "{v}");
    let p256 = AppState {
        signer: Arc::new(Signer::new(SigningKey::generate(Algorithm::Es256), "example.org")),
        ..st.clone()
    };
    let (s, v) = post(
        app(p256),
        &[
            ("publish_id", None, b"fw/x/native64"),
            ("profile", None, b"riot09"),
            ("a.bin", Some("a.bin"), b"a"),
        ],
    )
    .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    assert!(v["error"].as_str().unwrap().contains("Ed25519"), "{v}");
}

#[tokio::test]
async fn the_page_its_assets_and_sections() {
    let dir = tempfile::tempdir().unwrap();
    let (st, _) = state(dir.path());
    let (s, _) = put_image(app(st.clone()), "a_v1.0.0.bin", b"x", None).await;
    assert_eq!(s, StatusCode::CREATED);
    let token = local_token(&st);
    let bearer = format!("Bearer {token}");
    let raw = || app_from(st.clone(), [127, 0, 0, 1]);

    // The page: no inline script or style, a policy that forbids them, nothing from elsewhere.
    let r = get_with(raw(), "/", &[]).await;
    assert_eq!(r.status(), StatusCode::OK);
    let csp = r.headers()["content-security-policy"].to_str().unwrap().to_string();
    assert!(
        csp.contains("script-src 'self'") && csp.contains("frame-ancestors 'none'"),
        "{csp}"
    );
    let html = String::from_utf8(body_of(r).await).unwrap();
    assert!(html.contains(r#"<script src="/ui/app.js" defer>"#), "{html}");
    assert!(!html.contains("<style") && !html.contains(" style="), "{html}");
    assert!(!html.contains("src=\"http") && !html.contains("href=\"http"), "{html}");
    assert_eq!(html.matches("<script").count(), 1);
    assert!(html.contains("a_v1.0.0.bin"));

    // Assets, with validators.
    for (path, kind) in [("/ui/app.js", "text/javascript"), ("/ui/app.css", "text/css")] {
        let r = get_with(raw(), path, &[]).await;
        assert_eq!(r.status(), StatusCode::OK, "{path}");
        assert!(r.headers()["content-type"].to_str().unwrap().starts_with(kind));
        let tag = r.headers()["etag"].to_str().unwrap().to_string();
        let r = get_with(raw(), path, &[("if-none-match", &tag)]).await;
        assert_eq!(r.status(), StatusCode::NOT_MODIFIED, "{path}");
    }
    assert_eq!(
        get_with(raw(), "/ui/nope.js", &[]).await.status(),
        StatusCode::NOT_FOUND
    );

    // Sections: public, signed in, or refused for a wrong token (the page then signs out).
    let r = get_with(raw(), "/ui/section/firmware", &[]).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert!(String::from_utf8(body_of(r).await)
        .unwrap()
        .contains(r#"id="firmware-live""#));
    let r = get_with(raw(), "/ui/section/firmware", &[("authorization", &bearer)]).await;
    assert_eq!(r.status(), StatusCode::OK);
    let r = get_with(raw(), "/ui/section/firmware", &[("authorization", "Bearer wrong")]).await;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(
        get_with(raw(), "/ui/section/fleet", &[]).await.status(),
        StatusCode::SERVICE_UNAVAILABLE
    );
    assert_eq!(
        get_with(raw(), "/ui/section/nope", &[]).await.status(),
        StatusCode::NOT_FOUND
    );

    // The sign-in check.
    assert_eq!(
        get_with(raw(), "/api/v1/whoami", &[]).await.status(),
        StatusCode::UNAUTHORIZED
    );
    let r = get_with(raw(), "/api/v1/whoami", &[("authorization", &bearer)]).await;
    assert_eq!(r.status(), StatusCode::OK);
    let who: serde_json::Value = serde_json::from_slice(&body_of(r).await).unwrap();
    assert_eq!(who["name"], "local");

    // Once device tokens exist, rollouts are listed to publishers only.
    let section = |auth: Option<String>| {
        let raw = raw();
        async move {
            let h: Vec<(&str, &str)> = auth.as_deref().map(|a| vec![("authorization", a)]).unwrap_or_default();
            let r = get_with(raw, "/ui/section/rollouts", &h).await;
            (r.status(), String::from_utf8(body_of(r).await).unwrap())
        }
    };
    assert!(section(None).await.1.contains("No rollout yet."));
    st.tokens.create("fleet", auth::Role::Device).unwrap();
    assert!(section(None).await.1.contains("rollouts are for publishers"));
    assert!(section(Some(bearer.clone())).await.1.contains("No rollout yet."));
    // An unreadable token file is the server's fault (503), not a reason to sign in again.
    let raw_file = std::fs::read(st.tokens.path()).unwrap();
    std::fs::write(st.tokens.path(), &raw_file[..raw_file.len() - 3]).unwrap();
    st.tokens.refresh();
    assert_eq!(section(Some(bearer)).await.0, StatusCode::SERVICE_UNAVAILABLE);
}
