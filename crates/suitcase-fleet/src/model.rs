//! Devices as the API and the CLI see them, and what a publisher may set.

use serde::{Deserialize, Serialize};

use crate::FleetError;

/// Where a device is in the update in progress (its target version).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    /// Nothing in progress.
    Idle,
    /// A trigger was sent and acknowledged.
    Notified,
    /// The manifest was fetched.
    Manifest,
    /// An image is being downloaded.
    Downloading,
    /// The image's last block or byte was served.
    Downloaded,
    /// The device reported success, or rebooted into another slot.
    Installed,
    /// The device reported failure, or never came back.
    Failed,
}

impl State {
    /// Every state, in update order.
    pub const ALL: [State; 7] = [
        State::Idle,
        State::Notified,
        State::Manifest,
        State::Downloading,
        State::Downloaded,
        State::Installed,
        State::Failed,
    ];

    /// Its name (as stored, shown and accepted by `--state`).
    pub fn as_str(self) -> &'static str {
        match self {
            State::Idle => "idle",
            State::Notified => "notified",
            State::Manifest => "manifest",
            State::Downloading => "downloading",
            State::Downloaded => "downloaded",
            State::Installed => "installed",
            State::Failed => "failed",
        }
    }

    /// Whether the update is over (or none is running).
    pub fn is_final(self) -> bool {
        matches!(self, State::Idle | State::Installed | State::Failed)
    }
}

impl std::fmt::Display for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for State {
    type Err = FleetError;
    fn from_str(s: &str) -> Result<Self, FleetError> {
        State::ALL.into_iter().find(|st| st.as_str() == s).ok_or_else(|| {
            FleetError::Invalid(format!(
                "state {s:?}: one of idle, notified, manifest, downloading, downloaded, installed, failed"
            ))
        })
    }
}

/// A device of the inventory.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Device {
    /// Its id: a name or EUI chosen by the publisher, or `coap-<address>` for a device the
    /// server saw fetch a manifest without knowing it.
    pub id: String,
    /// Added by a publisher (false: only seen).
    pub registered: bool,
    /// The CoAP address the server notifies: `[addr]:port` with an optional path.
    pub coap: Option<String>,
    /// HTTP identity: the MAC or `addr` an ESP device sends, or a device token's name.
    pub http_id: Option<String>,
    /// Board or device class.
    pub class: Option<String>,
    /// The publish-id it follows.
    pub publish_id: Option<String>,
    /// Groups (tags).
    pub groups: Vec<String>,
    /// The manifest sequence number of the image it runs, when known.
    pub running_seq: Option<u64>,
    /// The semantic version it runs, when known.
    pub running_semver: Option<String>,
    /// The store version (of `publish_id`) of the update in progress.
    pub target_version: Option<u64>,
    /// Its manifest sequence number.
    pub target_seq: Option<u64>,
    /// Its semantic version.
    pub target_semver: Option<String>,
    /// Where the update is.
    pub state: State,
    /// Why it failed (`timeout`, or the device's reason).
    pub reason: Option<String>,
    /// Bytes of the image served so far (the end of the highest block served).
    pub bytes_done: u64,
    /// The image's size.
    pub bytes_total: u64,
    /// The address it last came from.
    pub peer: Option<String>,
    /// The slot it ran when the update started (RIOT's `suit/slot/active`).
    pub slot_before: Option<String>,
    /// First seen by a server (Unix ms).
    pub first_seen: Option<i64>,
    /// Last seen (Unix ms).
    pub last_seen: Option<i64>,
    /// When the state last changed (Unix ms).
    pub state_at: Option<i64>,
    /// When it last reported (Unix ms).
    pub report_at: Option<i64>,
    /// Its last report, as recorded (JSON).
    pub report: Option<String>,
    /// When it was added (Unix ms).
    pub created_at: i64,
    /// How a rollout left to the device (`auto`) tells it; `None`: CoAP with a CoAP address,
    /// else it pulls.
    #[serde(default)]
    pub trigger: Option<crate::rollout::TriggerKind>,
}

