//! VMDK disk descriptors: the small text file (or the text embedded in a monolithicSparse file)
//! that names a disk's extents, its content ID and its parent.
//!
//! The parser keeps every line as it was read, so a descriptor written back without changes is
//! byte-identical, and unknown lines and keys survive edits. Only the lines that are changed are
//! regenerated, in VMware's own style.

use std::ffi::OsStr;
use std::fmt;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use encoding_rs::Encoding;

use crate::error::ParseError;
use crate::text;

/// `parentCID` of a disk without a parent.
pub const NO_PARENT: u32 = 0xffff_ffff;
/// `CID` VMware gives a disk that has never been written.
pub const NEW_DISK_CID: u32 = 0xffff_fffe;
/// A text descriptor larger than this is not a descriptor (a 2 TiB disk split in 2 GiB pieces
/// needs about 70 KiB); refusing early keeps a mistaken multi-GiB file out of memory.
pub const MAX_DESCRIPTOR_BYTES: u64 = 1 << 20;

/// A descriptor value is written between double quotes on one line: it cannot hold a quote or
/// a line break (VMware has no escape for them).
pub fn check_representable(value: &str) -> Result<(), ParseError> {
    if value.contains('"') || value.chars().any(char::is_control) {
        return Err(ParseError::whole(format!(
            "{value:?} contains a quote or control character, which a disk descriptor cannot hold"
        )));
    }
    Ok(())
}

/// An extent's access mode, the first word of its line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// `RW`.
    ReadWrite,
    /// `RDONLY`.
    ReadOnly,
    /// `NOACCESS`: reading it is an error.
    NoAccess,
}

impl Access {
    fn parse(s: &str) -> Option<Access> {
        match s {
            "RW" => Some(Access::ReadWrite),
            "RDONLY" => Some(Access::ReadOnly),
            "NOACCESS" => Some(Access::NoAccess),
            _ => None,
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            Access::ReadWrite => "RW",
            Access::ReadOnly => "RDONLY",
            Access::NoAccess => "NOACCESS",
        }
    }
}

/// An extent's type; types leafd cannot serve are kept by name so the refusal can say which.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExtentKind {
    /// `SPARSE`: a hosted sparse extent file.
    Sparse,
    /// `FLAT`: raw sectors in a file, from an offset.
    Flat,
    /// `ZERO`: no file, reads as zeros.
    Zero,
    /// Any other type, by name.
    Other(String),
}

impl ExtentKind {
    fn parse(s: &str) -> ExtentKind {
        match s {
            "SPARSE" => ExtentKind::Sparse,
            "FLAT" => ExtentKind::Flat,
            "ZERO" => ExtentKind::Zero,
            other => ExtentKind::Other(other.to_string()),
        }
    }

    /// The type as written in an extent line.
    pub fn as_str(&self) -> &str {
        match self {
            ExtentKind::Sparse => "SPARSE",
            ExtentKind::Flat => "FLAT",
            ExtentKind::Zero => "ZERO",
            ExtentKind::Other(s) => s,
        }
    }
}

/// One extent line: `ACCESS SECTORS TYPE "FILE" [OFFSET]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Extent {
    /// The access mode.
    pub access: Access,
    /// Its size in sectors.
    pub sectors: u64,
    /// Its type.
    pub kind: ExtentKind,
    /// The file's name exactly as the descriptor's bytes hold it (in its encoding): relative
    /// to the descriptor's folder, or absolute. `None` for `ZERO`. [`Descriptor::name`] gives
    /// its text and the places it may be.
    pub file: Option<PathBuf>,
    /// Start of the data in the file, in sectors (`FLAT` only).
    pub offset: Option<u64>,
}

impl Extent {
    /// The line as bytes in `encoding`, around the file name's own bytes.
    fn render(&self, encoding: &'static Encoding) -> Vec<u8> {
        let head = format!("{} {} {}", self.access.as_str(), self.sectors, self.kind.as_str());
        let mut s = text::encode(&head, encoding).unwrap_or_else(|| head.into_bytes());
        if let Some(file) = &self.file {
            s.extend_from_slice(b" \"");
            s.extend_from_slice(file.as_os_str().as_bytes());
            s.push(b'"');
        }
        if let Some(offset) = self.offset {
            s.extend_from_slice(format!(" {offset}").as_bytes());
        }
        s
    }

