//! Response encoding straight into a reusable buffer: header, token, options in order,
//! payload. Payloads are slices of shared `Bytes`, so nothing is copied but into the
//! datagram itself.

use bytes::Bytes;

use crate::block::{uint_option, BlockValue};

/// Message types (RFC 7252 §3).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MsgType {
    /// Confirmable.
    Con = 0,
    /// Non-confirmable.
    Non = 1,
    /// Acknowledgement.
    Ack = 2,
    /// Reset.
    Rst = 3,
}

/// A response code `class.detail`, as the single code byte.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Code(pub u8);

impl Code {
    /// 2.04 Changed.
    pub const CHANGED: Code = Code(coap_numbers::code::CHANGED);
    /// 4.03 Forbidden.
    pub const FORBIDDEN: Code = Code(coap_numbers::code::FORBIDDEN);
    /// 2.05 Content.
    pub const CONTENT: Code = Code(coap_numbers::code::CONTENT);
    /// 2.03 Valid.
    pub const VALID: Code = Code(coap_numbers::code::VALID);
    /// 4.00 Bad Request.
    pub const BAD_REQUEST: Code = Code(coap_numbers::code::BAD_REQUEST);
    /// 4.01 Unauthorized (with Echo: prove your address, RFC 9175).
    pub const UNAUTHORIZED: Code = Code(coap_numbers::code::UNAUTHORIZED);
    /// 4.02 Bad Option.
    pub const BAD_OPTION: Code = Code(coap_numbers::code::BAD_OPTION);
    /// 4.04 Not Found.
    pub const NOT_FOUND: Code = Code(coap_numbers::code::NOT_FOUND);
    /// 4.05 Method Not Allowed.
    pub const METHOD_NOT_ALLOWED: Code = Code(coap_numbers::code::METHOD_NOT_ALLOWED);
    /// 4.06 Not Acceptable.
    pub const NOT_ACCEPTABLE: Code = Code(coap_numbers::code::NOT_ACCEPTABLE);
    /// 4.12 Precondition Failed.
    pub const PRECONDITION_FAILED: Code = Code(coap_numbers::code::PRECONDITION_FAILED);
    /// 4.13 Request Entity Too Large.
    pub const REQUEST_ENTITY_TOO_LARGE: Code = Code(coap_numbers::code::REQUEST_ENTITY_TOO_LARGE);
    /// 4.15 Unsupported Content-Format.
    pub const UNSUPPORTED_CONTENT_FORMAT: Code = Code(coap_numbers::code::UNSUPPORTED_CONTENT_FORMAT);
    /// 5.00 Internal Server Error.
    pub const INTERNAL_SERVER_ERROR: Code = Code(coap_numbers::code::INTERNAL_SERVER_ERROR);
    /// 5.03 Service Unavailable.
    pub const SERVICE_UNAVAILABLE: Code = Code(coap_numbers::code::SERVICE_UNAVAILABLE);
    /// 5.05 Proxying Not Supported.
    pub const PROXYING_NOT_SUPPORTED: Code = Code(coap_numbers::code::PROXYING_NOT_SUPPORTED);

    /// The class (2, 4, 5).
    #[inline]
    pub fn class(self) -> u8 {
        self.0 >> 5
    }
}

impl std::fmt::Display for Code {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{:02}", self.0 >> 5, self.0 & 0x1f)
    }
}

/// Everything that makes a response but the message-layer fields (type, MID, token), so a
/// duplicate request gets the very same bytes again without keeping them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResponseSpec {
    /// Response code.
    pub code: Code,
    /// ETag option.
    pub etag: Option<[u8; 8]>,
    /// Observe option (sequence number).
    pub observe: Option<u32>,
    /// Content-Format option.
    pub content_format: Option<u16>,
    /// Max-Age option (a 5.03's "try again in", RFC 7252 §5.9.3.4).
    pub max_age: Option<u32>,
    /// Block2 option.
    pub block2: Option<BlockValue>,
    /// Size2 option.
    pub size2: Option<u32>,
    /// Echo option (RFC 9175).
    pub echo: Option<[u8; 12]>,
    /// Payload: a view into a shared buffer.
    pub payload: Bytes,
    /// Not sent: where in the resource the payload was taken from (`start..end`), so a
    /// duplicate can be answered without keeping the bytes.
    pub range: Option<(usize, usize)>,
}