impl Device {
    /// Download progress in percent, while there is a download.
    pub fn progress(&self) -> Option<u8> {
        match self.state {
            State::Downloading | State::Downloaded if self.bytes_total > 0 => {
                Some((self.bytes_done.min(self.bytes_total) * 100 / self.bytes_total) as u8)
            }
            State::Installed | State::Downloaded => Some(100),
            _ => None,
        }
    }

    /// A fresh record.
    pub(crate) fn new(id: String, registered: bool, now: i64) -> Self {
        Device {
            id,
            registered,
            coap: None,
            http_id: None,
            class: None,
            publish_id: None,
            groups: Vec::new(),
            running_seq: None,
            running_semver: None,
            target_version: None,
            target_seq: None,
            target_semver: None,
            state: State::Idle,
            reason: None,
            bytes_done: 0,
            bytes_total: 0,
            peer: None,
            slot_before: None,
            first_seen: None,
            last_seen: None,
            state_at: None,
            report_at: None,
            report: None,
            created_at: now,
            trigger: None,
        }
    }
}

/// What a publisher gives to add a device (`device add`, `POST /api/v1/devices`, one CSV
/// row of `device import`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewDevice {
    /// Its id.
    pub id: String,
    /// CoAP address to notify.
    #[serde(default)]
    pub coap: Option<String>,
    /// HTTP identity (MAC, esp32FOTA `addr`, or a device token's name).
    #[serde(default)]
    pub http_id: Option<String>,
    /// Class (board).
    #[serde(default)]
    pub class: Option<String>,
    /// The publish-id it follows.
    #[serde(default)]
    pub publish_id: Option<String>,
    /// Groups.
    #[serde(default)]
    pub groups: Vec<String>,
    /// The sequence number it runs, when the publisher knows it.
    #[serde(default)]
    pub running_seq: Option<u64>,
    /// The semantic version it runs, when the publisher knows it.
    #[serde(default)]
    pub running_semver: Option<String>,
    /// How rollouts tell it (`coap`, `observe`, `mqtt`, `http`; default: CoAP if it has a
    /// CoAP address, else it pulls).
    #[serde(default)]
    pub trigger: Option<String>,
}

/// A version as people read it: `1.2.0 (seq 7)`, `seq 7` or `1.2.0`; `None` when neither is
/// known (the page and the CLI print their own placeholder).
pub fn version_text(seq: Option<u64>, semver: Option<&str>) -> Option<String> {
    match (seq, semver) {
        (Some(s), Some(v)) => Some(format!("{v} (seq {s})")),
        (Some(s), None) => Some(format!("seq {s}")),
        (None, Some(v)) => Some(v.to_string()),
        (None, None) => None,
    }
}

/// Longest id, group, class or HTTP identity.
pub const MAX_NAME: usize = 64;

fn name_ok(s: &str, extra: &[u8]) -> bool {
    !s.is_empty()
        && s.len() <= MAX_NAME
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b) || extra.contains(&b))
}

/// Check a device id: 1–64 of letters, digits, `.`, `_`, `-`, `:`.
pub fn validate_id(id: &str) -> Result<(), FleetError> {
    if name_ok(id, b":") {
        Ok(())
    } else {
        Err(FleetError::Invalid(format!(
            "device id {id:?}: 1-{MAX_NAME} letters, digits, '.', '_', '-' or ':'"
        )))
    }
}

/// Check a group name: 1–64 of letters, digits, `.`, `_`, `-`.
pub fn validate_group(g: &str) -> Result<(), FleetError> {
    if name_ok(g, b"") {
        Ok(())
    } else {
        Err(FleetError::Invalid(format!(
            "group {g:?}: 1-{MAX_NAME} letters, digits, '.', '_' or '-'"
        )))
    }
}

