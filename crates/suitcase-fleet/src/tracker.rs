//! The tracker: the one task that changes fleet state. See the crate documentation.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use suitcase_coap::BlockServed;
use suitcase_store::Store;
use tokio::sync::mpsc;

use crate::db::{self, Db};
use crate::gate::{Gates, OneGate};
use crate::model::{Device, NewDevice, State};
use crate::report::Report;
use crate::rollout::{MemberStatus, Plan, Rollout, RolloutRequest, RolloutState, RolloutView, Target, TriggerKind};
use crate::{
    now_ms, BaseUrls, Command, Config, Control, Counters, FleetError, Heard, HttpServed, Reporter, SlotReader,
    TriggerJob, Triggers,
};

/// The rollouts the tracker runs.
pub(crate) struct Rollouts {
    /// In memory: every rollout not finished or aborted, and the newest of each publish-id.
    pub(crate) live: Vec<Rollout>,
    pub(crate) next_id: u64,
    pub(crate) gates: Arc<Gates>,
    pub(crate) triggers: Option<Arc<dyn Triggers>>,
    /// A shared fleet (this node's name, for the gates barrier): the gates are written to
    /// the database for the other nodes before the triggers that rely on them are sent.
    pub(crate) shared: Option<String>,
}

/// What a tracker needs besides its database (kept by a shared fleet's node to start one
/// when it takes the lease).
pub(crate) struct Parts {
    pub(crate) store: Arc<dyn Store>,
    pub(crate) config: Config,
    pub(crate) counters: Arc<Counters>,
    pub(crate) slots: Option<Arc<dyn SlotReader>>,
    pub(crate) triggers: Option<Arc<dyn Triggers>>,
    pub(crate) gates: Arc<Gates>,
}

/// A running tracker.
pub(crate) struct Started {
    pub(crate) commands: mpsc::Sender<Command>,
    pub(crate) blocks: mpsc::Sender<Vec<BlockServed>>,
    pub(crate) task: tokio::task::JoinHandle<()>,
    /// Devices and live rollouts it loaded.
    pub(crate) devices: usize,
    pub(crate) rollouts: usize,
}

/// Load the devices and live rollouts of `db` and start a tracker on them (`shared`: this
/// node's name in a shared fleet).
pub(crate) async fn start(db: Db, parts: &Parts, shared: Option<String>) -> Result<Started, FleetError> {
    let devices = db.load_all().await?;
    let live = db.load_rollouts().await?;
    let next_id = db.max_rollout_id().await? + 1;
    let (n, r) = (devices.len(), live.len());
    let (commands, commands_rx) = mpsc::channel(crate::QUEUE);
    let (blocks, blocks_rx) = mpsc::channel(crate::BLOCK_QUEUE);
    let t = Tracker::new(
        db,
        parts.store.clone(),
        parts.config.clone(),
        devices,
        parts.counters.clone(),
        parts.slots.clone(),
        commands.downgrade(),
        Rollouts {
            live,
            next_id,
            gates: parts.gates.clone(),
            triggers: parts.triggers.clone(),
            shared,
        },
    );
    Ok(Started {
        commands,
        blocks,
        task: tokio::spawn(t.run(commands_rx, blocks_rx)),
        devices: n,
        rollouts: r,
    })
}

/// Commands applied at most before the reports among them are committed together.
const GROUP_COMMIT: usize = 512;

/// Trigger tasks (sending or waiting for a permit) at most; rollouts trigger no more devices
/// while this many are on hand.
const MAX_TRIGGER_TASKS: usize = 4096;

/// Triggers being sent at most at once (more wait for a permit).
const TRIGGERS_IN_FLIGHT: usize = 256;

/// A stored file, by ETag.
#[derive(Clone, Debug)]
struct FileRef {
    publish_id: String,
    version: u64,
    seq: Option<u64>,
    semver: Option<String>,
    manifest: bool,
}

/// The store's files by ETag, rebuilt when the store's generation moves.
#[derive(Default)]
struct Files {
    generation: Option<u64>,
    map: HashMap<[u8; 8], FileRef>,
}

impl Files {
    fn refresh(&mut self, store: &dyn Store) {
        let g = store.generation();
        if self.generation == Some(g) {
            return;
        }
        self.map.clear();
        for id in store.publish_ids() {
            // Oldest first: an ETag shared by several versions names the newest.
            for v in store.versions(&id) {
                let r = FileRef {
                    publish_id: id.clone(),
                    version: v.seq,
                    seq: v.manifest.as_ref().and_then(|m| m.sequence_number),
                    semver: v.semver.as_ref().map(ToString::to_string),
                    manifest: false,
                };
                for f in &v.files {
                    self.map.insert(etag(&f.sha256.0), r.clone());
                }
                if let Some(m) = &v.manifest {
                    self.map.insert(etag(&m.file.sha256.0), FileRef { manifest: true, ..r });
                }
            }
        }
        self.generation = Some(g);
    }
}

fn etag(sha: &[u8; 32]) -> [u8; 8] {
    let mut e = [0u8; 8];
    e.copy_from_slice(&sha[..8]);
    e
}

/// IPv4-mapped IPv6 addresses (from a dual-stack socket) as IPv4.
fn canonical(a: SocketAddr) -> SocketAddr {
    SocketAddr::new(a.ip().to_canonical(), a.port())
}

/// The socket address of a registered CoAP target, when its host is an IP literal.
fn target_addr(coap: &str) -> Option<SocketAddr> {
    let t = suitcase_coap::trigger::Target::parse(coap).ok()?;
    let host = t.host.split('%').next()?;
    let ip: IpAddr = host.parse().ok()?;
    Some(canonical(SocketAddr::new(ip, t.port)))
}

/// Block events older than a report by less than this belong to the update reported on.
const LATE_EVENTS_MS: i64 = 5_000;

/// Whether `d` changed state or reported after `t` (Unix ms).
fn heard_since(d: &Device, t: i64) -> bool {
    d.state_at.unwrap_or(0) > t || d.report_at.unwrap_or(0) > t
}

/// Whether `d`'s update is over and it reported less than [`LATE_EVENTS_MS`] ago: block
/// events of that update may still be on their way.
fn just_reported(d: &Device, now: i64) -> bool {
    d.state.is_final() && d.report_at.is_some_and(|r| now.saturating_sub(r) < LATE_EVENTS_MS)
}

/// Downloads whose first block ended at most here count as starting over.
const RESTART_BYTES: u64 = 1024;

/// The blocks one peer got of one representation since the last look.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Agg {
    /// The smallest block end (a small one: the download started over).
    pub(crate) min_end: u64,
    /// The largest.
    pub(crate) max_end: u64,
    pub(crate) size: u64,
}

/// Peers and representations aggregated between two looks, at most (a flood of spoofed
/// sources cannot grow it further; the excess is counted as dropped).
const MAX_PENDING: usize = 200_000;

/// foldhash: this table is touched once per block served.
type FastMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

/// Blocks served, aggregated by peer and representation (a block costs one lookup), at
/// most [`MAX_PENDING`] of them: kept by the tracker between two looks, and by a follower
/// of a shared fleet between two hand-overs.
#[derive(Default)]
pub(crate) struct Served(FastMap<(SocketAddr, [u8; 8]), Agg>);

