//! The HTTP(S) connection loop: hyper's HTTP/1 server over our own accept loop, so that every
//! resource a peer can hold is bounded:
//!
//! * connections: at most [`Limits::max_connections`] at a time; the loop does not `accept`
//!   while the cap is reached, so further peers wait in the kernel's backlog and never use one
//!   of the process's file descriptors;
//! * time to the end of the request head: [`Limits::timeout`] from the moment the server waits
//!   for a request (a new connection, or a kept-alive one after its last answer), so an idle
//!   keep-alive connection and a client sending one header line per second are both closed;
//! * TLS handshakes: the same [`Limits::timeout`];
//! * request bodies: no pause longer than [`Limits::timeout`] and, after the first
//!   [`Limits::timeout`], at least [`Limits::min_body_rate`] bytes per second on average
//!   (a 256 MiB upload at the default 8 KiB/s may take up to ~9 hours, but never stalls).

use std::convert::Infallible;
use std::future::Future as _;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::extract::ConnectInfo;
use axum::Router;
use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::time::{Instant, Sleep};
use tower::ServiceExt as _;

/// Connection limits of the HTTP server.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Connections served at once; more wait in the listen backlog.
    pub max_connections: usize,
    /// Longest wait for a request head (also the keep-alive idle time and the TLS handshake
    /// time), and the longest pause inside a request body.
    pub timeout: Duration,
    /// Slowest average request body rate accepted after the first `timeout`, bytes/s.
    pub min_body_rate: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: 1024,
            timeout: Duration::from_secs(30),
            min_body_rate: 8 * 1024,
        }
    }
}

/// The error a request body ends with when it is too slow.
#[derive(Debug, thiserror::Error)]
#[error("request body too slow (a pause over {timeout:?}, or under {rate} bytes/s on average)")]
pub struct BodyTimeout {
    timeout: Duration,
    rate: u64,
}

/// A request body that fails with [`BodyTimeout`] when it pauses too long or is too slow.
pub struct GuardedBody<B> {
    inner: B,
    limits: Limits,
    start: Instant,
    received: u64,
    last: Instant,
    sleep: Pin<Box<Sleep>>,
    expired: bool,
}

impl<B> GuardedBody<B> {
    /// Guard `inner` from now on.
    pub fn new(inner: B, limits: Limits) -> Self {
        let now = Instant::now();
        let mut b = GuardedBody {
            inner,
            limits,
            start: now,
            received: 0,
            last: now,
            sleep: Box::pin(tokio::time::sleep_until(now)),
            expired: false,
        };
        let d = b.deadline();
        b.sleep.as_mut().reset(d);
        b
    }

    /// The earlier of: the last frame + timeout; start + timeout + received / rate.
    fn deadline(&self) -> Instant {
        let idle = self.last + self.limits.timeout;
        let rate = self.limits.min_body_rate;
        if rate == 0 {
            return idle;
        }
        let earned = Duration::from_secs_f64(self.received as f64 / rate as f64);
        idle.min(self.start + self.limits.timeout + earned.min(Duration::from_secs(u32::MAX.into())))
    }
}

impl<B> Body for GuardedBody<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<axum::BoxError>,
{
    type Data = Bytes;
    type Error = axum::BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.get_mut();
        if this.expired {
            return Poll::Ready(None);
        }
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(d) = frame.data_ref() {
                    this.received = this.received.saturating_add(d.len() as u64);
                }
                this.last = Instant::now();
                let d = this.deadline();
                this.sleep.as_mut().reset(d);
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e.into()))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => match this.sleep.as_mut().poll(cx) {
                Poll::Ready(()) => {
                    this.expired = true;
                    tracing::info!(received = this.received, "request body too slow; giving up on it");
                    Poll::Ready(Some(Err(Box::new(BodyTimeout {
                        timeout: this.limits.timeout,
                        rate: this.limits.min_body_rate,
                    }))))
                }
                Poll::Pending => Poll::Pending,
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        self.expired || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Serve `router` on `listener` (TLS when `tls` is given) until `shutdown` completes; then stop
/// accepting and give open connections up to 10 s to finish.
pub(crate) async fn run(
    listener: TcpListener,
    router: Router,
    limits: Limits,
    tls: Option<tokio_rustls::TlsAcceptor>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let permits = Arc::new(tokio::sync::Semaphore::new(limits.max_connections.max(1)));
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder.timer(TokioTimer::new()).header_read_timeout(limits.timeout);
    let builder = Arc::new(builder);
    tokio::pin!(shutdown);
    loop {
        // Take a connection slot first: at the cap, peers wait in the backlog, not in our fds.
        let permit = tokio::select! {
            p = permits.clone().acquire_owned() => p.map_err(std::io::Error::other)?,
            () = &mut shutdown => break,
        };
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning; the connection
                    // errors (ECONNABORTED …) concern one peer only.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let (router, builder, watcher, tls) = (router.clone(), builder.clone(), graceful.watcher(), tls.clone());
        tokio::spawn(async move {
            let _permit = permit;
            let svc = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
                req.extensions_mut().insert(ConnectInfo(peer));
                let req = req.map(|b| axum::body::Body::new(GuardedBody::new(b, limits)));
                let router = router.clone();
                async move { Ok::<_, Infallible>(router.oneshot(req).await.unwrap_or_else(|e| match e {})) }
            });
            let result = match tls {
                None => watcher.watch(builder.serve_connection(TokioIo::new(stream), svc)).await,
                Some(acceptor) => match tokio::time::timeout(limits.timeout, acceptor.accept(stream)).await {
                    Ok(Ok(tls)) => watcher.watch(builder.serve_connection(TokioIo::new(tls), svc)).await,
                    Ok(Err(e)) => {
                        tracing::debug!(%peer, error = %e, "TLS handshake failed");
                        return;
                    }
                    Err(_) => {
                        tracing::debug!(%peer, "TLS handshake timed out");
                        return;
                    }
                },
            };
            if let Err(e) = result {
                tracing::debug!(%peer, error = %e, "HTTP connection ended with an error");
            }
        });
    }
    drop(listener);
    tokio::select! {
        () = graceful.shutdown() => {}
        () = tokio::time::sleep(Duration::from_secs(10)) => {
            tracing::warn!("HTTP connections still open 10 s after shutdown began; closing them");
        }
    }
    Ok(())
}
