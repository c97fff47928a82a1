//! Reads `strace -f -ff -y -qq -o PREFIX` output: every system call that changes the file system,
//! as the kind of change durable's trace (`LEAFD_IO_TRACE`) calls it and the path it changed,
//! so a test can check that the trace misses none of them.

use std::path::{Path, PathBuf};

/// The calls that change files, for `strace -e trace=` (each prefixed `?`: one this machine's
/// kernel lacks, `rename` on arm64 say, is no error).
pub const MUTATING: &[&str] = &[
    "open",
    "openat",
    "openat2",
    "creat",
    "write",
    "writev",
    "pwrite64",
    "pwritev",
    "pwritev2",
    "ftruncate",
    "truncate",
    "fallocate",
    "copy_file_range",
    "sendfile",
    "chmod",
    "fchmod",
    "fchmodat",
    "fchmodat2",
    "setxattr",
    "lsetxattr",
    "fsetxattr",
    "removexattr",
    "lremovexattr",
    "fremovexattr",
    "rename",
    "renameat",
    "renameat2",
    "unlink",
    "unlinkat",
    "rmdir",
    "mkdir",
    "mkdirat",
    "mknod",
    "mknodat",
    "link",
    "linkat",
    "symlink",
    "symlinkat",
    "utimensat",
    "utimes",
    "futimesat",
    "fsync",
    "fdatasync",
];

/// The `-e trace=` argument for [`MUTATING`].
pub fn filter() -> String {
    format!("trace={}", MUTATING.iter().map(|c| format!("?{c}")).collect::<Vec<_>>().join(","))
}

/// strace's arguments before the command: follow every thread, one file per thread at
/// `PREFIX.<tid>`, paths of descriptors, the calls of [`MUTATING`].
pub fn args(prefix: &Path) -> Vec<String> {
    let prefix = prefix.to_string_lossy().into_owned();
    ["-f", "-ff", "-y", "-qq", "-e", &filter(), "-o", &prefix, "--"].map(str::to_string).to_vec()
}

/// One change a system call made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    /// As durable's trace names it: `create`, `open-write`, `write`, `truncate`, `chmod`,
    /// `xattr`, `rmxattr`, `rename`, `unlink`, `rmdir`, `mkdir`, `link`, `symlink`, `times`,
    /// `flush`.
    pub kind: &'static str,
    pub path: PathBuf,
    /// Bytes written (`write`).
    pub bytes: u64,
    /// The line strace wrote.
    pub line: String,
}

/// One argument of a call as strace shows it.
#[derive(Debug)]
enum Arg {
    /// A descriptor with the path `-y` shows for it (`3</a/b>`), or `AT_FDCWD`.
    Fd(Option<PathBuf>),
    Str(String),
    Other(String),
}

/// Splits `args` at the commas outside quotes and brackets.
fn split_args(args: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let (mut depth, mut quoted, mut escaped) = (0i32, false, false);
    for c in args.chars() {
        if quoted {
            cur.push(c);
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == '"' {
                quoted = false;
            }
            continue;
        }
        match c {
            '"' => quoted = true,
            '(' | '[' | '{' | '<' => depth += 1,
            ')' | ']' | '}' | '>' => depth -= 1,
            ',' if depth == 0 => {
                out.push(cur.trim().to_string());
                cur.clear();
                continue;
            }
            _ => {}
        }
        cur.push(c);
    }
    if !cur.trim().is_empty() {
        out.push(cur.trim().to_string());
    }
    out
}

/// The text of a quoted strace string, escapes undone (`\"`, `\\`, `\n`, `\t`, `\xHH`, octal).
fn unquote(s: &str) -> Option<String> {
    let inner = s.strip_prefix('"')?;
    let inner = inner.strip_suffix("...").unwrap_or(inner).strip_suffix('"')?;
    let mut bytes = Vec::new();
    let mut chars = inner.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '\\' {
            let mut b = [0; 4];
            bytes.extend_from_slice(c.encode_utf8(&mut b).as_bytes());
            continue;
        }
        match chars.next()? {
            'n' => bytes.push(b'\n'),
            't' => bytes.push(b'\t'),
            'r' => bytes.push(b'\r'),
            'x' => {
                let h: String = [chars.next()?, chars.next()?].iter().collect();
                bytes.push(u8::from_str_radix(&h, 16).ok()?);
            }
            d @ '0'..='7' => {
                let mut v = d.to_digit(8)?;
                while let Some(n) = chars.peek().and_then(|c| c.to_digit(8)) {
                    v = v * 8 + n;
                    chars.next();
                }
                bytes.push(v as u8);
            }
            other => bytes.push(other as u8),
        }
    }
    Some(String::from_utf8_lossy(&bytes).into_owned())
}