impl ResponseSpec {
    /// An error response with a diagnostic payload.
    pub fn error(code: Code, diagnostic: &'static str) -> Self {
        ResponseSpec {
            code,
            etag: None,
            observe: None,
            content_format: None,
            max_age: None,
            block2: None,
            size2: None,
            echo: None,
            payload: Bytes::from_static(diagnostic.as_bytes()),
            range: None,
        }
    }
}

#[inline]
fn put_option(out: &mut Vec<u8>, last: &mut u16, number: u16, value: &[u8]) {
    let delta = number - *last;
    *last = number;
    let nibble = |v: usize| -> (u8, Option<Vec<u8>>) {
        if v < 13 {
            (v as u8, None)
        } else if v < 269 {
            (13, Some(vec![(v - 13) as u8]))
        } else {
            (14, Some(((v - 269) as u16).to_be_bytes().to_vec()))
        }
    };
    let (d, dext) = nibble(usize::from(delta));
    let (l, lext) = nibble(value.len());
    out.push((d << 4) | l);
    if let Some(e) = dext {
        out.extend_from_slice(&e);
    }
    if let Some(e) = lext {
        out.extend_from_slice(&e);
    }
    out.extend_from_slice(value);
}

/// Encode a message into `out` (cleared first).
pub fn encode(out: &mut Vec<u8>, ty: MsgType, mid: u16, token: &[u8], spec: &ResponseSpec) {
    out.clear();
    encode_append(out, ty, mid, token, spec);
}

/// Encode a message at the end of `out`.
#[inline]
pub fn encode_append(out: &mut Vec<u8>, ty: MsgType, mid: u16, token: &[u8], spec: &ResponseSpec) {
    let tkl = token.len().min(8);
    out.push(0x40 | ((ty as u8) << 4) | tkl as u8);
    out.push(spec.code.0);
    out.extend_from_slice(&mid.to_be_bytes());
    out.extend_from_slice(&token[..tkl]);
    let mut last = 0u16;
    if let Some(e) = &spec.etag {
        put_option(out, &mut last, 4, e);
    }
    if let Some(o) = spec.observe {
        put_option(out, &mut last, 6, &uint_option(o & 0x00ff_ffff));
    }
    if let Some(cf) = spec.content_format {
        put_option(out, &mut last, 12, &uint_option(u32::from(cf)));
    }
    if let Some(a) = spec.max_age {
        put_option(out, &mut last, 14, &uint_option(a));
    }
    if let Some(b) = &spec.block2 {
        put_option(out, &mut last, 23, &b.encode());
    }
    if let Some(s) = spec.size2 {
        put_option(out, &mut last, 28, &uint_option(s));
    }
    if let Some(e) = &spec.echo {
        put_option(out, &mut last, 252, e);
    }
    if !spec.payload.is_empty() {
        out.push(0xff);
        out.extend_from_slice(&spec.payload);
    }
}

/// An empty message (ACK or RST) with this MID.
pub fn empty(ty: MsgType, mid: u16) -> Vec<u8> {
    let [a, b] = mid.to_be_bytes();
    vec![0x40 | ((ty as u8) << 4), 0, a, b]
}

#[cfg(test)]
mod tests {
    use super::*;
    use coap_lite::{CoapOption, Packet};