    /// Parses the bytes of a line. The syntax is ASCII, and `"` and spaces are never part of a
    /// multi-byte character in the encodings accepted, so the file name's bytes are taken as
    /// they are.
    fn parse(raw: &[u8], encoding: &'static Encoding) -> Result<Option<Extent>, ParseError> {
        let (access, rest) = word(raw.trim_ascii_start());
        let Some(access) = std::str::from_utf8(access).ok().and_then(Access::parse) else {
            return Ok(None);
        };
        let (sectors, rest) = word(rest);
        let sectors: u64 = std::str::from_utf8(sectors).ok().and_then(|s| s.parse().ok()).ok_or_else(|| {
            ParseError::whole(format!("extent size {:?} is not a number of sectors", String::from_utf8_lossy(sectors)))
        })?;
        let (kind, rest) = word(rest);
        if kind.is_empty() {
            return Err(ParseError::whole("extent line has no type"));
        }
        // A whole line decodes, and no multi-byte character holds a space: nor does a word.
        let kind = ExtentKind::parse(&text::decode(kind, encoding).unwrap_or_default());
        let rest = rest.trim_ascii();
        let (file, rest) = if let Some(quoted) = rest.strip_prefix(b"\"") {
            let end = quoted
                .iter()
                .position(|&b| b == b'"')
                .ok_or_else(|| ParseError::whole("extent file name has no closing quote"))?;
            (Some(PathBuf::from(OsStr::from_bytes(&quoted[..end]))), quoted[end + 1..].trim_ascii())
        } else {
            (None, rest)
        };
        let offset = if rest.is_empty() {
            None
        } else {
            let o = String::from_utf8_lossy(rest);
            Some(o.parse::<u64>().map_err(|_| ParseError::whole(format!("extent offset {o:?} is not a number")))?)
        };
        if file.is_none() && kind != ExtentKind::Zero {
            return Err(ParseError::whole(format!("{} extent has no file name", kind.as_str())));
        }
        Ok(Some(Extent { access, sectors, kind, file, offset }))
    }
}

/// The first word of `b` (up to ASCII whitespace) and the rest after the whitespace.
fn word(b: &[u8]) -> (&[u8], &[u8]) {
    let end = b.iter().position(u8::is_ascii_whitespace).unwrap_or(b.len());
    (&b[..end], b[end..].trim_ascii_start())
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Kind {
    /// `key=value` before the extents (`CID`, `createType`...).
    Header {
        key: String,
    },
    Extent(Extent),
    /// `ddb.key = "value"`.
    Ddb {
        key: String,
        value: String,
    },
    /// Comments, blank lines, anything else: kept verbatim.
    Other,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Line {
    /// The line's bytes without its terminator, exactly as read (or as regenerated after an edit).
    raw: Vec<u8>,
    /// The same, decoded.
    text: String,
    /// "\n", "\r\n" or "" (last line without a newline).
    eol: String,
    kind: Kind,
}

/// A parsed descriptor. [`Descriptor::to_bytes`] writes it back; `Display` shows its text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Descriptor {
    lines: Vec<Line>,
    /// What its bytes are in: `encoding=`, else `ddb.encoding`, else UTF-8.
    encoding: &'static Encoding,
    /// Made on Windows, as read (CRLF line ends, a path with a drive letter): `\` in its paths
    /// separates folders.
    windows: bool,
}

fn unquote(v: &str) -> &str {
    let v = v.trim();
    v.strip_prefix('"').and_then(|v| v.strip_suffix('"')).unwrap_or(v)
}

/// The value bytes of a `key=value` line, unquoted.
fn raw_value(raw: &[u8]) -> &[u8] {
    let v = raw.iter().position(|&b| b == b'=').map_or(&raw[..0], |i| raw[i + 1..].trim_ascii());
    v.strip_prefix(b"\"").and_then(|v| v.strip_suffix(b"\"")).unwrap_or(v)
}

fn parse_hex32(v: &str) -> Option<u32> {
    if v.is_empty() || v.len() > 8 {
        return None;
    }
    u32::from_str_radix(v, 16).ok()
}

/// The key of a `key = value` line, read from its ASCII.
fn line_key(raw: &[u8]) -> Option<String> {
    let t = String::from_utf8_lossy(raw);
    let t = t.trim();
    if t.starts_with('#') {
        return None;
    }
    t.split_once('=').map(|(k, _)| k.trim().to_string())
}

/// The encoding a descriptor's lines declare: `encoding=` in the header, else the older
/// `ddb.encoding`; `None` when neither is there.
fn declared_encoding(lines: &[&[u8]]) -> Result<Option<&'static Encoding>, ParseError> {
    let find =
        |want: &str| lines.iter().enumerate().find(|(_, l)| line_key(l).is_some_and(|k| k.eq_ignore_ascii_case(want)));
    let Some((i, line)) = find("encoding").or_else(|| find("ddb.encoding")) else { return Ok(None) };
    let label = String::from_utf8_lossy(raw_value(line)).into_owned();
    text::encoding_for_label(&label, i + 1, "encoding=\"UTF-8\"").map(Some)
}

