//! `POST /publish` through the real router with arbitrary multipart bodies: every answer is
//! a 2xx or a 4xx with a JSON error, never a 5xx, never a panic.
#![no_main]

use std::sync::{Arc, OnceLock};

use axum::body::Body;
use axum::http::Request;
use libfuzzer_sys::fuzz_target;
use suitcase_http::{auth::Tokens, router, AppState, Config, Signer};
use suitcase_store::LocalStore;
use suitcase_suit::{Algorithm, SigningKey};
use tower::ServiceExt;

struct World {
    rt: tokio::runtime::Runtime,
    app: axum::Router,
    /// `Authorization: Bearer <the local publisher token>`.
    auth: String,
    _dir: tempfile::TempDir,
}

fn world() -> &'static World {
    static W: OnceLock<World> = OnceLock::new();
    W.get_or_init(|| {
        let dir = tempfile::tempdir().expect("tempdir");
        let state = AppState {
            store: Arc::new(LocalStore::open(dir.path()).expect("store")),
            signer: Arc::new(Signer::new(SigningKey::generate(Algorithm::Ed25519), "fuzz.example")),
            config: Arc::new(Config {
                coap_base_url: None,
                coap_port: 5683,
                max_body_bytes: 1 << 20,
                public_http_url: None,
                tls: false,
                trusted_keys: Vec::new(),
            }),
            notifier: None,
            tokens: Arc::new(Tokens::new(dir.path().join("tokens.json"))),
            fleet: None,
            health: Default::default(),
        metrics: Default::default(),
        };
        // As `suitcase serve` does: a `local` publisher token, which the requests carry.
        let file = dir.path().join(suitcase_http::auth::LOCAL_TOKEN_FILE);
        state.tokens.create_local_publisher(&file).expect("local token");
        let auth = format!("Bearer {}", std::fs::read_to_string(&file).expect("token file").trim());
        let app = router(state).layer(axum::extract::connect_info::MockConnectInfo(
            std::net::SocketAddr::from(([127, 0, 0, 1], 1)),
        ));
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        World { rt, app, auth, _dir: dir }
    })
}

fuzz_target!(|data: &[u8]| {
    let w = world();
    // A plausible prefix so the fuzzer starts inside the multipart grammar.
    let mut body = b"--B\r\nContent-Disposition: form-data; name=\"publish_id\"\r\n\r\nfz\r\n--B\r\n".to_vec();
    body.extend_from_slice(data);
    let req = Request::post("/publish")
        .header("content-type", "multipart/form-data; boundary=B")
        .header("host", "h")
        .header("authorization", &w.auth)
        .body(Body::from(body))
        .expect("request");
    let resp = w.rt.block_on(w.app.clone().oneshot(req)).expect("infallible");
    assert!(!resp.status().is_server_error(), "{}", resp.status());
});
