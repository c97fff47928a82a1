//! VMDK disk descriptors: the small text file (or the text embedded in a monolithicSparse file)
//! that names a disk's extents, its content ID and its parent.
//!
//! The parser keeps every line as it was read, so a descriptor written back without changes is
//! byte-identical, and unknown lines and keys survive edits. Only the lines that are changed are
//! regenerated, in VMware's own style.

use std::fmt;

use crate::error::ParseError;

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
    /// As written: relative to the descriptor's folder, or absolute. `None` for `ZERO`.
    pub file: Option<String>,
    /// Start of the data in the file, in sectors (`FLAT` only).
    pub offset: Option<u64>,
}

impl Extent {
    fn render(&self) -> String {
        let mut s = format!("{} {} {}", self.access.as_str(), self.sectors, self.kind.as_str());
        if let Some(file) = &self.file {
            s.push_str(&format!(" \"{file}\""));
        }
        if let Some(offset) = self.offset {
            s.push_str(&format!(" {offset}"));
        }
        s
    }

    fn parse(text: &str) -> Result<Option<Extent>, ParseError> {
        let mut words = text.trim_start().splitn(2, char::is_whitespace);
        let Some(access) = words.next().and_then(Access::parse) else {
            return Ok(None);
        };
        let rest = words.next().unwrap_or("").trim_start();
        let (sectors, rest) = rest.split_once(char::is_whitespace).unwrap_or((rest, ""));
        let sectors: u64 = sectors
            .parse()
            .map_err(|_| ParseError::whole(format!("extent size {sectors:?} is not a number of sectors")))?;
        let rest = rest.trim_start();
        let (kind, rest) = rest.split_once(char::is_whitespace).unwrap_or((rest, ""));
        if kind.is_empty() {
            return Err(ParseError::whole("extent line has no type"));
        }
        let kind = ExtentKind::parse(kind);
        let rest = rest.trim();
        let (file, rest) = if let Some(quoted) = rest.strip_prefix('"') {
            let end = quoted.find('"').ok_or_else(|| ParseError::whole("extent file name has no closing quote"))?;
            (Some(quoted[..end].to_string()), quoted[end + 1..].trim())
        } else {
            (None, rest)
        };
        let offset = if rest.is_empty() {
            None
        } else {
            Some(
                rest.parse::<u64>()
                    .map_err(|_| ParseError::whole(format!("extent offset {rest:?} is not a number")))?,
            )
        };
        if file.is_none() && kind != ExtentKind::Zero {
            return Err(ParseError::whole(format!("{} extent has no file name", kind.as_str())));
        }
        Ok(Some(Extent { access, sectors, kind, file, offset }))
    }
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
    /// The line's text without its terminator, exactly as read (or as regenerated after an edit).
    text: String,
    /// "\n", "\r\n" or "" (last line without a newline).
    eol: String,
    kind: Kind,
}

/// A parsed descriptor. `Display`/`to_string` writes it back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Descriptor {
    lines: Vec<Line>,
}

fn unquote(v: &str) -> &str {
    let v = v.trim();
    v.strip_prefix('"').and_then(|v| v.strip_suffix('"')).unwrap_or(v)
}

fn parse_hex32(v: &str) -> Option<u32> {
    if v.is_empty() || v.len() > 8 {
        return None;
    }
    u32::from_str_radix(v, 16).ok()
}

impl Descriptor {
    /// Parses descriptor text. Trailing NULs (the padding of an embedded descriptor) are ignored.
    pub fn parse(text: &str) -> Result<Descriptor, ParseError> {
        let text = text.trim_end_matches('\0');
        if text.len() as u64 > MAX_DESCRIPTOR_BYTES {
            return Err(ParseError::whole("larger than any disk descriptor"));
        }
        let mut lines = Vec::new();
        for (i, raw) in text.split_inclusive('\n').enumerate() {
            let (body, eol) = match raw.strip_suffix("\r\n") {
                Some(b) => (b, "\r\n"),
                None => match raw.strip_suffix('\n') {
                    Some(b) => (b, "\n"),
                    None => (raw, ""),
                },
            };
            if body.contains('\0') {
                return Err(ParseError { line: i + 1, message: "contains a NUL byte".into() });
            }
            let kind = Self::classify(body).map_err(|e| ParseError { line: i + 1, ..e })?;
            lines.push(Line { text: body.to_string(), eol: eol.to_string(), kind });
        }
        let d = Descriptor { lines };
        if !d.lines.iter().any(|l| matches!(&l.kind, Kind::Header { key } if key == "createType")) {
            return Err(ParseError::whole("no createType: not a disk descriptor"));
        }
        Ok(d)
    }

    /// Parses the bytes of a descriptor file or embedded descriptor area. The text ends at the
    /// first NUL, as for VMware and QEMU: QEMU rewrites an embedded descriptor in place when a
    /// new CID is shorter (it does not zero-pad CIDs) and leaves stale bytes after the NUL.
    pub fn parse_bytes(bytes: &[u8]) -> Result<Descriptor, ParseError> {
        let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
        let text = std::str::from_utf8(&bytes[..end]).map_err(|e| {
            ParseError::whole(format!("is not UTF-8 text (invalid byte at offset {})", e.valid_up_to()))
        })?;
        Descriptor::parse(text)
    }