/// True for a path field that must keep its bytes when the descriptor changes encoding.
fn is_path_header(key: &str) -> bool {
    key.eq_ignore_ascii_case("parentFileNameHint")
}

impl Descriptor {
    /// Parses descriptor text, as the bytes of a file. Trailing NULs (the padding of an
    /// embedded descriptor) are ignored; a NUL inside is an error.
    pub fn parse(text: &str) -> Result<Descriptor, ParseError> {
        Self::from_bytes(text.trim_end_matches('\0').as_bytes())
    }

    /// Parses the bytes of a descriptor file or embedded descriptor area. The text ends at the
    /// first NUL, as for VMware and QEMU: QEMU rewrites an embedded descriptor in place when a
    /// new CID is shorter (it does not zero-pad CIDs) and leaves stale bytes after the NUL.
    ///
    /// The text is decoded by its `encoding=` (or `ddb.encoding`); a label leafd does not know,
    /// bytes that are not valid in it, or bytes that are not UTF-8 where no encoding is declared,
    /// are errors naming the line and the fix, never read as something else.
    pub fn parse_bytes(bytes: &[u8]) -> Result<Descriptor, ParseError> {
        let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
        Self::from_bytes(&bytes[..end])
    }

    fn from_bytes(bytes: &[u8]) -> Result<Descriptor, ParseError> {
        if bytes.len() as u64 > MAX_DESCRIPTOR_BYTES {
            return Err(ParseError::whole("larger than any disk descriptor"));
        }
        let mut raws: Vec<(&[u8], &str)> = Vec::new();
        let mut rest = bytes;
        while !rest.is_empty() {
            let (line, eol, next) = match rest.iter().position(|&b| b == b'\n') {
                Some(i) if i > 0 && rest[i - 1] == b'\r' => (&rest[..i - 1], "\r\n", &rest[i + 1..]),
                Some(i) => (&rest[..i], "\n", &rest[i + 1..]),
                None => (rest, "", &rest[rest.len()..]),
            };
            raws.push((line, eol));
            rest = next;
        }
        let declared = declared_encoding(&raws.iter().map(|(l, _)| *l).collect::<Vec<_>>())?;
        let encoding = declared.unwrap_or(encoding_rs::UTF_8);
        let mut lines = Vec::new();
        for (i, (raw, eol)) in raws.into_iter().enumerate() {
            if raw.contains(&0) {
                return Err(ParseError::at(i + 1, "contains a NUL byte"));
            }
            let text = text::decode(raw, encoding).map_err(|_| match declared {
                None => text::undeclared(i + 1, "encoding=\"windows-1252\" (after version=1)"),
                Some(e) => ParseError::at(i + 1, format!("has bytes that are not valid {}", e.name())).with_fix(format!(
                    "the descriptor says its text is {}, but it is not: correct its encoding= line to the code page it was written in",
                    e.name()
                )),
            })?;
            let kind = Self::classify(raw, &text, encoding).map_err(|e| ParseError { line: i + 1, ..e })?;
            lines.push(Line { raw: raw.to_vec(), text, eol: eol.to_string(), kind });
        }
        let mut d = Descriptor { lines, encoding, windows: false };
        d.windows = d.lines.iter().any(|l| l.eol == "\r\n")
            || d.parent_file_name_hint().is_some_and(text::is_windows_absolute)
            || d.extents().filter_map(|e| e.file.as_deref()).any(|f| text::is_windows_absolute(&d.text_of(f)));
        if !d.lines.iter().any(|l| matches!(&l.kind, Kind::Header { key } if key == "createType")) {
            return Err(ParseError::whole("no createType: not a disk descriptor"));
        }
        Ok(d)
    }

