//! Just enough CoAP for a client (and a device): encode requests with Observe, Uri-Path,
//! Content-Format, Block2 and a payload, responses and empty messages; read a message's
//! type, MID, code, token, Observe, Uri-Path, Content-Format, Block2, ETag, Size2 and payload.
//! Written here rather than borrowed from the server under test.

/// Message type CON.
pub const CON: u8 = 0;
/// Message type NON.
pub const NON: u8 = 1;
/// Message type ACK.
pub const ACK: u8 = 2;
/// Message type RST.
pub const RST: u8 = 3;

/// Code 0.01 GET.
pub const GET: u8 = 0x01;
/// Code 0.02 POST.
pub const POST: u8 = 0x02;
/// Code 2.04 Changed.
pub const CHANGED: u8 = 0x44;
/// Code 2.05 Content.
pub const CONTENT: u8 = 0x45;
/// Code 4.04 Not Found.
pub const NOT_FOUND: u8 = 0x84;
/// Code 4.05 Method Not Allowed.
pub const METHOD_NOT_ALLOWED: u8 = 0x85;
/// Code 5.03 Service Unavailable.
pub const SERVICE_UNAVAILABLE: u8 = 0xa3;

/// A code as `c.dd`.
pub fn code_text(code: u8) -> String {
    format!("{}.{:02}", code >> 5, code & 0x1f)
}

/// What a request carries besides its type, code, MID and token.
#[derive(Clone, Copy, Debug, Default)]
pub struct RequestOptions<'a> {
    /// Observe (0 registers).
    pub observe: Option<u32>,
    /// Uri-Path segments.
    pub path: &'a [&'a str],
    /// Content-Format.
    pub content_format: Option<u16>,
    /// Block2 (num, szx).
    pub block2: Option<(u32, u8)>,
    /// Payload.
    pub payload: &'a [u8],
}

/// Encode a confirmable GET.
pub fn get(out: &mut Vec<u8>, mid: u16, token: &[u8], path: &[&str], block2: Option<(u32, u8)>) {
    request(
        out,
        CON,
        GET,
        mid,
        token,
        &RequestOptions {
            path,
            block2,
            ..RequestOptions::default()
        },
    );
}

/// Encode a request (or any message with these options) into `out`, replacing its content.
pub fn request(out: &mut Vec<u8>, ty: u8, code: u8, mid: u16, token: &[u8], o: &RequestOptions<'_>) {
    header(out, ty, code, mid, token);
    let mut last = 0u16;
    if let Some(v) = o.observe {
        option(out, &mut last, 6, &uint(v));
    }
    for seg in o.path {
        option(out, &mut last, 11, seg.as_bytes());
    }
    if let Some(cf) = o.content_format {
        option(out, &mut last, 12, &uint(u32::from(cf)));
    }
    if let Some((num, szx)) = o.block2 {
        option(out, &mut last, 23, &uint((num << 4) | u32::from(szx & 7)));
    }
    if !o.payload.is_empty() {
        out.push(0xff);
        out.extend_from_slice(o.payload);
    }
}

/// Encode a response: `ty` ACK (piggybacked, echoing the request's MID) or CON/NON.
pub fn response(
    out: &mut Vec<u8>,
    ty: u8,
    code: u8,
    mid: u16,
    token: &[u8],
    content_format: Option<u16>,
    payload: &[u8],
) {
    request(
        out,
        ty,
        code,
        mid,
        token,
        &RequestOptions {
            content_format,
            payload,
            ..RequestOptions::default()
        },
    );
}

/// Encode an empty message (an empty ACK or a RST).
pub fn empty(out: &mut Vec<u8>, ty: u8, mid: u16) {
    header(out, ty, 0, mid, &[]);
}

fn header(out: &mut Vec<u8>, ty: u8, code: u8, mid: u16, token: &[u8]) {
    out.clear();
    let tkl = token.len().min(8);
    out.push(0x40 | ((ty & 3) << 4) | tkl as u8);
    out.push(code);
    out.extend_from_slice(&mid.to_be_bytes());
    out.extend_from_slice(&token[..tkl]);
}

/// An unsigned option value in its shortest form (0 is empty).
fn uint(v: u32) -> Vec<u8> {
    let b = v.to_be_bytes();
    let skip = b.iter().take_while(|x| **x == 0).count();
    b[skip..].to_vec()
}

fn option(out: &mut Vec<u8>, last: &mut u16, num: u16, value: &[u8]) {
    let delta = num - *last;
    *last = num;
    let ext = |v: usize| {
        if v < 13 {
            (v as u8, vec![])
        } else if v < 269 {
            (13, vec![(v - 13) as u8])
        } else {
            (14, ((v - 269) as u16).to_be_bytes().to_vec())
        }
    };
    let (d, de) = ext(usize::from(delta));
    let (l, le) = ext(value.len());
    out.push(d << 4 | l);
    out.extend_from_slice(&de);
    out.extend_from_slice(&le);
    out.extend_from_slice(value);
}

