//! Device reports: what a device says of its update, over CoAP or HTTP, as JSON, CBOR, or a
//! SUIT report (draft-ietf-suit-report).
//!
//! Accepted forms:
//! * JSON or CBOR map with text keys: `sequence_number` (or `seq`), `result` (`"ok"`,
//!   `"error"`, or a boolean), optional `reason` (text).
//! * A SUIT_Report (CBOR map with integer keys), bare or as the payload of a COSE_Sign1 /
//!   COSE_Mac0 (tag 18 / 17, or untagged array). Read: `suit-report-result` (4): `true`, or a
//!   map whose `suit-report-result-reason` (7) is named; `suit-reference` (99): `[uri,
//!   digest]`, its URI kept as the manifest reference. Not read: records (3), nonce (2),
//!   capability report (8). The signature is not verified: the server holds no device keys,
//!   so a signed report is exactly as trusted as an unsigned one from the same peer.

use serde::Serialize;

/// Longest reason text kept.
pub const MAX_REASON: usize = 200;

/// A device's report.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct Report {
    /// The sequence number the report is about (`None`: the update in progress).
    pub sequence_number: Option<u64>,
    /// Success.
    pub ok: bool,
    /// Why it failed, when said.
    pub reason: Option<String>,
    /// The manifest URI a SUIT report refers to.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reference: Option<String>,
}

impl Report {
    /// A failure with nothing else said (filled in by the readers).
    fn blank() -> Self {
        Report {
            sequence_number: None,
            ok: false,
            reason: None,
            reference: None,
        }
    }
}

/// Why a report is refused (answered 4.00 / 400, nothing changed).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("bad report: {0}")]
pub struct ReportError(pub String);

fn bad(s: impl Into<String>) -> ReportError {
    ReportError(s.into())
}

/// CoAP Content-Format numbers.
const CF_JSON: u16 = 50;
const CF_CBOR: u16 = 60;

/// Read a report; `content_format` is the CoAP Content-Format or the HTTP media type's
/// equivalent (`None`: told apart by the first byte).
pub fn parse(content_format: Option<u16>, payload: &[u8]) -> Result<Report, ReportError> {
    if payload.is_empty() {
        return Err(bad("empty"));
    }
    if payload.len() > 4096 {
        return Err(bad("longer than 4096 bytes"));
    }
    let json = match content_format {
        Some(CF_JSON) => true,
        Some(CF_CBOR) | Some(_) => false,
        None => payload.first().is_some_and(|b| *b == b'{'),
    };
    let r = if json {
        parse_json(payload)?
    } else {
        parse_cbor(payload)?
    };
    if let Some(reason) = &r.reason {
        if reason.chars().any(char::is_control) {
            return Err(bad("reason holds control characters"));
        }
    }
    Ok(r)
}

fn result_of_text(s: &str) -> Result<bool, ReportError> {
    match s {
        "ok" | "success" | "installed" => Ok(true),
        "error" | "failure" | "failed" => Ok(false),
        other => Err(bad(format!("result {other:?}: \"ok\" or \"error\""))),
    }
}

fn clip(s: &str) -> String {
    s.chars().take(MAX_REASON).collect()
}

fn parse_json(payload: &[u8]) -> Result<Report, ReportError> {
    let v: serde_json::Value = serde_json::from_slice(payload).map_err(|e| bad(format!("JSON: {e}")))?;
    let obj = v.as_object().ok_or_else(|| bad("not a JSON object"))?;
    let mut r = Report::blank();
    let mut result = None;
    for (k, v) in obj {
        match k.as_str() {
            "sequence_number" | "seq" => {
                r.sequence_number = Some(v.as_u64().ok_or_else(|| bad(format!("{k}: an unsigned integer")))?)
            }
            "result" => {
                result = Some(match v {
                    serde_json::Value::Bool(b) => *b,
                    serde_json::Value::String(s) => result_of_text(s)?,
                    _ => return Err(bad("result: \"ok\", \"error\" or a boolean")),
                })
            }
            "reason" => match v {
                serde_json::Value::String(s) => r.reason = Some(clip(s)),
                serde_json::Value::Null => {}
                _ => return Err(bad("reason: text")),
            },
            // Device identity fields that the endpoint already decided are ignored.
            "device" | "id" => {}
            other => return Err(bad(format!("unknown field {other:?}"))),
        }
    }
    r.ok = result.ok_or_else(|| bad("result missing"))?;
    Ok(r)
}

/// SUIT report reason codes (draft-ietf-suit-report, suit-report-reasons).
fn reason_name(code: u64) -> String {
    const NAMES: [&str; 13] = [
        "ok",
        "cbor-parse",
        "cose-unsupported",
        "alg-unsupported",
        "unauthorised",
        "unsupported-command",
        "component-unsupported",
        "component-unauthorised",
        "parameter-unsupported",
        "severing-unsupported",
        "condition-failed",
        "operation-failed",
        "invoke-pending",
    ];
    NAMES
        .get(usize::try_from(code).unwrap_or(usize::MAX))
        .map_or_else(|| format!("reason {code}"), |n| (*n).to_string())
}

