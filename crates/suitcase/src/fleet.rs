//! The server's glue to the fleet: device reports over CoAP, and RIOT's slot resource read
//! with the trigger client.

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
    while let Some(req) = requests.recv().await {
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
        if replies
            .send(AppReply {
                id: req.id,
                code,
                payload,
            })
            .await
            .is_err()
        {
            return;
        }
    }
}

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
