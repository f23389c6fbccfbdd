//! A small JSON reader and writer for the seed's state file.
//!
//! The state file must survive a round trip through tm unchanged in everything tm did not touch: key
//! order, number spelling (`1.0` stays `1.0`, big integers stay exact) and the values Python's `json`
//! module accepts beyond RFC 8259 (`NaN`, `Infinity`, `-Infinity`). So values tm does not interpret
//! (task data, metadata values, unknown keys) are kept as *text*: validated and minified on the way
//! in, re-indented on the way out. Strings tm does interpret (ids, types, statuses, timestamps) are
//! decoded, and written back the way Python's `json.dump(obj, f, indent=2)` writes them
//! (`ensure_ascii`, lowercase `\uXXXX` escapes), so a file tm writes is the file the seed would write.

use std::fmt;

/// A syntax error at a byte offset of the input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SyntaxError {
    /// Byte offset of the offending input.
    pub pos: usize,
    /// What was expected or found.
    pub message: String,
}

impl SyntaxError {
    fn new(pos: usize, message: impl Into<String>) -> Self {
        SyntaxError {
            pos,
            message: message.into(),
        }
    }

    /// 1-based line and column of `pos` in `input` (column counted in bytes).
    pub fn line_col(&self, input: &[u8]) -> (usize, usize) {
        let pos = self.pos.min(input.len());
        let before = &input[..pos];
        let line = before.iter().filter(|&&b| b == b'\n').count() + 1;
        let col = pos
            - before
                .iter()
                .rposition(|&b| b == b'\n')
                .map_or(0, |i| i + 1)
            + 1;
        (line, col)
    }
}

impl fmt::Display for SyntaxError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (byte {})", self.message, self.pos)
    }
}

type Result<T> = std::result::Result<T, SyntaxError>;

/// The kind of a JSON value, from its first byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Object,
    Array,
    String,
    Number,
    Bool,
    Null,
}

/// A cursor over JSON text. The input must be valid UTF-8 (checked by the caller for whole files).
pub(crate) struct Reader<'a> {
    b: &'a [u8],
    /// Current byte offset.
    pub pos: usize,
}

/// Nesting deeper than this is refused rather than risking the stack.
const MAX_DEPTH: usize = 512;

impl<'a> Reader<'a> {
    pub fn new(b: &'a [u8]) -> Self {
        Reader { b, pos: 0 }
    }

    /// Skips JSON whitespace.
    #[inline]
    pub fn ws(&mut self) {
        while let Some(&c) = self.b.get(self.pos) {
            if c == b' ' || c == b'\n' || c == b'\r' || c == b'\t' {
                self.pos += 1;
            } else {
                break;
            }
        }
    }

    fn err<T>(&self, message: impl Into<String>) -> Result<T> {
        Err(SyntaxError::new(self.pos, message))
    }

    fn unexpected<T>(&self, what: &str) -> Result<T> {
        match self.b.get(self.pos) {
            None => self.err(format!("unexpected end of input, expected {what}")),
            Some(&c) if c.is_ascii_graphic() => {
                self.err(format!("unexpected {:?}, expected {what}", c as char))
            }
            Some(&c) => self.err(format!("unexpected byte 0x{c:02x}, expected {what}")),
        }
    }

    /// Kind of the value at the cursor (after whitespace), without consuming it.
    pub fn peek_kind(&mut self) -> Result<Kind> {
        self.ws();
        Ok(match self.b.get(self.pos) {
            Some(b'{') => Kind::Object,
            Some(b'[') => Kind::Array,
            Some(b'"') => Kind::String,
            Some(b't' | b'f') => Kind::Bool,
            Some(b'n') => Kind::Null,
            Some(b'-' | b'0'..=b'9' | b'N' | b'I') => Kind::Number,
            _ => return self.unexpected("a value"),
        })
    }

    /// Requires the end of input (whitespace allowed).
    pub fn end(&mut self) -> Result<()> {
        self.ws();
        if self.pos == self.b.len() {
            Ok(())
        } else {
            self.unexpected("end of input")
        }
    }

    /// Iterates the members of an object: `f` is called with each key and must consume the value.
    pub fn object(&mut self, mut f: impl FnMut(&mut Self, String) -> Result<()>) -> Result<()> {
        self.members(|r| {
            let key = r.key()?;
            f(r, key)
        })
    }

