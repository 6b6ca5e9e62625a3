//! The text member (draft §8.4.4): descriptions per language, and per-component vendor and
//! model names.

use alloc::string::{String, ToString};
use alloc::vec::Vec;
use minicbor::data::Type;

use crate::cbor::{Dec, Enc};
use crate::error::Result;
use crate::manifest::{ComponentId, RawValue};

/// Text keys of the language map.
pub mod key {
    /// manifest-description.
    pub const MANIFEST_DESCRIPTION: i64 = 1;
    /// update-description.
    pub const UPDATE_DESCRIPTION: i64 = 2;
    /// manifest-json-source.
    pub const MANIFEST_JSON_SOURCE: i64 = 3;
    /// manifest-yaml-source.
    pub const MANIFEST_YAML_SOURCE: i64 = 4;
}

/// Per-component text keys.
pub mod component_key {
    /// vendor-name.
    pub const VENDOR_NAME: i64 = 1;
    /// model-name.
    pub const MODEL_NAME: i64 = 2;
    /// vendor-domain.
    pub const VENDOR_DOMAIN: i64 = 3;
    /// model-info.
    pub const MODEL_INFO: i64 = 4;
    /// component-description.
    pub const COMPONENT_DESCRIPTION: i64 = 5;
    /// component-version.
    pub const COMPONENT_VERSION: i64 = 6;
}

/// One entry of a language map.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TextEntry {
    /// An integer key with a text value (descriptions, sources).
    Text(i64, String),
    /// A component's texts, keyed by its identifier.
    Component(ComponentId, Vec<(i64, String)>),
    /// Anything else, key and value verbatim.
    Raw(RawValue, RawValue),
}

/// The text map: language tag → entries, in wire order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Text(pub Vec<(String, Vec<TextEntry>)>);

impl Text {
    /// Decode the content of the text bstr.
    pub fn from_cbor(bytes: &[u8]) -> Result<Self> {
        let mut d = Dec::new(bytes);
        let n = d.map("text")?;
        let mut out = Vec::new();
        for _ in 0..n {
            let lang = d.text("language tag")?.to_string();
            let m = d.map("text map")?;
            let mut entries = Vec::new();
            for _ in 0..m {
                entries.push(entry(&mut d)?);
            }
            out.push((lang, entries));
        }
        d.expect_end("text")?;
        Ok(Text(out))
    }

    /// Encode (the content of the text bstr).
    pub fn to_cbor(&self) -> Vec<u8> {
        let mut e = Enc::new();
        e.map(self.0.len());
        for (lang, entries) in &self.0 {
            e.text(lang);
            e.map(entries.len());
            for en in entries {
                match en {
                    TextEntry::Text(k, v) => {
                        e.int(*k);
                        e.text(v);
                    }
                    TextEntry::Component(id, fields) => {
                        e.array(id.0.len());
                        for p in &id.0 {
                            e.bytes(p);
                        }
                        e.map(fields.len());
                        for (k, v) in fields {
                            e.int(*k);
                            e.text(v);
                        }
                    }
                    TextEntry::Raw(k, v) => {
                        e.raw(&k.0);
                        e.raw(&v.0);
                    }
                }
            }
        }
        e.finish()
    }
}

fn entry(d: &mut Dec<'_>) -> Result<TextEntry> {
    let start = d.position();
    if d.is_int()? {
        let k = d.int("text key")?;
        if d.datatype()? == Type::String {
            return Ok(TextEntry::Text(k, d.text("text")?.to_string()));
        }
        d.d.set_position(start);
    } else if d.datatype()? == Type::Array {
        if let Some(e) = component_entry(d)? {
            return Ok(e);
        }
        d.d.set_position(start);
    }
    let k = RawValue(d.raw("text key")?.to_vec());
    let v = RawValue(d.raw("text value")?.to_vec());
    Ok(TextEntry::Raw(k, v))
}

/// `[* bstr] => {* int => tstr}`, or `None` if it is not of that shape.
fn component_entry(d: &mut Dec<'_>) -> Result<Option<TextEntry>> {
    let n = d.array("component id")?;
    let mut id = Vec::new();
    for _ in 0..n {
        if d.datatype()? != Type::Bytes {
            return Ok(None);
        }
        id.push(d.bytes("component id part")?.to_vec());
    }
    if d.datatype()? != Type::Map {
        return Ok(None);
    }
    let m = d.map("component text")?;
    let mut fields = Vec::new();
    for _ in 0..m {
        if !d.is_int()? {
            return Ok(None);
        }
        let k = d.int("component text key")?;
        if d.datatype()? != Type::String {
            return Ok(None);
        }
        fields.push((k, d.text("component text")?.to_string()));
    }
    Ok(Some(TextEntry::Component(ComponentId(id), fields)))
}
