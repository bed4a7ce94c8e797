//! A minimal HPACK decoder (RFC 7541) for the alloc probe's HTTP/2 client: enough to read what
//! the proxy's `h2` encoder writes (indexed fields from the static and dynamic tables, literals
//! with or without indexing, table size updates, Huffman-coded strings), allocating nothing once
//! made, so that dhat still counts only the proxy. Each decoded field is handed to a callback as
//! bytes; names and values longer than [`MAX_STRING`] are refused (the probe's responses carry
//! short fields only).

/// Longest name or value the decoder holds.
pub const MAX_STRING: usize = 128;

/// The static table (RFC 7541 Appendix A), index 1 first.
const STATIC: [(&[u8], &[u8]); 61] = [
    (b":authority", b""),
    (b":method", b"GET"),
    (b":method", b"POST"),
    (b":path", b"/"),
    (b":path", b"/index.html"),
    (b":scheme", b"http"),
    (b":scheme", b"https"),
    (b":status", b"200"),
    (b":status", b"204"),
    (b":status", b"206"),
    (b":status", b"304"),
    (b":status", b"400"),
    (b":status", b"404"),
    (b":status", b"500"),
    (b"accept-charset", b""),
    (b"accept-encoding", b"gzip, deflate"),
    (b"accept-language", b""),
    (b"accept-ranges", b""),
    (b"accept", b""),
    (b"access-control-allow-origin", b""),
    (b"age", b""),
    (b"allow", b""),
    (b"authorization", b""),
    (b"cache-control", b""),
    (b"content-disposition", b""),
    (b"content-encoding", b""),
    (b"content-language", b""),
    (b"content-length", b""),
    (b"content-location", b""),
    (b"content-range", b""),
    (b"content-type", b""),
    (b"cookie", b""),
    (b"date", b""),
    (b"etag", b""),
    (b"expect", b""),
    (b"expires", b""),
    (b"from", b""),
    (b"host", b""),
    (b"if-match", b""),
    (b"if-modified-since", b""),
    (b"if-none-match", b""),
    (b"if-range", b""),
    (b"if-unmodified-since", b""),
    (b"last-modified", b""),
    (b"link", b""),
    (b"location", b""),
    (b"max-forwards", b""),
    (b"proxy-authenticate", b""),
    (b"proxy-authorization", b""),
    (b"range", b""),
    (b"referer", b""),
    (b"refresh", b""),
    (b"retry-after", b""),
    (b"server", b""),
    (b"set-cookie", b""),
    (b"strict-transport-security", b""),
    (b"transfer-encoding", b""),
    (b"user-agent", b""),
    (b"vary", b""),
    (b"via", b""),
    (b"www-authenticate", b""),
];