    /// Iterates the members of an object: `f` is called at the start of each (the reader's
    /// position is the key's opening quote) and must consume the member, usually with
    /// [`Reader::key`] and then the value.
    pub fn members(&mut self, mut f: impl FnMut(&mut Self) -> Result<()>) -> Result<()> {
        self.ws();
        if self.b.get(self.pos) != Some(&b'{') {
            return self.unexpected("'{'");
        }
        self.pos += 1;
        self.ws();
        if self.b.get(self.pos) == Some(&b'}') {
            self.pos += 1;
            return Ok(());
        }
        loop {
            self.ws();
            if self.b.get(self.pos) != Some(&b'"') {
                return self.unexpected("a string key");
            }
            f(self)?;
            self.ws();
            match self.b.get(self.pos) {
                Some(b',') => self.pos += 1,
                Some(b'}') => {
                    self.pos += 1;
                    return Ok(());
                }
                _ => return self.unexpected("',' or '}'"),
            }
        }
    }

    /// Reads a member's key and the `:` after it.
    pub fn key(&mut self) -> Result<String> {
        let key = self.string()?;
        self.ws();
        if self.b.get(self.pos) != Some(&b':') {
            return self.unexpected("':'");
        }
        self.pos += 1;
        Ok(key)
    }

    /// Decodes a string value. Lone surrogates (which Rust strings cannot hold) are an error.
    pub fn string(&mut self) -> Result<String> {
        self.ws();
        if self.b.get(self.pos) != Some(&b'"') {
            return self.unexpected("a string");
        }
        let start = self.pos + 1;
        let mut i = start;
        // Fast path: no escapes.
        loop {
            match self.b.get(i) {
                None => {
                    self.pos = i;
                    return self.err("unterminated string");
                }
                Some(b'"') => {
                    let s = &self.b[start..i];
                    self.pos = i + 1;
                    return match std::str::from_utf8(s) {
                        Ok(s) => Ok(s.to_owned()),
                        Err(_) => Err(SyntaxError::new(start, "invalid UTF-8 in string")),
                    };
                }
                Some(b'\\') => break,
                Some(&c) if c < 0x20 => {
                    self.pos = i;
                    return self.err("control character in string");
                }
                Some(_) => i += 1,
            }
        }
        let mut out: Vec<u8> = self.b[start..i].to_vec();
        loop {
            match self.b.get(i) {
                None => {
                    self.pos = i;
                    return self.err("unterminated string");
                }
                Some(b'"') => {
                    self.pos = i + 1;
                    return String::from_utf8(out)
                        .map_err(|_| SyntaxError::new(start, "invalid UTF-8 in string"));
                }
                Some(b'\\') => {
                    let esc = self.b.get(i + 1).copied();
                    i += 2;
                    match esc {
                        Some(b'"') => out.push(b'"'),
                        Some(b'\\') => out.push(b'\\'),
                        Some(b'/') => out.push(b'/'),
                        Some(b'b') => out.push(0x08),
                        Some(b'f') => out.push(0x0c),
                        Some(b'n') => out.push(b'\n'),
                        Some(b'r') => out.push(b'\r'),
                        Some(b't') => out.push(b'\t'),
                        Some(b'u') => {
                            let hi = self.hex4(i)?;
                            i += 4;
                            let cp = if (0xD800..0xDC00).contains(&hi) {
                                if self.b.get(i) == Some(&b'\\') && self.b.get(i + 1) == Some(&b'u')
                                {
                                    let lo = self.hex4(i + 2)?;
                                    if (0xDC00..0xE000).contains(&lo) {
                                        i += 6;
                                        0x10000 + ((hi - 0xD800) << 10) + (lo - 0xDC00)
                                    } else {
                                        self.pos = i;
                                        return self.err("unpaired surrogate in string");
                                    }
                                } else {
                                    self.pos = i;
                                    return self.err("unpaired surrogate in string");
                                }
                            } else if (0xDC00..0xE000).contains(&hi) {
                                self.pos = i;
                                return self.err("unpaired surrogate in string");
                            } else {
                                hi
                            };
                            let ch = char::from_u32(cp).unwrap_or(char::REPLACEMENT_CHARACTER);
                            let mut buf = [0u8; 4];
                            out.extend_from_slice(ch.encode_utf8(&mut buf).as_bytes());
                        }
                        _ => {
                            self.pos = i - 1;
                            return self.err("invalid escape in string");
                        }
                    }
                }
                Some(&c) if c < 0x20 => {
                    self.pos = i;
                    return self.err("control character in string");
                }
                Some(&c) => {
                    out.push(c);
                    i += 1;
                }
            }
        }
    }