    fn classify(raw: &[u8], text: &str, encoding: &'static Encoding) -> Result<Kind, ParseError> {
        let t = text.trim();
        if t.is_empty() || t.starts_with('#') {
            return Ok(Kind::Other);
        }
        if let Some(extent) = Extent::parse(raw, encoding)? {
            return Ok(Kind::Extent(extent));
        }
        if let Some((key, value)) = t.split_once('=') {
            let key = key.trim();
            if key.starts_with("ddb.") {
                return Ok(Kind::Ddb { key: key.to_string(), value: unquote(value).to_string() });
            }
            if !key.is_empty() && !key.contains(char::is_whitespace) {
                return Ok(Kind::Header { key: key.to_string() });
            }
        }
        Ok(Kind::Other)
    }

    /// Builds a new descriptor in VMware's layout, in UTF-8.
    pub fn build(
        cid: u32,
        parent_cid: u32,
        create_type: &str,
        parent_hint: Option<&str>,
        extents: &[Extent],
        ddb: &[(&str, &str)],
    ) -> Result<Descriptor, ParseError> {
        for name in parent_hint.into_iter().chain(ddb.iter().map(|(_, v)| *v)) {
            check_representable(name)?;
        }
        for f in extents.iter().filter_map(|e| e.file.as_deref()) {
            let name = f.to_str().ok_or_else(|| {
                ParseError::whole(format!(
                    "{:?} is not UTF-8, which a new disk descriptor is written in",
                    f.as_os_str()
                ))
            })?;
            check_representable(name)?;
        }
        let mut text = format!(
            "# Disk DescriptorFile\nversion=1\nencoding=\"UTF-8\"\nCID={cid:08x}\nparentCID={parent_cid:08x}\n\
             isNativeSnapshot=\"no\"\ncreateType=\"{create_type}\"\n"
        )
        .into_bytes();
        if let Some(hint) = parent_hint {
            text.extend_from_slice(format!("parentFileNameHint=\"{hint}\"\n").as_bytes());
        }
        text.extend_from_slice(b"\n# Extent description\n");
        for e in extents {
            text.extend(e.render(encoding_rs::UTF_8));
            text.push(b'\n');
        }
        text.extend_from_slice(b"\n# The Disk Data Base\n#DDB\n\n");
        for (k, v) in ddb {
            text.extend_from_slice(format!("{k} = \"{v}\"\n").as_bytes());
        }
        Descriptor::from_bytes(&text)
    }