/// A small CBOR value: as much as reports need (bounded depth, no allocation beyond the
/// decoded items).
#[derive(Debug)]
enum Value {
    Uint(u64),
    Nint,
    Bytes(Vec<u8>),
    Text(String),
    Bool(bool),
    Null,
    Array(Vec<Value>),
    Map(Vec<(Value, Value)>),
    Tagged(u64, Box<Value>),
    Other,
}

fn decode(d: &mut minicbor::Decoder<'_>, depth: u8) -> Result<Value, ReportError> {
    use minicbor::data::Type;
    if depth > 8 {
        return Err(bad("CBOR nested too deeply"));
    }
    let e = |e: minicbor::decode::Error| bad(format!("CBOR: {e}"));
    Ok(match d.datatype().map_err(e)? {
        Type::U8 | Type::U16 | Type::U32 | Type::U64 => Value::Uint(d.u64().map_err(e)?),
        Type::I8 | Type::I16 | Type::I32 | Type::I64 | Type::Int => {
            d.skip().map_err(e)?;
            Value::Nint
        }
        Type::Bytes => Value::Bytes(d.bytes().map_err(e)?.to_vec()),
        Type::String => Value::Text(d.str().map_err(e)?.to_string()),
        Type::Bool => Value::Bool(d.bool().map_err(e)?),
        Type::Null | Type::Undefined => {
            d.skip().map_err(e)?;
            Value::Null
        }
        Type::Array => {
            let n = d.array().map_err(e)?.ok_or_else(|| bad("indefinite-length array"))?;
            if n > 64 {
                return Err(bad("array longer than 64 items"));
            }
            let mut items = Vec::with_capacity(n as usize);
            for _ in 0..n {
                items.push(decode(d, depth + 1)?);
            }
            Value::Array(items)
        }
        Type::Map => {
            let n = d.map().map_err(e)?.ok_or_else(|| bad("indefinite-length map"))?;
            if n > 64 {
                return Err(bad("map longer than 64 entries"));
            }
            let mut items = Vec::with_capacity(n as usize);
            for _ in 0..n {
                let k = decode(d, depth + 1)?;
                let v = decode(d, depth + 1)?;
                items.push((k, v));
            }
            Value::Map(items)
        }
        Type::Tag => {
            let t = d.tag().map_err(e)?;
            Value::Tagged(t.as_u64(), Box::new(decode(d, depth + 1)?))
        }
        _ => {
            d.skip().map_err(e)?;
            Value::Other
        }
    })
}

fn decode_all(payload: &[u8]) -> Result<Value, ReportError> {
    let mut d = minicbor::Decoder::new(payload);
    let v = decode(&mut d, 0)?;
    if d.position() != payload.len() {
        return Err(bad("trailing bytes after the CBOR item"));
    }
    Ok(v)
}

fn parse_cbor(payload: &[u8]) -> Result<Report, ReportError> {
    let v = decode_all(payload)?;
    // COSE_Sign1 (18) / COSE_Mac0 (17), tagged or not: [protected, unprotected, payload, tag].
    let v = match v {
        Value::Tagged(17 | 18, inner) => *inner,
        v => v,
    };
    let v = match v {
        Value::Array(items) if items.len() == 4 => match &items[2] {
            Value::Bytes(b) => decode_all(b)?,
            _ => return Err(bad("COSE structure without a payload")),
        },
        v => v,
    };
    let Value::Map(entries) = v else {
        return Err(bad("not a CBOR map"));
    };
    if entries.iter().any(|(k, _)| matches!(k, Value::Text(_))) {
        text_keyed(entries)
    } else {
        suit_report(entries)
    }
}

fn text_keyed(entries: Vec<(Value, Value)>) -> Result<Report, ReportError> {
    let mut r = Report::blank();
    let mut result = None;
    for (k, v) in entries {
        let Value::Text(k) = k else {
            return Err(bad("a map mixing text and integer keys"));
        };
        match (k.as_str(), v) {
            ("sequence_number" | "seq", Value::Uint(n)) => r.sequence_number = Some(n),
            ("result", Value::Bool(b)) => result = Some(b),
            ("result", Value::Text(s)) => result = Some(result_of_text(&s)?),
            ("reason", Value::Text(s)) => r.reason = Some(clip(&s)),
            ("reason", Value::Null) | ("device" | "id", _) => {}
            (k, _) => return Err(bad(format!("field {k:?}: unknown or of the wrong type"))),
        }
    }
    r.ok = result.ok_or_else(|| bad("result missing"))?;
    Ok(r)
}