    fn hex4(&self, at: usize) -> Result<u32> {
        let h = self
            .b
            .get(at..at + 4)
            .ok_or_else(|| SyntaxError::new(at, "truncated \\u escape"))?;
        let mut v = 0u32;
        for &c in h {
            let d = (c as char)
                .to_digit(16)
                .ok_or_else(|| SyntaxError::new(at, "invalid \\u escape"))?;
            v = v * 16 + d;
        }
        Ok(v)
    }

    /// Validates a string and copies it (quotes and escapes as written) to `out`.
    fn copy_string(&mut self, out: &mut Vec<u8>) -> Result<()> {
        let start = self.pos;
        let mut i = start + 1;
        loop {
            match self.b.get(i) {
                None => {
                    self.pos = i;
                    return self.err("unterminated string");
                }
                Some(b'"') => {
                    i += 1;
                    break;
                }
                Some(b'\\') => {
                    match self.b.get(i + 1) {
                        Some(b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't') => i += 2,
                        Some(b'u') => {
                            self.hex4(i + 2)?;
                            i += 6;
                        }
                        _ => {
                            self.pos = i;
                            return self.err("invalid escape in string");
                        }
                    };
                }
                Some(&c) if c < 0x20 => {
                    self.pos = i;
                    return self.err("control character in string");
                }
                Some(_) => i += 1,
            }
        }
        out.extend_from_slice(&self.b[start..i]);
        self.pos = i;
        Ok(())
    }

    fn copy_number(&mut self, out: &mut Vec<u8>) -> Result<()> {
        let start = self.pos;
        let b = self.b;
        let mut i = start;
        for word in [&b"NaN"[..], b"Infinity", b"-Infinity"] {
            if b[i..].starts_with(word) {
                i += word.len();
                out.extend_from_slice(&b[start..i]);
                self.pos = i;
                return Ok(());
            }
        }
        if b.get(i) == Some(&b'-') {
            i += 1;
        }
        match b.get(i) {
            Some(b'0') => i += 1,
            Some(b'1'..=b'9') => {
                while matches!(b.get(i), Some(b'0'..=b'9')) {
                    i += 1;
                }
            }
            _ => {
                self.pos = i;
                return self.unexpected("a digit");
            }
        }
        if b.get(i) == Some(&b'.') {
            i += 1;
            if !matches!(b.get(i), Some(b'0'..=b'9')) {
                self.pos = i;
                return self.unexpected("a digit after '.'");
            }
            while matches!(b.get(i), Some(b'0'..=b'9')) {
                i += 1;
            }
        }
        if matches!(b.get(i), Some(b'e' | b'E')) {
            i += 1;
            if matches!(b.get(i), Some(b'+' | b'-')) {
                i += 1;
            }
            if !matches!(b.get(i), Some(b'0'..=b'9')) {
                self.pos = i;
                return self.unexpected("a digit in the exponent");
            }
            while matches!(b.get(i), Some(b'0'..=b'9')) {
                i += 1;
            }
        }
        out.extend_from_slice(&b[start..i]);
        self.pos = i;
        Ok(())
    }

    fn copy_word(&mut self, word: &[u8], out: &mut Vec<u8>) -> Result<()> {
        if self.b[self.pos..].starts_with(word) {
            out.extend_from_slice(word);
            self.pos += word.len();
            Ok(())
        } else {
            self.unexpected("a value")
        }
    }

    /// Validates one value and appends its minified text to `out`.
    pub fn value_minified(&mut self, out: &mut Vec<u8>) -> Result<()> {
        self.value_at_depth(out, 0)
    }

