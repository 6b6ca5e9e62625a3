//! The sans-IO CoAP request handler: datagram in, datagram out. No sockets, no clock.
//!
//! Block2 is served statelessly from shared immutable buffers: any block of any resource at
//! any time, keyed by nothing but the request itself (never by the token, which RIOT leaves
//! empty).

use std::net::SocketAddr;
use std::time::Instant;

use bytes::Bytes;
use coap_lite::{CoapOption, MessageClass, MessageType, Packet, RequestType, ResponseType};

use crate::block::{decode_uint, uint_option, BlockValue};

/// CoAP content-format ids used here.
pub mod content_format {
    /// text/plain;charset=utf-8
    pub const TEXT: u16 = 0;
    /// application/link-format
    pub const LINK_FORMAT: u16 = 40;
    /// application/octet-stream
    pub const OCTET_STREAM: u16 = 42;
    /// application/cbor
    pub const CBOR: u16 = 60;
}

/// Option numbers (RFC 7252 §12.2, RFC 7959, RFC 7641 …).
mod opt {
    pub const IF_MATCH: u16 = 1;
    pub const URI_HOST: u16 = 3;
    pub const ETAG: u16 = 4;
    pub const IF_NONE_MATCH: u16 = 5;
    pub const OBSERVE: u16 = 6;
    pub const URI_PORT: u16 = 7;
    pub const URI_PATH: u16 = 11;
    pub const CONTENT_FORMAT: u16 = 12;
    pub const URI_QUERY: u16 = 15;
    pub const ACCEPT: u16 = 17;
    pub const BLOCK2: u16 = 23;
    pub const BLOCK1: u16 = 27;
    pub const SIZE2: u16 = 28;
    pub const PROXY_URI: u16 = 35;
    pub const PROXY_SCHEME: u16 = 39;
    pub const SIZE1: u16 = 60;
    pub const NO_RESPONSE: u16 = 258;
}

/// A resource ready to be served.
#[derive(Clone, Debug)]
pub struct Resource {
    /// The whole representation (shared, never copied per request).
    pub body: Bytes,
    /// Entity tag: a content hash, so it is the same for everyone and across restarts.
    pub etag: [u8; 8],
    /// Content-Format.
    pub content_format: u16,
}

/// Where the server finds its resources.
pub trait Resources {
    /// The resource at the Uri-Path `segments`, or `None` for 4.04.
    fn resolve(&self, segments: &[&str]) -> Option<Resource>;
}

/// Server settings.
#[derive(Clone, Debug)]
pub struct Config {
    /// Block size exponent used when the request carries no Block2 (4 = 256 bytes, what
    /// Zephyr's coap_client can receive).
    pub default_szx: u8,
    /// Largest block size exponent served (6 = 1024 bytes).
    pub max_szx: u8,
}

impl Default for Config {
    fn default() -> Self {
        Config { default_szx: 4, max_szx: 6 }
    }
}

/// The request handler.
pub struct Server<R> {
    config: Config,
    resources: R,
    next_mid: u16,
}

fn response_code(code: ResponseType) -> MessageClass {
    MessageClass::Response(code)
}

/// Is the option number critical (odd, RFC 7252 §5.4.1)?
fn critical(n: u16) -> bool {
    n & 1 == 1
}

impl<R: Resources> Server<R> {
    /// A server over `resources`; `mid_seed` starts the message-ID counter for NON replies.
    pub fn new(config: Config, resources: R, mid_seed: u16) -> Self {
        let config = Config {
            default_szx: config.default_szx.min(6),
            max_szx: config.max_szx.min(6),
        };
        Server { config, resources, next_mid: mid_seed }
    }

    /// The resources.
    pub fn resources(&self) -> &R {
        &self.resources
    }

