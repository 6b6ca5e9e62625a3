//! CBOR diagnostic notation (RFC 8949 §8), with bstr-wrapped CBOR shown as `<< … >>`, for
//! `inspect` and for golden files a person can read.

use alloc::format;
use alloc::string::String;
use minicbor::data::Type;

use crate::cbor::{Dec, MAX_DEPTH};
use crate::error::{Error, Result};

/// Render one CBOR item (the whole input) as diagnostic notation.
pub fn diag(bytes: &[u8]) -> Result<String> {
    let mut d = Dec::new(bytes);
    let mut out = String::new();
    item(&mut d, &mut out, 0)?;
    d.expect_end("diagnostic item")?;
    Ok(out)
}

/// Does `bytes` hold exactly one CBOR array, map or tagged item?
fn is_wrapped_cbor(bytes: &[u8]) -> bool {
    let d = Dec::new(bytes);
    match d.datatype() {
        Ok(Type::Array | Type::Map | Type::Tag) => {}
        _ => return false,
    }
    let mut d = Dec::new(bytes);
    d.raw("probe").is_ok() && d.at_end()
}

fn item(d: &mut Dec<'_>, out: &mut String, depth: usize) -> Result<()> {
    if depth > MAX_DEPTH * 4 {
        return Err(Error::TooDeep(MAX_DEPTH * 4));
    }
    match d.datatype()? {
        Type::U8 | Type::U16 | Type::U32 | Type::U64 => out.push_str(&format!("{}", d.uint("uint")?)),
        Type::I8 | Type::I16 | Type::I32 | Type::I64 | Type::Int => {
            let i =
                d.d.int()
                    .map_err(|e| Error::malformed(d.position(), format!("int: {e}")))?;
            out.push_str(&format!("{}", i128::from(i)));
        }
        Type::Bytes => {
            let b = d.bytes("bytes")?;
            if is_wrapped_cbor(b) {
                out.push_str("<< ");
                let mut inner = Dec::new(b);
                item(&mut inner, out, depth + 1)?;
                out.push_str(" >>");
            } else {
                out.push_str(&format!("h'{}'", hex::encode(b)));
            }
        }
        Type::String => out.push_str(&format!("{:?}", d.text("text")?)),
        Type::Bool => out.push_str(if d.bool("bool")? { "true" } else { "false" }),
        Type::Null => {
            d.null("null")?;
            out.push_str("null");
        }
        Type::Array => {
            let n = d.array("array")?;
            out.push('[');
            for i in 0..n {
                if i > 0 {
                    out.push_str(", ");
                }
                item(d, out, depth + 1)?;
            }
            out.push(']');
        }
        Type::Map => {
            let n = d.map("map")?;
            out.push('{');
            for i in 0..n {
                if i > 0 {
                    out.push_str(", ");
                }
                item(d, out, depth + 1)?;
                out.push_str(": ");
                item(d, out, depth + 1)?;
            }
            out.push('}');
        }
        Type::Tag => {
            let t = d.tag("tag")?;
            out.push_str(&format!("{t}("));
            item(d, out, depth + 1)?;
            out.push(')');
        }
        other => {
            let raw = d.raw("item")?;
            out.push_str(&format!("/{other}/ h'{}'", hex::encode(raw)));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_nested_bstr_cbor() {
        // {2: << [1, -16] >>, 3: h'00', 4: "x"}
        let bytes = [0xa3, 0x02, 0x43, 0x82, 0x01, 0x2f, 0x03, 0x41, 0x00, 0x04, 0x61, 0x78];
        assert_eq!(diag(&bytes).unwrap(), "{2: << [1, -16] >>, 3: h'00', 4: \"x\"}");
        assert!(diag(&[0x82, 0x01]).is_err());
    }
}
