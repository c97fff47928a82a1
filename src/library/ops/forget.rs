//! `leafd forget LEAF`: take a leaf that is gone off its base's list, once it is shown to be
//! gone. Deleting a leaf by hand must never be a way to lose its base, so this is the only way
//! an entry leaves the list (besides promote and Make Base of the leaf, which replace it).

use std::path::Path;

use crate::error::{Error, Result};
use crate::library::records::{self, Listed};
use crate::library::{Base, Library, same_name};

/// Forgets the leaf `arg` (its name, or the id of an unreadable entry) of whichever base lists
/// it, after checking that no leaf with its id is at its recorded path or in the library.
pub(crate) fn forget(lib: &Library, arg: &str) -> Result<String> {
    let mut found: Vec<(Base, String, String, Option<String>)> = Vec::new();
    for base in lib.bases()? {
        for listed in base.leaf_refs()? {
            match listed {
                Listed::Leaf(r) if same_name(&r.name, arg) || r.id == arg => {
                    found.push((base.clone(), r.id, r.name, Some(r.path)))
                }
                Listed::Damaged(marker, _) => {
                    let id = marker.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
                    if id == arg {
                        found.push((base.clone(), id.clone(), id, None));
                    }
                }
                Listed::Leaf(_) => {}
            }
        }
    }
    let (base, id, name, path) = match found.len() {
        1 => found.remove(0),
        0 => {
            return Err(Error::refused(lib.root(), format!("no base lists a leaf named {arg:?}"))
                .fix("`leafd status` shows each base's leaves; `leafd verify` names the ones that are missing"));
        }
        n => {
            return Err(Error::refused(lib.root(), format!("{n} entries match {arg:?}"))
                .fix("give the leaf's id instead (`leafd status --json` shows them)"));
        }
    };
    let _lock = base.lock(lib)?;
    if let Some(l) = lib.leaves()?.into_iter().find(|l| l.record.id == id) {
        return Err(Error::refused(&l.dir, format!("leaf {name:?} is still here, so its base still serves it"))
            .fix("delete the leaf first (or `leafd promote` it to keep it without its base), then forget it"));
    }
    if let Some(p) = path.as_deref().map(Path::new)
        && records::read_leaf(p).ok().flatten().is_some_and(|r| r.id == id)
    {
        return Err(Error::refused(p, format!("leaf {name:?} is still at its recorded place"))
            .fix("delete the leaf first (or `leafd promote` it), then forget it"));
    }
    // Not journaled: the one change is the entry's removal.
    crate::durable::arm();
    records::unlink_leaf(&base.dir, &id)?;
    Ok(format!("forgot leaf {name:?} of base {:?}: it is gone, and the base no longer lists it", base.record.name))
}