    fn value_at_depth(&mut self, out: &mut Vec<u8>, depth: usize) -> Result<()> {
        if depth > MAX_DEPTH {
            return self.err("nesting too deep");
        }
        match self.peek_kind()? {
            Kind::String => self.copy_string(out),
            Kind::Number => self.copy_number(out),
            Kind::Bool => {
                if self.b[self.pos] == b't' {
                    self.copy_word(b"true", out)
                } else {
                    self.copy_word(b"false", out)
                }
            }
            Kind::Null => self.copy_word(b"null", out),
            Kind::Object => {
                self.pos += 1;
                out.push(b'{');
                self.ws();
                if self.b.get(self.pos) == Some(&b'}') {
                    self.pos += 1;
                    out.push(b'}');
                    return Ok(());
                }
                loop {
                    self.ws();
                    if self.b.get(self.pos) != Some(&b'"') {
                        return self.unexpected("a string key");
                    }
                    self.copy_string(out)?;
                    self.ws();
                    if self.b.get(self.pos) != Some(&b':') {
                        return self.unexpected("':'");
                    }
                    self.pos += 1;
                    out.push(b':');
                    self.value_at_depth(out, depth + 1)?;
                    self.ws();
                    match self.b.get(self.pos) {
                        Some(b',') => {
                            self.pos += 1;
                            out.push(b',');
                        }
                        Some(b'}') => {
                            self.pos += 1;
                            out.push(b'}');
                            return Ok(());
                        }
                        _ => return self.unexpected("',' or '}'"),
                    }
                }
            }
            Kind::Array => {
                self.pos += 1;
                out.push(b'[');
                self.ws();
                if self.b.get(self.pos) == Some(&b']') {
                    self.pos += 1;
                    out.push(b']');
                    return Ok(());
                }
                loop {
                    self.value_at_depth(out, depth + 1)?;
                    self.ws();
                    match self.b.get(self.pos) {
                        Some(b',') => {
                            self.pos += 1;
                            out.push(b',');
                        }
                        Some(b']') => {
                            self.pos += 1;
                            out.push(b']');
                            return Ok(());
                        }
                        _ => return self.unexpected("',' or ']'"),
                    }
                }
            }
        }
    }

    /// Moves past one value *without validating it*: only for text that will be compared byte
    /// for byte with text already validated. Fails only if the input ends first.
    pub fn skip_unchecked(&mut self) -> Result<()> {
        self.ws();
        let b = self.b;
        let mut i = self.pos;
        let mut depth = 0usize;
        loop {
            match b.get(i) {
                None => {
                    self.pos = i;
                    return self.err("unexpected end of input");
                }
                Some(b'"') => {
                    i += 1;
                    loop {
                        match b.get(i) {
                            None => break,
                            Some(b'"') => {
                                i += 1;
                                break;
                            }
                            Some(b'\\') => i += 2,
                            Some(_) => i += 1,
                        }
                    }
                    if depth == 0 {
                        break;
                    }
                }
                Some(b'{' | b'[') => {
                    depth += 1;
                    i += 1;
                }
                Some(b'}' | b']') => {
                    i += 1;
                    depth = depth.saturating_sub(1);
                    if depth == 0 {
                        break;
                    }
                }
                Some(_) if depth > 0 => i += 1,
                Some(_) => {
                    while i < b.len()
                        && !matches!(b[i], b',' | b'}' | b']' | b' ' | b'\n' | b'\r' | b'\t')
                    {
                        i += 1;
                    }
                    break;
                }
            }
        }
        self.pos = i.min(b.len());
        Ok(())
    }

    /// Reads `null` (returning None) or a string.
    pub fn opt_string(&mut self) -> Result<Option<String>> {
        match self.peek_kind()? {
            Kind::Null if self.b[self.pos..].starts_with(b"null") => {
                self.pos += 4;
                Ok(None)
            }
            Kind::String => self.string().map(Some),
            _ => self.unexpected("a string or null"),
        }
    }

    /// Reads a value and returns its minified text.
    pub fn raw(&mut self) -> Result<Vec<u8>> {
        let mut out = Vec::new();
        self.value_minified(&mut out)?;
        Ok(out)
    }
}