impl Served {
    /// Take in `batch`; what does not fit is counted in `dropped`.
    pub(crate) fn add(&mut self, batch: &[BlockServed], dropped: &std::sync::atomic::AtomicU64) {
        for b in batch {
            let key = (b.peer, b.etag);
            if let Some(a) = self.0.get_mut(&key) {
                a.min_end = a.min_end.min(b.end);
                a.max_end = a.max_end.max(b.end);
                continue;
            }
            if self.0.len() >= MAX_PENDING {
                dropped.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            self.0.insert(
                key,
                Agg {
                    min_end: b.end,
                    max_end: b.end,
                    size: b.size,
                },
            );
        }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Everything aggregated so far, leaving this empty.
    pub(crate) fn take(&mut self) -> FastMap<(SocketAddr, [u8; 8]), Agg> {
        std::mem::take(&mut self.0)
    }
}

pub(crate) struct Tracker {
    db: Db,
    store: Arc<dyn Store>,
    config: Config,
    devices: HashMap<String, Device>,
    by_addr: HashMap<SocketAddr, String>,
    by_ip: HashMap<IpAddr, Vec<String>>,
    by_http: HashMap<String, String>,
    /// Devices changed beyond their progress: written every flush interval.
    dirty: HashSet<String>,
    /// Devices whose progress or last-seen time changed: written every progress interval.
    progress: HashSet<String>,
    last_progress_write: tokio::time::Instant,
    /// Devices `downloaded`, waiting for a report, a slot change or the timeout.
    awaiting: HashSet<String>,
    files: Files,
    counters: Arc<Counters>,
    slots: Option<Arc<dyn SlotReader>>,
    me: mpsc::WeakSender<Command>,
    /// Slot reads after a download (aborted when the state leaves `downloaded`).
    probes: HashMap<String, tokio::task::AbortHandle>,
    /// Slot reads when an update starts (aborted only when the target changes).
    probes_before: HashMap<String, tokio::task::AbortHandle>,
    /// Devices by their registered CoAP address as written (trigger results name it).
    by_coap: HashMap<String, String>,
    unregistered: usize,
    /// Blocks served since the last look, by peer and representation: a block costs one
    /// lookup here; devices and states are updated once per flush interval.
    pending: Served,
    rollouts: Rollouts,
    /// Reports applied, waiting for their commit to be answered.
    report_replies: Vec<(String, tokio::sync::oneshot::Sender<Result<Device, FleetError>>)>,
    /// Rollouts with changes to write: their members (indices) changed.
    rollout_dirty: HashMap<u64, HashSet<usize>>,
    /// The gates need rebuilding (devices let through, a rollout ended).
    gates_dirty: bool,
    /// The store generation the gates were built for.
    gates_store_generation: Option<u64>,
    /// A shared fleet's gates changed since they were last written for the other nodes.
    gates_unpublished: bool,
    trigger_permits: Arc<tokio::sync::Semaphore>,
    /// Trigger tasks on hand.
    trigger_tasks: Arc<std::sync::atomic::AtomicUsize>,
    /// MQTT topics sent per rollout and wave (a template without `{device}` is one message
    /// for all the devices that share it).
    sent_topics: HashSet<(u64, usize, String)>,
}

impl Tracker {
    // The tracker's whole world, each part owned by it; a struct for them would only move
    // the list.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        db: Db,
        store: Arc<dyn Store>,
        config: Config,
        devices: Vec<Device>,
        counters: Arc<Counters>,
        slots: Option<Arc<dyn SlotReader>>,
        me: mpsc::WeakSender<Command>,
        rollouts: Rollouts,
    ) -> Self {
        let mut t = Tracker {
            db,
            store,
            config,
            devices: HashMap::new(),
            by_addr: HashMap::new(),
            by_ip: HashMap::new(),
            by_http: HashMap::new(),
            dirty: HashSet::new(),
            progress: HashSet::new(),
            last_progress_write: tokio::time::Instant::now(),
            awaiting: HashSet::new(),
            files: Files::default(),
            counters,
            slots,
            me,
            probes: HashMap::new(),
            probes_before: HashMap::new(),
            by_coap: HashMap::new(),
            unregistered: 0,
            pending: Served::default(),
            rollouts,
            report_replies: Vec::new(),
            rollout_dirty: HashMap::new(),
            gates_dirty: true,
            gates_store_generation: None,
            gates_unpublished: true,
            trigger_permits: Arc::new(tokio::sync::Semaphore::new(TRIGGERS_IN_FLIGHT)),
            trigger_tasks: Arc::new(std::sync::atomic::AtomicUsize::new(0)),
            sent_topics: HashSet::new(),
        };
        for d in devices {
            t.insert(d);
        }
        // Gates hold from the start, not from the first tick.
        t.rebuild_gates();
        t
    }

    pub(crate) async fn run(
        mut self,
        mut commands: mpsc::Receiver<Command>,
        mut blocks: mpsc::Receiver<Vec<BlockServed>>,
    ) {
        let mut tick = tokio::time::interval(self.config.flush_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                c = commands.recv() => match c {
                    Some(Command::Shutdown { reply }) => {
                        let r = self.stop().await;
                        let _ = reply.send(r);
                        return;
                    }
                    Some(c) => {
                        self.command(c).await;
                        // Group commit: the commands already queued are applied too, then
                        // the reports among them are written in one transaction and answered.
                        let mut stop = None;
                        for _ in 0..GROUP_COMMIT {
                            match commands.try_recv() {
                                Ok(Command::Shutdown { reply }) => {
                                    stop = Some(reply);
                                    break;
                                }
                                Ok(c) => self.command(c).await,
                                Err(_) => break,
                            }
                        }
                        self.answer_reports().await;
                        if let Some(reply) = stop {
                            let r = self.stop().await;
                            let _ = reply.send(r);
                            return;
                        }
                    }
                    None => break,
                },
                Some(batch) = blocks.recv() => self.blocks(&batch),
                _ = tick.tick() => {
                    self.process_pending();
                    self.expire(now_ms());
                    self.rollout_tick(now_ms()).await;
                    if let Err(e) = self.flush().await {
                        tracing::warn!(error = %e, "fleet: writing device changes failed; retrying");
                    }
                    if self.last_progress_write.elapsed() >= self.config.progress_interval {
                        if let Err(e) = self.flush_progress().await {
                            tracing::warn!(error = %e, "fleet: writing progress failed; retrying");
                        }
                    }
                }
            }
        }
        if let Err(e) = self.stop().await {
            tracing::warn!(error = %e, "fleet: the last changes could not be written");
        }
    }

    /// Apply and write everything held; stop the slot reads.
    async fn stop(&mut self) -> Result<(), FleetError> {
        for (_, p) in self.probes.drain().chain(self.probes_before.drain()) {
            p.abort();
        }
        self.process_pending();
        self.flush().await?;
        self.flush_progress().await?;
        self.write_rollouts().await
    }

    // ---- the in-memory inventory and its indexes ----

    fn insert(&mut self, d: Device) {
        let id = d.id.clone();
        if !d.registered {
            self.unregistered += 1;
        }
        if !d.state.is_final() {
            self.awaiting.insert(id.clone());
        }
        self.devices.insert(id.clone(), d);
        self.index(&id);
    }

    fn take(&mut self, id: &str) -> Option<Device> {
        self.unindex(id);
        let d = self.devices.remove(id)?;
        if !d.registered {
            self.unregistered = self.unregistered.saturating_sub(1);
        }
        self.awaiting.remove(id);
        self.dirty.remove(id);
        self.progress.remove(id);
        for p in [self.probes.remove(id), self.probes_before.remove(id)]
            .into_iter()
            .flatten()
        {
            p.abort();
        }
        Some(d)
    }

    fn keys(d: &Device) -> Vec<SocketAddr> {
        let mut keys: Vec<SocketAddr> = d.coap.as_deref().and_then(target_addr).into_iter().collect();
        if let Some(p) = d.peer.as_deref().and_then(|p| p.parse().ok()) {
            keys.push(canonical(p));
        }
        keys
    }

    fn index(&mut self, id: &str) {
        let Some(d) = self.devices.get(id) else { return };
        let keys = Self::keys(d);
        let http = d.http_id.clone();
        if let Some(c) = d.coap.clone() {
            self.by_coap.insert(c, id.to_string());
        }
        for k in keys {
            self.by_addr.insert(k, id.to_string());
            let v = self.by_ip.entry(k.ip()).or_default();
            if !v.iter().any(|x| x == id) {
                v.push(id.to_string());
            }
        }
        if let Some(h) = http {
            self.by_http.insert(h, id.to_string());
        }
    }