fn parse_arg(a: &str) -> Arg {
    if a.starts_with('"') {
        return unquote(a).map_or(Arg::Other(a.to_string()), Arg::Str);
    }
    if let Some(open) = a.find('<')
        && a.ends_with('>')
        && (a[..open].parse::<i64>().is_ok() || &a[..open] == "AT_FDCWD")
    {
        return Arg::Fd(Some(PathBuf::from(&a[open + 1..a.len() - 1])));
    }
    if a == "AT_FDCWD" {
        return Arg::Fd(None);
    }
    Arg::Other(a.to_string())
}

/// The path a `(dirfd, path)` pair names.
fn at(dir: &Arg, path: &Arg) -> Option<PathBuf> {
    let Arg::Str(p) = path else { return None };
    let p = PathBuf::from(p);
    if p.is_absolute() {
        return Some(p);
    }
    match dir {
        Arg::Fd(Some(d)) => Some(d.join(p)),
        _ => Some(p),
    }
}

fn fd_path(a: &Arg) -> Option<PathBuf> {
    match a {
        Arg::Fd(p) => p.clone(),
        _ => None,
    }
}

fn str_path(a: &Arg) -> Option<PathBuf> {
    match a {
        Arg::Str(p) => Some(PathBuf::from(p)),
        _ => None,
    }
}

fn flag(a: &Arg, name: &str) -> bool {
    match a {
        Arg::Other(s) => s.split(|c: char| !(c.is_alphanumeric() || c == '_')).any(|f| f == name),
        _ => false,
    }
}

/// An `open` family call's change from its flags: created, or opened for writing.
fn opened(flags: &Arg) -> Option<&'static str> {
    if flag(flags, "O_CREAT") || flag(flags, "O_TMPFILE") {
        Some("create")
    } else if flag(flags, "O_WRONLY") || flag(flags, "O_RDWR") || flag(flags, "O_TRUNC") {
        Some("open-write")
    } else {
        None
    }
}

/// The change one line of strace output shows, if the call changed something (failed calls
/// change nothing).
pub fn parse_line(line: &str) -> Option<Change> {
    let line = line.trim();
    let open = line.find('(')?;
    let name = &line[..open];
    let close = line.rfind(") = ")?;
    let result = line[close + 4..].trim();
    if result.starts_with('-') || result.starts_with('?') {
        return None;
    }
    let ret_path = parse_arg(result.split_whitespace().next().unwrap_or_default());
    let args: Vec<Arg> = split_args(&line[open + 1..close]).iter().map(|a| parse_arg(a)).collect();
    let arg = |i: usize| args.get(i).unwrap_or(&Arg::Fd(None));
    let (kind, path): (&'static str, Option<PathBuf>) = match name {
        "open" => (opened(arg(1))?, fd_path(&ret_path).or_else(|| str_path(arg(0)))),
        "creat" => ("create", fd_path(&ret_path).or_else(|| str_path(arg(0)))),
        "openat" => (opened(arg(2))?, fd_path(&ret_path).or_else(|| at(arg(0), arg(1)))),
        "openat2" => (opened(arg(2))?, fd_path(&ret_path).or_else(|| at(arg(0), arg(1)))),
        "write" | "writev" | "pwrite64" | "pwritev" | "pwritev2" | "fallocate" | "sendfile" => {
            ("write", fd_path(arg(0)))
        }
        "copy_file_range" => ("write", fd_path(arg(2))),
        "ftruncate" => ("truncate", fd_path(arg(0))),
        "truncate" => ("truncate", str_path(arg(0))),
        "fchmod" => ("chmod", fd_path(arg(0))),
        "chmod" => ("chmod", str_path(arg(0))),
        "fchmodat" | "fchmodat2" => ("chmod", at(arg(0), arg(1))),
        "setxattr" | "lsetxattr" => ("xattr", str_path(arg(0))),
        "fsetxattr" => ("xattr", fd_path(arg(0))),
        "removexattr" | "lremovexattr" => ("rmxattr", str_path(arg(0))),
        "fremovexattr" => ("rmxattr", fd_path(arg(0))),
        "rename" => ("rename", str_path(arg(0))),
        "renameat" | "renameat2" => ("rename", at(arg(0), arg(1))),
        "unlink" => ("unlink", str_path(arg(0))),
        "unlinkat" => (if flag(arg(2), "AT_REMOVEDIR") { "rmdir" } else { "unlink" }, at(arg(0), arg(1))),
        "rmdir" => ("rmdir", str_path(arg(0))),
        "mkdir" => ("mkdir", str_path(arg(0))),
        "mkdirat" => ("mkdir", at(arg(0), arg(1))),
        "mknod" => ("create", str_path(arg(0))),
        "mknodat" => ("create", at(arg(0), arg(1))),
        "link" => ("link", str_path(arg(1))),
        "linkat" => ("link", at(arg(2), arg(3))),
        "symlink" => ("symlink", str_path(arg(1))),
        "symlinkat" => ("symlink", at(arg(1), arg(2))),
        "utimensat" => ("times", at(arg(0), arg(1)).or_else(|| fd_path(arg(0)))),
        "utimes" => ("times", str_path(arg(0))),
        "futimesat" => ("times", at(arg(0), arg(1)).or_else(|| fd_path(arg(0)))),
        "fsync" | "fdatasync" => ("flush", fd_path(arg(0))),
        _ => return None,
    };
    let bytes = if kind == "write" { result.split_whitespace().next()?.parse().unwrap_or(0) } else { 0 };
    Some(Change { kind, path: path?, bytes, line: line.to_string() })
}

