//! What the text formats share: the code pages VMware labels files with, line endings, and how
//! a name written in a file becomes a path here.
//!
//! Names are bytes on macOS and Linux. A name in a descriptor or `.vmx` is found first under its
//! own bytes (what QEMU and libvmdk open), then under its text in UTF-8: a bundle copied from
//! Windows, or kept on a Mac (where names are always UTF-8), names its files in UTF-8 whatever
//! code page its text is in, and VMware opens them by their text.
//!
//! `\` is a path separator only in a file made on Windows: one with CRLF line ends, or naming
//! a path with a drive letter (`C:\…`) or a UNC prefix (`\\server\…`). Elsewhere it is an
//! ordinary character of a name. The decision is made on the decoded text, never on bytes: in
//! Shift_JIS and Big5 the byte 0x5C is also the second byte of some characters.

use std::borrow::Cow;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;

use encoding_rs::Encoding;

use crate::error::ParseError;

/// Labels VMware (or the ICU names it uses) writes that the WHATWG label list `encoding_rs`
/// follows does not know, with the encoding they mean (libvmdk's codepage table and ICU's
/// alias table agree on these).
const ALIASES: [(&str, &str); 7] = [
    ("windows-949-2000", "windows-949"), // Korean Workstation: "Windows codepage 949, 2000 version"
    ("windows-936-2000", "GBK"),
    ("windows-950-2000", "Big5"),
    ("windows-932", "Shift_JIS"),
    ("windows-936", "GBK"),
    ("windows-950", "Big5"),
    ("cp932", "Shift_JIS"),
];

/// The labels named in the fix of an encoding refusal: what VMware products write.
const KNOWN: &str = "UTF-8, windows-1252, GBK, Shift_JIS, Big5 or windows-949-2000";

/// The encoding a label names, or an error for `line` saying what to do. Only ASCII-compatible
/// encodings are accepted: the files' syntax (`=`, `"`, line ends) is ASCII in every VMware file.
/// `utf8_line` is the line that declares UTF-8 in this kind of file, for the fix.
pub(crate) fn encoding_for_label(label: &str, line: usize, utf8_line: &str) -> Result<&'static Encoding, ParseError> {
    let label = label.trim();
    let known = ALIASES.iter().find(|(a, _)| a.eq_ignore_ascii_case(label)).map_or(label, |(_, to)| to);
    match Encoding::for_label(known.as_bytes()) {
        Some(e) if e.is_ascii_compatible() => Ok(e),
        Some(_) => Err(ParseError::at(
            line,
            format!("declares the encoding \"{label}\", which is not byte-based; VMware writes these files in UTF-8 or a Windows code page"),
        )
        .with_fix(format!("save the file as UTF-8 with the line {utf8_line}, then try again"))),
        None => Err(ParseError::at(line, format!("declares the encoding \"{label}\", which leafd does not know"))
            .with_fix(format!(
                "correct the label ({KNOWN} are what VMware writes), or save the file as UTF-8 with the line {utf8_line}, then try again"
            ))),
    }
}

/// `bytes` decoded strictly: the 1-based line of the first byte that is not valid in `encoding`.
pub(crate) fn decode(bytes: &[u8], encoding: &'static Encoding) -> Result<String, usize> {
    if encoding == encoding_rs::UTF_8 {
        return std::str::from_utf8(bytes)
            .map(str::to_string)
            .map_err(|e| 1 + bytes[..e.valid_up_to()].iter().filter(|&&b| b == b'\n').count());
    }
    match encoding.decode_without_bom_handling_and_without_replacement(bytes) {
        Some(text) => Ok(text.into_owned()),
        None => {
            // The first line that does not decode alone (multi-byte characters never span lines).
            let bad = bytes
                .split(|&b| b == b'\n')
                .position(|l| encoding.decode_without_bom_handling_and_without_replacement(l).is_none());
            Err(bad.map_or(1, |i| i + 1))
        }
    }
}

/// `text` in `encoding`, or `None` where it holds a character the encoding cannot write.
pub(crate) fn encode(text: &str, encoding: &'static Encoding) -> Option<Vec<u8>> {
    if encoding == encoding_rs::UTF_8 {
        return Some(text.as_bytes().to_vec());
    }
    let (bytes, _, unmappable) = encoding.encode(text);
    (!unmappable).then(|| bytes.into_owned())
}

/// The error for a file that is not valid UTF-8 and declares no encoding: never read as
/// something else, since a wrong guess would name files that do not exist.
pub(crate) fn undeclared(line: usize, declare: &str) -> ParseError {
    ParseError::at(line, "is not valid UTF-8 and the file declares no other encoding").with_fix(format!(
        "declare the code page it was written in ({KNOWN}; windows-1252 for Western European Windows) with a line like {declare}, or save the file as UTF-8, then try again"
    ))
}

/// The line ending to give lines added to a file: the one its first ended line has.
pub(crate) fn dominant_eol<'a>(eols: impl IntoIterator<Item = &'a str>) -> &'static str {
    match eols.into_iter().find(|e| !e.is_empty()) {
        Some("\r\n") => "\r\n",
        _ => "\n",
    }
}

