//! A simulated device for the end-to-end tests: answers CoAP triggers, downloads the manifest
//! and the image it names block-wise (coap-lite on a blocking socket), checks nothing beyond
//! the manifest decoding, and reports over CoAP.

use std::collections::HashSet;
use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use coap_lite::{CoapOption, MessageClass, MessageType, Packet, RequestType, ResponseType};
use suitcase_suit::manifest::{param, ParamValue};

/// What a simulated device does with a trigger.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Behaviour {
    /// Download, then report success.
    Install,
    /// Download, then report failure.
    Fail,
    /// Accept the trigger, then wait for `go` before downloading (a slow device).
    Slow,
}

#[derive(Clone, Debug)]
pub struct Event {
    pub what: &'static str,
    pub at: Instant,
}

/// A device on its own loopback address: answers CoAP triggers on its socket, downloads the
/// manifest and the image it names block-wise from the same socket, and reports.
pub struct SimDevice {
    pub id: String,
    pub addr: SocketAddr,
    events: Arc<Mutex<Vec<Event>>>,
    /// Set to let a `Slow` device download.
    pub go: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
}

impl Drop for SimDevice {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// A device's CoAP client side.
pub struct Link {
    pub sock: UdpSocket,
    pub mid: u16,
    /// Pause after each block (a slow link).
    pub pause: Duration,
}

impl Link {
    pub fn exchange(&mut self, server: SocketAddr, mut p: Packet) -> Option<Packet> {
        self.mid = self.mid.wrapping_add(1);
        p.header.message_id = self.mid;
        p.header.set_type(MessageType::Confirmable);
        p.set_token(self.mid.to_be_bytes().to_vec());
        let bytes = p.to_bytes().ok()?;
        let mut buf = [0u8; 1500];
        for _ in 0..6 {
            self.sock.send_to(&bytes, server).ok()?;
            let deadline = Instant::now() + Duration::from_millis(400);
            while Instant::now() < deadline {
                let Ok((n, _)) = self.sock.recv_from(&mut buf) else {
                    break;
                };
                let Ok(r) = Packet::from_bytes(&buf[..n]) else { continue };
                if r.header.message_id == self.mid && matches!(r.header.code, MessageClass::Response(_)) {
                    return Some(r);
                }
            }
        }
        None
    }

    pub fn request(code: RequestType, path: &str) -> Packet {
        let mut p = Packet::new();
        p.header.code = MessageClass::Request(code);
        for s in path.split('/').filter(|s| !s.is_empty()) {
            p.add_option(CoapOption::UriPath, s.as_bytes().to_vec());
        }
        p
    }

    /// GET `path` block-wise (1024-byte blocks).
    pub fn get(&mut self, server: SocketAddr, path: &str) -> Option<Vec<u8>> {
        self.fetch(server, path)?.ok()
    }