    fn unindex(&mut self, id: &str) {
        let Some(d) = self.devices.get(id) else { return };
        for k in Self::keys(d) {
            if self.by_addr.get(&k).is_some_and(|x| x == id) {
                self.by_addr.remove(&k);
            }
            if let Some(v) = self.by_ip.get_mut(&k.ip()) {
                v.retain(|x| x != id);
                if v.is_empty() {
                    self.by_ip.remove(&k.ip());
                }
            }
        }
        if let Some(h) = &d.http_id {
            if self.by_http.get(h).is_some_and(|x| x == id) {
                self.by_http.remove(h);
            }
        }
        if let Some(c) = &d.coap {
            if self.by_coap.get(c).is_some_and(|x| x == id) {
                self.by_coap.remove(c);
            }
        }
    }

    /// The device a peer is: its exact address, else the only device at its IP address.
    fn lookup_peer(&self, peer: SocketAddr) -> Option<String> {
        let peer = canonical(peer);
        if let Some(id) = self.by_addr.get(&peer) {
            return Some(id.clone());
        }
        match self.by_ip.get(&peer.ip()) {
            Some(v) if v.len() == 1 => Some(v[0].clone()),
            _ => None,
        }
    }

    /// Record a device nobody added, if there is room.
    fn unregistered(&mut self, id: String, publish_id: &str, now: i64) -> Option<String> {
        if self.devices.contains_key(&id) {
            return Some(id);
        }
        if self.unregistered >= self.config.max_unregistered || self.devices.len() >= self.config.max_devices {
            if self.counters.unrecorded.fetch_add(1, Ordering::Relaxed) == 0 {
                tracing::warn!(
                    max = self.config.max_unregistered,
                    "fleet: too many unregistered devices; new peers are not recorded"
                );
            }
            return None;
        }
        let mut d = Device::new(id.clone(), false, now);
        d.publish_id = Some(publish_id.to_string());
        tracing::info!(device = %id, publish_id, "fleet: recorded an unregistered device");
        self.insert(d);
        self.dirty.insert(id.clone());
        Some(id)
    }

    /// Device `id` proved who it is over DTLS from `peer`.
    fn secured(&mut self, id: String, peer: SocketAddr) {
        let now = now_ms();
        if !self.devices.contains_key(&id) {
            let Some(new) = self.unregistered(id.clone(), "", now) else {
                return;
            };
            if let Some(d) = self.devices.get_mut(&new) {
                d.publish_id = None;
            }
        }
        // Another device that was last seen at this address is not there any more.
        if let Some(other) = self.by_addr.get(&canonical(peer)).filter(|o| **o != id).cloned() {
            self.unindex(&other);
            if let Some(d) = self.devices.get_mut(&other) {
                d.peer = None;
            }
            self.index(&other);
            self.dirty.insert(other);
        }
        self.touch(&id, peer, now);
    }

    /// The device was heard from at `peer`.
    fn touch(&mut self, id: &str, peer: SocketAddr, now: i64) {
        let peer = canonical(peer).to_string();
        let changed = self
            .devices
            .get(id)
            .is_some_and(|d| d.peer.as_deref() != Some(peer.as_str()));
        if changed {
            self.unindex(id);
        }
        if let Some(d) = self.devices.get_mut(id) {
            d.last_seen = Some(now);
            d.first_seen.get_or_insert(now);
            d.peer = Some(peer);
        }
        if changed {
            self.index(id);
            self.dirty.insert(id.to_string());
            // A device a gate lets through is known there by its addresses.
            self.gates_dirty = true;
        } else {
            self.progress.insert(id.to_string());
        }
    }

    fn set_state(&mut self, id: &str, state: State, now: i64) {
        let Some(d) = self.devices.get_mut(id) else { return };
        let changed = d.state != state;
        if changed {
            d.state = state;
            d.state_at = Some(now);
            tracing::debug!(device = %id, %state, "fleet: state");
        }
        if state.is_final() {
            self.awaiting.remove(id);
        } else {
            self.awaiting.insert(id.to_string());
        }
        if state != State::Downloaded {
            if let Some(p) = self.probes.remove(id) {
                p.abort();
            }
        }
        if changed {
            self.dirty.insert(id.to_string());
        } else {
            self.progress.insert(id.to_string());
        }
    }

    fn set_target(&mut self, id: &str, f: &FileRef) {
        self.dirty.insert(id.to_string());
        if let Some(p) = self.probes_before.remove(id) {
            p.abort();
        }
        if let Some(d) = self.devices.get_mut(id) {
            d.publish_id.get_or_insert_with(|| f.publish_id.clone());
            d.target_version = Some(f.version);
            d.target_seq = f.seq;
            d.target_semver = f.semver.clone();
            d.bytes_done = 0;
            d.bytes_total = 0;
            d.reason = None;
            d.slot_before = None;
        }
    }

    // ---- what the servers saw ----

    /// Aggregate a batch of served blocks (the per-block work: one lookup).
    fn blocks(&mut self, batch: &[BlockServed]) {
        self.counters.blocks.fetch_add(batch.len() as u64, Ordering::Relaxed);
        self.pending.add(batch, &self.counters.blocks_dropped);
    }

    /// Apply the aggregated blocks: manifests first, then images.
    fn process_pending(&mut self) {
        if self.pending.is_empty() {
            return;
        }
        self.files.refresh(self.store.as_ref());
        let now = now_ms();
        let pending = self.pending.take();
        let mut items: Vec<(SocketAddr, Agg, FileRef)> = pending
            .into_iter()
            .filter_map(|((peer, etag), a)| self.files.map.get(&etag).map(|f| (peer, a, f.clone())))
            .collect();
        items.sort_by_key(|(_, _, f)| !f.manifest);
        for (peer, a, f) in items {
            let id = match self.lookup_peer(peer) {
                Some(id) => id,
                None if f.manifest && a.min_end <= RESTART_BYTES => {
                    let ip = peer.ip().to_canonical();
                    match self.unregistered(format!("coap-{ip}"), &f.publish_id, now) {
                        Some(id) => id,
                        None => continue,
                    }
                }
                None => continue,
            };
            self.touch(&id, peer, now);
            if f.manifest {
                self.manifest_fetched(&id, &f, a.min_end, now);
            } else {
                if a.min_end <= RESTART_BYTES && a.min_end < a.max_end {
                    // Started over within this interval: its first block, then the rest.
                    self.image_served(&id, &f, a.min_end, a.size, now);
                }
                self.image_served(&id, &f, a.max_end, a.size, now);
            }
        }
    }

    fn manifest_fetched(&mut self, id: &str, f: &FileRef, end: u64, now: i64) {
        let Some(d) = self.devices.get(id) else { return };
        if end > RESTART_BYTES {
            return; // a later block of a manifest fetch: its first block counted
        }
        if let (Some(run), Some(seq)) = (d.running_seq, f.seq) {
            if run >= seq && d.state.is_final() {
                return; // it runs this version or newer: a check, not an update
            }
        }
        let same = d.target_version == Some(f.version) && d.publish_id.as_deref() == Some(f.publish_id.as_str());
        if same && matches!(d.state, State::Manifest | State::Downloading | State::Downloaded) {
            return;
        }
        // Block events reach the tracker up to a batch interval late: the manifest fetch of
        // an update the device has just reported on is that update, not a new one.
        if same && just_reported(d, now) {
            return;
        }
        self.set_target(id, f);
        self.set_state(id, State::Manifest, now);
        self.read_slot_before(id, f.version);
    }

    fn image_served(&mut self, id: &str, f: &FileRef, end: u64, size: u64, now: i64) {
        let Some(d) = self.devices.get(id) else { return };
        let same = d.target_version == Some(f.version) && d.publish_id.as_deref().is_none_or(|p| p == f.publish_id);
        let restart = end <= RESTART_BYTES && end < size;
        let state = d.state;
        // Late block events of the download the device has just reported on.
        if same && just_reported(d, now) {
            return;
        }
        if !same {
            self.set_target(id, f);
        } else if state == State::Installed || (matches!(state, State::Downloaded | State::Failed) && !restart) {
            return; // a late duplicate, or a re-read of an installed image
        }
        let Some(d) = self.devices.get_mut(id) else { return };
        d.bytes_done = if d.state == State::Downloading && !restart {
            d.bytes_done.max(end)
        } else {
            end
        };
        d.bytes_total = size;
        let done = d.bytes_done >= size;
        self.set_state(id, if done { State::Downloaded } else { State::Downloading }, now);
        if done {
            self.poll_slot_after(id, f.version);
        }
    }

