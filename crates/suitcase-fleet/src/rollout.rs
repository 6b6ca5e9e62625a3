//! Rollouts: one version of a publish-id taken to a set of devices in waves, with a limit on
//! concurrent updates, a success threshold between waves and an error threshold that halts.
//!
//! This module is the plan and its bookkeeping, without I/O: [`Rollout::step`] is given the
//! time and a view of the devices and says which devices to trigger now; the tracker writes
//! what changed and sends the triggers.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use crate::model::{Device, State};
use crate::FleetError;

/// How the devices of a rollout are told.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TriggerKind {
    /// Per device: CoAP when it has a CoAP address, else it is let through the gate only
    /// (it pulls: Observe, or the ESP routes).
    Auto,
    /// CoAP POST of the manifest URL to the device's trigger resource (RIOT `/suit/trigger`).
    Coap,
    /// The device observes `<publish-id>/manifest`: it is let through the gate.
    Observe,
    /// An MQTT message to the device's topic.
    Mqtt,
    /// The device polls over HTTP (`images.json?addr=`, `/firmware/<name>`): it is let
    /// through the gate.
    Http,
}

impl TriggerKind {
    /// Its name.
    pub fn as_str(self) -> &'static str {
        match self {
            TriggerKind::Auto => "auto",
            TriggerKind::Coap => "coap",
            TriggerKind::Observe => "observe",
            TriggerKind::Mqtt => "mqtt",
            TriggerKind::Http => "http",
        }
    }

    /// Whether the server sends something (CoAP, MQTT), rather than only opening the gate.
    pub fn sends(self) -> bool {
        matches!(self, TriggerKind::Coap | TriggerKind::Mqtt)
    }
}

impl std::str::FromStr for TriggerKind {
    type Err = FleetError;
    fn from_str(s: &str) -> Result<Self, FleetError> {
        [
            TriggerKind::Auto,
            TriggerKind::Coap,
            TriggerKind::Observe,
            TriggerKind::Mqtt,
            TriggerKind::Http,
        ]
        .into_iter()
        .find(|k| k.as_str() == s.trim())
        .ok_or_else(|| FleetError::Invalid(format!("trigger {s:?}: auto, coap, observe, mqtt or http")))
    }
}

/// Where a rollout is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RolloutState {
    /// Waiting for its start time.
    Scheduled,
    /// Triggering devices of its current wave.
    Running,
    /// Stopped by a publisher; nothing new is triggered until it resumes.
    Paused,
    /// Stopped by a threshold (the reason says which); it can only be aborted.
    Halted,
    /// Every wave reached the success threshold.
    Finished,
    /// Stopped by a publisher for good.
    Aborted,
}

impl RolloutState {
    /// Its name.
    pub fn as_str(self) -> &'static str {
        match self {
            RolloutState::Scheduled => "scheduled",
            RolloutState::Running => "running",
            RolloutState::Paused => "paused",
            RolloutState::Halted => "halted",
            RolloutState::Finished => "finished",
            RolloutState::Aborted => "aborted",
        }
    }
}

impl std::str::FromStr for RolloutState {
    type Err = FleetError;
    fn from_str(s: &str) -> Result<Self, FleetError> {
        [
            RolloutState::Scheduled,
            RolloutState::Running,
            RolloutState::Paused,
            RolloutState::Halted,
            RolloutState::Finished,
            RolloutState::Aborted,
        ]
        .into_iter()
        .find(|k| k.as_str() == s)
        .ok_or_else(|| FleetError::Invalid(format!("rollout state {s:?}")))
    }
}

impl std::fmt::Display for RolloutState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A wave's end, as written: `10%` or a device count `100` (cumulative).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WaveSize {
    /// Percent of the target set (1–100), rounded up.
    Percent(u8),
    /// Devices in this wave and the ones before.
    Count(u64),
}

impl WaveSize {
    fn parse(s: &str) -> Result<WaveSize, FleetError> {
        let t = s.trim();
        let bad = || FleetError::Invalid(format!("wave {s:?}: a percentage (1%-100%) or a device count"));
        if let Some(p) = t.strip_suffix('%') {
            let p: f64 = p.trim().parse().map_err(|_| bad())?;
            if !(p > 0.0 && p <= 100.0) {
                return Err(bad());
            }
            Ok(WaveSize::Percent(p.ceil() as u8))
        } else if t.eq_ignore_ascii_case("all") {
            Ok(WaveSize::Percent(100))
        } else {
            let n: u64 = t.parse().map_err(|_| bad())?;
            if n == 0 {
                return Err(bad());
            }
            Ok(WaveSize::Count(n))
        }
    }

    /// Devices up to the end of this wave out of `total`.
    fn end(self, total: usize) -> usize {
        match self {
            WaveSize::Percent(p) => (total * usize::from(p)).div_ceil(100),
            WaveSize::Count(n) => usize::try_from(n).unwrap_or(usize::MAX).min(total),
        }
    }
}

/// A number given as `95`, `"95"` or `"95%"`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Percent {
    /// A number.
    Number(f64),
    /// Text, with or without `%`.
    Text(String),
}

impl Percent {
    fn value(&self, what: &str) -> Result<f64, FleetError> {
        let v = match self {
            Percent::Number(n) => Some(*n),
            Percent::Text(t) => t.trim().trim_end_matches('%').trim().parse().ok(),
        };
        v.filter(|v| (0.0..=100.0).contains(v))
            .ok_or_else(|| FleetError::Invalid(format!("{what}: a percentage from 0 to 100")))
    }
}

