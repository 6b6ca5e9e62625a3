//! The HTTP guards: publisher tokens (`Authorization: Bearer …`) for every mutation, device
//! tokens (`Authorization: token …`, the devtank contract) for HTTP downloads once any exists.
//! The tokens themselves are `suitcase-auth`'s, re-exported here.

use std::net::SocketAddr;

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

pub use suitcase_auth::*;

use crate::{ApiError, AppState};

/// The credential of an `Authorization` header in one of `schemes`.
pub(crate) fn credential<'a>(headers: &'a axum::http::HeaderMap, schemes: &[&str]) -> Option<&'a str> {
    let v = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, rest) = v.split_once(' ')?;
    schemes
        .iter()
        .any(|s| s.eq_ignore_ascii_case(scheme))
        .then_some(rest.trim())
}

fn peer(req: &Request) -> Option<SocketAddr> {
    let ext = req.extensions();
    ext.get::<ConnectInfo<SocketAddr>>().map(|c| c.0).or_else(|| {
        ext.get::<axum::extract::connect_info::MockConnectInfo<SocketAddr>>()
            .map(|c| c.0)
    })
}

/// Who made a mutation, for the audit log: the token's name and the peer.
#[derive(Clone, Debug)]
pub struct Who(pub String);

/// Who made a request, for the audit log (`-` when nobody signed in).
pub(crate) fn who(w: Option<axum::Extension<Who>>) -> String {
    w.map_or_else(|| "-".to_string(), |w| w.0 .0)
}

fn unreadable(req: &Request) -> Response {
    tracing::warn!(target: "suitcase::audit", peer = ?peer(req), path = %req.uri().path(), "rejected: the token file is unreadable");
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "the server's token file is unreadable; every guarded request is refused until it is fixed (see the server log)",
    )
    .into_response()
}

/// Read and drop the body of a refused request when it is small (at most [`LINGER_BYTES`],
/// within [`LINGER_TIME`]): a client still sending it would otherwise meet a connection
/// reset instead of the refusal (the server closes a connection whose body it did not read).
/// A larger body is not read: the connection just closes.
async fn linger(req: Request) {
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > LINGER_BYTES as u64) {
        return;
    }
    let _ = tokio::time::timeout(LINGER_TIME, axum::body::to_bytes(req.into_body(), LINGER_BYTES)).await;
}

/// The largest refused body read before the refusal is sent.
const LINGER_BYTES: usize = 256 * 1024;
/// The longest time spent reading it.
const LINGER_TIME: std::time::Duration = std::time::Duration::from_secs(2);

/// Guard for mutations: a valid publisher token, from any peer (loopback included).
pub(crate) async fn publisher(State(st): State<AppState>, mut req: Request, next: Next) -> Response {
    let snap = st.tokens.snapshot();
    let Some(any) = snap.any(Role::Publisher) else {
        return unreadable(&req);
    };
    match credential(req.headers(), &["Bearer"]).and_then(|t| snap.check(t, &[Role::Publisher])) {
        Some(name) => {
            let who = match peer(&req) {
                Some(p) => format!("token:{name}@{p}"),
                None => format!("token:{name}"),
            };
            req.extensions_mut().insert(Who(who));
            req.extensions_mut().insert(PublisherName(name));
            next.run(req).await
        }
        None => {
            tracing::warn!(target: "suitcase::audit", peer = ?peer(&req), path = %req.uri().path(), "rejected: no valid publisher token");
            linger(req).await;
            let msg = if any {
                "a valid publisher token is required (Authorization: Bearer <token>)"
            } else {
                "a valid publisher token is required (Authorization: Bearer <token>), and none exists: \
                 restart the server to create <data>/local-publisher.token, or `suitcase token create NAME`"
            };
            let mut r = ApiError::new(StatusCode::UNAUTHORIZED, msg).into_response();
            r.headers_mut()
                .insert(header::WWW_AUTHENTICATE, axum::http::HeaderValue::from_static("Bearer"));
            r
        }
    }
}

/// The name of the publisher token a mutation showed.
#[derive(Clone, Debug)]
pub struct PublisherName(pub String);

/// The name of the device token a request showed (not set for a publisher token).
#[derive(Clone, Debug)]
pub struct DeviceName(pub String);

/// Guard for HTTP downloads (only once a device token exists).
pub(crate) async fn device(State(st): State<AppState>, mut req: Request, next: Next) -> Response {
    let snap = st.tokens.snapshot();
    match snap.any(Role::Device) {
        None => return unreadable(&req),
        Some(false) => return next.run(req).await,
        Some(true) => {}
    }
    let presented = credential(req.headers(), &["token", "Bearer"]);
    let device = presented.and_then(|t| snap.check(t, &[Role::Device]));
    let publisher = presented.and_then(|t| snap.check(t, &[Role::Publisher]));
    match (device, publisher) {
        (Some(name), _) => {
            req.extensions_mut().insert(DeviceName(name));
            next.run(req).await
        }
        (None, Some(_)) => next.run(req).await,
        (None, None) => {
            tracing::warn!(target: "suitcase::audit", peer = ?peer(&req), path = %req.uri().path(), "download rejected: no valid device token");
            ApiError::new(
                StatusCode::FORBIDDEN,
                "a valid device token is required (Authorization: token <token>)",
            )
            .into_response()
        }
    }
}
