//! Bytes for people: escaped for messages and records, compared exactly, searched.

use std::fmt::Write as _;

/// Appends `b` escaped: CR, LF, TAB and backslash as `\r`, `\n`, `\t`, `\\`, printable ASCII as
/// is, anything else as `\xNN`. `after_lf` follows every `\n` (a real line break in multi-line
/// output); `quote` escapes `"` too (for a value shown between quotes).
fn push_escaped(s: &mut String, b: u8, after_lf: &str, quote: bool) {
    match b {
        b'\r' => s.push_str("\\r"),
        b'\n' => {
            s.push_str("\\n");
            s.push_str(after_lf);
        }
        b'\t' => s.push_str("\\t"),
        b'\\' => s.push_str("\\\\"),
        b'"' if quote => s.push_str("\\\""),
        0x20..=0x7e => s.push(b as char),
        _ => {
            let _ = write!(s, "\\x{b:02x}");
        }
    }
}

/// Bytes as one readable line, nothing cut: CR, LF, TAB, backslash and non-printable bytes
/// escaped (the peer runner's JSON records).
pub fn escape(bytes: &[u8]) -> String {
    let mut s = String::new();
    for &b in bytes {
        push_escaped(&mut s, b, "", false);
    }
    s
}

/// Bytes as one line to show between double quotes: as [`escape`], `"` escaped too, and only the
/// first 4000 bytes (the fuzz reports).
pub fn escape_quoted(bytes: &[u8]) -> String {
    let mut s = String::new();
    for &b in bytes.iter().take(4000) {
        push_escaped(&mut s, b, "", true);
    }
    if bytes.len() > 4000 {
        s.push_str("...(truncated)");
    }
    s
}

/// Bytes shown readably in a failure message: escaped as [`escape`], with a real line break (and
/// an indent) after each `\n`, cut at 4000 characters.
pub fn show(bytes: &[u8]) -> String {
    let mut s = String::new();
    for &b in bytes {
        push_escaped(&mut s, b, "\n    ", false);
    }
    if s.len() > 4000 {
        let mut cut = 4000;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
        s.push_str("... (truncated)");
    }
    s
}

/// Compares bytes exactly; on mismatch, both sides escaped and the first differing offset.
pub fn check_bytes(what: &str, expected: &[u8], actual: &[u8]) -> Result<(), String> {
    if expected == actual {
        return Ok(());
    }
    let at = expected.iter().zip(actual).position(|(a, b)| a != b).unwrap_or(expected.len().min(actual.len()));
    Err(format!(
        "{what}: bytes differ at offset {at} (expected {} bytes, got {})\n  expected:\n    {}\n  actual:\n    {}\n",
        expected.len(),
        actual.len(),
        show(expected),
        show(actual)
    ))
}

#[track_caller]
pub fn assert_bytes(what: &str, expected: &[u8], actual: &[u8]) {
    if let Err(e) = check_bytes(what, expected, actual) {
        panic!("{e}");
    }
}

/// The first position of `needle` in `hay`.
pub fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// RFC 9110 §5.6.2 tchar.
pub fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}
