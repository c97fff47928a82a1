//! VMware dictionary files (`.vmx`, `.vmsd`, `.vmxf`-less config): `key = "value"` lines.
//!
//! Keys are case-insensitive; `|XX` escapes a byte in hex (VMware writes `|22` for `"` and `|7C`
//! for `|`). Lines are kept as read, so an unchanged file writes back byte-identical, and unknown
//! keys keep their place. The file's `.encoding` decides how its bytes are decoded.

use std::fmt::Write as _;

use encoding_rs::Encoding;

use crate::error::ParseError;
use crate::text;

/// A `.vmx` over this size is not a `.vmx` (real ones are a few KiB).
pub const MAX_DICT_BYTES: u64 = 4 << 20;

#[derive(Debug, Clone, PartialEq, Eq)]
struct Line {
    /// Text without terminator, as read or regenerated.
    text: String,
    eol: String,
    /// `(key, decoded value)` for entries; `None` for comments, blanks and unparsed lines.
    entry: Option<(String, String)>,
}

/// A parsed dictionary file. [`Dict::to_bytes`] writes it back.
#[derive(Debug, Clone)]
pub struct Dict {
    lines: Vec<Line>,
    encoding: &'static Encoding,
    bom: bool,
    /// The bytes as read, while nothing has changed: some encodings do not round-trip byte for
    /// byte through a decoder (redundant escapes, vendor extensions), and an unchanged file must.
    original: Option<Vec<u8>>,
}

impl PartialEq for Dict {
    fn eq(&self, other: &Dict) -> bool {
        self.lines == other.lines && self.encoding == other.encoding && self.bom == other.bom
    }
}

impl Eq for Dict {}

/// Decodes `|XX` escapes; a `|` not followed by two hex digits stays as it is.
pub fn unescape(v: &str) -> String {
    unescape_in(v, encoding_rs::UTF_8)
}

/// Decodes `|XX` escapes of bytes in `encoding` (VMware escapes any byte so, not only `"` and
/// `|`); a value whose escaped bytes are not valid text there is kept as written.
fn unescape_in(v: &str, encoding: &'static Encoding) -> String {
    if !v.contains('|') {
        return v.to_string();
    }
    let mut out = Vec::with_capacity(v.len());
    let mut rest = v;
    while let Some(i) = rest.find('|') {
        let (before, at) = rest.split_at(i);
        out.extend(text::encode(before, encoding).unwrap_or_else(|| before.as_bytes().to_vec()));
        match at
            .get(1..3)
            .and_then(|h| u8::from_str_radix(h, 16).ok().filter(|_| h.bytes().all(|c| c.is_ascii_hexdigit())))
        {
            Some(byte) => {
                out.push(byte);
                rest = &at[3..];
            }
            None => {
                out.push(b'|');
                rest = &at[1..];
            }
        }
    }
    out.extend(text::encode(rest, encoding).unwrap_or_else(|| rest.as_bytes().to_vec()));
    text::decode(&out, encoding).unwrap_or_else(|_| v.to_string())
}

/// Escapes a value for writing: `"`, `|` and control characters as `|XX`.
pub fn escape(v: &str) -> String {
    let mut s = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '"' | '|' => {
                let _ = write!(s, "|{:02X}", c as u32);
            }
            c if (c as u32) < 0x20 => {
                let _ = write!(s, "|{:02X}", c as u32);
            }
            c => s.push(c),
        }
    }
    s
}

/// `(key, raw value)` of an entry line; `None` for comments, blanks and other lines.
fn split_line(body: &str) -> Option<(&str, &str)> {
    let t = body.trim();
    if t.is_empty() || t.starts_with('#') {
        return None;
    }
    let (key, value) = t.split_once('=')?;
    let key = key.trim();
    if key.is_empty() || key.contains(char::is_whitespace) || key.contains('"') {
        return None;
    }
    let value = value.trim();
    // Values are quoted; a few writers (Packer, appliance scripts) leave some bare.
    let raw = match value.strip_prefix('"') {
        Some(rest) => rest.strip_suffix('"').unwrap_or(rest),
        None => value,
    };
    Some((key, raw))
}