/// Decodes `text` if it is exactly one JSON string.
pub(crate) fn decode_string(text: &[u8]) -> Option<String> {
    let mut r = Reader::new(text);
    let s = r.string().ok()?;
    r.end().ok()?;
    Some(s)
}

/// Validates `text` as exactly one JSON value and returns it minified.
pub(crate) fn minify(text: &[u8]) -> Result<Vec<u8>> {
    let mut r = Reader::new(text);
    let mut out = Vec::with_capacity(text.len());
    r.value_minified(&mut out)?;
    r.end()?;
    Ok(out)
}

/// The members of a JSON object given as minified text: (decoded key, minified value text).
pub(crate) fn object_members(text: &[u8]) -> Result<Vec<(String, Vec<u8>)>> {
    let mut r = Reader::new(text);
    let mut members = Vec::new();
    r.object(|r, key| {
        let v = r.raw()?;
        members.push((key, v));
        Ok(())
    })?;
    r.end()?;
    Ok(members)
}

/// Writes a JSON object from members (keys decoded, values as minified text), minified.
pub(crate) fn object_text(members: &[(String, Vec<u8>)]) -> Vec<u8> {
    let mut out = Vec::new();
    out.push(b'{');
    for (i, (k, v)) in members.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        write_str(&mut out, k);
        out.push(b':');
        out.extend_from_slice(v);
    }
    out.push(b'}');
    out
}

/// Sets `key` in `members` (replacing in place, or appending), as Python's `dict.__setitem__`.
pub(crate) fn set_member(members: &mut Vec<(String, Vec<u8>)>, key: &str, value: Vec<u8>) {
    match members.iter_mut().find(|(k, _)| k == key) {
        Some(m) => m.1 = value,
        None => members.push((key.to_owned(), value)),
    }
}

/// Appends `n` levels of two-space indentation.
#[inline]
pub(crate) fn indent(out: &mut Vec<u8>, n: usize) {
    const SPACES: &[u8] = &[b' '; 64];
    let mut k = 2 * n;
    while k > 0 {
        let m = k.min(SPACES.len());
        out.extend_from_slice(&SPACES[..m]);
        k -= m;
    }
}

/// Appends minified JSON `text` re-indented as Python's `json.dump(indent=2)` writes a value that
/// sits at nesting level `depth` (its members go at `depth + 1`). Strings are copied as written.
pub(crate) fn write_pretty(out: &mut Vec<u8>, text: &[u8], depth: usize) {
    let mut d = depth;
    let mut i = 0;
    while i < text.len() {
        let c = text[i];
        match c {
            b'"' => {
                let start = i;
                i += 1;
                while i < text.len() {
                    match text[i] {
                        b'\\' => i += 2,
                        b'"' => {
                            i += 1;
                            break;
                        }
                        _ => i += 1,
                    }
                }
                out.extend_from_slice(&text[start..i.min(text.len())]);
                continue;
            }
            b'{' | b'[' => {
                let close = if c == b'{' { b'}' } else { b']' };
                if text.get(i + 1) == Some(&close) {
                    out.push(c);
                    out.push(close);
                    i += 2;
                    continue;
                }
                out.push(c);
                out.push(b'\n');
                d += 1;
                indent(out, d);
            }
            b'}' | b']' => {
                out.push(b'\n');
                d = d.saturating_sub(1);
                indent(out, d);
                out.push(c);
            }
            b',' => {
                out.extend_from_slice(b",\n");
                indent(out, d);
            }
            b':' => out.extend_from_slice(b": "),
            _ => out.push(c),
        }
        i += 1;
    }
}

