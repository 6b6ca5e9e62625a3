//! Just enough CoAP for a client: encode a CON GET with Uri-Path and Block2; read a reply's
//! type, MID, code, Block2, ETag, Size2 and payload.

/// Encode a confirmable GET.
pub fn get(out: &mut Vec<u8>, mid: u16, token: &[u8], path: &[&str], block2: Option<(u32, u8)>) {
    out.clear();
    out.push(0x40 | token.len() as u8);
    out.push(0x01);
    out.extend_from_slice(&mid.to_be_bytes());
    out.extend_from_slice(token);
    let mut last = 0u16;
    for seg in path {
        option(out, &mut last, 11, seg.as_bytes());
    }
    if let Some((num, szx)) = block2 {
        let v = (num << 4) | u32::from(szx & 7);
        let b = v.to_be_bytes();
        let skip = b.iter().take_while(|x| **x == 0).count();
        option(out, &mut last, 23, &b[skip..]);
    }
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

/// The parts of a reply the load generator checks.
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
    /// Block2 (num, more, szx).
    pub block2: Option<(u32, bool, u8)>,
    /// ETag.
    pub etag: Option<&'a [u8]>,
    /// Size2.
    pub size2: Option<u32>,
    /// Payload.
    pub payload: &'a [u8],
}

fn uint(v: &[u8]) -> u32 {
    v.iter().fold(0u32, |a, b| (a << 8) | u32::from(*b))
}

/// Parse a reply; `None` if malformed.
pub fn parse(d: &[u8]) -> Option<Reply<'_>> {
    if d.len() < 4 || d[0] >> 6 != 1 {
        return None;
    }
    let tkl = usize::from(d[0] & 0xf);
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
            23 => {
                let x = uint(v);
                r.block2 = Some((x >> 4, x & 8 != 0, (x & 7) as u8));
            }
            28 => r.size2 = Some(uint(v)),
            _ => {}
        }
    }
    Some(r)
}