    #[test]
    fn coap_lite_reads_what_we_write() {
        let spec = ResponseSpec {
            code: Code::CONTENT,
            etag: Some(*b"abcdefgh"),
            observe: Some(5),
            content_format: Some(42),
            max_age: None,
            block2: Some(BlockValue {
                num: 300,
                more: true,
                szx: 2,
            }),
            size2: Some(1 << 20),
            echo: Some(*b"echo-value12"),
            payload: Bytes::from_static(b"hello"),
            range: None,
        };
        let mut out = Vec::new();
        encode(&mut out, MsgType::Ack, 0x1234, b"tok", &spec);
        let p = Packet::from_bytes(&out).unwrap();
        assert_eq!(p.header.message_id, 0x1234);
        assert_eq!(p.get_token(), b"tok");
        assert_eq!(p.get_first_option(CoapOption::ETag).unwrap(), b"abcdefgh");
        assert_eq!(p.get_first_option(CoapOption::Observe).unwrap(), &[5]);
        assert_eq!(p.get_first_option(CoapOption::ContentFormat).unwrap(), &[42]);
        assert_eq!(
            BlockValue::decode(p.get_first_option(CoapOption::Block2).unwrap())
                .unwrap()
                .num,
            300
        );
        assert_eq!(p.get_first_option(CoapOption::Size2).unwrap(), &[0x10, 0, 0]);
        assert_eq!(p.get_first_option(CoapOption::Unknown(252)).unwrap(), b"echo-value12");
        assert_eq!(p.payload, b"hello");
        // Option numbers past 268 use the 2-byte extension.
        let mut out = Vec::new();
        let mut last = 0;
        put_option(&mut out, &mut last, 292, b"x");
        assert_eq!(out, vec![0xe1, 0x00, 0x17, b'x']);
    }
}

/// A request as it arrived: borrowed views into the datagram, no allocation.
#[derive(Debug)]
pub struct Request<'a> {
    /// 0 CON, 1 NON, 2 ACK, 3 RST.
    pub ty: u8,
    /// Code byte.
    pub code: u8,
    /// Message ID.
    pub mid: u16,
    /// Token.
    pub token: &'a [u8],
    /// Options in order: (number, value).
    options: &'a [u8],
    /// Payload (after the marker).
    pub payload: &'a [u8],
}

/// Why a datagram is not a CoAP message.
#[derive(Debug, PartialEq, Eq)]
pub enum ParseError {
    /// Too short for a header, or not version 1: drop silently.
    NoHeader,
    /// A header was read but the rest is malformed: reject (RST for CON).
    Malformed {
        /// Message type.
        ty: u8,
        /// Message ID.
        mid: u16,
    },
}

/// An iterator over the options of a [`Request`].
pub struct Options<'a> {
    rest: &'a [u8],
    number: u16,
}

#[inline]
fn read_ext(nibble: u8, d: &[u8], i: &mut usize) -> Option<usize> {
    Some(match nibble {
        13 => {
            let v = usize::from(*d.get(*i)?) + 13;
            *i += 1;
            v
        }
        14 => {
            let v = usize::from(u16::from_be_bytes([*d.get(*i)?, *d.get(*i + 1)?])) + 269;
            *i += 2;
            v
        }
        15 => return None,
        n => usize::from(n),
    })
}

/// Walk the option bytes; `Ok(end)` is where the options end (payload marker or end).
#[inline]
fn scan(d: &[u8]) -> Result<usize, ()> {
    let mut i = 0;
    let mut number = 0usize;
    while i < d.len() {
        if d[i] == 0xff {
            return if i + 1 == d.len() { Err(()) } else { Ok(i) };
        }
        let b = d[i];
        i += 1;
        let delta = read_ext(b >> 4, d, &mut i).ok_or(())?;
        let len = read_ext(b & 0x0f, d, &mut i).ok_or(())?;
        number += delta;
        if number > usize::from(u16::MAX) || i + len > d.len() {
            return Err(());
        }
        i += len;
    }
    Ok(d.len())
}