impl NewDevice {
    /// Check every field; the canonical form (trimmed, groups sorted and deduplicated).
    pub fn validate(mut self) -> Result<Self, FleetError> {
        self.id = self.id.trim().to_string();
        validate_id(&self.id)?;
        let blank = |o: Option<String>| o.map(|s| s.trim().to_string()).filter(|s| !s.is_empty());
        self.coap = blank(self.coap);
        self.http_id = blank(self.http_id);
        self.class = blank(self.class);
        self.publish_id = blank(self.publish_id);
        self.running_semver = blank(self.running_semver);
        self.trigger = blank(self.trigger);
        if let Some(t) = &self.trigger {
            let kind: crate::rollout::TriggerKind = t.parse()?;
            if kind == crate::rollout::TriggerKind::Auto {
                self.trigger = None;
            }
        }
        if let Some(c) = &self.coap {
            suitcase_coap::trigger::Target::parse(c).map_err(|e| FleetError::Invalid(e.to_string()))?;
            if c.len() > 300 {
                return Err(FleetError::Invalid("coap address: at most 300 characters".into()));
            }
        }
        if let Some(h) = &self.http_id {
            if !name_ok(h, b":") {
                return Err(FleetError::Invalid(format!(
                    "http identity {h:?}: 1-{MAX_NAME} letters, digits, '.', '_', '-' or ':'"
                )));
            }
        }
        if let Some(c) = &self.class {
            if !name_ok(c, b"") {
                return Err(FleetError::Invalid(format!(
                    "class {c:?}: 1-{MAX_NAME} letters, digits, '.', '_' or '-'"
                )));
            }
        }
        if let Some(p) = &self.publish_id {
            suitcase_store::validate_publish_id(p).map_err(|e| FleetError::Invalid(e.to_string()))?;
        }
        if let Some(v) = &self.running_semver {
            if v.len() > MAX_NAME || v.chars().any(|c| c.is_whitespace() || c.is_control()) {
                return Err(FleetError::Invalid(format!("running version {v:?}")));
            }
        }
        let mut groups: Vec<String> = self
            .groups
            .iter()
            .map(|g| g.trim().to_string())
            .filter(|g| !g.is_empty())
            .collect();
        for g in &groups {
            validate_group(g)?;
        }
        groups.sort();
        groups.dedup();
        if groups.len() > 32 {
            return Err(FleetError::Invalid("at most 32 groups per device".into()));
        }
        self.groups = groups;
        Ok(self)
    }
}

/// Groups as stored: `,a,b,` (empty: ``), so `LIKE '%,a,%'` finds members.
pub(crate) fn groups_column(groups: &[String]) -> String {
    if groups.is_empty() {
        String::new()
    } else {
        format!(",{},", groups.join(","))
    }
}

/// Groups from their stored form.
pub(crate) fn groups_from_column(s: &str) -> Vec<String> {
    s.split(',').filter(|g| !g.is_empty()).map(str::to_string).collect()
}

/// Which devices a listing shows.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
pub struct Filter {
    /// Members of this group.
    pub group: Option<String>,
    /// In this state.
    pub state: Option<State>,
    /// Following this publish-id.
    pub publish_id: Option<String>,
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn new_devices_are_checked_and_canonical() {
        let d = NewDevice {
            id: " dev-1 ".into(),
            coap: Some("[2001:db8::1]:5683/suit/trigger".into()),
            groups: vec!["b".into(), "a".into(), "b".into(), " ".into()],
            ..Default::default()
        }
        .validate()
        .unwrap();
        assert_eq!(d.id, "dev-1");
        assert_eq!(d.groups, vec!["a", "b"]);
        assert_eq!(groups_column(&d.groups), ",a,b,");
        assert_eq!(groups_from_column(",a,b,"), d.groups);
        for bad in [
            NewDevice {
                id: "".into(),
                ..Default::default()
            },
            NewDevice {
                id: "a/b".into(),
                ..Default::default()
            },
            NewDevice {
                id: "x".repeat(65),
                ..Default::default()
            },
            NewDevice {
                id: "a".into(),
                coap: Some("http://x".into()),
                ..Default::default()
            },
            NewDevice {
                id: "a".into(),
                groups: vec!["a,b".into()],
                ..Default::default()
            },
            NewDevice {
                id: "a".into(),
                publish_id: Some("../x".into()),
                ..Default::default()
            },
            NewDevice {
                id: "a".into(),
                class: Some("a b".into()),
                ..Default::default()
            },
        ] {
            assert!(bad.clone().validate().is_err(), "{bad:?}");
        }
        assert_eq!("downloading".parse::<State>().unwrap(), State::Downloading);
        assert!("done".parse::<State>().is_err());
    }
}
