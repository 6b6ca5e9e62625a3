//! RFC 7959 block option values: `NUM (up to 20 bits) | M | SZX`, 0–3 bytes.

/// A decoded Block1/Block2 option value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlockValue {
    /// Block number (< 2^20).
    pub num: u32,
    /// More blocks follow.
    pub more: bool,
    /// Size exponent: size = 2^(szx + 4); 7 is reserved (BERT).
    pub szx: u8,
}

/// Largest block number a 3-byte option can carry.
pub const MAX_NUM: u32 = (1 << 20) - 1;

impl BlockValue {
    /// Block size in bytes.
    #[inline]
    pub fn size(&self) -> usize {
        1usize << (self.szx as usize + 4)
    }

    /// Byte offset of this block.
    #[inline]
    pub fn offset(&self) -> usize {
        self.num as usize * self.size()
    }

    /// Parse an option value; `None` when longer than 3 bytes.
    #[inline]
    pub fn decode(value: &[u8]) -> Option<Self> {
        if value.len() > 3 {
            return None;
        }
        let v = value.iter().fold(0u32, |acc, b| (acc << 8) | u32::from(*b));
        Some(BlockValue {
            num: v >> 4,
            more: v & 0x8 != 0,
            szx: (v & 0x7) as u8,
        })
    }

    /// Encode in the fewest bytes (0 bytes for the all-zero value).
    #[inline]
    pub fn encode(&self) -> Vec<u8> {
        let v = (self.num.min(MAX_NUM) << 4) | (u32::from(self.more) << 3) | u32::from(self.szx & 0x7);
        uint_option(v)
    }
}

/// An unsigned option value in the fewest bytes (RFC 7252 §3.2 `uint`).
#[inline]
pub fn uint_option(v: u32) -> Vec<u8> {
    let bytes = v.to_be_bytes();
    let skip = bytes.iter().take_while(|b| **b == 0).count();
    bytes[skip..].to_vec()
}

/// Decode a `uint` option value (up to 4 bytes).
#[inline]
pub fn decode_uint(value: &[u8]) -> Option<u32> {
    if value.len() > 4 {
        return None;
    }
    Some(value.iter().fold(0u32, |acc, b| (acc << 8) | u32::from(*b)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table() {
        // (value bytes, num, more, szx)
        let cases: &[(&[u8], u32, bool, u8)] = &[
            (&[], 0, false, 0),
            (&[0x06], 0, false, 6),
            (&[0x0e], 0, true, 6),
            (&[0x12], 1, false, 2),
            (&[0x10, 0x06], 256, false, 6),
            (&[0xff, 0xff, 0xfe], MAX_NUM, true, 6),
        ];
        for (bytes, num, more, szx) in cases {
            let b = BlockValue::decode(bytes).unwrap();
            assert_eq!((b.num, b.more, b.szx), (*num, *more, *szx), "{bytes:02x?}");
            assert_eq!(b.encode(), *bytes);
        }
        assert_eq!(BlockValue::decode(&[1, 2, 3, 4]), None);
        assert_eq!(
            BlockValue {
                num: 4096,
                more: false,
                szx: 6
            }
            .offset(),
            4 * 1024 * 1024
        );
    }
}