// The Huffman code (RFC 7541 Appendix B), as the `h2` crate 0.4.20 has it
// (src/hpack/huffman/table.rs, MIT licence): each symbol's code and its length in bits.
const ENCODE_CODES: [u32; 256] = [
    0x1ff8, 0x7fffd8, 0xfffffe2, 0xfffffe3, 0xfffffe4, 0xfffffe5, 0xfffffe6, 0xfffffe7, 0xfffffe8, 0xffffea, 0x3ffffffc, 0xfffffe9,
    0xfffffea, 0x3ffffffd, 0xfffffeb, 0xfffffec, 0xfffffed, 0xfffffee, 0xfffffef, 0xffffff0, 0xffffff1, 0xffffff2, 0x3ffffffe, 0xffffff3,
    0xffffff4, 0xffffff5, 0xffffff6, 0xffffff7, 0xffffff8, 0xffffff9, 0xffffffa, 0xffffffb, 0x14, 0x3f8, 0x3f9, 0xffa, 0x1ff9, 0x15, 0xf8,
    0x7fa, 0x3fa, 0x3fb, 0xf9, 0x7fb, 0xfa, 0x16, 0x17, 0x18, 0x0, 0x1, 0x2, 0x19, 0x1a, 0x1b, 0x1c, 0x1d, 0x1e, 0x1f, 0x5c, 0xfb, 0x7ffc,
    0x20, 0xffb, 0x3fc, 0x1ffa, 0x21, 0x5d, 0x5e, 0x5f, 0x60, 0x61, 0x62, 0x63, 0x64, 0x65, 0x66, 0x67, 0x68, 0x69, 0x6a, 0x6b, 0x6c, 0x6d,
    0x6e, 0x6f, 0x70, 0x71, 0x72, 0xfc, 0x73, 0xfd, 0x1ffb, 0x7fff0, 0x1ffc, 0x3ffc, 0x22, 0x7ffd, 0x3, 0x23, 0x4, 0x24, 0x5, 0x25, 0x26,
    0x27, 0x6, 0x74, 0x75, 0x28, 0x29, 0x2a, 0x7, 0x2b, 0x76, 0x2c, 0x8, 0x9, 0x2d, 0x77, 0x78, 0x79, 0x7a, 0x7b, 0x7ffe, 0x7fc, 0x3ffd,
    0x1ffd, 0xffffffc, 0xfffe6, 0x3fffd2, 0xfffe7, 0xfffe8, 0x3fffd3, 0x3fffd4, 0x3fffd5, 0x7fffd9, 0x3fffd6, 0x7fffda, 0x7fffdb, 0x7fffdc,
    0x7fffdd, 0x7fffde, 0xffffeb, 0x7fffdf, 0xffffec, 0xffffed, 0x3fffd7, 0x7fffe0, 0xffffee, 0x7fffe1, 0x7fffe2, 0x7fffe3, 0x7fffe4,
    0x1fffdc, 0x3fffd8, 0x7fffe5, 0x3fffd9, 0x7fffe6, 0x7fffe7, 0xffffef, 0x3fffda, 0x1fffdd, 0xfffe9, 0x3fffdb, 0x3fffdc, 0x7fffe8,
    0x7fffe9, 0x1fffde, 0x7fffea, 0x3fffdd, 0x3fffde, 0xfffff0, 0x1fffdf, 0x3fffdf, 0x7fffeb, 0x7fffec, 0x1fffe0, 0x1fffe1, 0x3fffe0,
    0x1fffe2, 0x7fffed, 0x3fffe1, 0x7fffee, 0x7fffef, 0xfffea, 0x3fffe2, 0x3fffe3, 0x3fffe4, 0x7ffff0, 0x3fffe5, 0x3fffe6, 0x7ffff1,
    0x3ffffe0, 0x3ffffe1, 0xfffeb, 0x7fff1, 0x3fffe7, 0x7ffff2, 0x3fffe8, 0x1ffffec, 0x3ffffe2, 0x3ffffe3, 0x3ffffe4, 0x7ffffde, 0x7ffffdf,
    0x3ffffe5, 0xfffff1, 0x1ffffed, 0x7fff2, 0x1fffe3, 0x3ffffe6, 0x7ffffe0, 0x7ffffe1, 0x3ffffe7, 0x7ffffe2, 0xfffff2, 0x1fffe4, 0x1fffe5,
    0x3ffffe8, 0x3ffffe9, 0xffffffd, 0x7ffffe3, 0x7ffffe4, 0x7ffffe5, 0xfffec, 0xfffff3, 0xfffed, 0x1fffe6, 0x3fffe9, 0x1fffe7, 0x1fffe8,
    0x7ffff3, 0x3fffea, 0x3fffeb, 0x1ffffee, 0x1ffffef, 0xfffff4, 0xfffff5, 0x3ffffea, 0x7ffff4, 0x3ffffeb, 0x7ffffe6, 0x3ffffec,
    0x3ffffed, 0x7ffffe7, 0x7ffffe8, 0x7ffffe9, 0x7ffffea, 0x7ffffeb, 0xffffffe, 0x7ffffec, 0x7ffffed, 0x7ffffee, 0x7ffffef, 0x7fffff0,
    0x3ffffee,
];

const ENCODE_CODE_LENGTHS: [u8; 256] = [
    13, 23, 28, 28, 28, 28, 28, 28, 28, 24, 30, 28, 28, 30, 28, 28, 28, 28, 28, 28, 28, 28, 30, 28, 28, 28, 28, 28, 28, 28, 28, 28, 6, 10,
    10, 12, 13, 6, 8, 11, 10, 10, 8, 11, 8, 6, 6, 6, 5, 5, 5, 6, 6, 6, 6, 6, 6, 6, 7, 8, 15, 6, 12, 10, 13, 6, 7, 7, 7, 7, 7, 7, 7, 7, 7,
    7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 8, 7, 8, 13, 19, 13, 14, 6, 15, 5, 6, 5, 6, 5, 6, 6, 6, 5, 7, 7, 6, 6, 6, 5, 6, 7, 6, 5, 5, 6,
    7, 7, 7, 7, 7, 15, 11, 14, 13, 28, 20, 22, 20, 20, 22, 22, 22, 23, 22, 23, 23, 23, 23, 23, 24, 23, 24, 24, 22, 23, 24, 23, 23, 23, 23,
    21, 22, 23, 22, 23, 23, 24, 22, 21, 20, 22, 22, 23, 23, 21, 23, 22, 22, 24, 21, 22, 23, 23, 21, 21, 22, 21, 23, 22, 23, 23, 20, 22, 22,
    22, 23, 22, 22, 23, 26, 26, 20, 19, 22, 23, 22, 25, 26, 26, 26, 27, 27, 26, 24, 25, 19, 21, 26, 27, 27, 26, 27, 24, 21, 21, 26, 26, 28,
    27, 27, 27, 20, 24, 20, 21, 22, 21, 21, 23, 22, 22, 25, 25, 24, 24, 26, 23, 26, 27, 26, 26, 27, 27, 27, 27, 27, 28, 27, 27, 27, 27, 27,
    26,
];