    fn http(&mut self, e: HttpServed) {
        self.files.refresh(self.store.as_ref());
        let now = now_ms();
        let Some(f) = self.files.map.get(&e.etag).cloned() else {
            return;
        };
        // An identity the device gives decides; only a request without one is matched by
        // its address (several devices behind one address must not be mixed up).
        let known = match &e.identity {
            Some(i) => self.by_http.get(i).cloned(),
            None => self.lookup_peer(e.peer),
        };
        let id = match (known, &e.identity) {
            (Some(id), _) => id,
            (None, Some(identity)) if e.end <= RESTART_BYTES.max(64 * 1024) => {
                let id = format!("http-{identity}");
                if crate::model::validate_id(&id).is_err() {
                    return;
                }
                let Some(id) = self.unregistered(id, &f.publish_id, now) else {
                    return;
                };
                if let Some(d) = self.devices.get_mut(&id) {
                    if d.http_id.is_none() && !self.by_http.contains_key(identity) {
                        d.http_id = Some(identity.clone());
                        self.by_http.insert(identity.clone(), id.clone());
                    }
                }
                id
            }
            (None, _) => return,
        };
        self.touch(&id, e.peer, now);
        if let (Some(v), Some(d)) = (e.running_semver, self.devices.get_mut(&id)) {
            d.running_semver = Some(v);
        }
        if f.manifest {
            self.manifest_fetched(&id, &f, 0, now);
        } else {
            self.image_served(&id, &f, e.end, e.size, now);
        }
    }

    fn notified(&mut self, target: &str, address: Option<SocketAddr>, publish_id: &str, version: u64, sent_at: i64) {
        let id = self
            .by_coap
            .get(target)
            .cloned()
            .or_else(|| address.and_then(|a| self.lookup_peer(a)));
        let Some(id) = id else { return };
        self.mark_notified(&id, publish_id, version, sent_at);
    }

    /// `id` took a trigger for `publish_id` version `version`, sent at `sent_at`.
    fn mark_notified(&mut self, id: &str, publish_id: &str, version: u64, sent_at: i64) {
        // Acknowledgements arrive after the trigger (those of a notify batch all together):
        // a device that fetched, installed or reported since it went out is further than
        // "notified".
        if self.devices.get(id).is_some_and(|d| heard_since(d, sent_at)) {
            return;
        }
        let Some(v) = self.store.version(publish_id, version) else {
            return;
        };
        // A device quicker than the acknowledgement is already further.
        if self.devices.get(id).is_some_and(|d| {
            d.target_version == Some(version) && d.publish_id.as_deref() == Some(publish_id) && !d.state.is_final()
        }) {
            return;
        }
        let id = id.to_string();
        let f = FileRef {
            publish_id: publish_id.to_string(),
            version,
            seq: v.manifest.as_ref().and_then(|m| m.sequence_number),
            semver: v.semver.as_ref().map(ToString::to_string),
            manifest: true,
        };
        self.set_target(&id, &f);
        self.set_state(&id, State::Notified, now_ms());
    }

    /// An HTTP device says which version it runs: the ESP clients' only sign of an install.
    fn check_in(&mut self, peer: Option<SocketAddr>, identity: Option<String>, publish_id: &str, running: String) {
        let id = match (&identity, peer) {
            (Some(i), _) => self.by_http.get(i).cloned(),
            (None, Some(p)) => self.lookup_peer(p),
            (None, None) => None,
        };
        let Some(id) = id else { return };
        let now = now_ms();
        let parse = |s: &str| semver::Version::parse(s.trim_start_matches(['v', 'V'])).ok();
        let Some(d) = self.devices.get_mut(&id) else { return };
        if d.publish_id.as_deref().is_some_and(|p| p != publish_id) {
            return;
        }
        d.last_seen = Some(now);
        if d.running_semver.as_deref() != Some(running.as_str()) {
            d.running_semver = Some(running.clone());
            self.dirty.insert(id.clone());
        } else {
            self.progress.insert(id.clone());
        }
        let Some(d) = self.devices.get_mut(&id) else { return };
        let reached = match (parse(&running), d.target_semver.as_deref().and_then(parse)) {
            (Some(run), Some(target)) => run >= target,
            _ => false,
        };
        if reached && d.target_version.is_some() && d.state != State::Installed {
            tracing::info!(device = %id, version = %running, "fleet: the device runs the update's version: installed");
            if d.running_semver.as_deref().and_then(parse) == d.target_semver.as_deref().and_then(parse) {
                d.running_seq = d.target_seq.or(d.running_seq);
            }
            d.reason = None;
            self.set_state(&id, State::Installed, now);
        }
    }

    /// Devices `downloaded` for longer than the install timeout fail.
    fn expire(&mut self, now: i64) {
        let limit = i64::try_from(self.config.install_timeout.as_millis()).unwrap_or(i64::MAX);
        // Quiet for the timeout: since its state changed and since it was last heard from.
        let late: Vec<(String, State)> = self
            .awaiting
            .iter()
            .filter_map(|id| {
                let d = self.devices.get(id)?;
                let since = d.state_at.unwrap_or(0).max(d.last_seen.unwrap_or(0));
                (now.saturating_sub(since) >= limit).then(|| (id.clone(), d.state))
            })
            .collect();
        for (id, was) in late {
            let reason = match was {
                State::Downloaded => "timeout".to_string(),
                other => format!("timeout ({other})"),
            };
            if let Some(d) = self.devices.get_mut(&id) {
                d.reason = Some(reason.clone());
            }
            tracing::info!(device = %id, state = %was, "fleet: nothing heard within the install timeout: failed ({reason})");
            self.set_state(&id, State::Failed, now);
        }
    }

    // ---- RIOT's slot resource ----

    fn spawn_probe(&mut self, id: &str, version: u64, before: bool) {
        let (Some(reader), Some(me)) = (self.slots.clone(), self.me.upgrade()) else {
            return;
        };
        let Some(coap) = self.devices.get(id).and_then(|d| d.coap.clone()) else {
            return;
        };
        let before_value = self.devices.get(id).and_then(|d| d.slot_before.clone());
        if !before && before_value.is_none() {
            return; // the slot it ran before is unknown: a reading would tell nothing
        }
        let (poll, timeout) = (self.config.slot_poll, self.config.install_timeout);
        let id_owned = id.to_string();
        let task = tokio::spawn(async move {
            let start = tokio::time::Instant::now();
            loop {
                if !before {
                    tokio::time::sleep(poll).await;
                }
                let value = reader.active_slot(coap.clone()).await;
                match value {
                    Some(value) if before || Some(&value) != before_value.as_ref() => {
                        let _ = me
                            .send(Command::Slot {
                                id: id_owned,
                                version,
                                before,
                                value,
                            })
                            .await;
                        return;
                    }
                    None if before => return,
                    _ => {}
                }
                if start.elapsed() >= timeout {
                    return;
                }
            }
        });
        let map = if before {
            &mut self.probes_before
        } else {
            &mut self.probes
        };
        if let Some(old) = map.insert(id.to_string(), task.abort_handle()) {
            old.abort();
        }
    }

    fn read_slot_before(&mut self, id: &str, version: u64) {
        self.spawn_probe(id, version, true);
    }

    fn poll_slot_after(&mut self, id: &str, version: u64) {
        self.spawn_probe(id, version, false);
    }

    fn slot(&mut self, id: &str, version: u64, before: bool, value: String) {
        let now = now_ms();
        let Some(d) = self.devices.get_mut(id) else { return };
        if d.target_version != Some(version) {
            return;
        }
        if before {
            d.slot_before = Some(value);
            let downloaded = d.state == State::Downloaded;
            self.probes_before.remove(id);
            self.dirty.insert(id.to_string());
            if downloaded && !self.probes.contains_key(id) {
                self.poll_slot_after(id, version);
            }
            return;
        }
        if d.state != State::Downloaded || d.slot_before.as_ref() == Some(&value) {
            return;
        }
        tracing::info!(device = %id, slot = %value, "fleet: the device runs from another slot: installed");
        d.running_seq = d.target_seq;
        d.running_semver = d.target_semver.clone();
        d.reason = None;
        self.probes.remove(id);
        self.set_state(id, State::Installed, now);
    }