fn parse_line(body: &str, encoding: &'static Encoding) -> Option<(String, String)> {
    split_line(body).map(|(k, v)| (k.to_string(), unescape_in(v, encoding)))
}

/// The `.encoding` a file declares, read from the ASCII of each line, so it works before decoding.
fn declared_encoding(bytes: &[u8]) -> Result<Option<&'static Encoding>, ParseError> {
    for (i, line) in bytes.split(|&b| b == b'\n').enumerate() {
        let line = String::from_utf8_lossy(line);
        if let Some((k, v)) = split_line(&line)
            && k.eq_ignore_ascii_case(".encoding")
        {
            return text::encoding_for_label(v, i + 1, ".encoding = \"UTF-8\"").map(Some);
        }
    }
    Ok(None)
}

impl Dict {
    /// An empty UTF-8 dictionary (only `.encoding`).
    pub fn new() -> Dict {
        let mut d = Dict { lines: Vec::new(), encoding: encoding_rs::UTF_8, bom: false, original: None };
        d.set(".encoding", "UTF-8");
        d
    }

    /// Parses a dictionary file, decoded by its `.encoding`. A file in an encoding leafd does
    /// not know, or not valid UTF-8 without declaring another, is an error naming the line and
    /// the fix: it is never read as something else. Nothing panics on any input.
    pub fn parse(input: &[u8]) -> Result<Dict, ParseError> {
        let bytes = input;
        if bytes.len() as u64 > MAX_DICT_BYTES {
            return Err(ParseError::whole(format!(
                "{} bytes is too large for a VMware configuration file",
                bytes.len()
            )));
        }
        let (bytes, bom) = match bytes.strip_prefix(b"\xef\xbb\xbf") {
            Some(rest) => (rest, true),
            None => (bytes, false),
        };
        let declared = declared_encoding(bytes)?;
        let encoding = declared.unwrap_or(encoding_rs::UTF_8);
        let text = text::decode(bytes, encoding).map_err(|line| match declared {
            None => text::undeclared(line, ".encoding = \"windows-1252\""),
            Some(e) => ParseError::at(line, format!("has bytes that are not valid {}", e.name())).with_fix(format!(
                "the file says its text is {}, but it is not: correct its .encoding line to the code page it was written in",
                e.name()
            )),
        })?;
        if let Some(at) = text.find('\0') {
            let line = 1 + text[..at].matches('\n').count();
            return Err(ParseError::at(line, "contains NUL bytes: not a text configuration file"));
        }
        let mut lines = Vec::new();
        for raw in text.split_inclusive('\n') {
            let (body, eol) = match raw.strip_suffix("\r\n") {
                Some(b) => (b, "\r\n"),
                None => raw.strip_suffix('\n').map_or((raw, ""), |b| (b, "\n")),
            };
            lines.push(Line { text: body.to_string(), eol: eol.to_string(), entry: parse_line(body, encoding) });
        }
        Ok(Dict { lines, encoding, bom, original: Some(input.to_vec()) })
    }

    /// Writes the file back in its own encoding (byte-identical when nothing changed).
    pub fn to_bytes(&self) -> Vec<u8> {
        if let Some(original) = &self.original {
            return original.clone();
        }
        let mut text = String::new();
        for l in &self.lines {
            text.push_str(&l.text);
            text.push_str(&l.eol);
        }
        let mut out = if self.bom { b"\xef\xbb\xbf".to_vec() } else { Vec::new() };
        // `set` switched to UTF-8 any text the encoding cannot write.
        out.extend(text::encode(&text, self.encoding).unwrap_or_else(|| text.into_bytes()));
        out
    }

