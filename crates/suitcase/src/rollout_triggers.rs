//! How the server sends rollout triggers: CoAP POSTs with the trigger client (RIOT's
//! `/suit/trigger` contract, as `/notify` sends them) and MQTT messages.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use suitcase_coap::trigger::Outcome;
use suitcase_coap::trigger_client::TriggerClient;
use suitcase_fleet::{TriggerJob, TriggerKind, Triggers};

/// The server's trigger senders.
pub struct RolloutTriggers {
    /// CoAP.
    pub coap: Arc<TriggerClient>,
    /// MQTT, when a broker is configured (`--mqtt`).
    pub mqtt: Option<Arc<dyn Publish>>,
}

/// Publishes MQTT messages (QoS 1: `Ok` once the broker took it).
pub trait Publish: Send + Sync + 'static {
    /// Publish `payload` to `topic`.
    fn publish(&self, topic: String, payload: Vec<u8>) -> Pin<Box<dyn Future<Output = Result<(), String>> + Send>>;
}

/// The MQTT message of a trigger: the seed hosting guide's `ota_trigger`, with what a
/// device needs to tell versions apart.
pub fn mqtt_message(job: &TriggerJob) -> Vec<u8> {
    serde_json::json!({
        "type": "ota_trigger",
        "url": job.url,
        "publish_id": job.publish_id,
        "version": job.version,
        "seq": job.seq,
        "semver": job.semver,
        "device": job.device,
        "rollout": job.rollout,
    })
    .to_string()
    .into_bytes()
}

impl Triggers for RolloutTriggers {
    fn send(&self, job: TriggerJob) -> Pin<Box<dyn Future<Output = Result<String, String>> + Send>> {
        match job.kind {
            TriggerKind::Mqtt => {
                let mqtt = self.mqtt.clone();
                Box::pin(async move {
                    let mqtt = mqtt.ok_or("no MQTT broker configured (--mqtt)")?;
                    mqtt.publish(job.topic.clone(), mqtt_message(&job)).await?;
                    Ok(format!("published to {}", job.topic))
                })
            }
            _ => {
                let client = self.coap.clone();
                Box::pin(async move {
                    let device = job.coap.clone().ok_or("the device has no CoAP address")?;
                    let r = client
                        .notify_all_with(std::slice::from_ref(&device), &job.url, None)
                        .await
                        .into_iter()
                        .next()
                        .ok_or("no result")?;
                    match r.outcome {
                        Ok(o @ Outcome::Response { .. }) if o.is_success() => {
                            Ok(o.code_text().unwrap_or_else(|| "ok".into()))
                        }
                        Ok(o @ Outcome::Response { .. }) => Err(format!(
                            "the device answered {}",
                            o.code_text().unwrap_or_else(|| "an error".into())
                        )),
                        Ok(Outcome::Reset) => Err("the device answered RST".into()),
                        Ok(Outcome::Timeout) => Err("no answer after all retransmissions".into()),
                        Err(e) => Err(e),
                    }
                })
            }
        }
    }

    fn supports(&self, kind: TriggerKind) -> Result<(), String> {
        if kind == TriggerKind::Mqtt && self.mqtt.is_none() {
            return Err("no MQTT broker configured (start the server with --mqtt mqtt://host:port)".into());
        }
        Ok(())
    }
}

impl Publish for crate::mqtt::Mqtt {
    fn publish(&self, topic: String, payload: Vec<u8>) -> Pin<Box<dyn Future<Output = Result<(), String>> + Send>> {
        let mqtt = self.clone();
        Box::pin(async move {
            crate::mqtt::validate_topic(&topic)?;
            mqtt.publish(&topic, payload).await
        })
    }
}