    /// The descriptor as bytes, to write to a file: unchanged lines exactly as read.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        for l in &self.lines {
            out.extend_from_slice(&l.raw);
            out.extend_from_slice(l.eol.as_bytes());
        }
        out
    }

    /// The name of the encoding its bytes are in (`UTF-8`, `GBK`...).
    pub fn encoding_name(&self) -> &'static str {
        self.encoding.name()
    }

    /// True when the descriptor was made on Windows (CRLF line ends, or a path with a drive
    /// letter): then `\` in its paths separates folders.
    pub fn windows_made(&self) -> bool {
        self.windows
    }

    /// The text of a name held as this descriptor's bytes.
    fn text_of(&self, raw: &Path) -> String {
        let b = raw.as_os_str().as_bytes();
        text::decode(b, self.encoding).unwrap_or_else(|_| String::from_utf8_lossy(b).into_owned())
    }

    /// A file this descriptor names (an extent's [`Extent::file`]), with its text and the
    /// places it may be ([`text::Name::candidates`]).
    pub fn name(&self, raw: &Path) -> text::Name {
        text::Name {
            text: self.text_of(raw),
            bytes: Some(raw.as_os_str().as_bytes().to_vec()),
            encoding: self.encoding,
            windows: self.windows,
        }
    }

    /// The parent this descriptor names, as a [`text::Name`].
    pub fn parent_name(&self) -> Option<text::Name> {
        let line = self.header_line("parentFileNameHint")?;
        Some(self.name(Path::new(OsStr::from_bytes(raw_value(&line.raw)))))
    }

    fn header_line(&self, key: &str) -> Option<&Line> {
        self.lines.iter().find(|l| matches!(&l.kind, Kind::Header { key: k } if k.eq_ignore_ascii_case(key)))
    }

    /// The raw (unquoted) value of a header key such as `createType`.
    pub fn header(&self, key: &str) -> Option<&str> {
        self.header_line(key).and_then(|l| l.text.split_once('=')).map(|(_, v)| unquote(v))
    }

    /// The line ending of lines added to this descriptor: its own.
    fn eol(&self) -> &'static str {
        text::dominant_eol(self.lines.iter().map(|l| l.eol.as_str()))
    }

    /// A new line of `text` (ASCII, or encoded in the descriptor's encoding).
    fn line(&self, text: String, kind: Kind) -> Line {
        let raw = text::encode(&text, self.encoding).unwrap_or_else(|| text.clone().into_bytes());
        Line { raw, text, eol: self.eol().to_string(), kind }
    }

    /// Sets a header key, in place when present, else after the last header line.
    pub fn set_header(&mut self, key: &str, value: &str, quoted: bool) {
        let text = if quoted { format!("{key}=\"{value}\"") } else { format!("{key}={value}") };
        let kind = Kind::Header { key: key.to_string() };
        if let Some(i) =
            self.lines.iter().position(|l| matches!(&l.kind, Kind::Header { key: k } if k.eq_ignore_ascii_case(key)))
        {
            let eol = std::mem::take(&mut self.lines[i].eol);
            self.lines[i] = Line { eol, ..self.line(text, kind) };
            return;
        }
        let at = self.lines.iter().rposition(|l| matches!(l.kind, Kind::Header { .. })).map_or(0, |i| i + 1);
        let line = self.line(text, kind);
        self.insert(at, line);
    }

    /// Inserts a line. A line added after a last line that had no line ending takes its place as
    /// the last: a descriptor without a final newline keeps having none.
    fn insert(&mut self, at: usize, mut line: Line) {
        if at > 0 && self.lines[at - 1].eol.is_empty() {
            self.lines[at - 1].eol = self.eol().to_string();
            line.eol = String::new();
        }
        self.lines.insert(at, line);
    }

    fn cid_field(&self, key: &str) -> Result<u32, ParseError> {
        let v = self.header(key).ok_or_else(|| ParseError::whole(format!("has no {key}")))?;
        parse_hex32(v).ok_or_else(|| ParseError::whole(format!("{key}={v} is not 8 hex digits")))
    }

    /// The disk's content ID.
    pub fn cid(&self) -> Result<u32, ParseError> {
        self.cid_field("CID")
    }

    /// `NO_PARENT` when the disk has no parent; a missing key also means no parent.
    pub fn parent_cid(&self) -> Result<u32, ParseError> {
        if self.header("parentCID").is_none() {
            return Ok(NO_PARENT);
        }
        self.cid_field("parentCID")
    }

    /// Sets the content ID.
    pub fn set_cid(&mut self, cid: u32) {
        self.set_header("CID", &format!("{cid:08x}"), false);
    }

    /// The `createType`, or `""`.
    pub fn create_type(&self) -> &str {
        self.header("createType").unwrap_or("")
    }

    /// Where the parent is, relative to this descriptor's folder or absolute (its text).
    pub fn parent_file_name_hint(&self) -> Option<&str> {
        self.header("parentFileNameHint")
    }

    /// The extents in order.
    pub fn extents(&self) -> impl Iterator<Item = &Extent> {
        self.lines.iter().filter_map(|l| match &l.kind {
            Kind::Extent(e) => Some(e),
            _ => None,
        })
    }

    /// The disk's size in sectors: the sum of its extents.
    pub fn capacity(&self) -> u64 {
        self.extents().fold(0u64, |acc, e| acc.saturating_add(e.sectors))
    }

    /// Edits every extent line with `f` (e.g. to reach the extents from a new folder); only the
    /// lines `f` changes are regenerated. A new file name is taken as bytes: call
    /// [`Descriptor::fit_encoding`] before writing the descriptor.
    pub fn map_extents(&mut self, mut f: impl FnMut(&mut Extent)) {
        let encoding = self.encoding;
        for line in &mut self.lines {
            if let Kind::Extent(e) = &mut line.kind {
                let before = e.clone();
                f(e);
                if *e != before {
                    line.raw = e.render(encoding);
                    line.text = text::decode(&line.raw, encoding)
                        .unwrap_or_else(|_| String::from_utf8_lossy(&line.raw).into_owned());
                }
            }
        }
    }

    /// Makes the descriptor writable as it now is, its paths (extent files and parent hint)
    /// keeping their bytes, which name the files on disk. A non-ASCII path that is UTF-8 needs
    /// a UTF-8 descriptor (names on a Mac or a UTF-8 Linux, and VMware there opens a file by the
    /// UTF-8 of its text); one that is not UTF-8 needs the descriptor's own code page. So the
    /// descriptor keeps its encoding unless a path needs UTF-8; then it is written in UTF-8 and
    /// its `encoding=` says so. Fails, naming the line, when no one encoding holds every path.
    pub fn fit_encoding(&mut self) -> Result<(), ParseError> {
        // Decided by path component: a folder named in UTF-8 beside a file named in a code page
        // (every byte is valid windows-1252, so the whole path would pass as one) fits neither.
        let mut utf8: Option<String> = None;
        let mut legacy: Option<(usize, String)> = None;
        for (i, l) in self.lines.iter().enumerate() {
            // An extent type the code page's encoder cannot write back (a vendor extension its
            // decoder reads) is written in UTF-8.
            if let Kind::Extent(e) = &l.kind
                && text::encode(e.kind.as_str(), self.encoding).is_none()
            {
                utf8.get_or_insert(e.kind.as_str().to_string());
            }
            let path: &[u8] = match &l.kind {
                Kind::Extent(e) => e.file.as_deref().map_or(&[], |f| f.as_os_str().as_bytes()),
                Kind::Header { key } if is_path_header(key) => raw_value(&l.raw),
                _ => continue,
            };
            for part in path.split(|&b| b == b'/').filter(|p| !p.is_ascii()) {
                if let Ok(t) = std::str::from_utf8(part) {
                    utf8.get_or_insert(t.to_string());
                } else if let (false, Ok(t)) = (self.encoding == encoding_rs::UTF_8, text::decode(part, self.encoding))
                {
                    legacy.get_or_insert((i, t));
                } else {
                    return Err(ParseError::at(
                        i + 1,
                        format!(
                            "names {:?}, which is neither UTF-8 nor {}",
                            String::from_utf8_lossy(part),
                            self.encoding.name()
                        ),
                    )
                    .with_fix("rename the file to its name in UTF-8"));
                }
            }
        }
        match (utf8, legacy) {
            (Some(u), Some((i, l))) => Err(ParseError::at(
                i + 1,
                format!(
                    "would name files in two encodings at once, {u:?} in UTF-8 and {l:?} in {}, which no descriptor can hold",
                    self.encoding.name()
                ),
            )
            .with_fix("name the files, and the folders on the way to them, all in UTF-8 (or all in the disk's own code page)")),
            (Some(_), None) if self.encoding != encoding_rs::UTF_8 => {
                self.switch_to_utf8();
                Ok(())
            }
            _ => Ok(()),
        }
    }

    /// Re-encodes the descriptor in UTF-8 and says so in `encoding=` (and `ddb.encoding`). Paths
    /// keep their bytes; every other line is the same text in UTF-8.
    fn switch_to_utf8(&mut self) {
        let was_declared = self.header_line("encoding").is_some();
        self.encoding = encoding_rs::UTF_8;
        for l in &mut self.lines {
            match &l.kind {
                Kind::Extent(e) => l.raw = e.render(encoding_rs::UTF_8),
                Kind::Header { key } if is_path_header(key) => {}
                _ => l.raw = l.text.clone().into_bytes(),
            }
            l.text = String::from_utf8_lossy(&l.raw).into_owned();
        }
        if self.ddb("ddb.encoding").is_some() {
            self.set_ddb("ddb.encoding", "UTF-8");
        }
        if was_declared || self.ddb("ddb.encoding").is_some() {
            self.set_header("encoding", "UTF-8", true);
        }
    }

    /// The value of a DDB key (`ddb.uuid`...).
    pub fn ddb(&self, key: &str) -> Option<&str> {
        self.lines.iter().find_map(|l| match &l.kind {
            Kind::Ddb { key: k, value } if k == key => Some(value.as_str()),
            _ => None,
        })
    }

    /// All DDB entries in order.
    pub fn ddb_entries(&self) -> impl Iterator<Item = (&str, &str)> {
        self.lines.iter().filter_map(|l| match &l.kind {
            Kind::Ddb { key, value } => Some((key.as_str(), value.as_str())),
            _ => None,
        })
    }

    /// Sets a DDB key: in place when present; else where it sorts, when the DDB is sorted (as
    /// current VMware writes it), else at the end.
    pub fn set_ddb(&mut self, key: &str, value: &str) {
        let text = format!("{key} = \"{value}\"");
        let kind = Kind::Ddb { key: key.to_string(), value: value.to_string() };
        if let Some(i) = self.lines.iter().position(|l| matches!(&l.kind, Kind::Ddb { key: k, .. } if k == key)) {
            let eol = std::mem::take(&mut self.lines[i].eol);
            self.lines[i] = Line { eol, ..self.line(text, kind) };
            return;
        }
        let ddb: Vec<(usize, String)> = self
            .lines
            .iter()
            .enumerate()
            .filter_map(|(i, l)| match &l.kind {
                Kind::Ddb { key, .. } => Some((i, key.to_ascii_lowercase())),
                _ => None,
            })
            .collect();
        let sorted = ddb.windows(2).all(|w| w[0].1 <= w[1].1);
        let lower = key.to_ascii_lowercase();
        let at = match ddb.iter().find(|(_, k)| *k > lower) {
            Some(&(i, _)) if sorted => i,
            _ => self.lines.len(),
        };
        let line = self.line(text, kind);
        self.insert(at, line);
    }

    /// Removes a DDB key.
    pub fn remove_ddb(&mut self, key: &str) {
        let no_final_newline = self.lines.last().is_some_and(|l| l.eol.is_empty());
        self.lines.retain(|l| !matches!(&l.kind, Kind::Ddb { key: k, .. } if k == key));
        if no_final_newline && let Some(last) = self.lines.last_mut() {
            last.eol.clear();
        }
    }
}