    /// Handle one datagram from `peer`; returns the datagram to send back, if any.
    pub fn handle_datagram(&mut self, _now: Instant, peer: SocketAddr, datagram: &[u8]) -> Option<Vec<u8>> {
        let req = match parse(datagram) {
            Ok(p) => p,
            Err(Malformed::Reject(mid)) => {
                tracing::debug!(%peer, "malformed confirmable message, answering RST");
                return Some(reset(mid));
            }
            Err(Malformed::Drop) => {
                tracing::debug!(%peer, len = datagram.len(), "dropping an unparsable datagram");
                return None;
            }
        };
        let ty = req.header.get_type();
        match (ty, req.header.code) {
            // ACK and RST need no answer (no exchange of ours is open yet).
            (MessageType::Acknowledgement | MessageType::Reset, _) => None,
            // CoAP ping: an empty CON is answered with RST (RFC 7252 §4.3).
            (MessageType::Confirmable, MessageClass::Empty) => Some(reset(req.header.message_id)),
            (MessageType::NonConfirmable, MessageClass::Empty) => None,
            (_, MessageClass::Request(method)) => {
                let mut resp = self.respond(&req, method);
                match ty {
                    MessageType::Confirmable => {
                        resp.header.set_type(MessageType::Acknowledgement);
                        resp.header.message_id = req.header.message_id;
                    }
                    _ => {
                        if suppressed(&req, &resp) {
                            return None;
                        }
                        resp.header.set_type(MessageType::NonConfirmable);
                        resp.header.message_id = self.mid();
                    }
                }
                resp.set_token(req.get_token().to_vec());
                match resp.to_bytes() {
                    Ok(b) => Some(b),
                    Err(e) => {
                        tracing::error!(%peer, error = ?e, "could not encode a response");
                        None
                    }
                }
            }
            // A response or reserved code sent to a server: reject CON, ignore NON.
            (MessageType::Confirmable, _) => Some(reset(req.header.message_id)),
            _ => None,
        }
    }

    fn mid(&mut self) -> u16 {
        self.next_mid = self.next_mid.wrapping_add(1);
        self.next_mid
    }

    fn respond(&self, req: &Packet, method: RequestType) -> Packet {
        let mut path: Vec<&str> = Vec::new();
        let mut block2 = None;
        let mut etags: Vec<&[u8]> = Vec::new();
        let mut accept = None;
        let mut size2_requested = false;
        for (num, values) in req.options() {
            let num = *num;
            for v in values {
                match num {
                    opt::URI_PATH => match std::str::from_utf8(v) {
                        Ok(s) => path.push(s),
                        Err(_) => return error(ResponseType::BadRequest, "Uri-Path is not UTF-8"),
                    },
                    opt::BLOCK2 => match BlockValue::decode(v) {
                        Some(b) if b.szx == 7 => {
                            return error(ResponseType::BadOption, "Block2 SZX 7 (BERT) needs CoAP over TCP")
                        }
                        Some(b) => block2 = Some(b),
                        None => return error(ResponseType::BadOption, "Block2 longer than 3 bytes"),
                    },
                    opt::ETAG => etags.push(v),
                    opt::ACCEPT => accept = decode_uint(v),
                    opt::SIZE2 => size2_requested = true,
                    opt::PROXY_URI | opt::PROXY_SCHEME => {
                        return error(ResponseType::ProxyingNotSupported, "this server is no proxy")
                    }
                    opt::BLOCK1 => {
                        return error(ResponseType::BadOption, "Block1 is not supported: this server only serves downloads")
                    }
                    opt::IF_MATCH | opt::URI_HOST | opt::IF_NONE_MATCH | opt::OBSERVE | opt::URI_PORT
                    | opt::CONTENT_FORMAT | opt::URI_QUERY | opt::SIZE1 | opt::NO_RESPONSE => {}
                    n if critical(n) => {
                        return error(ResponseType::BadOption, &format!("unsupported critical option {n}"))
                    }
                    _ => {}
                }
            }
        }
        if method != RequestType::Get {
            return error(ResponseType::MethodNotAllowed, "only GET is served");
        }
        let Some(res) = self.resources.resolve(&path) else {
            return error(ResponseType::NotFound, "not found");
        };
        if let Some(a) = accept {
            if a != u32::from(res.content_format) {
                return error(ResponseType::NotAcceptable, "no representation in the Accept-ed format");
            }
        }
        let len = res.body.len();
        let mut resp = Packet::new();
        if block2.is_none_or(|b| b.num == 0) && etags.iter().any(|e| *e == res.etag) {
            resp.header.code = response_code(ResponseType::Valid);
            resp.add_option(CoapOption::ETag, res.etag.to_vec());
            return resp;
        }
        resp.header.code = response_code(ResponseType::Content);
        resp.add_option(CoapOption::ETag, res.etag.to_vec());
        resp.add_option(CoapOption::ContentFormat, uint_option(u32::from(res.content_format)));
        let block = match block2 {
            Some(b) => {
                // Honour the client's size, or go smaller; scale the number to match.
                let szx = b.szx.min(self.config.max_szx);
                let num = u64::from(b.num) << (b.szx - szx);
                if num > u64::from(crate::block::MAX_NUM) {
                    return error(ResponseType::BadOption, "Block2 number beyond 20 bits at this size");
                }
                Some(BlockValue { num: num as u32, more: false, szx })
            }
            None if len > 1 << (self.config.default_szx + 4) => {
                Some(BlockValue { num: 0, more: false, szx: self.config.default_szx })
            }
            None => None,
        };
        match block {
            None => {
                if size2_requested {
                    resp.add_option(CoapOption::Size2, uint_option(len as u32));
                }
                resp.payload = res.body.to_vec();
            }
            Some(mut b) => {
                let start = b.offset();
                if start >= len && !(start == 0 && len == 0) {
                    return error(ResponseType::BadOption, "Block2 number beyond the end of the resource");
                }
                let end = (start + b.size()).min(len);
                b.more = end < len;
                resp.add_option(CoapOption::Block2, b.encode());
                resp.add_option(CoapOption::Size2, uint_option(len as u32));
                resp.payload = res.body[start..end].to_vec();
            }
        }
        resp
    }
}