/// Appends `s` as a JSON string the way Python's `json.dumps` writes it (`ensure_ascii=True`).
pub(crate) fn write_str(out: &mut Vec<u8>, s: &str) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out.push(b'"');
    let bytes = s.as_bytes();
    // Fast path for the common all-printable-ASCII string.
    if bytes
        .iter()
        .all(|&c| (0x20..0x7f).contains(&c) && c != b'"' && c != b'\\')
    {
        out.extend_from_slice(bytes);
        out.push(b'"');
        return;
    }
    let u = |out: &mut Vec<u8>, v: u32| {
        out.extend_from_slice(b"\\u");
        for shift in [12, 8, 4, 0] {
            out.push(HEX[((v >> shift) & 0xf) as usize]);
        }
    };
    for ch in s.chars() {
        match ch {
            '"' => out.extend_from_slice(b"\\\""),
            '\\' => out.extend_from_slice(b"\\\\"),
            '\n' => out.extend_from_slice(b"\\n"),
            '\r' => out.extend_from_slice(b"\\r"),
            '\t' => out.extend_from_slice(b"\\t"),
            '\u{08}' => out.extend_from_slice(b"\\b"),
            '\u{0c}' => out.extend_from_slice(b"\\f"),
            ' '..='~' => out.push(ch as u8),
            _ => {
                let cp = ch as u32;
                if cp >= 0x10000 {
                    let v = cp - 0x10000;
                    u(out, 0xD800 + (v >> 10));
                    u(out, 0xDC00 + (v & 0x3ff));
                } else {
                    u(out, cp);
                }
            }
        }
    }
    out.push(b'"');
}

/// `s` as minified JSON string text.
pub(crate) fn str_text(s: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(s.len() + 2);
    write_str(&mut out, s);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pretty(text: &str, depth: usize) -> String {
        let mut out = Vec::new();
        write_pretty(&mut out, &minify(text.as_bytes()).unwrap(), depth);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn minify_keeps_order_and_spelling() {
        let m =
            minify(br#" { "b" : [1.0, 2e5, -0, NaN, -Infinity], "a": {"z": null, "y": true} } "#)
                .unwrap();
        assert_eq!(
            std::str::from_utf8(&m).unwrap(),
            r#"{"b":[1.0,2e5,-0,NaN,-Infinity],"a":{"z":null,"y":true}}"#
        );
        let big = minify(b"123456789012345678901234567890").unwrap();
        assert_eq!(big, b"123456789012345678901234567890");
    }

    #[test]
    fn pretty_matches_python_indent_2() {
        // Expected text produced by `json.dumps(v, indent=2)` in CPython.
        assert_eq!(pretty(r#"{"a":1,"b":[],"c":{},"d":[1,{"e":"x"}]}"#, 0),
            "{\n  \"a\": 1,\n  \"b\": [],\n  \"c\": {},\n  \"d\": [\n    1,\n    {\n      \"e\": \"x\"\n    }\n  ]\n}");
        assert_eq!(
            pretty(r#"{"k":"a,b:{c}"}"#, 1),
            "{\n    \"k\": \"a,b:{c}\"\n  }"
        );
        assert_eq!(pretty(r#""\"{""#, 3), r#""\"{""#);
    }

    #[test]
    fn strings_escape_like_python() {
        let mut out = Vec::new();
        write_str(&mut out, "a\"b\\c\n\u{1}é€😀\u{7f}");
        assert_eq!(
            std::str::from_utf8(&out).unwrap(),
            r#""a\"b\\c\n\u0001\u00e9\u20ac\ud83d\ude00\u007f""#
        );
        let back = Reader::new(&out).string().unwrap();
        assert_eq!(back, "a\"b\\c\n\u{1}é€😀\u{7f}");
    }

    #[test]
    fn errors_have_positions() {
        let text = b"{\n  \"a\": [1, 2,]\n}";
        let e = minify(text).unwrap_err();
        assert_eq!(e.line_col(text), (2, 14));
        assert!(minify(b"{\"a\": 1} x").is_err());
        assert!(minify(b"\"abc").is_err());
        assert!(minify(b"[01]").is_err());
        assert!(
            minify(b"\"\\ud800\"").is_ok(),
            "raw values keep lone surrogates as written"
        );
        assert!(Reader::new(b"\"\\ud800\"").string().is_err());
        assert!(minify(b"{\"a\" 1}").is_err());
        let deep = "[".repeat(600) + &"]".repeat(600);
        assert!(minify(deep.as_bytes()).is_err());
    }

    #[test]
    fn members_round_trip() {
        let mut m = object_members(br#"{"x":1,"result":2}"#).unwrap();
        set_member(&mut m, "result", b"[3]".to_vec());
        set_member(&mut m, "new", b"null".to_vec());
        assert_eq!(object_text(&m), br#"{"x":1,"result":[3],"new":null}"#);
    }
}
