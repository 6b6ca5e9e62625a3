//! Reading a request's options: what it asks, or the error reply when it cannot be served.

use super::opt;
use crate::block::{decode_uint, BlockValue};
use crate::message::{Code, Request, ResponseSpec};

/// What a request asks, read from its options.
pub(super) struct Parsed<'a> {
    pub(super) path: Vec<&'a str>,
    pub(super) block2: Option<BlockValue>,
    pub(super) etags: Vec<&'a [u8]>,
    pub(super) accept: Option<u32>,
    pub(super) size2_requested: bool,
    pub(super) observe: Option<u32>,
    pub(super) if_match: Vec<&'a [u8]>,
    pub(super) if_none_match: bool,
    pub(super) echo: Option<&'a [u8]>,
    /// The request is a POST (a report), not a GET.
    pub(super) post: bool,
    pub(super) content_format: Option<u16>,
}

/// Options that may appear once only (RFC 7252 §5.4.5, RFC 7959, RFC 7641, RFC 9175): a
/// repetition is ignored and the first occurrence used. Devices in the field repeat Block2
/// (Zephyr's coap_client sends `Block2=1/0/1024 Block2=0/0/1024`); the first occurrence is
/// the one they mean, and answering 4.02 would stop their download.
fn repeatable(n: u16) -> bool {
    matches!(
        n,
        opt::IF_MATCH | opt::ETAG | opt::URI_PATH | opt::URI_QUERY | opt::LOCATION_PATH | opt::LOCATION_QUERY
    )
}

/// Is the option number critical (odd, RFC 7252 §5.4.1)?
fn critical(n: u16) -> bool {
    n & 1 == 1
}

/// Read the options of a request; an error reply when they cannot be served.
pub(super) fn parse<'a>(req: &Request<'a>) -> Result<Parsed<'a>, ResponseSpec> {
    let mut p = Parsed {
        path: Vec::new(),
        block2: None,
        etags: Vec::new(),
        accept: None,
        size2_requested: false,
        observe: None,
        if_match: Vec::new(),
        if_none_match: false,
        echo: None,
        post: req.code == 2,
        content_format: None,
    };
    let mut last = None;
    for (num, v) in req.options() {
        // A repeated non-repeatable option: the first occurrence stands.
        let repeated = last == Some(num) && !repeatable(num);
        last = Some(num);
        if repeated {
            tracing::trace!(option = num, "repeated non-repeatable option ignored");
            continue;
        }
        match num {
            opt::URI_PATH => match std::str::from_utf8(v) {
                Ok(s) => p.path.push(s),
                Err(_) => return Err(ResponseSpec::error(Code::BAD_REQUEST, "Uri-Path is not UTF-8")),
            },
            opt::BLOCK2 => match BlockValue::decode(v) {
                Some(b) if b.szx == 7 => {
                    return Err(ResponseSpec::error(
                        Code::BAD_OPTION,
                        "Block2 SZX 7 (BERT) needs CoAP over TCP",
                    ))
                }
                Some(b) => p.block2 = Some(b),
                None => return Err(ResponseSpec::error(Code::BAD_OPTION, "Block2 longer than 3 bytes")),
            },
            opt::ETAG => p.etags.push(v),
            opt::IF_MATCH => p.if_match.push(v),
            opt::IF_NONE_MATCH => p.if_none_match = true,
            opt::ACCEPT => p.accept = decode_uint(v),
            opt::SIZE2 => p.size2_requested = true,
            opt::OBSERVE => p.observe = decode_uint(v),
            opt::ECHO => p.echo = Some(v),
            opt::PROXY_URI | opt::PROXY_SCHEME => {
                return Err(ResponseSpec::error(
                    Code::PROXYING_NOT_SUPPORTED,
                    "this server is no proxy",
                ))
            }
            opt::BLOCK1 => {
                return Err(ResponseSpec::error(
                    Code::BAD_OPTION,
                    "Block1 is not supported: this server only serves downloads",
                ))
            }
            opt::CONTENT_FORMAT => p.content_format = decode_uint(v).and_then(|n| u16::try_from(n).ok()),
            opt::URI_HOST | opt::URI_PORT | opt::URI_QUERY | opt::SIZE1 | opt::NO_RESPONSE => {}
            n if critical(n) => return Err(ResponseSpec::error(Code::BAD_OPTION, "unsupported critical option")),
            _ => {}
        }
    }
    if req.code != 1 && req.code != 2 {
        return Err(ResponseSpec::error(
            Code::METHOD_NOT_ALLOWED,
            "only GET (and POST of reports) is served",
        ));
    }
    Ok(p)
}

/// No-Response (RFC 7967) on a NON request: bit 2 suppresses 2.xx, bit 8 4.xx, bit 16 5.xx.
pub(super) fn suppressed(req: &Request<'_>, code: Code) -> bool {
    let Some((_, v)) = req.options().find(|(n, _)| *n == opt::NO_RESPONSE) else {
        return false;
    };
    let mask = decode_uint(v).unwrap_or(0);
    match code.class() {
        2 => mask & 2 != 0,
        4 => mask & 8 != 0,
        5 => mask & 16 != 0,
        _ => false,
    }
}