/// The descriptor's text, decoded (for showing; write [`Descriptor::to_bytes`]).
impl fmt::Display for Descriptor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for l in &self.lines {
            f.write_str(&l.text)?;
            f.write_str(&l.eol)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOWTO: &str = "# Disk DescriptorFile\nversion=1\nencoding=\"UTF-8\"\nCID=242293ca\nparentCID=ffffffff\n\
        createType=\"twoGbMaxExtentSparse\"\n\n# Extent description\nRW 4192256 SPARSE \"8.10 Core-s001.vmdk\"\n\
        RW 20480 SPARSE \"8.10 Core-s002.vmdk\"\n\n# The Disk Data Base\n#DDB\n\nddb.virtualHWVersion = \"7\"\n\
        ddb.uuid = \"60 00 C2 99 ab ce aa 92-d3 3e 55 a9 30 e7 c6 dd\"\nddb.geometry.cylinders = \"2610\"\n\
        ddb.adapterType = \"lsilogic\"\nddb.toolsVersion = \"7460\"\n";

    #[test]
    fn parses_the_howto_sample_and_writes_it_back_unchanged() {
        let d = Descriptor::parse(HOWTO).unwrap();
        assert_eq!(d.to_string(), HOWTO);
        assert_eq!(d.cid().unwrap(), 0x242293ca);
        assert_eq!(d.parent_cid().unwrap(), NO_PARENT);
        assert_eq!(d.create_type(), "twoGbMaxExtentSparse");
        assert_eq!(d.capacity(), 4192256 + 20480);
        let e: Vec<_> = d.extents().collect();
        assert_eq!(e[0].file.as_deref(), Some(Path::new("8.10 Core-s001.vmdk")));
        assert_eq!(e[1].sectors, 20480);
        assert_eq!(d.ddb("ddb.adapterType"), Some("lsilogic"));
    }