    /// GET `path` block-wise (1024-byte blocks): the content, or the code of a reply other
    /// than 2.05; `None` when the server does not answer.
    pub fn fetch(&mut self, server: SocketAddr, path: &str) -> Option<Result<Vec<u8>, ResponseType>> {
        let mut out = Vec::new();
        for num in 0u32..10_000 {
            let mut p = Self::request(RequestType::Get, path);
            let v = (num << 4) | 6;
            let b: Vec<u8> = v.to_be_bytes().iter().copied().skip_while(|x| *x == 0).collect();
            p.add_option(CoapOption::Block2, if b.is_empty() { vec![0] } else { b });
            let r = self.exchange(server, p)?;
            match r.header.code {
                MessageClass::Response(ResponseType::Content) => {}
                MessageClass::Response(code) => return Some(Err(code)),
                _ => return None,
            }
            out.extend_from_slice(&r.payload);
            if !self.pause.is_zero() {
                std::thread::sleep(self.pause);
            }
            let more = r
                .get_first_option(CoapOption::Block2)
                .and_then(|b| b.last().copied())
                .is_some_and(|last| last & 0x08 != 0);
            if !more {
                return Some(Ok(out));
            }
        }
        None
    }
}

/// `coap://host:port/path` → (address, path).
pub fn split_url(url: &str) -> Option<(SocketAddr, String)> {
    let rest = url.strip_prefix("coap://")?;
    let (authority, path) = rest.split_once('/')?;
    Some((authority.parse().ok()?, path.to_string()))
}

/// Fetch the manifest at `url`, the image its first component names, and report.
pub fn update(link: &mut Link, url: &str, publish_id: &str, ok: bool) -> Option<u64> {
    let (server, path) = split_url(url)?;
    let manifest = link.get(server, &path)?;
    let envelope = suitcase_suit::Envelope::decode(&manifest).ok()?;
    let seq = envelope.manifest().sequence_number;
    let uri = envelope
        .manifest()
        .component_parameters()
        .into_iter()
        .find_map(|(_, p)| match p.get(param::URI) {
            Some(ParamValue::Text(u)) => Some(u.clone()),
            _ => None,
        })?;
    let (image_server, image_path) = split_url(&uri)?;
    assert_eq!(image_server.port(), server.port());
    link.get(server, &image_path)?;
    let report = if ok {
        format!(r#"{{"seq": {seq}, "result": "ok"}}"#)
    } else {
        format!(r#"{{"seq": {seq}, "result": "error", "reason": "simulated failure"}}"#)
    };
    let mut p = Link::request(RequestType::Post, &format!("{publish_id}/report"));
    p.add_option(CoapOption::ContentFormat, vec![50]);
    p.payload = report.into_bytes();
    let r = link.exchange(server, p)?;
    assert_eq!(r.header.code, MessageClass::Response(ResponseType::Changed), "report");
    Some(seq)
}

impl SimDevice {
    pub fn start(id: &str, ip: &str, publish_id: &str, behaviour: Behaviour) -> SimDevice {
        Self::start_with(id, ip, publish_id, behaviour, Duration::ZERO)
    }

    /// [`SimDevice::start`], pausing `pause` after every block it downloads.
    pub fn start_with(id: &str, ip: &str, publish_id: &str, behaviour: Behaviour, pause: Duration) -> SimDevice {
        let sock = UdpSocket::bind((ip, 0)).unwrap();
        sock.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
        let addr = sock.local_addr().unwrap();
        let events = Arc::new(Mutex::new(Vec::new()));
        let go = Arc::new(AtomicBool::new(behaviour != Behaviour::Slow));
        let stop = Arc::new(AtomicBool::new(false));
        let (ev, g, st, pid) = (events.clone(), go.clone(), stop.clone(), publish_id.to_string());
        std::thread::spawn(move || {
            let mut link = Link { sock, mid: 1000, pause };
            let mut seen = HashSet::new();
            let mut buf = [0u8; 1500];
            while !st.load(Ordering::Relaxed) {
                let Ok((n, peer)) = link.sock.recv_from(&mut buf) else {
                    continue;
                };
                let Ok(req) = Packet::from_bytes(&buf[..n]) else {
                    continue;
                };
                if req.header.code != MessageClass::Request(RequestType::Post) {
                    continue;
                }
                let mut ack = Packet::new();
                ack.header.set_type(MessageType::Acknowledgement);
                ack.header.message_id = req.header.message_id;
                ack.set_token(req.get_token().to_vec());
                ack.header.code = MessageClass::Response(ResponseType::Changed);
                let _ = link.sock.send_to(&ack.to_bytes().unwrap(), peer);
                if !seen.insert(req.header.message_id) {
                    continue; // a retransmission
                }
                let url = String::from_utf8_lossy(&req.payload).trim_end_matches('\0').to_string();
                ev.lock().unwrap().push(Event {
                    what: "trigger",
                    at: Instant::now(),
                });
                while !g.load(Ordering::Relaxed) && !st.load(Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_millis(20));
                }
                if st.load(Ordering::Relaxed) {
                    return;
                }
                let ok = behaviour != Behaviour::Fail;
                let what = match update(&mut link, &url, &pid, ok) {
                    Some(_) if ok => "installed",
                    Some(_) => "failed",
                    None => "broken",
                };
                ev.lock().unwrap().push(Event {
                    what,
                    at: Instant::now(),
                });
            }
        });
        SimDevice {
            id: id.to_string(),
            addr,
            events,
            go,
            stop,
        }
    }

    pub fn events(&self) -> Vec<Event> {
        self.events.lock().unwrap().clone()
    }

    pub fn triggers(&self) -> usize {
        self.events().iter().filter(|e| e.what == "trigger").count()
    }
}

/// Acknowledge `msg` from `peer` if it is confirmable (an Observe notification), as a
/// client must or the server retransmits it and then drops the observation.
pub fn ack_if_confirmable(sock: &UdpSocket, msg: &Packet, peer: SocketAddr) {
    if msg.header.get_type() == MessageType::Confirmable {
        let mut ack = Packet::new();
        ack.header.set_type(MessageType::Acknowledgement);
        ack.header.message_id = msg.header.message_id;
        if let Ok(bytes) = ack.to_bytes() {
            let _ = sock.send_to(&bytes, peer);
        }
    }
}
