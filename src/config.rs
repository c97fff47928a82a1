//! `config.toml`: the settings a person may change. Command-line flags and `LEAFD_ROOT` override it.
//!
//! ```toml
//! root = "~/Virtual Machines.localized"
//! settle_seconds = 3
//! new_leaf_quiet_ms = 400       # an empty New Leaf folder: quiet this long, then its leaf is made
//! retry_seconds = 300           # a refused drop is tried again after this, then 2×, 4×… up to 16×
//! snapshot_backend = "auto"     # auto | native | vmrun
//! path_style = "relative"       # relative | absolute
//! notifications = true        # on failures (default: on; Linux: where a notification service runs)
//! vmrun = "/Applications/VMware Fusion.app/Contents/Library/vmrun"
//! ```

use std::path::{Path, PathBuf};
use std::time::Duration;

use leafd_formats::clone::PathStyle;
use serde::Deserialize;

use crate::error::{Error, Kind, Result};
use crate::library::SnapshotBackend;
use crate::platform;

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Config {
    pub(crate) root: Option<PathBuf>,
    pub(crate) settle_seconds: Option<f64>,
    pub(crate) new_leaf_quiet_ms: Option<u64>,
    pub(crate) retry_seconds: Option<f64>,
    pub(crate) snapshot_backend: Option<SnapshotBackend>,
    pub(crate) path_style: Option<PathStyle>,
    pub(crate) notifications: Option<bool>,
    pub(crate) vmrun: Option<PathBuf>,
}

/// The quiet period of an empty New Leaf request folder when the file sets none: short, since
/// nothing is copied into it, yet longer than a rename typed in one go.
pub const DEFAULT_NEW_LEAF_QUIET_MS: u64 = 400;

/// The platform's own place for the file.
fn default_path() -> PathBuf {
    platform::config_dir().join("config.toml")
}

/// `LEAFD_CONFIG` (when set and not empty), else the platform's configuration folder.
pub(crate) fn path() -> PathBuf {
    named_by_env().unwrap_or_else(default_path)
}

fn named_by_env() -> Option<PathBuf> {
    std::env::var_os("LEAFD_CONFIG").filter(|v| !v.is_empty()).map(PathBuf::from)
}

/// Where the library root a command uses came from, to say which to change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum RootFrom {
    Flag,
    Env,
    File(PathBuf),
    Default,
}

impl RootFrom {
    /// How to point leafd at another library, for a fix.
    pub(crate) fn how_to_change(&self) -> String {
        match self {
            RootFrom::Flag => "give --root the library's folder".into(),
            RootFrom::Env => "set LEAFD_ROOT to the library's folder (or give --root)".into(),
            RootFrom::File(file) => {
                format!("set `root` in {} to the library's folder (or give --root)", file.display())
            }
            RootFrom::Default => "give --root the library's folder, or set `root` in config.toml".into(),
        }
    }
}

fn expand_home(p: PathBuf) -> PathBuf {
    match p.strip_prefix("~") {
        Ok(rest) => platform::home().join(rest),
        Err(_) => p,
    }
}

impl Config {
    /// Reads the configuration; a missing file means defaults, a malformed one is an error, and
    /// so is a `LEAFD_CONFIG` naming a file that is not there (a typo must not mean defaults).
    pub(crate) fn load() -> Result<Config> {
        if let Some(named) = named_by_env()
            && named.symlink_metadata().is_err()
        {
            return Err(Error::refused(&named, "LEAFD_CONFIG names this configuration file, which does not exist")
                .fix(format!("create it, correct LEAFD_CONFIG, or unset it to use {}", default_path().display())));
        }
        Self::load_from(&path())
    }

    pub(crate) fn load_from(path: &Path) -> Result<Config> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Config::default()),
            Err(e) => return Err(Error::io(path, "cannot read the configuration", e)),
        };
        let mut c: Config = toml::from_str(&text).map_err(|e| {
            Error::format(path, format!("configuration is not valid: {}", e.message()))
                .fix("see README.md, Configuration")
        })?;
        c.root = c.root.map(expand_home);
        c.vmrun = c.vmrun.map(expand_home);
        Ok(c)
    }

    /// The library root: `--root`, then `LEAFD_ROOT`, then the file, then the platform default;
    /// and where it came from.
    pub(crate) fn root_from(&self, flag: Option<&Path>) -> (PathBuf, RootFrom) {
        if let Some(flag) = flag {
            return (flag.to_path_buf(), RootFrom::Flag);
        }
        if let Some(env) = std::env::var_os("LEAFD_ROOT").filter(|v| !v.is_empty()) {
            return (PathBuf::from(env), RootFrom::Env);
        }
        match &self.root {
            Some(root) => (root.clone(), RootFrom::File(path())),
            None => (platform::default_root(), RootFrom::Default),
        }
    }

    /// How long an empty New Leaf request folder must be quiet before its leaf is made.
    pub(crate) fn new_leaf_quiet(&self) -> Result<Duration> {
        let ms = self.new_leaf_quiet_ms.unwrap_or(DEFAULT_NEW_LEAF_QUIET_MS);
        if ms > 10_000 {
            return Err(Error::new(Kind::Refused, Some(path()), format!("new_leaf_quiet_ms = {ms} makes no sense"))
                .fix("give milliseconds between 0 and 10000"));
        }
        Ok(Duration::from_millis(ms))
    }
}