/// Every change in the files `strace -ff -o PREFIX` wrote (one per thread: `PREFIX.<tid>`).
pub fn read(prefix: &Path) -> Vec<Change> {
    let dir = prefix.parent().unwrap();
    let name = format!("{}.", prefix.file_name().unwrap().to_string_lossy());
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.file_name().unwrap().to_string_lossy().starts_with(&name))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "strace wrote nothing at {}", prefix.display());
    files
        .iter()
        .flat_map(|f| std::fs::read_to_string(f).unwrap().lines().filter_map(parse_line).collect::<Vec<_>>())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_parse() {
        let c = parse_line(
            r#"openat(AT_FDCWD</root>, "/l/a b.tmp", O_RDWR|O_CREAT|O_EXCL|O_CLOEXEC, 0600) = 3</l/a b.tmp>"#,
        )
        .unwrap();
        assert_eq!((c.kind, c.path.as_path()), ("create", Path::new("/l/a b.tmp")));
        assert!(parse_line(r#"openat(AT_FDCWD, "/l/x", O_RDONLY|O_CLOEXEC) = 3</l/x>"#).is_none());
        assert!(parse_line(r#"unlinkat(AT_FDCWD, "/l/x", 0) = -1 ENOENT (No such file or directory)"#).is_none());
        let c = parse_line(r#"pwrite64(4</l/d.vmdk>, "KDMV"..., 512, 0) = 512"#).unwrap();
        assert_eq!((c.kind, c.path.as_path(), c.bytes), ("write", Path::new("/l/d.vmdk"), 512));
        let c = parse_line(r#"renameat2(AT_FDCWD, "/l/s", AT_FDCWD, "/l/t", RENAME_NOREPLACE) = 0"#).unwrap();
        assert_eq!((c.kind, c.path.as_path()), ("rename", Path::new("/l/s")));
        let c = parse_line(r#"unlinkat(5</l/d>, "f", AT_REMOVEDIR) = 0"#).unwrap();
        assert_eq!((c.kind, c.path.as_path()), ("rmdir", Path::new("/l/d/f")));
        let c = parse_line(r#"utimensat(7</l/n.nvram>, NULL, [UTIME_OMIT, {tv_sec=1, tv_nsec=0}], 0) = 0"#).unwrap();
        assert_eq!((c.kind, c.path.as_path()), ("times", Path::new("/l/n.nvram")));
        let c = parse_line(r#"lsetxattr("/l/B", "user.org.leafd.base", "{\"a\"}"..., 10, 0) = 0"#).unwrap();
        assert_eq!((c.kind, c.path.as_path()), ("xattr", Path::new("/l/B")));
    }
}