    // ---- commands ----

    async fn command(&mut self, c: Command) {
        match c {
            Command::Add {
                devices,
                replace,
                reply,
            } => {
                let _ = reply.send(self.add(devices, replace).await);
            }
            Command::Remove { id, reply } => {
                let r = db::delete(&self.db, &id).await;
                if matches!(r, Ok(true)) {
                    self.take(&id);
                    tracing::info!(device = %id, "fleet: device removed");
                }
                let _ = reply.send(r);
            }
            Command::Report { from, report, reply } => {
                // What was served before the report is applied first.
                self.process_pending();
                match self.report(from, report) {
                    Ok(id) => self.report_replies.push((id, reply)),
                    Err(e) => {
                        let _ = reply.send(Err(e));
                    }
                }
            }
            Command::Heard(Heard::Notified {
                target,
                address,
                publish_id,
                version,
                sent_at,
            }) => self.notified(&target, address, &publish_id, version, sent_at),
            Command::Heard(Heard::Http(e)) => self.http(e),
            Command::Heard(Heard::Secured { id, peer }) => self.secured(id, peer),
            Command::Heard(Heard::CheckIn {
                peer,
                identity,
                publish_id,
                running_semver,
            }) => self.check_in(peer, identity, &publish_id, running_semver),
            // Handled by the loop.
            Command::Shutdown { reply } => {
                let _ = reply.send(Ok(()));
            }
            Command::CreateRollout {
                request,
                plan,
                start_at,
                urls,
                reply,
            } => {
                let r = self.create_rollout(*request, *plan, start_at, urls).await;
                let _ = reply.send(r);
            }
            Command::RolloutViews { id, reply } => {
                let devices = &self.devices;
                let downloading = |id: &str| devices.get(id).is_some_and(|d| d.state == State::Downloading);
                let views = self
                    .rollouts
                    .live
                    .iter()
                    .filter(|r| id.is_none_or(|id| r.id == id))
                    .map(|r| r.view(downloading))
                    .collect();
                let _ = reply.send(Ok(views));
            }
            Command::ControlRollout { id, action, reply } => {
                let r = self.control_rollout(id, action).await;
                let _ = reply.send(r);
            }
            Command::Triggered {
                rollout,
                device,
                result,
            } => self.triggered(rollout, &device, result),
            Command::Slot {
                id,
                version,
                before,
                value,
            } => {
                self.slot(&id, version, before, value);
                if !before {
                    if let Err(e) = self.flush().await {
                        tracing::warn!(error = %e, "fleet: writing an install failed; retrying");
                    }
                }
            }
        }
    }

    async fn add(&mut self, new: Vec<NewDevice>, replace: bool) -> Result<Vec<Device>, FleetError> {
        if let Some(taken) = new
            .iter()
            .find(|n| !replace && self.devices.get(&n.id).is_some_and(|d| d.registered))
        {
            return Err(FleetError::Exists(taken.id.clone()));
        }
        let adding = new.iter().filter(|n| !self.devices.contains_key(&n.id)).count();
        if self.devices.len() + adding > self.config.max_devices {
            return Err(FleetError::Full(format!(
                "at most {} devices in all",
                self.config.max_devices
            )));
        }
        let now = now_ms();
        let mut rows = Vec::with_capacity(new.len());
        let mut merged = Vec::new();
        for n in new {
            let mut d = self
                .devices
                .get(&n.id)
                .cloned()
                .unwrap_or_else(|| Device::new(n.id.clone(), true, now));
            // A device seen before it was added (recorded as coap-<address>) is the same
            // device: its history moves to the new id.
            if let Some(addr) = n.coap.as_deref().and_then(target_addr) {
                let seen = format!("coap-{}", addr.ip());
                if seen != n.id {
                    if let Some(s) = self.devices.get(&seen).filter(|s| !s.registered) {
                        if d.state == State::Idle && d.last_seen.is_none() {
                            d = Device {
                                id: n.id.clone(),
                                registered: true,
                                created_at: d.created_at,
                                ..s.clone()
                            };
                        }
                        merged.push(seen);
                    }
                }
            }
            d.registered = true;
            d.coap = n.coap;
            d.http_id = n.http_id;
            d.class = n.class;
            if n.publish_id.is_some() {
                d.publish_id = n.publish_id;
            }
            d.groups = n.groups;
            if n.running_seq.is_some() {
                d.running_seq = n.running_seq;
            }
            if n.running_semver.is_some() {
                d.running_semver = n.running_semver;
            }
            d.trigger = n
                .trigger
                .as_deref()
                .and_then(|t| t.parse().ok())
                .filter(|t| *t != TriggerKind::Auto);
            rows.push(d);
        }
        let mut tx_rows: Vec<&Device> = rows.iter().collect();
        // The new rows first, then the merged records' removal: a crash in between leaves
        // a `coap-<address>` record beside the device (harmless; removed by the next add).
        db::upsert_all(&self.db, &tx_rows).await?;
        tx_rows.clear();
        for m in &merged {
            if let Err(e) = db::delete(&self.db, m).await {
                tracing::warn!(device = %m, error = %e, "fleet: removing a merged record failed");
            } else {
                self.take(m);
            }
        }
        self.counters
            .rows_written
            .fetch_add(rows.len() as u64, Ordering::Relaxed);
        self.counters.transactions.fetch_add(1, Ordering::Relaxed);
        for d in &rows {
            let was_unregistered = self.devices.get(&d.id).is_some_and(|o| !o.registered);
            self.take(&d.id);
            if was_unregistered {
                tracing::info!(device = %d.id, "fleet: adopted a device seen before");
            }
            self.insert(d.clone());
        }
        tracing::info!(devices = rows.len(), replace, "fleet: devices added");
        Ok(rows)
    }

    /// Write the reports applied since the last look (one transaction) and answer them.
    async fn answer_reports(&mut self) {
        if self.report_replies.is_empty() {
            return;
        }
        let replies = std::mem::take(&mut self.report_replies);
        match self.flush().await {
            Ok(()) => {
                for (id, reply) in replies {
                    let _ = reply.send(self.devices.get(&id).cloned().ok_or(FleetError::NotFound(id)));
                }
            }
            Err(e) => {
                let msg = e.to_string();
                for (_, reply) in replies {
                    let _ = reply.send(Err(FleetError::Database(msg.clone())));
                }
            }
        }
    }