impl<'a> Iterator for Options<'a> {
    type Item = (u16, &'a [u8]);
    #[inline]
    fn next(&mut self) -> Option<Self::Item> {
        let d = self.rest;
        let b = *d.first()?;
        let mut i = 1;
        // `scan` validated the bytes already.
        let delta = read_ext(b >> 4, d, &mut i)?;
        let len = read_ext(b & 0x0f, d, &mut i)?;
        self.number = self.number.wrapping_add(delta as u16);
        let v = d.get(i..i + len)?;
        self.rest = &d[i + len..];
        Some((self.number, v))
    }
}

impl<'a> Request<'a> {
    /// Parse and validate a datagram (RFC 7252 §3): version 1, TKL ≤ 8, well-formed options,
    /// no payload marker without payload, empty messages exactly 4 bytes.
    #[inline]
    pub fn parse(d: &'a [u8]) -> Result<Self, ParseError> {
        if d.len() < 4 || d[0] >> 6 != 1 {
            return Err(ParseError::NoHeader);
        }
        let ty = (d[0] >> 4) & 3;
        let mid = u16::from_be_bytes([d[2], d[3]]);
        let bad = ParseError::Malformed { ty, mid };
        let tkl = usize::from(d[0] & 0x0f);
        if tkl > 8 || d.len() < 4 + tkl {
            return Err(bad);
        }
        if d[1] == 0 && d.len() != 4 {
            return Err(bad);
        }
        let rest = &d[4 + tkl..];
        let end = scan(rest).map_err(|()| ParseError::Malformed { ty, mid })?;
        Ok(Request {
            ty,
            code: d[1],
            mid,
            token: &d[4..4 + tkl],
            options: &rest[..end],
            payload: rest.get(end + 1..).unwrap_or(&[]),
        })
    }

    /// The options, in order.
    #[inline]
    pub fn options(&self) -> Options<'a> {
        Options {
            rest: self.options,
            number: 0,
        }
    }
}

#[cfg(test)]
mod parse_tests {
    use super::*;
    use coap_lite::{CoapOption, MessageClass, MessageType, Packet, RequestType};

    #[test]
    fn agrees_with_coap_lite() {
        let mut p = Packet::new();
        p.header.set_type(MessageType::Confirmable);
        p.header.code = MessageClass::Request(RequestType::Get);
        p.header.message_id = 77;
        p.set_token(vec![1, 2]);
        for s in ["fw", "a-much-longer-path-segment-than-thirteen-bytes", "x"] {
            p.add_option(CoapOption::UriPath, s.as_bytes().to_vec());
        }
        p.add_option(CoapOption::Block2, vec![0x12, 0x34, 0x56]);
        p.add_option(CoapOption::Unknown(2049), vec![9]);
        p.payload = b"pl".to_vec();
        let bytes = p.to_bytes().unwrap();
        let r = Request::parse(&bytes).unwrap();
        assert_eq!(
            (r.ty, r.code, r.mid, r.token, r.payload),
            (0, 1, 77, &[1u8, 2][..], &b"pl"[..])
        );
        let opts: Vec<(u16, Vec<u8>)> = r.options().map(|(n, v)| (n, v.to_vec())).collect();
        let want: Vec<(u16, Vec<u8>)> = p
            .options()
            .flat_map(|(n, vs)| vs.iter().map(move |v| (*n, v.clone())))
            .collect();
        assert_eq!(opts, want);
    }

    #[test]
    fn rejects_malformed() {
        assert_eq!(Request::parse(&[0x40, 1]).unwrap_err(), ParseError::NoHeader);
        assert_eq!(Request::parse(&[0x80, 1, 0, 1]).unwrap_err(), ParseError::NoHeader);
        for bad in [
            &[0x49, 1, 0, 1][..],
            &[0x40, 1, 0, 1, 0xff],
            &[0x40, 1, 0, 1, 0xf1, 0],
            &[0x40, 1, 0, 1, 0x1f],
            &[0x40, 1, 0, 1, 0x13, 1],
            &[0x40, 0, 0, 1, 1],
        ] {
            assert!(
                matches!(Request::parse(bad), Err(ParseError::Malformed { .. })),
                "{bad:02x?}"
            );
        }
    }
}