/// A wave given as `"10%"`, `"100"` or `100`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum WaveText {
    /// A device count.
    Number(u64),
    /// `10%`, `100`, `all`.
    Text(String),
}

/// What a publisher asks for (`POST /api/v1/rollouts`, `suitcase rollout create`).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RolloutRequest {
    /// The publish-id.
    pub publish_id: String,
    /// `latest` (default), a version number, a sequence number or a semver.
    #[serde(default)]
    pub version: Option<String>,
    /// Only devices of this group.
    #[serde(default)]
    pub group: Option<String>,
    /// Only devices of this class.
    #[serde(default)]
    pub class: Option<String>,
    /// Only these devices.
    #[serde(default)]
    pub devices: Option<Vec<String>>,
    /// Only devices whose running version is known to be older, or is unknown.
    #[serde(default)]
    pub only_older: bool,
    /// Cumulative wave ends (default: one wave of all).
    #[serde(default)]
    pub waves: Option<Vec<WaveText>>,
    /// Updates in progress at most (0: no limit).
    #[serde(default)]
    pub max_concurrent: Option<u64>,
    /// Percent of the devices of the started waves that must have installed before the
    /// next wave starts (default 95).
    #[serde(default)]
    pub success: Option<Percent>,
    /// Percent of the devices of the started waves failed that halts the rollout (default 5).
    #[serde(default)]
    pub halt_on_errors: Option<Percent>,
    /// A device triggered this long ago that has neither installed nor failed fails
    /// (default 600 s).
    #[serde(default)]
    pub device_timeout_secs: Option<u64>,
    /// How devices are told (default `auto`).
    #[serde(default)]
    pub trigger: Option<String>,
    /// MQTT topic template (`{device}`, `{group}`; default `/switch/cmd/root`).
    #[serde(default)]
    pub topic: Option<String>,
    /// A name for people.
    #[serde(default)]
    pub name: Option<String>,
    /// Start at this time (RFC 3339) instead of now.
    #[serde(default)]
    pub start_at: Option<String>,
}

/// The default MQTT topic: the seed hosting guide's.
pub const DEFAULT_TOPIC: &str = "/switch/cmd/root";

/// Devices one rollout may target at most.
pub const MAX_TARGETS: usize = 1_000_000;

/// A checked rollout plan (stored as JSON with the rollout).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Plan {
    /// Group filter.
    pub group: Option<String>,
    /// Class filter.
    pub class: Option<String>,
    /// Explicit devices.
    pub devices: Option<Vec<String>>,
    /// Only older devices.
    pub only_older: bool,
    /// Wave ends.
    pub waves: Vec<WaveSize>,
    /// Concurrent updates at most (0: no limit).
    pub max_concurrent: u64,
    /// Success threshold, percent.
    pub success: f64,
    /// Error threshold, percent.
    pub halt_on_errors: f64,
    /// Per-device timeout, seconds.
    pub device_timeout_secs: u64,
    /// Trigger.
    pub trigger: TriggerKind,
    /// MQTT topic template.
    pub topic: String,
}

impl RolloutRequest {
    /// Check everything but the publish-id and version (which need the store); the plan.
    pub fn plan(&self) -> Result<Plan, FleetError> {
        suitcase_store::validate_publish_id(&self.publish_id).map_err(|e| FleetError::Invalid(e.to_string()))?;
        let blank = |o: &Option<String>| {
            o.as_deref()
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_string)
        };
        let group = blank(&self.group);
        if let Some(g) = &group {
            crate::model::validate_group(g)?;
        }
        let class = blank(&self.class);
        if let Some(c) = &class {
            crate::model::validate_group(c).map_err(|_| FleetError::Invalid(format!("class {c:?}")))?;
        }
        let devices = match &self.devices {
            None => None,
            Some(list) => {
                let mut v: Vec<String> = list
                    .iter()
                    .map(|d| d.trim().to_string())
                    .filter(|d| !d.is_empty())
                    .collect();
                for d in &v {
                    crate::model::validate_id(d)?;
                }
                if v.is_empty() {
                    return Err(FleetError::Invalid("devices: an empty list".into()));
                }
                if v.len() > MAX_TARGETS {
                    return Err(FleetError::Invalid(format!("devices: at most {MAX_TARGETS}")));
                }
                v.sort();
                v.dedup();
                Some(v)
            }
        };
        let waves = match &self.waves {
            None => vec![WaveSize::Percent(100)],
            Some(w) if w.is_empty() => return Err(FleetError::Invalid("waves: none given".into())),
            Some(w) if w.len() > 100 => return Err(FleetError::Invalid("waves: at most 100".into())),
            Some(w) => w
                .iter()
                .map(|x| match x {
                    WaveText::Number(0) => Err(FleetError::Invalid("wave 0: a wave holds devices".into())),
                    WaveText::Number(n) => Ok(WaveSize::Count(*n)),
                    WaveText::Text(t) => WaveSize::parse(t),
                })
                .collect::<Result<Vec<_>, _>>()?,
        };
        // Increasing: the same kind must grow; a mix is checked against the target set.
        for pair in waves.windows(2) {
            let increasing = match (pair[0], pair[1]) {
                (WaveSize::Percent(a), WaveSize::Percent(b)) => b > a,
                (WaveSize::Count(a), WaveSize::Count(b)) => b > a,
                _ => true,
            };
            if !increasing {
                return Err(FleetError::Invalid(format!(
                    "waves must increase: {} then {}",
                    wave_text(pair[0]),
                    wave_text(pair[1])
                )));
            }
        }
        let success = self.success.as_ref().map_or(Ok(95.0), |p| p.value("success"))?;
        let halt_on_errors = self
            .halt_on_errors
            .as_ref()
            .map_or(Ok(5.0), |p| p.value("halt-on-errors"))?;
        let device_timeout_secs = self.device_timeout_secs.unwrap_or(600);
        if !(1..=7 * 24 * 3600).contains(&device_timeout_secs) {
            return Err(FleetError::Invalid("device timeout: 1 s to 7 days".into()));
        }
        let trigger = match blank(&self.trigger) {
            None => TriggerKind::Auto,
            Some(t) => t.parse()?,
        };
        let topic = blank(&self.topic).unwrap_or_else(|| DEFAULT_TOPIC.to_string());
        if topic.len() > 1024 || topic.contains(['+', '#', '\0']) {
            return Err(FleetError::Invalid(format!(
                "topic {topic:?}: at most 1024 bytes, no wildcards (+ #)"
            )));
        }
        Ok(Plan {
            group,
            class,
            devices,
            only_older: self.only_older,
            waves,
            max_concurrent: self.max_concurrent.unwrap_or(0),
            success,
            halt_on_errors,
            device_timeout_secs,
            trigger,
            topic,
        })
    }
}