    /// Apply a report (written and answered by [`Tracker::answer_reports`]); the device's id.
    fn report(&mut self, from: Reporter, report: Report) -> Result<String, FleetError> {
        let now = now_ms();
        let id = match from {
            Reporter::Id(id) => {
                if !self.devices.contains_key(&id) {
                    return Err(FleetError::NotFound(id));
                }
                id
            }
            Reporter::Peer(peer, publish_id) => {
                let id = match self.lookup_peer(peer) {
                    Some(id) => id,
                    None => {
                        let ip = peer.ip().to_canonical();
                        self.unregistered(format!("coap-{ip}"), &publish_id, now)
                            .ok_or_else(|| FleetError::Full("too many unregistered devices".into()))?
                    }
                };
                self.touch(&id, peer, now);
                id
            }
        };
        let seq = report.sequence_number.or_else(|| {
            let uri = report.reference.as_deref()?;
            let path = uri.split_once("://").map_or(uri, |(_, rest)| rest);
            let path = path.split_once('/')?.1;
            let segments: Vec<&str> = path.split('/').collect();
            let l = suitcase_store::paths::resolve(self.store.as_ref(), &segments)?;
            l.version.manifest.as_ref()?.sequence_number
        });
        // A report about another version than the device's target (it reported before the
        // server saw its download, or a trigger's acknowledgement arrived late): that version
        // becomes the target, so the outcome is recorded against the right update.
        // Never backwards: a device reporting an older version than its target's rolled back
        // (or refused the update), which the checks below record as a failure.
        if let Some(f) = seq.and_then(|seq| self.version_with_seq(&id, seq)) {
            let d = self.devices.get(&id);
            let newer = d.is_some_and(|d| d.target_seq.is_none_or(|t| f.seq.is_some_and(|s| s > t)));
            if newer {
                self.set_target(&id, &f);
            }
        }
        let Some(d) = self.devices.get_mut(&id) else {
            return Err(FleetError::NotFound(id));
        };
        let seq = seq.or(d.target_seq);
        d.report_at = Some(now);
        d.report = serde_json::to_string(&report).ok();
        d.last_seen = Some(now);
        let state = if report.ok {
            if seq.is_some() {
                d.running_seq = seq;
            }
            d.running_semver = if seq.is_some() && seq == d.target_seq {
                d.target_semver.clone()
            } else if seq.is_some() {
                None
            } else {
                d.running_semver.take()
            };
            match (seq, d.target_seq) {
                // It runs something older than the update: it did not install it (rolled
                // back, or refused it).
                (Some(run), Some(target)) if run < target => {
                    d.reason = Some(format!("runs sequence number {run}, older than the update's {target}"));
                    State::Failed
                }
                _ => {
                    d.reason = None;
                    State::Installed
                }
            }
        } else {
            d.reason = Some(report.reason.clone().unwrap_or_else(|| "reported error".into()));
            State::Failed
        };
        tracing::info!(device = %id, ok = report.ok, sequence_number = ?seq, reason = ?report.reason, "fleet: report");
        self.set_state(&id, state, now);
        // The report itself is a change to write, whether or not the state moved.
        self.dirty.insert(id.clone());
        Ok(id)
    }

    /// The version of the device's publish-id whose manifest has sequence number `seq`.
    fn version_with_seq(&self, id: &str, seq: u64) -> Option<FileRef> {
        let publish_id = self.devices.get(id)?.publish_id.clone()?;
        let v = self
            .store
            .versions(&publish_id)
            .into_iter()
            .rev()
            .find(|v| v.manifest.as_ref().and_then(|m| m.sequence_number) == Some(seq))?;
        Some(FileRef {
            publish_id,
            version: v.seq,
            seq: Some(seq),
            semver: v.semver.as_ref().map(ToString::to_string),
            manifest: true,
        })
    }

    /// Write every changed device in one transaction (whole rows).
    async fn flush(&mut self) -> Result<(), FleetError> {
        self.write(false).await
    }

    /// Write the progress and last-seen times of the devices whose state did not change.
    async fn flush_progress(&mut self) -> Result<(), FleetError> {
        self.last_progress_write = tokio::time::Instant::now();
        self.write(true).await
    }

    /// Write the devices of `progress` (narrow) or of `dirty` (whole rows, which covers
    /// their progress too) in one transaction; they are clean once it commits.
    async fn write(&mut self, progress_only: bool) -> Result<(), FleetError> {
        let set = if progress_only { &self.progress } else { &self.dirty };
        if set.is_empty() {
            return Ok(());
        }
        let ids: Vec<String> = set.iter().cloned().collect();
        let rows: Vec<&Device> = ids.iter().filter_map(|id| self.devices.get(id)).collect();
        if progress_only {
            db::update_progress(&self.db, &rows).await?;
        } else {
            db::upsert_all(&self.db, &rows).await?;
        }
        self.counters
            .rows_written
            .fetch_add(rows.len() as u64, Ordering::Relaxed);
        self.counters.transactions.fetch_add(1, Ordering::Relaxed);
        for id in ids {
            self.progress.remove(&id);
            self.dirty.remove(&id);
        }
        Ok(())
    }
}

// ---- rollouts ----

impl Tracker {
    /// Advance every rollout, write what changed, then send the triggers it asked for (a
    /// device is recorded `triggered` before its trigger leaves: a restart never sends it
    /// twice), and rebuild the gates when devices were let through.
    async fn rollout_tick(&mut self, now: i64) {
        if self.gates_store_generation != Some(self.store.generation()) {
            self.gates_dirty = true;
        }
        let mut to_send: Vec<(u64, Vec<usize>)> = Vec::new();
        let devices = &self.devices;
        let mut budget = MAX_TRIGGER_TASKS.saturating_sub(self.trigger_tasks.load(Ordering::Relaxed));
        for r in &mut self.rollouts.live {
            let sends = matches!(r.plan.trigger, TriggerKind::Auto) || r.plan.trigger.sends();
            let step = r.step_within(now, if sends { budget } else { usize::MAX }, |id| devices.get(id));
            if sends {
                budget = budget.saturating_sub(step.trigger.len());
            }
            if step.changed.is_empty() && !step.rollout_changed {
                continue;
            }
            self.rollout_dirty.entry(r.id).or_default().extend(step.changed);
            self.gates_dirty = true;
            if !step.trigger.is_empty() {
                to_send.push((r.id, step.trigger));
            }
        }
        if let Err(e) = self.write_rollouts().await {
            // Not recorded, so not sent: back to pending, tried again at the next tick.
            tracing::warn!(error = %e, "fleet: writing rollout progress failed; triggers held back");
            self.hold_back(to_send);
            return;
        }
        self.forget_ended();
        if self.gates_dirty {
            self.rebuild_gates();
        }
        // The other nodes of a shared fleet learn the gates before the devices are told;
        // when they cannot, nobody is told: back to pending, tried at the next tick.
        if !self.publish_gates().await {
            self.hold_back(to_send);
            return;
        }
        for (id, idxs) in to_send {
            self.send_triggers(id, idxs);
        }
    }

    /// Triggers that were not sent: their devices back to pending (to be written again:
    /// some rollouts may have been written as triggered), tried at the next tick.
    fn hold_back(&mut self, to_send: Vec<(u64, Vec<usize>)>) {
        for (id, idxs) in to_send {
            if let Some(r) = self.rollouts.live.iter_mut().find(|r| r.id == id) {
                for &i in &idxs {
                    if let Some(m) = r.members.get_mut(i) {
                        m.status = MemberStatus::Pending;
                        m.triggered_at = None;
                    }
                }
                self.rollout_dirty.entry(id).or_default().extend(idxs);
            }
        }
    }

    /// A shared fleet: write the gates for the other nodes when they changed (a failure is
    /// retried at the next tick).
    async fn publish_gates(&mut self) -> bool {
        let Some(me) = &self.rollouts.shared else { return true };
        if !self.gates_unpublished {
            return true;
        }
        let r = match crate::cluster::save_gates(&self.db, &self.rollouts.gates.current()).await {
            Ok(v) => crate::cluster::await_gates(&self.db, v, me).await,
            Err(e) => Err(e),
        };
        match r {
            Ok(all) => {
                self.gates_unpublished = false;
                if !all {
                    tracing::warn!("fleet: not every node applied the new gates within 1 s; triggering anyway");
                }
                true
            }
            Err(e) => {
                tracing::warn!(error = %e, "fleet: writing the gates for the other nodes failed; triggers held back");
                false
            }
        }
    }

    /// Write the rollouts' changes (each in one transaction); what failed stays to write.
    async fn write_rollouts(&mut self) -> Result<(), FleetError> {
        let dirty = std::mem::take(&mut self.rollout_dirty);
        let mut result = Ok(());
        for (id, idxs) in dirty {
            let Some(r) = self.rollouts.live.iter().find(|r| r.id == id) else {
                continue;
            };
            let mut v: Vec<usize> = idxs.iter().copied().collect();
            v.sort_unstable();
            match db::save_rollout(&self.db, r, Some(&v)).await {
                Ok(rows) => {
                    self.counters.rows_written.fetch_add(rows, Ordering::Relaxed);
                    self.counters.transactions.fetch_add(1, Ordering::Relaxed);
                }
                Err(e) => {
                    self.rollout_dirty.entry(id).or_default().extend(idxs);
                    result = Err(e);
                }
            }
        }
        result
    }