/// No-Response (RFC 7967) on a NON request: bit 2 suppresses 2.xx, bit 8 4.xx, bit 16 5.xx.
fn suppressed(req: &Packet, resp: &Packet) -> bool {
    let Some(v) = req.get_first_option(CoapOption::NoResponse) else {
        return false;
    };
    let mask = decode_uint(v).unwrap_or(0);
    let class = match resp.header.code {
        MessageClass::Response(r) => u8::from(MessageClass::Response(r)) >> 5,
        _ => 0,
    };
    match class {
        2 => mask & 2 != 0,
        4 => mask & 8 != 0,
        5 => mask & 16 != 0,
        _ => false,
    }
}

fn error(code: ResponseType, diagnostic: &str) -> Packet {
    let mut p = Packet::new();
    p.header.code = response_code(code);
    p.payload = diagnostic.as_bytes().to_vec();
    p
}

fn reset(mid: u16) -> Vec<u8> {
    let [a, b] = mid.to_be_bytes();
    // Version 1, type RST (3), TKL 0, code 0.00.
    vec![0x70, 0x00, a, b]
}

enum Malformed {
    /// A CON whose header we could read: reject with RST of this message ID.
    Reject(u16),
    /// Not even a header: silently drop.
    Drop,
}

/// Parse with the checks coap-lite leaves out (version, empty payload after the marker,
/// empty messages with content) so that every malformed message is rejected (RFC 7252 §4.2).
fn parse(d: &[u8]) -> Result<Packet, Malformed> {
    if d.len() < 4 || d[0] >> 6 != 1 {
        return Err(Malformed::Drop);
    }
    let ty = (d[0] >> 4) & 0x3;
    let mid = u16::from_be_bytes([d[2], d[3]]);
    let reject = || if ty == 0 { Malformed::Reject(mid) } else { Malformed::Drop };
    let tkl = usize::from(d[0] & 0x0f);
    if tkl > 8 || d.len() < 4 + tkl {
        return Err(reject());
    }
    if d[1] == 0 && d.len() != 4 {
        // An empty message must be exactly the 4-byte header.
        return Err(reject());
    }
    if d.last() == Some(&0xff) && payload_marker_at_end(d, tkl) {
        return Err(reject());
    }
    Packet::from_bytes(d).map_err(|_| reject())
}

/// Whether the final 0xFF byte is a payload marker with nothing after it (a format error),
/// rather than the last byte of an option value.
fn payload_marker_at_end(d: &[u8], tkl: usize) -> bool {
    let mut i = 4 + tkl;
    while i < d.len() {
        if d[i] == 0xff {
            return i == d.len() - 1;
        }
        let delta = d[i] >> 4;
        let len = usize::from(d[i] & 0x0f);
        i += 1;
        i += match delta {
            13 => 1,
            14 => 2,
            _ => 0,
        };
        let len = match len {
            13 => match d.get(i) {
                Some(b) => {
                    i += 1;
                    usize::from(*b) + 13
                }
                None => return false,
            },
            14 => match (d.get(i), d.get(i + 1)) {
                (Some(a), Some(b)) => {
                    i += 2;
                    usize::from(u16::from_be_bytes([*a, *b])) + 269
                }
                _ => return false,
            },
            l => l,
        };
        i += len;
    }
    false
}

#[cfg(test)]
mod tests;