fn wave_text(w: WaveSize) -> String {
    match w {
        WaveSize::Percent(p) => format!("{p}%"),
        WaveSize::Count(n) => n.to_string(),
    }
}

/// What the rollout is about.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Target {
    /// The publish-id.
    pub publish_id: String,
    /// Its store version.
    pub version: u64,
    /// The manifest's sequence number.
    pub seq: Option<u64>,
    /// The semantic version.
    pub semver: Option<String>,
    /// The version devices outside started waves see instead (the one before), if any.
    pub baseline: Option<u64>,
}

/// Whether `d` runs something older than `t` (unknown counts as older: it may be).
pub fn is_older(d: &Device, t: &Target) -> bool {
    if let (Some(run), Some(seq)) = (d.running_seq, t.seq) {
        return run < seq;
    }
    if let (Some(run), Some(target)) = (d.running_semver.as_deref(), t.semver.as_deref()) {
        let parse = |s: &str| semver::Version::parse(s.trim_start_matches('v')).ok();
        if let (Some(a), Some(b)) = (parse(run), parse(target)) {
            return a < b;
        }
    }
    true
}

/// The devices a plan targets, in the order waves take them (by id: reproducible).
pub fn select<'a>(
    plan: &Plan,
    publish_id: &str,
    target: &Target,
    devices: impl Iterator<Item = &'a Device>,
) -> Vec<String> {
    let mut out: Vec<String> = devices
        .filter(|d| match &plan.devices {
            Some(list) => list.binary_search(&d.id).is_ok(),
            // Without a list: the devices that follow the publish-id.
            None => d.publish_id.as_deref() == Some(publish_id),
        })
        .filter(|d| plan.group.as_ref().is_none_or(|g| d.groups.contains(g)))
        .filter(|d| plan.class.as_ref().is_none_or(|c| d.class.as_ref() == Some(c)))
        .filter(|d| !plan.only_older || is_older(d, target))
        .map(|d| d.id.clone())
        .collect();
    out.sort();
    out
}

/// Where one device of a rollout is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MemberStatus {
    /// Its wave has not started, or it waits for a free slot.
    Pending,
    /// Told (or let through the gate); the update is under way.
    Triggered,
    /// It installed the version.
    Installed,
    /// It failed (its report, the trigger, or the timeout).
    Failed,
}

impl MemberStatus {
    /// Its name.
    pub fn as_str(self) -> &'static str {
        match self {
            MemberStatus::Pending => "pending",
            MemberStatus::Triggered => "triggered",
            MemberStatus::Installed => "installed",
            MemberStatus::Failed => "failed",
        }
    }

    /// From its name.
    pub fn parse(s: &str) -> Option<MemberStatus> {
        [
            MemberStatus::Pending,
            MemberStatus::Triggered,
            MemberStatus::Installed,
            MemberStatus::Failed,
        ]
        .into_iter()
        .find(|m| m.as_str() == s)
    }
}

/// One device of a rollout.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    /// The device.
    pub device: String,
    /// Its wave (0-based).
    pub wave: usize,
    /// Where it is.
    pub status: MemberStatus,
    /// When it was triggered (Unix ms).
    pub triggered_at: Option<i64>,
    /// When it installed or failed (Unix ms).
    pub done_at: Option<i64>,
    /// The trigger's result or the failure's reason.
    pub detail: Option<String>,
}