    /// The newest rollout of each publish-id (the one that governs it).
    fn newest_rollouts(&self) -> HashMap<&str, &Rollout> {
        let mut newest: HashMap<&str, &Rollout> = HashMap::new();
        for r in &self.rollouts.live {
            let e = newest.entry(r.target.publish_id.as_str()).or_insert(r);
            if r.id > e.id {
                *e = r;
            }
        }
        newest
    }

    /// Ended rollouts that are not the newest of their publish-id leave memory (once written).
    fn forget_ended(&mut self) {
        let newest: HashMap<&str, u64> = self.newest_rollouts().into_iter().map(|(p, r)| (p, r.id)).collect();
        let keep: HashSet<u64> = self
            .rollouts
            .live
            .iter()
            .filter(|r| {
                let over = matches!(r.state, RolloutState::Finished | RolloutState::Aborted)
                    || (r.state == RolloutState::Halted
                        && !r.members.iter().any(|m| m.status == MemberStatus::Triggered));
                !over
                    || newest.get(r.target.publish_id.as_str()) == Some(&r.id)
                    || self.rollout_dirty.contains_key(&r.id)
            })
            .map(|r| r.id)
            .collect();
        if keep.len() != self.rollouts.live.len() {
            self.rollouts.live.retain(|r| keep.contains(&r.id));
            self.sent_topics.retain(|(id, _, _)| keep.contains(id));
        }
    }

    fn fail_member(&mut self, rollout: u64, i: usize, detail: String) {
        let Some(r) = self.rollouts.live.iter_mut().find(|r| r.id == rollout) else {
            return;
        };
        let Some(m) = r.members.get_mut(i) else { return };
        if m.status != MemberStatus::Triggered {
            return;
        }
        tracing::info!(rollout, device = %m.device, %detail, "rollout: device failed");
        m.status = MemberStatus::Failed;
        m.done_at = Some(now_ms());
        m.detail = Some(detail);
        self.rollout_dirty.entry(rollout).or_default().insert(i);
    }

    /// Send the triggers of `idxs` (members of rollout `id`, already `triggered`); devices
    /// that pull (Observe, HTTP) were let through the gate and need nothing sent.
    fn send_triggers(&mut self, id: u64, idxs: Vec<usize>) {
        let Some(r) = self.rollouts.live.iter().find(|r| r.id == id) else {
            return;
        };
        let version = self.store.version(&r.target.publish_id, r.target.version);
        let manifest_url = version
            .as_deref()
            .and_then(|v| suitcase_store::paths::manifest_path(v, false))
            .and_then(|p| r.coap_base.as_ref().map(|b| format!("{b}/{p}")));
        let firmware_url = version.as_deref().and_then(|v| {
            let f = v.files.first()?;
            let b = r.http_base.as_ref()?;
            Some(format!(
                "{b}/files/{}",
                suitcase_store::paths::version_file_path(&v.publish_id, v.seq, &f.name)
            ))
        });
        let (plan, target) = (r.plan.clone(), r.target.clone());
        let file = FileRef {
            publish_id: target.publish_id.clone(),
            version: target.version,
            seq: target.seq,
            semver: target.semver.clone(),
            manifest: true,
        };
        let members: Vec<(usize, String)> = idxs
            .iter()
            .filter_map(|&i| r.members.get(i).map(|m| (i, m.device.clone())))
            .collect();
        // The devices' update in progress is this rollout's from now on; devices that pull
        // are "notified" (let through) at once, the others when they acknowledge.
        let now = now_ms();
        for (_, device) in &members {
            let Some(d) = self.devices.get(device) else { continue };
            let pulls = !device_trigger(plan.trigger, d).sends();
            if d.target_version != Some(file.version) || d.publish_id.as_deref() != Some(file.publish_id.as_str()) {
                self.set_target(device, &file);
            }
            if pulls {
                self.set_state(device, State::Notified, now);
            } else if self.devices.get(device).is_some_and(|d| d.state.is_final()) {
                // Its last update's outcome is not this one's.
                self.set_state(device, State::Idle, now);
            }
        }
        let Some(r) = self.rollouts.live.iter().find(|r| r.id == id) else {
            return;
        };
        let mut jobs = Vec::new();
        let mut failures = Vec::new();
        for (i, _) in members {
            let Some(m) = r.members.get(i) else { continue };
            let Some(d) = self.devices.get(&m.device) else {
                failures.push((i, "device removed".to_string()));
                continue;
            };
            let kind = device_trigger(plan.trigger, d);
            if !kind.sends() {
                tracing::debug!(rollout = id, device = %d.id, trigger = kind.as_str(), "rollout: let through the gate");
                continue;
            }
            let url = if kind == TriggerKind::Mqtt && d.coap.is_none() && d.http_id.is_some() {
                firmware_url.clone()
            } else {
                manifest_url.clone()
            };
            let Some(url) = url else {
                failures.push((i, "trigger: no URL (version removed, or no base URL)".to_string()));
                continue;
            };
            if kind == TriggerKind::Coap && d.coap.is_none() {
                failures.push((i, "trigger: the device has no CoAP address".to_string()));
                continue;
            }
            let topic = plan.topic.replace("{device}", &d.id).replace(
                "{group}",
                plan.group
                    .as_deref()
                    .or(d.groups.first().map(String::as_str))
                    .unwrap_or("none"),
            );
            if kind == TriggerKind::Mqtt
                && !plan.topic.contains("{device}")
                && !self.sent_topics.insert((id, m.wave, topic.clone()))
            {
                continue; // this wave's message on that topic is out already
            }
            jobs.push(job(id, kind, d, topic, &target, url));
        }
        for (i, detail) in failures {
            self.fail_member(id, i, detail);
        }
        let Some(triggers) = self.rollouts.triggers.clone() else {
            return;
        };
        if self.me.upgrade().is_none() {
            return; // the fleet is gone: nobody would take the results
        }
        for j in jobs {
            let (triggers, me, permits) = (triggers.clone(), self.me.clone(), self.trigger_permits.clone());
            let tasks = self.trigger_tasks.clone();
            tasks.fetch_add(1, Ordering::Relaxed);
            tokio::spawn(async move {
                if let Ok(_permit) = permits.acquire_owned().await {
                    let (rollout, device) = (j.rollout, j.device.clone());
                    let result = triggers.send(j).await;
                    if let Some(me) = me.upgrade() {
                        let _ = me
                            .send(Command::Triggered {
                                rollout,
                                device,
                                result,
                            })
                            .await;
                    }
                }
                tasks.fetch_sub(1, Ordering::Relaxed);
            });
        }
    }

    /// A trigger's result.
    fn triggered(&mut self, rollout: u64, device: &str, result: Result<String, String>) {
        let Some(r) = self.rollouts.live.iter_mut().find(|r| r.id == rollout) else {
            return;
        };
        let Some(&i) = r.index.get(device) else { return };
        let (publish_id, version) = (r.target.publish_id.clone(), r.target.version);
        let since = r.members.get(i).and_then(|m| m.triggered_at).unwrap_or(0);
        match result {
            Ok(detail) => {
                if let Some(m) = r.members.get_mut(i) {
                    m.detail = Some(detail);
                }
                self.rollout_dirty.entry(rollout).or_default().insert(i);
                if self.devices.contains_key(device) {
                    self.mark_notified(device, &publish_id, version, since);
                }
            }
            Err(e) => {
                // A trigger whose answer was lost, to a device that went on all the same: its
                // outcome will tell.
                if !self.devices.get(device).is_some_and(|d| heard_since(d, since)) {
                    let reason = format!("trigger: {e}");
                    if let Some(d) = self.devices.get_mut(device) {
                        d.reason = Some(reason.clone());
                    }
                    self.set_state(device, State::Failed, now_ms());
                    self.fail_member(rollout, i, reason);
                }
            }
        }
    }

