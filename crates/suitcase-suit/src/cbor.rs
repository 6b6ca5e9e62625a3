//! Thin helpers over minicbor: an infallible `Vec` encoder and a decoder that reports
//! errors as [`Error::Malformed`] with the offset.

use alloc::format;
use alloc::vec::Vec;
use minicbor::data::Type;
use minicbor::{Decoder, Encoder};

use crate::error::{Error, Result};

/// Maximum nesting of bstr-wrapped command sequences (try-each inside run-sequence …).
pub(crate) const MAX_DEPTH: usize = 16;

/// An encoder into a `Vec<u8>`; writing to a `Vec` cannot fail.
pub(crate) struct Enc(pub(crate) Encoder<Vec<u8>>);

impl Enc {
    pub(crate) fn new() -> Self {
        Enc(Encoder::new(Vec::new()))
    }
    pub(crate) fn finish(self) -> Vec<u8> {
        self.0.into_writer()
    }
    pub(crate) fn uint(&mut self, v: u64) {
        let _ = self.0.u64(v);
    }
    pub(crate) fn int(&mut self, v: i64) {
        let _ = self.0.i64(v);
    }
    pub(crate) fn bytes(&mut self, v: &[u8]) {
        let _ = self.0.bytes(v);
    }
    pub(crate) fn text(&mut self, v: &str) {
        let _ = self.0.str(v);
    }
    pub(crate) fn array(&mut self, len: usize) {
        let _ = self.0.array(len as u64);
    }
    pub(crate) fn map(&mut self, len: usize) {
        let _ = self.0.map(len as u64);
    }
    pub(crate) fn tag(&mut self, tag: u64) {
        let _ = self.0.tag(minicbor::data::Tag::new(tag));
    }
    pub(crate) fn bool(&mut self, v: bool) {
        let _ = self.0.bool(v);
    }
    pub(crate) fn null(&mut self) {
        let _ = self.0.null();
    }
    /// Append already-encoded CBOR verbatim.
    pub(crate) fn raw(&mut self, cbor: &[u8]) {
        self.0.writer_mut().extend_from_slice(cbor);
    }
}

/// Encode `content` as a CBOR byte string (header + content) and return the whole item.
pub fn bstr_item(content: &[u8]) -> Vec<u8> {
    let mut e = Enc::new();
    e.bytes(content);
    e.finish()
}

/// A decoder over one buffer that turns minicbor errors into [`Error::Malformed`].
pub(crate) struct Dec<'b> {
    pub(crate) d: Decoder<'b>,
}

fn err(d: &Decoder<'_>, what: &str, e: minicbor::decode::Error) -> Error {
    Error::malformed(d.position(), format!("{what}: {e}"))
}

impl<'b> Dec<'b> {
    pub(crate) fn new(bytes: &'b [u8]) -> Self {
        Dec { d: Decoder::new(bytes) }
    }
    pub(crate) fn position(&self) -> usize {
        self.d.position()
    }
    pub(crate) fn at_end(&self) -> bool {
        self.d.position() >= self.d.input().len()
    }
    pub(crate) fn expect_end(&self, what: &str) -> Result<()> {
        if self.at_end() {
            Ok(())
        } else {
            Err(Error::malformed(
                self.position(),
                format!("trailing bytes after {what}"),
            ))
        }
    }
    pub(crate) fn datatype(&self) -> Result<Type> {
        self.d
            .datatype()
            .map_err(|e| err(&self.d, "unexpected end of input", e))
    }
    pub(crate) fn uint(&mut self, what: &str) -> Result<u64> {
        self.d.u64().map_err(|e| err(&self.d, what, e))
    }
    pub(crate) fn int(&mut self, what: &str) -> Result<i64> {
        self.d.i64().map_err(|e| err(&self.d, what, e))
    }
    pub(crate) fn bytes(&mut self, what: &str) -> Result<&'b [u8]> {
        self.d.bytes().map_err(|e| err(&self.d, what, e))
    }
    pub(crate) fn text(&mut self, what: &str) -> Result<&'b str> {
        self.d.str().map_err(|e| err(&self.d, what, e))
    }
    pub(crate) fn bool(&mut self, what: &str) -> Result<bool> {
        self.d.bool().map_err(|e| err(&self.d, what, e))
    }
    pub(crate) fn null(&mut self, what: &str) -> Result<()> {
        self.d.null().map_err(|e| err(&self.d, what, e))
    }
    /// A definite-length array header; SUIT requires definite lengths.
    pub(crate) fn array(&mut self, what: &str) -> Result<u64> {
        let pos = self.position();
        match self.d.array().map_err(|e| err(&self.d, what, e))? {
            Some(n) => Ok(n),
            None => Err(Error::malformed(pos, format!("{what}: indefinite-length array"))),
        }
    }
    /// A definite-length map header.
    pub(crate) fn map(&mut self, what: &str) -> Result<u64> {
        let pos = self.position();
        match self.d.map().map_err(|e| err(&self.d, what, e))? {
            Some(n) => Ok(n),
            None => Err(Error::malformed(pos, format!("{what}: indefinite-length map"))),
        }
    }
    pub(crate) fn tag(&mut self, what: &str) -> Result<u64> {
        self.d.tag().map(|t| t.as_u64()).map_err(|e| err(&self.d, what, e))
    }
    /// Skip one item and return its verbatim encoding.
    pub(crate) fn raw(&mut self, what: &str) -> Result<&'b [u8]> {
        let start = self.position();
        self.d.skip().map_err(|e| err(&self.d, what, e))?;
        Ok(&self.d.input()[start..self.position()])
    }
    /// A map key that is an integer (SUIT maps use integer keys, text keys only in the envelope).
    pub(crate) fn is_int(&self) -> Result<bool> {
        Ok(matches!(
            self.datatype()?,
            Type::U8 | Type::U16 | Type::U32 | Type::U64 | Type::I8 | Type::I16 | Type::I32 | Type::I64 | Type::Int
        ))
    }
}

/// The bytewise order of two keys' deterministic encodings (RFC 8949 §4.2.1).
pub(crate) fn int_key_bytes(k: i64) -> Vec<u8> {
    let mut e = Enc::new();
    e.int(k);
    e.finish()
}

/// The deterministic encoding of an unsigned key.
pub(crate) fn uint_key_bytes(k: u64) -> Vec<u8> {
    let mut e = Enc::new();
    e.uint(k);
    e.finish()
}

/// The deterministic encoding of a text key (for canonical ordering of text map keys).
pub(crate) fn text_key_bytes(k: &str) -> Vec<u8> {
    let mut e = Enc::new();
    e.text(k);
    e.finish()
}