/// The parts of a message the load generator and the fleet simulator read.
#[derive(Debug, Default)]
pub struct Reply<'a> {
    /// 0 CON, 1 NON, 2 ACK, 3 RST.
    pub ty: u8,
    /// Message ID.
    pub mid: u16,
    /// Code byte.
    pub code: u8,
    /// Token.
    pub token: &'a [u8],
    /// Observe.
    pub observe: Option<u32>,
    /// Uri-Path segments (requests).
    pub uri_path: Vec<&'a [u8]>,
    /// Content-Format.
    pub content_format: Option<u32>,
    /// Block2 (num, more, szx).
    pub block2: Option<(u32, bool, u8)>,
    /// ETag.
    pub etag: Option<&'a [u8]>,
    /// Size2.
    pub size2: Option<u32>,
    /// Payload.
    pub payload: &'a [u8],
}

impl Reply<'_> {
    /// A request (code class 0, not an empty message).
    pub fn is_request(&self) -> bool {
        self.code != 0 && self.code >> 5 == 0
    }

    /// A response (code class 2 to 5).
    pub fn is_response(&self) -> bool {
        self.code >> 5 >= 2
    }
}

fn read_uint(v: &[u8]) -> u32 {
    v.iter().fold(0u32, |a, b| (a << 8) | u32::from(*b))
}

/// Parse a message; `None` if malformed.
pub fn parse(d: &[u8]) -> Option<Reply<'_>> {
    if d.len() < 4 || d[0] >> 6 != 1 {
        return None;
    }
    let tkl = usize::from(d[0] & 0xf);
    if tkl > 8 {
        return None;
    }
    let mut r = Reply {
        ty: (d[0] >> 4) & 3,
        mid: u16::from_be_bytes([d[2], d[3]]),
        code: d[1],
        token: d.get(4..4 + tkl)?,
        ..Reply::default()
    };
    let mut i = 4 + tkl;
    let mut num = 0u16;
    while i < d.len() {
        if d[i] == 0xff {
            r.payload = &d[i + 1..];
            break;
        }
        let (mut delta, mut len) = (u16::from(d[i] >> 4), usize::from(d[i] & 0xf));
        i += 1;
        match delta {
            13 => {
                delta = u16::from(*d.get(i)?) + 13;
                i += 1;
            }
            14 => {
                delta = u16::from_be_bytes([*d.get(i)?, *d.get(i + 1)?]).checked_add(269)?;
                i += 2;
            }
            15 => return None,
            _ => {}
        }
        match len {
            13 => {
                len = usize::from(*d.get(i)?) + 13;
                i += 1;
            }
            14 => {
                len = usize::from(u16::from_be_bytes([*d.get(i)?, *d.get(i + 1)?])) + 269;
                i += 2;
            }
            15 => return None,
            _ => {}
        }
        num = num.checked_add(delta)?;
        let v = d.get(i..i + len)?;
        i += len;
        match num {
            4 => r.etag = Some(v),
            6 => r.observe = Some(read_uint(v)),
            11 => r.uri_path.push(v),
            12 => r.content_format = Some(read_uint(v)),
            23 => {
                let x = read_uint(v);
                r.block2 = Some((x >> 4, x & 8 != 0, (x & 7) as u8));
            }
            28 => r.size2 = Some(read_uint(v)),
            _ => {}
        }
    }
    Some(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_round_trips() {
        let mut out = Vec::new();
        request(
            &mut out,
            CON,
            POST,
            0x1234,
            &[1, 2, 3, 4],
            &RequestOptions {
                observe: Some(0),
                path: &["fw", "report"],
                content_format: Some(50),
                block2: Some((300, 6)),
                payload: b"{\"seq\":1}",
            },
        );
        let r = parse(&out).unwrap();
        assert_eq!((r.ty, r.code, r.mid, r.token), (CON, POST, 0x1234, &[1u8, 2, 3, 4][..]));
        assert_eq!(r.observe, Some(0));
        assert_eq!(r.uri_path, vec![&b"fw"[..], b"report"]);
        assert_eq!(r.content_format, Some(50));
        assert_eq!(r.block2, Some((300, false, 6)));
        assert_eq!(r.payload, b"{\"seq\":1}");
        assert!(r.is_request() && !r.is_response());
    }

    #[test]
    fn empty_messages_and_responses() {
        let mut out = Vec::new();
        empty(&mut out, ACK, 7);
        assert_eq!(out, [0x60, 0, 0, 7]);
        response(&mut out, ACK, CHANGED, 9, &[0xaa], None, &[]);
        let r = parse(&out).unwrap();
        assert_eq!((r.ty, r.code, r.mid, r.token), (ACK, CHANGED, 9, &[0xaa][..]));
        assert!(r.is_response());
        assert!(parse(&[0x48, 1, 0, 0]).is_none(), "token longer than the message");
    }
}