/// A dynamic-table entry, held in fixed arrays.
#[derive(Clone, Copy)]
struct Entry {
    name: [u8; MAX_STRING],
    nlen: usize,
    value: [u8; MAX_STRING],
    vlen: usize,
}

const EMPTY: Entry = Entry { name: [0; MAX_STRING], nlen: 0, value: [0; MAX_STRING], vlen: 0 };
/// Most entries a 4,096-byte table holds (32 bytes of overhead each).
const SLOTS: usize = 128;

/// One connection's decoding state (the dynamic table, 4,096 bytes: the client never changes
/// SETTINGS_HEADER_TABLE_SIZE).
pub struct Decoder {
    /// A ring: `newest` is dynamic index 1, the one before it 2, ...
    table: Box<[Entry]>,
    newest: usize,
    count: usize,
    size: usize,
    max_size: usize,
}

impl std::fmt::Debug for Decoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Decoder").field("count", &self.count).field("size", &self.size).finish_non_exhaustive()
    }
}

/// Why a header block could not be decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Invalid(pub &'static str);

impl Default for Decoder {
    fn default() -> Self {
        Decoder::new()
    }
}

/// A string read out of a block: plain, or Huffman-decoded into `buf`.
struct Str {
    buf: [u8; MAX_STRING],
    len: usize,
}

impl Str {
    fn bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

impl Decoder {
    pub fn new() -> Decoder {
        Decoder { table: vec![EMPTY; SLOTS].into_boxed_slice(), newest: 0, count: 0, size: 0, max_size: 4096 }
    }

    /// Decodes one whole header block, calling `field(name, value)` for each field in order.
    pub fn decode(&mut self, mut block: &[u8], mut field: impl FnMut(&[u8], &[u8])) -> Result<(), Invalid> {
        while let Some(&b) = block.first() {
            if b & 0x80 != 0 {
                // Indexed field.
                let i = int(&mut block, 7)?;
                let (name, value) = self.get(i)?;
                field(name, value);
            } else if b & 0xe0 == 0x20 {
                // Dynamic table size update.
                let n = int(&mut block, 5)?;
                if n > 4096 {
                    return Err(Invalid("a table size update over the client's SETTINGS_HEADER_TABLE_SIZE"));
                }
                self.max_size = n;
                self.evict(0);
            } else {
                // Literal: with incremental indexing (01), without (0000) or never indexed (0001).
                let (indexing, prefix) = if b & 0x40 != 0 { (true, 6) } else { (false, 4) };
                let i = int(&mut block, prefix)?;
                let mut name = Str { buf: [0; MAX_STRING], len: 0 };
                if i == 0 {
                    name = string(&mut block)?;
                } else {
                    let n = self.get(i)?.0;
                    name.buf[..n.len()].copy_from_slice(n);
                    name.len = n.len();
                }
                let value = string(&mut block)?;
                field(name.bytes(), value.bytes());
                if indexing {
                    self.insert(name.bytes(), value.bytes());
                }
            }
        }
        Ok(())
    }

    fn get(&self, i: usize) -> Result<(&[u8], &[u8]), Invalid> {
        if i == 0 {
            return Err(Invalid("index 0"));
        }
        if i <= STATIC.len() {
            return Ok(STATIC[i - 1]);
        }
        let d = i - STATIC.len() - 1;
        if d >= self.count {
            return Err(Invalid("an index past the dynamic table"));
        }
        let e = &self.table[(self.newest + SLOTS - d) % SLOTS];
        Ok((&e.name[..e.nlen], &e.value[..e.vlen]))
    }

    /// Drops the oldest entries until `room` more bytes fit.
    fn evict(&mut self, room: usize) {
        while self.count > 0 && self.size + room > self.max_size {
            let e = &self.table[(self.newest + SLOTS - (self.count - 1)) % SLOTS];
            self.size -= e.nlen + e.vlen + 32;
            self.count -= 1;
        }
    }