    #[test]
    fn edits_touch_only_their_lines() {
        let mut d = Descriptor::parse(HOWTO).unwrap();
        d.remove_ddb("ddb.uuid");
        d.set_ddb("ddb.deletable", "false");
        d.map_extents(|e| e.file = e.file.as_ref().map(|f| Path::new("../8.10 Core").join(f)));
        let out = d.to_string();
        assert!(out.contains("RW 4192256 SPARSE \"../8.10 Core/8.10 Core-s001.vmdk\"\n"));
        assert!(!out.contains("ddb.uuid"));
        assert!(out.ends_with("ddb.toolsVersion = \"7460\"\nddb.deletable = \"false\"\n"));
        assert!(out.starts_with("# Disk DescriptorFile\nversion=1\nencoding=\"UTF-8\"\nCID=242293ca\n"));
    }

    #[test]
    fn embedded_padding_is_ignored_and_flat_offsets_kept() {
        let text = "CID=fffffffe\nparentCID=ffffffff\ncreateType=\"monolithicFlat\"\nRW 2048 FLAT \"a b-flat.vmdk\" 0\nRW 100 ZERO\n";
        let mut bytes = text.as_bytes().to_vec();
        bytes.resize(10240, 0);
        let d = Descriptor::parse_bytes(&bytes).unwrap();
        assert_eq!(d.to_string(), text);
        let e: Vec<_> = d.extents().cloned().collect();
        assert_eq!(e[0].offset, Some(0));
        assert_eq!(e[0].file.as_deref(), Some(Path::new("a b-flat.vmdk")));
        assert_eq!(e[1].kind, ExtentKind::Zero);
        assert_eq!(e[1].file, None);
        assert_eq!(d.cid().unwrap(), NEW_DISK_CID);
    }

