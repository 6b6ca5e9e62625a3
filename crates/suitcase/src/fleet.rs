//! The server's glue to the fleet (device reports over CoAP, RIOT's slot resource read with
//! the trigger client) and the CoAP server's metrics.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;
use suitcase_coap::driver::AppReply;
use suitcase_coap::message::Code;
use suitcase_coap::trigger::Outcome;
use suitcase_coap::trigger_client::TriggerClient;
use suitcase_coap::AppRequest;
use suitcase_fleet::{Fleet, FleetError, Reporter};
use tokio::sync::mpsc;

/// Reads `suit/slot/active` (RIOT's suit_update: one ASCII digit) with the trigger client.
pub struct RiotSlots(pub Arc<TriggerClient>);

impl suitcase_fleet::SlotReader for RiotSlots {
    fn active_slot(&self, coap: String) -> Pin<Box<dyn Future<Output = Option<String>> + Send>> {
        let client = self.0.clone();
        Box::pin(async move {
            let r = client.get(&coap, &["suit", "slot", "active"]).await;
            match r.outcome {
                Ok(Outcome::Response { code: 0x45, payload }) => {
                    let text = String::from_utf8(payload).ok()?;
                    let text = text.trim_matches(|c: char| c.is_whitespace() || c == '\0');
                    (!text.is_empty() && text.len() <= 8 && text.chars().all(|c| c.is_ascii_alphanumeric()))
                        .then(|| text.to_string())
                }
                _ => None,
            }
        })
    }
}

/// Answer `POST /<publish-id>/report` requests the CoAP server hands over: 2.04 once the
/// report is written, 4.00 with the reason for a bad one (nothing changed), 5.03 when the
/// fleet cannot take it now.
pub async fn coap_reports(fleet: Fleet, mut requests: mpsc::Receiver<AppRequest>, replies: mpsc::Sender<AppReply>) {
    // Several at once: on a shared fleet a report is a round trip to the leader.
    let permits = Arc::new(tokio::sync::Semaphore::new(REPORTS_IN_FLIGHT));
    while let Some(req) = requests.recv().await {
        let Ok(permit) = permits.clone().acquire_owned().await else {
            return;
        };
        let (fleet, replies) = (fleet.clone(), replies.clone());
        tokio::spawn(async move {
            let _permit = permit;
            let (code, payload) = match report(&fleet, &req).await {
                Ok(()) => (Code::CHANGED, Bytes::new()),
                Err(FleetError::Invalid(m)) => (Code::BAD_REQUEST, Bytes::from(m)),
                Err(e @ (FleetError::NotFound(_) | FleetError::Exists(_))) => {
                    (Code::BAD_REQUEST, Bytes::from(e.to_string()))
                }
                // Not a device the server knows, and no room to record another: retrying won't help.
                Err(FleetError::Full(m)) => (Code::FORBIDDEN, Bytes::from(m)),
                Err(e) => {
                    tracing::warn!(peer = %req.peer, error = %e, "a CoAP report could not be recorded");
                    (
                        Code::SERVICE_UNAVAILABLE,
                        Bytes::from_static(b"the report could not be recorded: try again"),
                    )
                }
            };
            if code == Code::BAD_REQUEST {
                tracing::info!(peer = %req.peer, path = %req.path, reason = %String::from_utf8_lossy(&payload), "CoAP report refused");
            }
            let mut payload = payload;
            payload.truncate(200);
            let _ = replies
                .send(AppReply {
                    id: req.id,
                    code,
                    payload,
                })
                .await;
        });
    }
}

/// CoAP reports being recorded at once, at most.
const REPORTS_IN_FLIGHT: usize = 64;

async fn report(fleet: &Fleet, req: &AppRequest) -> Result<(), FleetError> {
    let publish_id = req
        .path
        .strip_suffix("/report")
        .ok_or_else(|| FleetError::Invalid("not a report path".into()))?;
    let report = suitcase_fleet::report::parse(req.content_format, &req.payload)?;
    fleet
        .report(Reporter::Peer(req.peer, publish_id.to_string()), report)
        .await?;
    Ok(())
}

