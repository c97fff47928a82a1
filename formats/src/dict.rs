//! VMware dictionary files (`.vmx`, `.vmsd`, `.vmxf`-less config): `key = "value"` lines.
//!
//! Keys are case-insensitive; `|XX` escapes a byte in hex (VMware writes `|22` for `"` and `|7C`
//! for `|`). Lines are kept as read, so an unchanged file writes back byte-identical, and unknown
//! keys keep their place. The file's `.encoding` decides how its bytes are decoded.

use std::fmt::Write as _;

use encoding_rs::Encoding;

use crate::error::ParseError;

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
    let b = v.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'|'
            && i + 2 < b.len()
            && let Some(byte) = std::str::from_utf8(&b[i + 1..i + 3]).ok().and_then(|h| u8::from_str_radix(h, 16).ok())
        {
            out.push(byte);
            i += 3;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    // Escapes of bytes that break UTF-8 are kept as they were rather than lost.
    String::from_utf8(out).unwrap_or_else(|_| v.to_string())
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

fn parse_line(body: &str) -> Option<(String, String)> {
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
    let raw = match value.strip_prefix('"') {
        Some(rest) => rest.strip_suffix('"').unwrap_or(rest),
        None => value,
    };
    Some((key.to_string(), unescape(raw)))
}

/// Finds the `.encoding` a file declares, looking only at ASCII so it works before decoding.
fn declared_encoding(bytes: &[u8]) -> Option<&'static Encoding> {
    for line in bytes.split(|&b| b == b'\n').take(50) {
        let line = String::from_utf8_lossy(line);
        if let Some((k, v)) = parse_line(&line)
            && k.eq_ignore_ascii_case(".encoding")
        {
            return Encoding::for_label(v.as_bytes());
        }
    }
    None
}

impl Dict {
    /// An empty UTF-8 dictionary (only `.encoding`).
    pub fn new() -> Dict {
        let mut d = Dict { lines: Vec::new(), encoding: encoding_rs::UTF_8, bom: false, original: None };
        d.set(".encoding", "UTF-8");
        d
    }

    /// Parses a dictionary file. Errors say what is wrong; nothing panics on any input.
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
        let encoding = declared_encoding(bytes).unwrap_or(encoding_rs::UTF_8);
        if encoding == encoding_rs::UTF_16LE
            || encoding == encoding_rs::UTF_16BE
            || encoding == encoding_rs::REPLACEMENT
        {
            return Err(ParseError::whole(format!(
                ".encoding \"{}\" cannot be read: VMware files use UTF-8 or a byte-based encoding",
                encoding.name()
            )));
        }
        let text = if encoding == encoding_rs::UTF_8 {
            std::str::from_utf8(bytes)
                .map_err(|e| {
                    ParseError::whole(format!(
                        "is not valid UTF-8 (byte {}), yet declares no other .encoding",
                        e.valid_up_to()
                    ))
                })?
                .to_string()
        } else {
            let (text, had_errors) = encoding.decode_without_bom_handling(bytes);
            if had_errors {
                return Err(ParseError::whole(format!("has bytes that are not valid {}", encoding.name())));
            }
            text.into_owned()
        };
        if text.contains('\0') {
            return Err(ParseError::whole("contains NUL bytes: not a text configuration file"));
        }
        let mut lines = Vec::new();
        for raw in text.split_inclusive('\n') {
            let (body, eol) = match raw.strip_suffix("\r\n") {
                Some(b) => (b, "\r\n"),
                None => raw.strip_suffix('\n').map_or((raw, ""), |b| (b, "\n")),
            };
            lines.push(Line { text: body.to_string(), eol: eol.to_string(), entry: parse_line(body) });
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
        if self.encoding == encoding_rs::UTF_8 {
            out.extend_from_slice(text.as_bytes());
        } else {
            out.extend_from_slice(&self.encoding.encode(&text).0);
        }
        out
    }

    /// Switches to UTF-8 without BOM (what leafd writes for new files).
    pub fn to_utf8(&mut self) {
        self.original = None;
        self.encoding = encoding_rs::UTF_8;
        self.bom = false;
        if self.get(".encoding").is_some() {
            self.set(".encoding", "UTF-8");
        } else {
            self.lines.insert(
                0,
                Line {
                    text: ".encoding = \"UTF-8\"".into(),
                    eol: "\n".into(),
                    entry: Some((".encoding".into(), "UTF-8".into())),
                },
            );
        }
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

    /// Sets `key`: in place (keeping the key's spelling) when present, else at the end. Any
    /// duplicates of the key are removed.
    pub fn set(&mut self, key: &str, value: &str) {
        self.original = None;
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
            if let Some(last) = self.lines.last_mut()
                && last.eol.is_empty()
            {
                last.eol = "\n".into();
            }
            self.lines.push(Line {
                text: format!("{key} = \"{}\"", escape(value)),
                eol: "\n".into(),
                entry: Some((key.to_string(), value.to_string())),
            });
        }
    }

    /// Removes `key` (case-insensitive); returns whether it was there.
    pub fn remove(&mut self, key: &str) -> bool {
        self.original = None;
        let before = self.lines.len();
        self.lines.retain(|l| !matches!(&l.entry, Some((k, _)) if k.eq_ignore_ascii_case(key)));
        before != self.lines.len()
    }

    /// Removes every key for which `f(key)` is true (keys as spelled in the file).
    pub fn remove_where(&mut self, mut f: impl FnMut(&str) -> bool) {
        self.original = None;
        self.lines.retain(|l| !matches!(&l.entry, Some((k, _)) if f(k)));
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
        // ISO-2022-JP with a redundant escape: decoding and encoding again would drop it.
        let bytes = b".encoding = \"ISO-2022-JP\"\n\x1b(Ba\n";
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