/// A rollout.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Rollout {
    /// Its number.
    pub id: u64,
    /// A name for people.
    pub name: Option<String>,
    /// What it installs.
    pub target: Target,
    /// The plan.
    pub plan: Plan,
    /// CoAP base URL of this server for manifest URLs (`coap://host:port`).
    pub coap_base: Option<String>,
    /// HTTP base URL of this server (for MQTT messages to HTTP devices).
    pub http_base: Option<String>,
    /// Where it is.
    pub state: RolloutState,
    /// Why it halted or was aborted.
    pub reason: Option<String>,
    /// The current wave (0-based).
    pub wave: usize,
    /// Devices up to the end of each wave.
    pub wave_ends: Vec<usize>,
    /// When each wave started (Unix ms).
    pub wave_started: Vec<Option<i64>>,
    /// When each wave ended (Unix ms).
    pub wave_finished: Vec<Option<i64>>,
    /// Created (Unix ms).
    pub created_at: i64,
    /// When it starts or started (Unix ms).
    pub start_at: i64,
    /// Finished, halted or aborted (Unix ms).
    pub ended_at: Option<i64>,
    /// Its devices, in wave order.
    #[serde(skip)]
    pub members: Vec<Member>,
    /// Index of each device in `members`.
    #[serde(skip)]
    pub index: HashMap<String, usize>,
}

/// What [`Rollout::step`] asks the tracker to do.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Step {
    /// Members (indices) to trigger now; they are `Triggered` already (write them first).
    pub trigger: Vec<usize>,
    /// Members whose status changed (to write).
    pub changed: Vec<usize>,
    /// The rollout itself changed (state, wave, times).
    pub rollout_changed: bool,
}

/// Counts of a set of members.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counts {
    /// Devices.
    pub devices: u64,
    /// Not triggered yet.
    pub pending: u64,
    /// Triggered, not done.
    pub triggered: u64,
    /// Of those, downloading now.
    pub downloading: u64,
    /// Installed.
    pub installed: u64,
    /// Failed.
    pub failed: u64,
}

impl Counts {
    fn add(&mut self, s: MemberStatus) {
        self.add_n(s, 1);
    }

    fn add_n(&mut self, s: MemberStatus, n: u64) {
        self.devices += n;
        match s {
            MemberStatus::Pending => self.pending += n,
            MemberStatus::Triggered => self.triggered += n,
            MemberStatus::Installed => self.installed += n,
            MemberStatus::Failed => self.failed += n,
        }
    }
}

fn pct(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        part as f64 * 100.0 / whole as f64
    }
}

impl Rollout {
    /// A new rollout of `members` (in order), split into the plan's waves.
    pub fn new(
        id: u64,
        name: Option<String>,
        target: Target,
        plan: Plan,
        members: Vec<String>,
        now: i64,
        start_at: Option<i64>,
    ) -> Result<Rollout, FleetError> {
        if members.is_empty() {
            return Err(FleetError::Invalid(
                "no device matches: the rollout would target nobody".into(),
            ));
        }
        let total = members.len();
        let mut wave_ends: Vec<usize> = plan.waves.iter().map(|w| w.end(total)).collect();
        // Mixed percentages and counts must grow too, once counted; counts past the target
        // set (10 and 20 devices of 8) collapse into one last wave.
        for (i, pair) in wave_ends.windows(2).enumerate() {
            if pair[1] <= pair[0] && pair[0] < total {
                return Err(FleetError::Invalid(format!(
                    "waves must increase: {} then {} are {} then {} of {total} devices",
                    wave_text(plan.waves[i]),
                    wave_text(plan.waves[i + 1]),
                    pair[0],
                    pair[1]
                )));
            }
        }
        if let Some(last) = wave_ends.last().copied().filter(|e| *e < total) {
            return Err(FleetError::Invalid(format!(
                "the waves end at {last} of {total} devices: the last wave must take them all (100%)"
            )));
        }
        wave_ends.dedup();
        wave_ends.retain(|e| *e > 0);
        let mut m = Vec::with_capacity(total);
        let mut wave = 0;
        for (i, device) in members.into_iter().enumerate() {
            while i >= wave_ends[wave] {
                wave += 1;
            }
            m.push(Member {
                device,
                wave,
                status: MemberStatus::Pending,
                triggered_at: None,
                done_at: None,
                detail: None,
            });
        }
        let waves = wave_ends.len();
        let start = start_at.unwrap_or(now);
        let mut r = Rollout {
            id,
            name,
            target,
            plan,
            coap_base: None,
            http_base: None,
            state: if start > now {
                RolloutState::Scheduled
            } else {
                RolloutState::Running
            },
            reason: None,
            wave: 0,
            wave_ends,
            wave_started: vec![None; waves],
            wave_finished: vec![None; waves],
            created_at: now,
            start_at: start,
            ended_at: None,
            members: m,
            index: HashMap::new(),
        };
        if r.state == RolloutState::Running {
            r.wave_started[0] = Some(now);
        }
        r.reindex();
        Ok(r)
    }

    /// Rebuild the device index.
    pub fn reindex(&mut self) {
        self.index = self
            .members
            .iter()
            .enumerate()
            .map(|(i, m)| (m.device.clone(), i))
            .collect();
    }

    /// Counts of the members of the started waves.
    pub fn counts_so_far(&self) -> Counts {
        let mut c = Counts::default();
        for m in self.members.iter().filter(|m| m.wave <= self.wave) {
            c.add(m.status);
        }
        c
    }

    /// Devices the gate lets through: members told or done.
    pub fn let_through(&self) -> impl Iterator<Item = &Member> {
        self.members.iter().filter(|m| m.status != MemberStatus::Pending)
    }