    /// Who each publish-id's governing rollout lets through. Once a publish-id has had a
    /// rollout, its newest rollout governs what pull devices see through the aliases: the
    /// devices it let through see its version; everyone else (other devices, unknown peers)
    /// the version before it (nothing if there is none), or its version once it finished
    /// for all the publish-id's devices. Versions published after it wait for a rollout of
    /// their own.
    fn rebuild_gates(&mut self) {
        self.gates_dirty = false;
        self.gates_store_generation = Some(self.store.generation());
        let mut gates = HashMap::new();
        for (publish_id, r) in self.newest_rollouts() {
            if self.store.version(publish_id, r.target.version).is_none() {
                continue; // its version was removed: the newest again
            }
            let everyone = r.plan.group.is_none() && r.plan.class.is_none() && r.plan.devices.is_none();
            let others = if r.state == RolloutState::Finished && everyone {
                Some(r.target.version)
            } else {
                self.store
                    .versions(publish_id)
                    .iter()
                    .rev()
                    .find(|v| v.seq < r.target.version && r.target.baseline.is_some_and(|b| v.seq <= b))
                    .map(|v| v.seq)
            };
            let mut g = OneGate {
                through: r.target.version,
                others,
                ..Default::default()
            };
            let through: HashSet<&str> = r.let_through().map(|m| m.device.as_str()).collect();
            let mut ips = HashSet::new();
            for id in &through {
                let Some(d) = self.devices.get(*id) else { continue };
                for k in Self::keys(d) {
                    g.addrs.insert(k);
                    ips.insert(k.ip());
                }
                g.identities.insert((*id).to_string());
                if let Some(h) = &d.http_id {
                    g.identities.insert(h.clone());
                }
            }
            // An address every device of which is let through lets any of its ports through.
            for ip in ips {
                if self
                    .by_ip
                    .get(&ip)
                    .is_some_and(|v| v.iter().all(|x| through.contains(x.as_str())))
                {
                    g.ips.insert(ip);
                }
            }
            gates.insert(publish_id.to_string(), g);
        }
        tracing::debug!(gates = gates.len(), "fleet: rollout gates rebuilt");
        self.rollouts.gates.set(gates);
        self.gates_unpublished = true;
    }

    async fn create_rollout(
        &mut self,
        request: RolloutRequest,
        plan: Plan,
        start_at: Option<i64>,
        urls: BaseUrls,
    ) -> Result<RolloutView, FleetError> {
        let publish_id = request.publish_id.trim().to_string();
        let v = suitcase_store::paths::find_version(self.store.as_ref(), &publish_id, request.version.as_deref())
            .map_err(|e| FleetError::Invalid(e.to_string()))?;
        if let Some(busy) = self.rollouts.live.iter().find(|r| {
            r.target.publish_id == publish_id
                && matches!(
                    r.state,
                    RolloutState::Scheduled | RolloutState::Running | RolloutState::Paused
                )
        }) {
            return Err(FleetError::Invalid(format!(
                "rollout {} of {publish_id:?} is {}: abort it before creating another",
                busy.id, busy.state
            )));
        }
        if let Some(list) = &plan.devices {
            if let Some(missing) = list.iter().find(|d| !self.devices.contains_key(*d)) {
                return Err(FleetError::Invalid(format!("no device {missing:?}")));
            }
            if let Some(other) = list
                .iter()
                .filter_map(|d| self.devices.get(d))
                .find(|d| d.publish_id.as_deref().is_some_and(|p| p != publish_id))
            {
                return Err(FleetError::Invalid(format!(
                    "device {:?} follows {:?}, not {publish_id:?}",
                    other.id,
                    other.publish_id.as_deref().unwrap_or("")
                )));
            }
        }
        if plan.trigger == TriggerKind::Mqtt
            && !plan.topic.contains("{device}")
            && (plan.waves.len() > 1 || plan.max_concurrent > 0)
        {
            return Err(FleetError::Invalid(format!(
                "topic {:?} reaches every device subscribed to it at once: waves and --max-concurrent need \
                 a topic with {{device}}",
                plan.topic
            )));
        }
        if plan.trigger.sends() {
            match &self.rollouts.triggers {
                None => {
                    return Err(FleetError::Invalid(format!(
                        "trigger {}: this server sends no triggers",
                        plan.trigger.as_str()
                    )))
                }
                Some(t) => t
                    .supports(plan.trigger)
                    .map_err(|e| FleetError::Invalid(format!("trigger {}: {e}", plan.trigger.as_str())))?,
            }
        }
        if matches!(plan.trigger, TriggerKind::Coap | TriggerKind::Auto | TriggerKind::Mqtt) && urls.coap.is_none() {
            return Err(FleetError::Invalid("no CoAP URL of this server to send devices".into()));
        }
        let target = Target {
            publish_id: publish_id.clone(),
            version: v.seq,
            seq: v.manifest.as_ref().and_then(|m| m.sequence_number),
            semver: v.semver.as_ref().map(ToString::to_string),
            baseline: self
                .store
                .versions(&publish_id)
                .iter()
                .rev()
                .find(|x| x.seq < v.seq)
                .map(|x| x.seq),
        };
        let members = crate::rollout::select(&plan, &publish_id, &target, self.devices.values());
        if members.len() > crate::rollout::MAX_TARGETS {
            return Err(FleetError::Invalid(format!(
                "{} devices: at most {} per rollout",
                members.len(),
                crate::rollout::MAX_TARGETS
            )));
        }
        let name = request
            .name
            .as_deref()
            .map(str::trim)
            .filter(|n| !n.is_empty())
            .map(|n| n.chars().take(100).collect());
        let now = now_ms();
        let mut r = Rollout::new(self.rollouts.next_id, name, target, plan, members, now, start_at)?;
        r.coap_base = urls.coap;
        r.http_base = urls.http;
        db::save_rollout(&self.db, &r, None).await?;
        self.rollouts.next_id += 1;
        tracing::info!(
            rollout = r.id,
            publish_id = %r.target.publish_id,
            version = r.target.version,
            devices = r.members.len(),
            waves = r.wave_ends.len(),
            state = %r.state,
            "rollout created"
        );
        let id = r.id;
        self.rollouts.live.push(r);
        self.gates_dirty = true;
        self.rollout_tick(now).await;
        self.live_view(id).ok_or(FleetError::NoRollout(id))
    }

    fn live_view(&self, id: u64) -> Option<RolloutView> {
        let devices = &self.devices;
        self.rollouts
            .live
            .iter()
            .find(|r| r.id == id)
            .map(|r| r.view(|d| devices.get(d).is_some_and(|d| d.state == State::Downloading)))
    }

    async fn control_rollout(&mut self, id: u64, action: Control) -> Result<RolloutView, FleetError> {
        let now = now_ms();
        let Some(r) = self.rollouts.live.iter_mut().find(|r| r.id == id) else {
            return match self.db.get_rollout(id).await? {
                Some(r) => Err(FleetError::Invalid(format!("rollout {id} is {}", r.state))),
                None => Err(FleetError::NoRollout(id)),
            };
        };
        match action {
            Control::Pause => r.pause()?,
            Control::Resume => r.resume(now)?,
            Control::Abort => r.abort(now)?,
        }
        tracing::info!(rollout = id, state = %r.state, "rollout {:?}", action);
        self.rollout_dirty.entry(id).or_default();
        self.gates_dirty = true;
        self.write_rollouts().await?;
        self.rollout_tick(now).await;
        self.live_view(id).ok_or(FleetError::NoRollout(id))
    }
}

/// How a rollout with trigger `plan` tells device `d`: the rollout's choice, or with `auto`
/// the device's own, else CoAP for a device with a CoAP address, else it pulls.
fn device_trigger(plan: TriggerKind, d: &Device) -> TriggerKind {
    match (plan, d.trigger) {
        (TriggerKind::Auto, Some(t)) => t,
        (TriggerKind::Auto, None) if d.coap.is_some() => TriggerKind::Coap,
        (TriggerKind::Auto, None) => TriggerKind::Observe,
        (k, _) => k,
    }
}

fn job(rollout: u64, kind: TriggerKind, d: &Device, topic: String, target: &Target, url: String) -> TriggerJob {
    TriggerJob {
        rollout,
        kind,
        device: d.id.clone(),
        coap: d.coap.clone(),
        topic,
        publish_id: target.publish_id.clone(),
        version: target.version,
        seq: target.seq,
        semver: target.semver.clone(),
        url,
    }
}