/// A SUIT_Report: 4 result, 99 reference; the rest is allowed and not read.
fn suit_report(entries: Vec<(Value, Value)>) -> Result<Report, ReportError> {
    let mut r = Report::blank();
    let mut result = None;
    for (k, v) in entries {
        let Value::Uint(k) = k else {
            return Err(bad("SUIT report: keys must be integers"));
        };
        match (k, v) {
            (4, Value::Bool(true)) => result = Some(true),
            (4, Value::Bool(false)) => result = Some(false),
            (4, Value::Map(m)) => {
                result = Some(false);
                for (rk, rv) in m {
                    if let (Value::Uint(7), Value::Uint(code)) = (rk, rv) {
                        r.reason = Some(reason_name(code));
                    }
                }
            }
            (4, _) => return Err(bad("SUIT report: result must be true or a map")),
            (99, Value::Array(items)) => {
                if let Some(Value::Text(uri)) = items.first() {
                    r.reference = Some(uri.chars().take(300).collect());
                }
            }
            (99, _) => return Err(bad("SUIT report: reference must be [uri, digest]")),
            _ => {}
        }
    }
    r.ok = result.ok_or_else(|| bad("SUIT report without a result (key 4)"))?;
    Ok(r)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn cbor(f: impl FnOnce(&mut minicbor::Encoder<&mut Vec<u8>>)) -> Vec<u8> {
        let mut out = Vec::new();
        f(&mut minicbor::Encoder::new(&mut out));
        out
    }

    #[test]
    fn json_and_text_keyed_cbor() {
        let r = parse(Some(50), br#"{"sequence_number": 7, "result": "ok"}"#).unwrap();
        assert_eq!((r.sequence_number, r.ok, r.reason), (Some(7), true, None));
        let r = parse(None, br#"{"seq": 8, "result": false, "reason": "digest mismatch"}"#).unwrap();
        assert_eq!(
            (r.sequence_number, r.ok, r.reason.as_deref()),
            (Some(8), false, Some("digest mismatch"))
        );
        let c = cbor(|e| {
            e.map(3).unwrap().str("seq").unwrap().u64(9).unwrap();
            e.str("result").unwrap().str("error").unwrap();
            e.str("reason").unwrap().str("flash").unwrap();
        });
        let r = parse(Some(60), &c).unwrap();
        assert_eq!(
            (r.sequence_number, r.ok, r.reason.as_deref()),
            (Some(9), false, Some("flash"))
        );
    }

    #[test]
    fn suit_reports_bare_and_signed() {
        let report = cbor(|e| {
            e.map(2).unwrap();
            e.u8(99)
                .unwrap()
                .array(2)
                .unwrap()
                .str("coap://[::1]/fw/v/3/manifest")
                .unwrap();
            e.array(2).unwrap().i8(-16).unwrap().bytes(&[0; 32]).unwrap();
            e.u8(4)
                .unwrap()
                .map(2)
                .unwrap()
                .u8(5)
                .unwrap()
                .u8(1)
                .unwrap()
                .u8(7)
                .unwrap()
                .u8(10)
                .unwrap();
        });
        let r = parse(Some(60), &report).unwrap();
        assert!(!r.ok);
        assert_eq!(r.reason.as_deref(), Some("condition-failed"));
        assert_eq!(r.reference.as_deref(), Some("coap://[::1]/fw/v/3/manifest"));
        let ok = cbor(|e| {
            e.map(1).unwrap().u8(4).unwrap().bool(true).unwrap();
        });
        let signed = cbor(|e| {
            e.tag(minicbor::data::Tag::new(18)).unwrap().array(4).unwrap();
            e.bytes(&[0xa0])
                .unwrap()
                .map(0)
                .unwrap()
                .bytes(&ok)
                .unwrap()
                .bytes(&[1; 64])
                .unwrap();
        });
        assert!(parse(None, &signed).unwrap().ok);
    }

    #[test]
    fn bad_reports_are_refused_with_a_reason() {
        for (cf, p) in [
            (Some(50), &b""[..]),
            (Some(50), b"{}"),
            (Some(50), b"[1]"),
            (Some(50), br#"{"result": "maybe"}"#),
            (Some(50), br#"{"result": "ok", "seq": -1}"#),
            (Some(50), br#"{"result": "ok", "colour": 1}"#),
            (Some(50), b"{\"result\": \"error\", \"reason\": \"a\\u0000b\"}"),
            (Some(60), &[0xa1, 0x04]),
            (Some(60), &[0xff]),
            (Some(60), &[0xa1, 0x04, 0xf5, 0x00]),
            (None, &[0x9f; 200]),
        ] {
            assert!(parse(cf, p).is_err(), "{p:?}");
        }
    }
}