    /// A member's outcome from its device's record: installed or failed since it was
    /// triggered, for this rollout's version.
    fn outcome(&self, m: &Member, d: &Device) -> Option<(MemberStatus, Option<String>)> {
        let since = m.triggered_at.unwrap_or(0);
        let ours = d.target_version == Some(self.target.version)
            && d.publish_id.as_deref().is_none_or(|p| p == self.target.publish_id);
        let changed_since = d.state_at.unwrap_or(0) >= since || d.report_at.unwrap_or(0) >= since;
        match d.state {
            State::Installed if ours && changed_since => Some((MemberStatus::Installed, None)),
            State::Failed if ours && changed_since => Some((
                MemberStatus::Failed,
                Some(d.reason.clone().unwrap_or_else(|| "failed".into())),
            )),
            // It reports running this version (or newer) since: installed.
            _ if d.report_at.unwrap_or(0) >= since
                && matches!((d.running_seq, self.target.seq), (Some(r), Some(t)) if r >= t) =>
            {
                Some((MemberStatus::Installed, None))
            }
            _ => None,
        }
    }

    /// Advance: take the devices' outcomes, apply the timeout and the thresholds, start the
    /// next wave when this one is done, and pick the devices to trigger now.
    pub fn step<'d>(&mut self, now: i64, device: impl Fn(&str) -> Option<&'d Device>) -> Step {
        self.step_within(now, usize::MAX, device)
    }

    /// [`Rollout::step`], triggering at most `budget` devices now (the tracker bounds the
    /// triggers it has on its hands).
    pub fn step_within<'d>(&mut self, now: i64, budget: usize, device: impl Fn(&str) -> Option<&'d Device>) -> Step {
        let mut step = Step::default();
        if matches!(self.state, RolloutState::Finished | RolloutState::Aborted) {
            return step;
        }
        // Outcomes of the devices under way (in any live state: halted and paused rollouts
        // still record what their devices do).
        let timeout = i64::try_from(self.plan.device_timeout_secs.saturating_mul(1000)).unwrap_or(i64::MAX);
        for i in 0..self.members.len() {
            let m = &self.members[i];
            if m.status != MemberStatus::Triggered {
                continue;
            }
            let outcome = match device(&m.device) {
                Some(d) => self.outcome(m, d),
                None => Some((MemberStatus::Failed, Some("device removed".into()))),
            };
            let outcome = outcome.or_else(|| {
                (now.saturating_sub(m.triggered_at.unwrap_or(now)) >= timeout).then(|| {
                    (
                        MemberStatus::Failed,
                        Some(format!("timeout: no result within {} s", self.plan.device_timeout_secs)),
                    )
                })
            });
            if let Some((status, detail)) = outcome {
                let m = &mut self.members[i];
                m.status = status;
                m.done_at = Some(now);
                if detail.is_some() {
                    m.detail = detail;
                }
                step.changed.push(i);
            }
        }
        match self.state {
            RolloutState::Scheduled if now >= self.start_at => {
                self.state = RolloutState::Running;
                self.wave_started[0] = Some(now);
                step.rollout_changed = true;
            }
            RolloutState::Running => {}
            _ => return step,
        }
        if self.state != RolloutState::Running {
            return step;
        }
        loop {
            let c = self.counts_so_far();
            // The error threshold, over every device of the started waves.
            if c.failed > 0 && pct(c.failed, c.devices) > self.plan.halt_on_errors {
                self.end(
                    RolloutState::Halted,
                    format!(
                        "{} of {} devices failed ({:.1}% > {}%)",
                        c.failed,
                        c.devices,
                        pct(c.failed, c.devices),
                        self.plan.halt_on_errors
                    ),
                    now,
                );
                step.rollout_changed = true;
                return step;
            }
            if c.pending == 0 && c.triggered == 0 {
                // The wave is done.
                self.wave_finished[self.wave] = Some(now);
                step.rollout_changed = true;
                let success = pct(c.installed, c.devices);
                if success + 1e-9 < self.plan.success {
                    self.end(
                        RolloutState::Halted,
                        format!(
                            "wave {}: {} of {} devices installed ({:.1}% < {}%)",
                            self.wave + 1,
                            c.installed,
                            c.devices,
                            success,
                            self.plan.success
                        ),
                        now,
                    );
                    return step;
                }
                if self.wave + 1 >= self.wave_ends.len() {
                    self.state = RolloutState::Finished;
                    self.ended_at = Some(now);
                    return step;
                }
                self.wave += 1;
                self.wave_started[self.wave] = Some(now);
                continue;
            }
            // Trigger pending devices of the started waves while slots are free.
            let limit = if self.plan.max_concurrent == 0 {
                u64::MAX
            } else {
                self.plan.max_concurrent
            };
            let mut free = limit.saturating_sub(c.triggered).min(budget as u64);
            if free > 0 && c.pending > 0 {
                for i in 0..self.members.len() {
                    if free == 0 {
                        break;
                    }
                    if self.members[i].wave > self.wave || self.members[i].status != MemberStatus::Pending {
                        continue;
                    }
                    // A device known to run this version (or a newer one) already is done.
                    if device(&self.members[i].device).is_some_and(|d| !is_older(d, &self.target)) {
                        let m = &mut self.members[i];
                        m.status = MemberStatus::Installed;
                        m.done_at = Some(now);
                        m.detail = Some("already runs it".into());
                        step.changed.push(i);
                        continue;
                    }
                    let m = &mut self.members[i];
                    m.status = MemberStatus::Triggered;
                    m.triggered_at = Some(now);
                    step.trigger.push(i);
                    step.changed.push(i);
                    free -= 1;
                }
            }
            return step;
        }
    }

    fn end(&mut self, state: RolloutState, reason: String, now: i64) {
        tracing::warn!(rollout = self.id, %state, %reason, "rollout stopped");
        self.state = state;
        self.reason = Some(reason);
        self.ended_at = Some(now);
    }

    /// Pause (running or scheduled).
    pub fn pause(&mut self) -> Result<(), FleetError> {
        match self.state {
            RolloutState::Running | RolloutState::Scheduled => {
                self.state = RolloutState::Paused;
                Ok(())
            }
            RolloutState::Paused => Ok(()),
            s => Err(FleetError::Invalid(format!(
                "rollout {} is {s}: it cannot pause",
                self.id
            ))),
        }
    }

    /// Resume a paused rollout.
    pub fn resume(&mut self, now: i64) -> Result<(), FleetError> {
        match self.state {
            RolloutState::Paused => {
                if self.wave_started[0].is_none() && now < self.start_at {
                    self.state = RolloutState::Scheduled;
                } else {
                    self.state = RolloutState::Running;
                    if self.wave_started[self.wave].is_none() {
                        self.wave_started[self.wave] = Some(now);
                    }
                }
                Ok(())
            }
            RolloutState::Running | RolloutState::Scheduled => Ok(()),
            RolloutState::Halted => Err(FleetError::Invalid(format!(
                "rollout {} halted ({}): it cannot resume; abort it, or create a new one",
                self.id,
                self.reason.as_deref().unwrap_or("?")
            ))),
            s => Err(FleetError::Invalid(format!(
                "rollout {} is {s}: it cannot resume",
                self.id
            ))),
        }
    }

    /// Abort: nothing more is triggered.
    pub fn abort(&mut self, now: i64) -> Result<(), FleetError> {
        match self.state {
            RolloutState::Finished | RolloutState::Aborted => Err(FleetError::Invalid(format!(
                "rollout {} is {}: nothing to abort",
                self.id, self.state
            ))),
            _ => {
                self.state = RolloutState::Aborted;
                self.reason = Some("aborted".into());
                self.ended_at = Some(now);
                Ok(())
            }
        }
    }

    /// The view the API and the CLI show.
    pub fn view(&self, downloading: impl Fn(&str) -> bool) -> RolloutView {
        // One pass over the members, whatever the number of waves.
        let mut counts = vec![Counts::default(); self.wave_ends.len()];
        for m in &self.members {
            if let Some(c) = counts.get_mut(m.wave) {
                c.add(m.status);
                if m.status == MemberStatus::Triggered && downloading(&m.device) {
                    c.downloading += 1;
                }
            }
        }
        self.view_with(counts)
    }

    /// The view of a rollout whose members are not loaded, from their counts by wave and
    /// status.
    pub fn view_from(&self, rows: &[(usize, MemberStatus, u64)]) -> RolloutView {
        let mut counts = vec![Counts::default(); self.wave_ends.len()];
        for &(w, status, n) in rows {
            if let Some(c) = counts.get_mut(w) {
                c.add_n(status, n);
            }
        }
        self.view_with(counts)
    }

    fn view_with(&self, counts: Vec<Counts>) -> RolloutView {
        let mut totals = Counts::default();
        let waves = counts
            .into_iter()
            .enumerate()
            .map(|(w, c)| {
                totals.devices += c.devices;
                totals.pending += c.pending;
                totals.triggered += c.triggered;
                totals.downloading += c.downloading;
                totals.installed += c.installed;
                totals.failed += c.failed;
                WaveView {
                    index: w,
                    end: self.wave_ends[w],
                    started_at: self.wave_started.get(w).copied().flatten(),
                    finished_at: self.wave_finished.get(w).copied().flatten(),
                    counts: c,
                }
            })
            .collect();
        RolloutView {
            id: self.id,
            name: self.name.clone(),
            publish_id: self.target.publish_id.clone(),
            version: self.target.version,
            seq: self.target.seq,
            semver: self.target.semver.clone(),
            baseline: self.target.baseline,
            trigger: self.plan.trigger,
            plan: self.plan.clone(),
            state: self.state,
            wave: self.wave,
            reason: self.reason.clone(),
            created_at: self.created_at,
            start_at: self.start_at,
            ended_at: self.ended_at,
            waves,
            totals,
        }
    }
}