    #[test]
    fn bad_input_is_an_error_with_a_line() {
        let err = Descriptor::parse("createType=\"x\"\nRW lots SPARSE \"a\"\n").unwrap_err();
        assert_eq!(err.line, 2);
        assert!(Descriptor::parse("hello\n").is_err());
        assert!(Descriptor::parse("createType=\"x\"\nRW 5 SPARSE \"open\n").is_err());
        // Stale bytes after the terminating NUL, as QEMU leaves them, are not part of the text.
        assert_eq!(Descriptor::parse_bytes(b"createType=\"x\"\n\0\"\n").unwrap().to_string(), "createType=\"x\"\n");
        let d = Descriptor::parse("createType=\"x\"\nCID=xyz\n").unwrap();
        assert!(d.cid().is_err());
    }

    #[test]
    fn set_ddb_after_a_last_line_without_newline() {
        let mut d = Descriptor::parse("createType=\"x\"\nddb.a = \"1\"").unwrap();
        d.set_ddb("ddb.b", "2");
        assert_eq!(d.to_string(), "createType=\"x\"\nddb.a = \"1\"\nddb.b = \"2\"");
    }

    #[test]
    fn built_descriptor_round_trips() {
        let ext = [Extent {
            access: Access::ReadWrite,
            sectors: 8323072,
            kind: ExtentKind::Sparse,
            file: Some("disk-000001-s001.vmdk".into()),
            offset: None,
        }];
        let d = Descriptor::build(
            NEW_DISK_CID,
            0x1234abcd,
            "twoGbMaxExtentSparse",
            Some("disk.vmdk"),
            &ext,
            &[("ddb.longContentID", "0123")],
        )
        .unwrap();
        assert!(Descriptor::build(1, 2, "x", Some("a\"b.vmdk"), &ext, &[]).is_err());
        let again = Descriptor::parse(&d.to_string()).unwrap();
        assert_eq!(again, d);
        assert_eq!(d.parent_cid().unwrap(), 0x1234abcd);
        assert_eq!(d.parent_file_name_hint(), Some("disk.vmdk"));
        assert_eq!(d.extents().next(), Some(&ext[0]));
    }
}