    /// The name of the encoding the file is read and written in (`UTF-8`, `GBK`...).
    pub fn encoding_name(&self) -> &'static str {
        self.encoding.name()
    }

    /// The line ending lines added to this file get: the file's own.
    fn eol(&self) -> &'static str {
        text::dominant_eol(self.lines.iter().map(|l| l.eol.as_str()))
    }

    /// True when the file was made on Windows (CRLF line ends, or a value that is a Windows
    /// absolute path): then `\` in its paths separates folders.
    pub fn windows_made(&self) -> bool {
        self.lines.iter().any(|l| l.eol == "\r\n") || self.entries().any(|(_, v)| text::is_windows_absolute(v))
    }

    /// A value of this file as a file name: see [`text::Name::candidates`].
    pub fn name(&self, value: &str) -> text::Name {
        text::Name { text: value.to_string(), bytes: None, encoding: self.encoding, windows: self.windows_made() }
    }

    /// Switches to UTF-8 without BOM (what leafd writes for new files).
    pub fn to_utf8(&mut self) {
        self.original = None;
        self.encoding = encoding_rs::UTF_8;
        self.bom = false;
        if self.get(".encoding").is_some() {
            self.set(".encoding", "UTF-8");
            return;
        }
        // After a `#!/usr/bin/vmware` line, which must stay first, as VMware writes it.
        let at = usize::from(self.lines.first().is_some_and(|l| l.text.starts_with("#!")));
        self.insert(at, ".encoding", "UTF-8");
    }

    /// Inserts `key = "value"` before line `at`, in the file's line ending. A line added after a
    /// last line that had none takes its place as the last: a file without a final newline keeps
    /// having none.
    fn insert(&mut self, at: usize, key: &str, value: &str) {
        let eol = self.eol();
        let mut line = Line {
            text: format!("{key} = \"{}\"", escape(value)),
            eol: eol.into(),
            entry: Some((key.to_string(), value.to_string())),
        };
        if at > 0 && at == self.lines.len() && self.lines[at - 1].eol.is_empty() {
            self.lines[at - 1].eol = eol.into();
            line.eol = String::new();
        }
        self.lines.insert(at, line);
    }

    /// The value of `key` (case-insensitive); the last one wins if a file repeats a key.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.lines.iter().rev().find_map(|l| match &l.entry {
            Some((k, v)) if k.eq_ignore_ascii_case(key) => Some(v.as_str()),
            _ => None,
        })
    }

    /// True when `key` is set to a true value (`TRUE`, `true`, `1`...).
    pub fn is_true(&self, key: &str) -> bool {
        self.get(key).is_some_and(|v| matches!(v.to_ascii_lowercase().as_str(), "true" | "1" | "yes" | "on"))
    }

    /// Sets `key`: in place (keeping the key's spelling, `displayname` stays `displayname`) when
    /// present, else at the end. Any duplicates of the key are removed. A value the file's
    /// encoding cannot write turns the file into UTF-8 (its `.encoding` says so).
    pub fn set(&mut self, key: &str, value: &str) {
        self.original = None;
        if text::encode(value, self.encoding).is_none() || text::encode(key, self.encoding).is_none() {
            self.to_utf8();
        }
        let mut found = false;
        self.lines.retain_mut(|l| match &l.entry {
            Some((k, _)) if k.eq_ignore_ascii_case(key) => {
                if found {
                    return false;
                }
                found = true;
                let k = k.clone();
                l.text = format!("{k} = \"{}\"", escape(value));
                l.entry = Some((k, value.to_string()));
                true
            }
            _ => true,
        });
        if !found {
            self.insert(self.lines.len(), key, value);
        }
    }

    /// Removes `key` (case-insensitive); returns whether it was there.
    pub fn remove(&mut self, key: &str) -> bool {
        let before = self.lines.len();
        self.remove_where(|k| k.eq_ignore_ascii_case(key));
        before != self.lines.len()
    }

    /// Removes every key for which `f(key)` is true (keys as spelled in the file). Removing the
    /// last line of a file without a final newline leaves the new last line without one.
    pub fn remove_where(&mut self, mut f: impl FnMut(&str) -> bool) {
        self.original = None;
        let no_final_newline = self.lines.last().is_some_and(|l| l.eol.is_empty());
        self.lines.retain(|l| !matches!(&l.entry, Some((k, _)) if f(k)));
        if no_final_newline && let Some(last) = self.lines.last_mut() {
            last.eol.clear();
        }
    }

    /// All entries in file order.
    pub fn entries(&self) -> impl Iterator<Item = (&str, &str)> {
        self.lines.iter().filter_map(|l| l.entry.as_ref().map(|(k, v)| (k.as_str(), v.as_str())))
    }
}