    fn insert(&mut self, name: &[u8], value: &[u8]) {
        let size = name.len() + value.len() + 32;
        self.evict(size);
        if size > self.max_size {
            return; // RFC 7541 §4.4: the table is left empty
        }
        self.newest = (self.newest + 1) % SLOTS;
        let e = &mut self.table[self.newest];
        e.name[..name.len()].copy_from_slice(name);
        e.nlen = name.len();
        e.value[..value.len()].copy_from_slice(value);
        e.vlen = value.len();
        self.count += 1;
        self.size += size;
    }
}

/// An integer with an `n`-bit prefix (RFC 7541 §5.1).
fn int(block: &mut &[u8], n: u32) -> Result<usize, Invalid> {
    let (&first, rest) = block.split_first().ok_or(Invalid("a block that ends inside an integer"))?;
    *block = rest;
    let max = (1usize << n) - 1;
    let mut v = usize::from(first) & max;
    if v < max {
        return Ok(v);
    }
    let mut shift = 0;
    loop {
        let (&b, rest) = block.split_first().ok_or(Invalid("a block that ends inside an integer"))?;
        *block = rest;
        if shift > 21 {
            return Err(Invalid("an integer too large"));
        }
        v += usize::from(b & 0x7f) << shift;
        shift += 7;
        if b & 0x80 == 0 {
            return Ok(v);
        }
    }
}

/// A string literal (RFC 7541 §5.2), Huffman-decoded if so coded.
fn string(block: &mut &[u8]) -> Result<Str, Invalid> {
    let huffman = block.first().is_some_and(|b| b & 0x80 != 0);
    let len = int(block, 7)?;
    if len > block.len() {
        return Err(Invalid("a string longer than its block"));
    }
    let (raw, rest) = block.split_at(len);
    *block = rest;
    let mut s = Str { buf: [0; MAX_STRING], len: 0 };
    if !huffman {
        if len > MAX_STRING {
            return Err(Invalid("a string longer than the client holds"));
        }
        s.buf[..len].copy_from_slice(raw);
        s.len = len;
        return Ok(s);
    }
    // Bit by bit: the code read so far, matched against every symbol of its length.
    let (mut code, mut bits) = (0u32, 0u8);
    for &byte in raw {
        for k in (0..8).rev() {
            code = (code << 1) | u32::from((byte >> k) & 1);
            bits += 1;
            if bits > 30 {
                return Err(Invalid("a Huffman code longer than any symbol's"));
            }
            if let Some(sym) = (0..256).find(|&i| ENCODE_CODE_LENGTHS[i] == bits && ENCODE_CODES[i] == code) {
                if s.len == MAX_STRING {
                    return Err(Invalid("a string longer than the client holds"));
                }
                s.buf[s.len] = sym as u8;
                s.len += 1;
                (code, bits) = (0, 0);
            }
        }
    }
    // Padding: fewer than 8 bits, all ones (the EOS code's most significant bits).
    if bits >= 8 || code != (1 << bits) - 1 {
        return Err(Invalid("bad Huffman padding"));
    }
    Ok(s)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn all(d: &mut Decoder, block: &[u8]) -> Vec<(String, String)> {
        let mut v = Vec::new();
        d.decode(block, |n, x| v.push((String::from_utf8_lossy(n).into_owned(), String::from_utf8_lossy(x).into_owned()))).unwrap();
        v
    }

    /// RFC 7541 C.4 (requests with Huffman coding, one connection) and C.3's first block.
    #[test]
    fn rfc_7541_examples() {
        let mut d = Decoder::new();
        let c41 = [0x82, 0x86, 0x84, 0x41, 0x8c, 0xf1, 0xe3, 0xc2, 0xe5, 0xf2, 0x3a, 0x6b, 0xa0, 0xab, 0x90, 0xf4, 0xff];
        let f = all(&mut d, &c41);
        assert_eq!(f[3], (":authority".into(), "www.example.com".into()));
        let c42 = [0x82, 0x86, 0x84, 0xbe, 0x58, 0x86, 0xa8, 0xeb, 0x10, 0x64, 0x9c, 0xbf];
        let f = all(&mut d, &c42);
        assert_eq!(f[3], (":authority".into(), "www.example.com".into()));
        assert_eq!(f[4], ("cache-control".into(), "no-cache".into()));
        let c43 = [
            0x82, 0x87, 0x85, 0xbf, 0x40, 0x88, 0x25, 0xa8, 0x49, 0xe9, 0x5b, 0xa9, 0x7d, 0x7f, 0x89, 0x25, 0xa8, 0x49, 0xe9, 0x5b, 0xb8,
            0xe8, 0xb4, 0xbf,
        ];
        let f = all(&mut d, &c43);
        assert_eq!(f[2], (":path".into(), "/index.html".into()));
        assert_eq!(f[3], (":authority".into(), "www.example.com".into()));
        assert_eq!(f[4], ("custom-key".into(), "custom-value".into()));
        assert_eq!(d.count, 3);
        assert_eq!(d.size, 164);
        let mut d = Decoder::new();
        let c31 = b"\x82\x86\x84\x41\x0fwww.example.com";
        assert_eq!(all(&mut d, c31)[3], (":authority".into(), "www.example.com".into()));
        assert!(d.decode(&[0x80 | 0x7f, 0x10], |_, _| {}).is_err(), "an index past the table");
    }
}