/// The CoAP server's counters into a scrape's registry.
pub fn coap_metrics(m: &suitcase_coap::driver::Metrics, r: &mut prometheus_client::registry::Registry) {
    use prometheus_client::encoding::EncodeLabelSet;
    use prometheus_client::metrics::counter::Counter;
    use prometheus_client::metrics::family::Family;
    use std::sync::atomic::Ordering::Relaxed;
    use suitcase_http::metrics::{counter, gauge};

    #[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
    struct CodeLabel {
        code: String,
    }
    counter(
        r,
        "coap_datagrams_in",
        "CoAP datagrams received",
        m.datagrams_in.load(Relaxed),
    );
    counter(
        r,
        "coap_datagrams_out",
        "CoAP datagrams sent",
        m.datagrams_out.load(Relaxed),
    );
    let replies = Family::<CodeLabel, Counter>::default();
    for (code, n) in m.replies.iter().enumerate() {
        let n = n.load(Relaxed);
        if n > 0 {
            let code = format!("{}.{:02}", code >> 5, code & 0x1f);
            replies.get_or_create(&CodeLabel { code }).inc_by(n);
        }
    }
    r.register("coap_replies", "CoAP replies by response code", replies);
    let (stats, observers, transfers) = m.server.lock().clone();
    counter(
        r,
        "coap_requests",
        "CoAP requests answered (not duplicates)",
        stats.requests,
    );
    counter(
        r,
        "coap_blocks_served",
        "CoAP blocks served (first transmissions)",
        stats.blocks_served,
    );
    counter(
        r,
        "coap_duplicates",
        "Duplicate CoAP requests answered from the deduplication table",
        stats.duplicates,
    );
    counter(
        r,
        "coap_malformed",
        "CoAP datagrams rejected or dropped as malformed",
        stats.malformed,
    );
    counter(
        r,
        "coap_notifications",
        "Observe notifications sent",
        stats.notifications,
    );
    counter(
        r,
        "coap_retransmissions",
        "Observe notification retransmissions",
        stats.retransmissions,
    );
    counter(
        r,
        "coap_echo_challenges",
        "4.01 Echo challenges sent",
        stats.echo_challenges,
    );
    counter(
        r,
        "coap_observers_refused",
        "Observe registrations refused (limits)",
        stats.observers_refused,
    );
    gauge(r, "coap_observers", "Observers registered", observers as i64);
    gauge(
        r,
        "coap_transfers_in_progress",
        "Block-wise downloads in progress",
        transfers as i64,
    );
}

/// The coaps side's counters: its datagrams and replies, and the DTLS endpoint's.
pub fn coaps_metrics(
    m: &suitcase_coap::driver::Metrics,
    dtls: &suitcase_coap::dtls_driver::DtlsStats,
    r: &mut prometheus_client::registry::Registry,
) {
    use std::sync::atomic::Ordering::Relaxed;
    use suitcase_http::metrics::{counter, gauge};
    counter(
        r,
        "coaps_datagrams_in",
        "coaps (DTLS) datagrams received",
        m.datagrams_in.load(Relaxed),
    );
    counter(
        r,
        "coaps_datagrams_out",
        "coaps (DTLS) datagrams sent",
        m.datagrams_out.load(Relaxed),
    );
    let replies: u64 = m.replies.iter().map(|n| n.load(Relaxed)).sum();
    counter(r, "coaps_replies", "CoAP replies sent over DTLS", replies);
    let (s, sessions) = dtls.lock().clone();
    gauge(
        r,
        "dtls_sessions",
        "DTLS sessions in the table (handshaking included)",
        sessions as i64,
    );
    counter(r, "dtls_handshakes", "DTLS handshakes completed", s.handshakes);
    counter(
        r,
        "dtls_handshake_failures",
        "DTLS handshakes failed (unknown identity or key, protocol error)",
        s.handshake_failures,
    );
    counter(
        r,
        "dtls_handshake_timeouts",
        "DTLS handshakes not finished in time",
        s.handshake_timeouts,
    );
    counter(
        r,
        "dtls_hello_verify",
        "HelloVerifyRequests sent (stateless cookies)",
        s.hello_verify,
    );
    counter(
        r,
        "dtls_refused_full",
        "Valid ClientHellos refused: session table full",
        s.refused_full,
    );
    counter(
        r,
        "dtls_handshakes_evicted",
        "DTLS handshakes dropped for newer ones (handshake bound reached)",
        s.handshakes_evicted,
    );
    counter(
        r,
        "dtls_idle_closed",
        "DTLS sessions closed for being idle",
        s.idle_closed,
    );
    counter(
        r,
        "dtls_stray",
        "Datagrams without a session that were no ClientHello",
        s.stray,
    );
}