/// True for a Windows absolute path: a drive letter (`C:\`, `C:/`) or a UNC prefix (`\\server`).
pub fn is_windows_absolute(s: &str) -> bool {
    let b = s.as_bytes();
    (b.len() >= 3 && b[0].is_ascii_alphabetic() && b[1] == b':' && (b[2] == b'\\' || b[2] == b'/'))
        || s.starts_with("\\\\")
}

/// A name as written in a file, and how the file writes paths.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Name {
    /// The name's text, decoded.
    pub text: String,
    /// Its bytes in the file (the file's encoding), when known; else the text is encoded again.
    pub bytes: Option<Vec<u8>>,
    /// The file's encoding.
    pub(crate) encoding: &'static Encoding,
    /// The file was made on Windows: `\` separates folders.
    pub windows: bool,
}

impl Name {
    /// The places the named file may be, relative to the naming file's folder (or absolute): its
    /// own bytes first, then its text in UTF-8 when that differs. A Windows absolute path names
    /// a place on another machine: it is returned as written (check [`is_windows_absolute`]).
    pub fn candidates(&self) -> Vec<PathBuf> {
        let text: Cow<str> = if self.windows && !is_windows_absolute(&self.text) && self.text.contains('\\') {
            Cow::Owned(self.text.replace('\\', "/"))
        } else {
            Cow::Borrowed(&self.text)
        };
        let own = match (&self.bytes, &text) {
            (Some(b), Cow::Borrowed(_)) => Some(b.clone()),
            _ => encode(&text, self.encoding),
        };
        let mut out = Vec::new();
        for b in own.into_iter().chain([text.as_bytes().to_vec()]) {
            let p = PathBuf::from(OsStr::from_bytes(&b));
            if !out.contains(&p) {
                out.push(p);
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vmware_labels_and_aliases() {
        for (label, name) in [
            ("UTF-8", "UTF-8"),
            ("windows-1252", "windows-1252"),
            ("GBK", "GBK"),
            ("Shift_JIS", "Shift_JIS"),
            ("Big5", "Big5"),
            ("windows-949-2000", "EUC-KR"),
            ("windows-936-2000", "GBK"),
            ("windows-932", "Shift_JIS"),
        ] {
            assert_eq!(encoding_for_label(label, 1, "x").unwrap().name(), name, "{label}");
        }
        let e = encoding_for_label("x-klingon", 3, "x").unwrap_err();
        assert_eq!(e.line, 3);
        assert!(e.message.contains("x-klingon") && e.fix.as_deref().unwrap().contains("windows-949-2000"), "{e:?}");
        assert!(encoding_for_label("UTF-16", 1, "x").unwrap_err().message.contains("byte-based"));
        assert!(encoding_for_label("ISO-2022-JP", 1, "x").is_err(), "7-bit, its bytes are not ASCII syntax");
    }

    #[test]
    fn decoding_is_strict_and_says_which_line() {
        assert_eq!(decode(b"a\nb\xff\n", encoding_rs::UTF_8), Err(2));
        assert_eq!(decode(b"a\r\nb\r\nc\x81\r\n", encoding_rs::SHIFT_JIS), Err(3));
        assert_eq!(decode(b"\xce\xbb", encoding_rs::GBK).unwrap(), "位");
        assert_eq!(encode("位", encoding_rs::GBK).unwrap(), b"\xce\xbb");
        assert_eq!(encode("한", encoding_rs::GBK), None);
    }

    #[test]
    fn names_are_their_bytes_then_their_text() {
        let gbk = Name {
            text: "CentOS 7 64 位-s001.vmdk".into(),
            bytes: Some(b"CentOS 7 64 \xce\xbb-s001.vmdk".to_vec()),
            encoding: encoding_rs::GBK,
            windows: false,
        };
        let c = gbk.candidates();
        assert_eq!(c[0].as_os_str().as_bytes(), b"CentOS 7 64 \xce\xbb-s001.vmdk");
        assert_eq!(c[1], std::path::Path::new("CentOS 7 64 位-s001.vmdk"));
        // Shift_JIS ソ is 83 5C: its second byte is no separator, even in a Windows file.
        let sjis =
            Name { text: "ソフト\\disk.vmdk".into(), bytes: None, encoding: encoding_rs::SHIFT_JIS, windows: true };
        let c = sjis.candidates();
        assert_eq!(c[0].as_os_str().as_bytes(), b"\x83\x5c\x83t\x83g/disk.vmdk");
        assert_eq!(c[1], std::path::Path::new("ソフト/disk.vmdk"));
        // Made elsewhere, `\` is part of the name.
        let linux = Name { text: "a\\b.vmdk".into(), bytes: None, encoding: encoding_rs::UTF_8, windows: false };
        assert_eq!(linux.candidates(), vec![PathBuf::from("a\\b.vmdk")]);
        assert!(
            is_windows_absolute("C:\\Users\\x.vmdk")
                && is_windows_absolute("\\\\nas\\vms")
                && !is_windows_absolute("C-drive")
        );
    }
}