impl Default for Dict {
    fn default() -> Self {
        Dict::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const VMX: &str = ".encoding = \"UTF-8\"\nconfig.version = \"8\"\ndisplayName = \"Ubuntu |22LTS|22 |7C x\"\n\
        scsi0:0.fileName = \"Ubuntu.vmdk\"\n# comment\nweird line\nuuid.bios = \"56 4d 12\"\n";

    #[test]
    fn round_trip_and_lookup() {
        let d = Dict::parse(VMX.as_bytes()).unwrap();
        assert_eq!(d.to_bytes(), VMX.as_bytes());
        assert_eq!(d.get("DISPLAYNAME"), Some("Ubuntu \"LTS\" | x"));
        assert_eq!(d.get("scsi0:0.filename"), Some("Ubuntu.vmdk"));
        assert_eq!(d.get("weird"), None);
    }

    #[test]
    fn edits_keep_order_and_escape() {
        let mut d = Dict::parse(VMX.as_bytes()).unwrap();
        d.set("displayname", "Web \"Server\" | 1");
        d.remove("UUID.BIOS");
        d.set("uuid.action", "create");
        let out = String::from_utf8(d.to_bytes()).unwrap();
        assert_eq!(
            out,
            ".encoding = \"UTF-8\"\nconfig.version = \"8\"\ndisplayName = \"Web |22Server|22 |7C 1\"\n\
             scsi0:0.fileName = \"Ubuntu.vmdk\"\n# comment\nweird line\nuuid.action = \"create\"\n"
        );
        assert_eq!(Dict::parse(out.as_bytes()).unwrap().get("displayName"), Some("Web \"Server\" | 1"));
    }

    #[test]
    fn other_encodings_are_decoded_and_kept() {
        let bytes = b".encoding = \"windows-1252\"\r\ndisplayName = \"Caf\xe9\"\r\n";
        let mut d = Dict::parse(bytes).unwrap();
        assert_eq!(d.get("displayName"), Some("Caf\u{e9}"));
        assert_eq!(d.to_bytes(), bytes);
        d.to_utf8();
        assert_eq!(d.to_bytes(), ".encoding = \"UTF-8\"\r\ndisplayName = \"Caf\u{e9}\"\r\n".as_bytes());
    }

    #[test]
    fn unchanged_files_in_any_encoding_are_written_back_as_read() {
        // Shift_JIS ED 40 (an NEC-selected IBM extension) decodes to the character that encodes
        // as FA 5C: decoding and encoding again would change it.
        let bytes = b".encoding = \"Shift_JIS\"\na = \"\xed\x40\"\n";
        let d = Dict::parse(bytes).unwrap();
        assert_eq!(d.to_bytes(), bytes);
        assert!(Dict::parse(b".encoding = \"UTF-16\"\na = \"b\"\n").unwrap_err().message.contains("UTF-16"));
    }

    #[test]
    fn bad_bytes_are_errors() {
        assert!(Dict::parse(b"a = \"\xff\"\n").is_err());
        assert!(Dict::parse(b"a = \"x\0\"\n").is_err());
        assert_eq!(unescape("a|zz|2"), "a|zz|2");
        assert_eq!(unescape("|7C|22"), "|\"");
    }
}