    fn classify(body: &str) -> Result<Kind, ParseError> {
        let t = body.trim();
        if t.is_empty() || t.starts_with('#') {
            return Ok(Kind::Other);
        }
        if let Some(extent) = Extent::parse(t)? {
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

    /// Builds a new descriptor in VMware's layout.
    pub fn build(
        cid: u32,
        parent_cid: u32,
        create_type: &str,
        parent_hint: Option<&str>,
        extents: &[Extent],
        ddb: &[(&str, &str)],
    ) -> Result<Descriptor, ParseError> {
        let names = parent_hint.into_iter().chain(extents.iter().filter_map(|e| e.file.as_deref()));
        for name in names.chain(ddb.iter().map(|(_, v)| *v)) {
            check_representable(name)?;
        }
        let mut text = format!(
            "# Disk DescriptorFile\nversion=1\nencoding=\"UTF-8\"\nCID={cid:08x}\nparentCID={parent_cid:08x}\n\
             isNativeSnapshot=\"no\"\ncreateType=\"{create_type}\"\n"
        );
        if let Some(hint) = parent_hint {
            text.push_str(&format!("parentFileNameHint=\"{hint}\"\n"));
        }
        text.push_str("\n# Extent description\n");
        for e in extents {
            text.push_str(&e.render());
            text.push('\n');
        }
        text.push_str("\n# The Disk Data Base\n#DDB\n\n");
        for (k, v) in ddb {
            text.push_str(&format!("{k} = \"{v}\"\n"));
        }
        Descriptor::parse(&text)
    }

    fn header_line(&self, key: &str) -> Option<&Line> {
        self.lines.iter().find(|l| matches!(&l.kind, Kind::Header { key: k } if k.eq_ignore_ascii_case(key)))
    }

    /// The raw (unquoted) value of a header key such as `createType`.
    pub fn header(&self, key: &str) -> Option<&str> {
        self.header_line(key).and_then(|l| l.text.split_once('=')).map(|(_, v)| unquote(v))
    }

    /// Sets a header key, in place when present, else after the last header line.
    pub fn set_header(&mut self, key: &str, value: &str, quoted: bool) {
        let text = if quoted { format!("{key}=\"{value}\"") } else { format!("{key}={value}") };
        if let Some(i) =
            self.lines.iter().position(|l| matches!(&l.kind, Kind::Header { key: k } if k.eq_ignore_ascii_case(key)))
        {
            self.lines[i].text = text;
            return;
        }
        let at = self.lines.iter().rposition(|l| matches!(l.kind, Kind::Header { .. })).map_or(0, |i| i + 1);
        self.insert(at, Line { text, eol: "\n".into(), kind: Kind::Header { key: key.to_string() } });
    }

    /// Inserts a line, first ending the line before it if that was a last line without newline
    /// (else the two would be joined).
    fn insert(&mut self, at: usize, line: Line) {
        if at > 0 && self.lines[at - 1].eol.is_empty() {
            self.lines[at - 1].eol = "\n".into();
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

    /// Where the parent is, relative to this descriptor's folder or absolute.
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
    /// lines `f` changes are regenerated.
    pub fn map_extents(&mut self, mut f: impl FnMut(&mut Extent)) {
        for line in &mut self.lines {
            if let Kind::Extent(e) = &mut line.kind {
                let before = e.clone();
                f(e);
                if *e != before {
                    line.text = e.render();
                }
            }
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

    /// Sets a DDB key: in place when present, else at the end.
    pub fn set_ddb(&mut self, key: &str, value: &str) {
        let text = format!("{key} = \"{value}\"");
        let kind = Kind::Ddb { key: key.to_string(), value: value.to_string() };
        if let Some(line) = self.lines.iter_mut().find(|l| matches!(&l.kind, Kind::Ddb { key: k, .. } if k == key)) {
            line.text = text;
            line.kind = kind;
            return;
        }
        self.insert(self.lines.len(), Line { text, eol: "\n".into(), kind });
    }

    /// Removes a DDB key.
    pub fn remove_ddb(&mut self, key: &str) {
        self.lines.retain(|l| !matches!(&l.kind, Kind::Ddb { key: k, .. } if k == key));
    }
}

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
        assert_eq!(e[0].file.as_deref(), Some("8.10 Core-s001.vmdk"));
        assert_eq!(e[1].sectors, 20480);
        assert_eq!(d.ddb("ddb.adapterType"), Some("lsilogic"));
    }

    #[test]
    fn edits_touch_only_their_lines() {
        let mut d = Descriptor::parse(HOWTO).unwrap();
        d.remove_ddb("ddb.uuid");
        d.set_ddb("ddb.deletable", "false");
        d.map_extents(|e| e.file = e.file.as_ref().map(|f| format!("../8.10 Core/{f}")));
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
        assert_eq!(e[0].file.as_deref(), Some("a b-flat.vmdk"));
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
        assert_eq!(d.to_string(), "createType=\"x\"\nddb.a = \"1\"\nddb.b = \"2\"\n");
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
