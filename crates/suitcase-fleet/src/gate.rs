//! The gates of running rollouts, as the CoAP and HTTP servers read them: rebuilt by the
//! tracker when a rollout lets devices through, read per request (a lock-free flag when no
//! rollout gates anything, else one read lock and a few hash lookups).

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::RwLock;
use suitcase_store::{Allowed, Gate, Requester};

/// One publish-id's gate (serialisable: the leader of a shared fleet hands its gates to the
/// other nodes).
#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
pub(crate) struct OneGate {
    /// The newest version the devices let through see (the rollout's).
    pub(crate) through: u64,
    /// The newest version everyone else sees (`None`: nothing).
    pub(crate) others: Option<u64>,
    /// Addresses of the devices let through.
    pub(crate) addrs: HashSet<SocketAddr>,
    /// IP addresses only devices let through use (a peer from another port of such an
    /// address is one of them).
    pub(crate) ips: HashSet<IpAddr>,
    /// Their ids and HTTP identities.
    pub(crate) identities: HashSet<String>,
}

/// Every gate, by publish-id.
#[derive(Default)]
pub struct Gates {
    active: AtomicBool,
    generation: AtomicU64,
    gates: RwLock<Arc<HashMap<String, OneGate>>>,
}

impl Gates {
    /// The gates as they stand.
    pub(crate) fn current(&self) -> Arc<HashMap<String, OneGate>> {
        self.gates.read().clone()
    }

    pub(crate) fn set(&self, gates: HashMap<String, OneGate>) {
        let active = !gates.is_empty();
        *self.gates.write() = Arc::new(gates);
        self.active.store(active, Ordering::Release);
        self.generation.fetch_add(1, Ordering::AcqRel);
    }
}

impl Gate for Gates {
    fn active(&self) -> bool {
        self.active.load(Ordering::Acquire)
    }

    fn allowed(&self, publish_id: &str, who: &Requester<'_>) -> Allowed {
        if !self.active() {
            return Allowed::Newest;
        }
        let gates = self.gates.read().clone();
        let Some(g) = gates.get(publish_id) else {
            return Allowed::Newest;
        };
        let through = who.identity.is_some_and(|i| g.identities.contains(i))
            || who.addr.is_some_and(|a| {
                let a = SocketAddr::new(a.ip().to_canonical(), a.port());
                g.addrs.contains(&a) || g.ips.contains(&a.ip())
            });
        match (through, g.others) {
            (true, _) => Allowed::UpTo(g.through),
            (false, Some(b)) => Allowed::UpTo(b),
            (false, None) => Allowed::Nothing,
        }
    }

    fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn only_devices_let_through_see_the_new_version() {
        let gates = Gates::default();
        let who = |a: &str, id: Option<&'static str>| Requester {
            addr: Some(a.parse().unwrap()),
            identity: id,
        };
        assert_eq!(gates.allowed("fw", &who("127.0.0.1:1", None)), Allowed::Newest);
        let g0 = gates.generation();
        let mut g = OneGate {
            through: 4,
            others: Some(3),
            ..Default::default()
        };
        g.addrs.insert("127.0.0.2:5683".parse().unwrap());
        g.ips.insert("127.0.0.3".parse().unwrap());
        g.identities.insert("AA:BB".into());
        gates.set(HashMap::from([("fw".to_string(), g)]));
        assert!(gates.generation() > g0);
        assert_eq!(gates.allowed("fw", &who("127.0.0.2:5683", None)), Allowed::UpTo(4));
        assert_eq!(
            gates.allowed("fw", &who("[::ffff:127.0.0.2]:5683", None)),
            Allowed::UpTo(4)
        );
        assert_eq!(gates.allowed("fw", &who("127.0.0.2:9999", None)), Allowed::UpTo(3));
        assert_eq!(gates.allowed("fw", &who("127.0.0.3:9999", None)), Allowed::UpTo(4));
        assert_eq!(gates.allowed("fw", &who("10.0.0.1:1", Some("AA:BB"))), Allowed::UpTo(4));
        assert_eq!(gates.allowed("other", &who("10.0.0.1:1", None)), Allowed::Newest);
        gates.set(HashMap::from([("fw".to_string(), OneGate::default())]));
        assert_eq!(gates.allowed("fw", &who("127.0.0.2:5683", None)), Allowed::Nothing);
    }
}