/// A wave as shown.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WaveView {
    /// 0-based.
    pub index: usize,
    /// Devices up to the end of this wave.
    pub end: usize,
    /// Started (Unix ms).
    pub started_at: Option<i64>,
    /// Done (Unix ms).
    pub finished_at: Option<i64>,
    /// Its devices.
    #[serde(flatten)]
    pub counts: Counts,
}

/// A rollout as the API and the CLI show it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RolloutView {
    /// Its number.
    pub id: u64,
    /// Its name.
    pub name: Option<String>,
    /// The publish-id.
    pub publish_id: String,
    /// The store version it installs.
    pub version: u64,
    /// Its manifest sequence number.
    pub seq: Option<u64>,
    /// Its semver.
    pub semver: Option<String>,
    /// The version others see meanwhile.
    pub baseline: Option<u64>,
    /// How devices are told.
    pub trigger: TriggerKind,
    /// The plan.
    pub plan: Plan,
    /// Where it is.
    pub state: RolloutState,
    /// The current wave (0-based).
    pub wave: usize,
    /// Why it halted or was aborted.
    pub reason: Option<String>,
    /// Created (Unix ms).
    pub created_at: i64,
    /// Starts or started (Unix ms).
    pub start_at: i64,
    /// Ended (Unix ms).
    pub ended_at: Option<i64>,
    /// The waves.
    pub waves: Vec<WaveView>,
    /// All devices.
    pub totals: Counts,
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn plan(waves: &[&str], max: u64) -> Plan {
        RolloutRequest {
            publish_id: "fw".into(),
            waves: Some(waves.iter().map(|w| WaveText::Text((*w).into())).collect()),
            max_concurrent: Some(max),
            device_timeout_secs: Some(10),
            ..Default::default()
        }
        .plan()
        .unwrap()
    }

    fn target() -> Target {
        Target {
            publish_id: "fw".into(),
            version: 2,
            seq: Some(2),
            semver: None,
            baseline: Some(1),
        }
    }

    fn devices(n: usize) -> HashMap<String, Device> {
        (0..n)
            .map(|i| {
                let mut d = Device::new(format!("d{i:03}"), true, 0);
                d.publish_id = Some("fw".into());
                d.running_seq = Some(1);
                (d.id.clone(), d)
            })
            .collect()
    }

    fn finish(devs: &mut HashMap<String, Device>, id: &str, ok: bool, now: i64) {
        let d = devs.get_mut(id).unwrap();
        d.target_version = Some(2);
        d.state = if ok { State::Installed } else { State::Failed };
        d.state_at = Some(now);
    }

    #[test]
    fn bad_plans_are_refused() {
        let req = |f: &dyn Fn(&mut RolloutRequest)| {
            let mut r = RolloutRequest {
                publish_id: "fw".into(),
                ..Default::default()
            };
            f(&mut r);
            r.plan()
        };
        assert!(req(&|r| r.waves = Some(vec![WaveText::Text("50%".into()), WaveText::Text("10%".into())])).is_err());
        assert!(req(&|r| r.waves = Some(vec![WaveText::Text("10".into()), WaveText::Text("10".into())])).is_err());
        assert!(req(&|r| r.waves = Some(vec![WaveText::Text("0%".into())])).is_err());
        assert!(req(&|r| r.waves = Some(vec![WaveText::Text("120%".into())])).is_err());
        assert!(req(&|r| r.waves = Some(vec![])).is_err());
        assert!(req(&|r| r.success = Some(Percent::Text("101%".into()))).is_err());
        assert!(req(&|r| r.halt_on_errors = Some(Percent::Number(-1.0))).is_err());
        assert!(req(&|r| r.trigger = Some("smoke".into())).is_err());
        assert!(req(&|r| r.topic = Some("a/+/b".into())).is_err());
        assert!(req(&|r| r.publish_id = "../x".into()).is_err());
        assert!(req(&|r| r.devices = Some(vec![])).is_err());
        let ok = req(&|r| {
            r.waves = Some(vec![
                WaveText::Text("10%".into()),
                WaveText::Number(50),
                WaveText::Text("all".into()),
            ]);
            r.success = Some(Percent::Text("90%".into()));
        })
        .unwrap();
        assert_eq!(
            ok.waves,
            vec![WaveSize::Percent(10), WaveSize::Count(50), WaveSize::Percent(100)]
        );
        assert_eq!(ok.success, 90.0);
        assert_eq!(ok.halt_on_errors, 5.0);
        assert!(Rollout::new(1, None, target(), ok, vec![], 0, None).is_err());
    }

    #[test]
    fn waves_split_the_targets_cumulatively() {
        let ids: Vec<String> = (0..20).map(|i| format!("d{i:03}")).collect();
        let r = Rollout::new(
            1,
            None,
            target(),
            plan(&["10%", "50%", "100%"], 0),
            ids.clone(),
            0,
            None,
        )
        .unwrap();
        assert_eq!(r.wave_ends, vec![2, 10, 20]);
        assert_eq!(r.members.iter().filter(|m| m.wave == 0).count(), 2);
        // Counts past the target set collapse into the last wave.
        let r = Rollout::new(
            1,
            None,
            target(),
            plan(&["5", "50", "100"], 0),
            ids[..8].to_vec(),
            0,
            None,
        )
        .unwrap();
        assert_eq!(r.wave_ends, vec![5, 8]);
        // Mixed waves that do not grow, and waves that leave devices out, are refused.
        let p = plan(&["50%", "10", "100%"], 0);
        let err = Rollout::new(1, None, target(), p, ids.clone(), 0, None).unwrap_err();
        assert!(err.to_string().contains("increase"), "{err}");
        let err = Rollout::new(1, None, target(), plan(&["10"], 0), ids, 0, None).unwrap_err();
        assert!(err.to_string().contains("take them all"), "{err}");
    }

    #[test]
    fn waves_advance_on_success_within_the_concurrency_limit() {
        let mut devs = devices(20);
        let ids: Vec<String> = {
            let mut v: Vec<_> = devs.keys().cloned().collect();
            v.sort();
            v
        };
        let mut r = Rollout::new(1, None, target(), plan(&["10%", "100%"], 3), ids, 1000, None).unwrap();
        let s = r.step(1000, |id| devs.get(id));
        assert_eq!(s.trigger.len(), 2, "wave 1 has 2 devices");
        // Nothing new while they run.
        assert!(r.step(1001, |id| devs.get(id)).trigger.is_empty());
        for i in &s.trigger {
            let id = r.members[*i].device.clone();
            finish(&mut devs, &id, true, 1002);
        }
        let s = r.step(1003, |id| devs.get(id));
        assert_eq!(r.wave, 1);
        assert_eq!(r.wave_finished[0], Some(1003));
        assert_eq!(s.trigger.len(), 3, "max_concurrent");
        for i in s.trigger {
            let id = r.members[i].device.clone();
            finish(&mut devs, &id, true, 1003);
        }
        let mut now = 1004;
        while r.state == RolloutState::Running {
            let s = r.step(now, |id| devs.get(id));
            for i in s.trigger {
                let id = r.members[i].device.clone();
                finish(&mut devs, &id, true, now);
            }
            now += 1;
            assert!(now < 2000);
        }
        assert_eq!(r.state, RolloutState::Finished);
        assert_eq!(r.counts_so_far().installed, 20);
    }

    #[test]
    fn errors_halt_before_the_next_wave_and_timeouts_fail() {
        let mut devs = devices(100);
        let ids: Vec<String> = {
            let mut v: Vec<_> = devs.keys().cloned().collect();
            v.sort();
            v
        };
        let mut r = Rollout::new(1, None, target(), plan(&["10%", "100%"], 0), ids, 0, None).unwrap();
        let s = r.step(0, |id| devs.get(id));
        assert_eq!(s.trigger.len(), 10);
        // 1 of 10 failed: 10 % > 5 %.
        let first = r.members[s.trigger[0]].device.clone();
        finish(&mut devs, &first, false, 1);
        r.step(2, |id| devs.get(id));
        assert_eq!(r.state, RolloutState::Halted);
        assert!(r.reason.as_deref().unwrap().contains("1 of 10"), "{:?}", r.reason);
        // Nothing of wave 2 was ever triggered, and a halted rollout triggers nothing.
        assert!(r
            .members
            .iter()
            .filter(|m| m.wave == 1)
            .all(|m| m.status == MemberStatus::Pending));
        assert!(r.step(3, |id| devs.get(id)).trigger.is_empty());
        assert!(r.resume(3).is_err());
        assert!(r.abort(3).is_ok());

        // A device that never answers fails at its timeout (10 s).
        let mut devs = devices(1);
        let mut r = Rollout::new(2, None, target(), plan(&["100%"], 0), vec!["d000".into()], 0, None).unwrap();
        r.plan.success = 0.0;
        r.plan.halt_on_errors = 100.0;
        r.step(0, |id| devs.get(id));
        r.step(9_999, |id| devs.get(id));
        assert_eq!(r.members[0].status, MemberStatus::Triggered);
        r.step(10_000, |id| devs.get(id));
        assert_eq!(r.members[0].status, MemberStatus::Failed);
        assert_eq!(r.state, RolloutState::Finished);
        // An old outcome (before the trigger) does not count.
        finish(&mut devs, "d000", true, -5);
    }

    #[test]
    fn devices_already_running_the_version_are_done_without_a_trigger() {
        let mut devs = devices(3);
        devs.get_mut("d001").unwrap().running_seq = Some(2);
        let ids: Vec<String> = vec!["d000".into(), "d001".into(), "d002".into()];
        let mut r = Rollout::new(1, None, target(), plan(&["100%"], 0), ids, 0, None).unwrap();
        let s = r.step(0, |id| devs.get(id));
        assert_eq!(s.trigger.len(), 2);
        assert_eq!(r.members[1].status, MemberStatus::Installed);
        assert_eq!(r.members[1].detail.as_deref(), Some("already runs it"));
    }

    #[test]
    fn pause_holds_new_triggers_and_scheduled_waits() {
        let devs = devices(4);
        let ids: Vec<String> = {
            let mut v: Vec<_> = devs.keys().cloned().collect();
            v.sort();
            v
        };
        let mut r = Rollout::new(1, None, target(), plan(&["100%"], 1), ids, 0, Some(50)).unwrap();
        assert_eq!(r.state, RolloutState::Scheduled);
        assert!(r.step(10, |id| devs.get(id)).trigger.is_empty());
        assert_eq!(r.step(50, |id| devs.get(id)).trigger.len(), 1);
        r.pause().unwrap();
        assert!(r.step(60, |id| devs.get(id)).trigger.is_empty());
        r.resume(61).unwrap();
        assert_eq!(r.state, RolloutState::Running);
    }

    #[test]
    fn older_devices_only() {
        let t = Target {
            semver: Some("1.2.0".into()),
            ..target()
        };
        let mut d = Device::new("a".into(), true, 0);
        assert!(is_older(&d, &t), "unknown counts as older");
        d.running_seq = Some(2);
        assert!(!is_older(&d, &t));
        d.running_seq = None;
        d.running_semver = Some("1.10.0".into());
        assert!(!is_older(&d, &t));
        d.running_semver = Some("v1.1.9".into());
        assert!(is_older(&d, &t));
    }
}
