//! `leafd relink LEAF`: after a leaf, its base, or both moved, point the leaf's parent copies at
//! the base again. The base is found by its identity (recorded id, else CID, capacity and long
//! content id, which must point at one base only), never by its name; it is refused if its CID
//! does not match the leaf's parent copy or its content no longer matches its own fingerprint.

use std::path::{Path, PathBuf};

use leafd_formats::clone::{PathStyle, repoint};
use leafd_formats::descriptor::Descriptor;
use leafd_formats::disk::{Disk, read_descriptor};

use super::common::{extent_keys, read_dict};
use crate::durable;
use crate::error::{Error, Result, undo_after};
use crate::fsutil;
use crate::library::records;
use crate::library::{Base, Leaf, Library, Options};

/// What relink did.
#[derive(Debug)]
pub(crate) struct Relinked {
    pub(crate) leaf: String,
    pub(crate) base: String,
    /// Parent copies rewritten (0: the leaf already reached its base).
    pub(crate) rewritten: usize,
}

impl std::fmt::Display for Relinked {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.rewritten == 0 {
            write!(f, "leaf {:?} already reaches base {:?}; nothing to do", self.leaf, self.base)
        } else {
            write!(
                f,
                "leaf {:?} relinked to base {:?} ({} disk{})",
                self.leaf,
                self.base,
                self.rewritten,
                if self.rewritten == 1 { "" } else { "s" }
            )
        }
    }
}

/// The base `leaf` was made from: by id, else the one base whose every disk has the parent copy's
/// CID, capacity and long content id. Two such bases (a duplicated VM) are refused as ambiguous;
/// a base with the leaf's base name but another identity is refused, naming it.
fn find_base(lib: &Library, leaf: &Leaf, copies: &[Descriptor]) -> Result<Base> {
    let env = Options::default().env();
    let bases = lib.bases()?;
    if let Some(b) = bases.iter().find(|b| b.record.id == leaf.record.base_id) {
        return Ok(b.clone());
    }
    const LONG_ID: &str = "ddb.longContentID";
    let matches = |b: &Base| {
        leaf.record.disks.iter().zip(copies).all(|(d, c)| {
            b.record.disks.iter().any(|bd| {
                let long_id = read_descriptor(&env, &b.descriptor_path(bd))
                    .ok()
                    .and_then(|(bdesc, _)| bdesc.ddb(LONG_ID).zip(c.ddb(LONG_ID)).map(|(ours, theirs)| ours == theirs));
                bd.node == d.base_node()
                    && Some(bd.cid.as_str()) == c.header("CID")
                    && bd.capacity == c.capacity()
                    && long_id != Some(false)
            })
        })
    };
    let candidates: Vec<&Base> = bases.iter().filter(|b| matches(b)).collect();
    match candidates[..] {
        [b] => return Ok(b.clone()),
        [] => {}
        _ => {
            let names: Vec<String> = candidates.iter().map(|b| b.dir.display().to_string()).collect();
            return Err(Error::refused(
                &lib.bases_dir(),
                format!(
                    "{} bases could be the one leaf {:?} was made from (same disk identity): {}",
                    candidates.len(),
                    leaf.record.name,
                    names.join(", ")
                ),
            )
            .fix("move every base but the original out of Bases, relink, then put them back"));
        }
    }
    let named = bases.iter().find(|b| crate::library::same_name(&b.record.name, &leaf.record.base_name));
    Err(match named {
        Some(b) => Error::refused(
            &b.dir,
            format!("is not the base leaf {:?} was made from: its id and CID differ", leaf.record.name),
        )
        .fix("put the original base back in Bases (a different VM of the same name cannot serve this leaf)"),
        None => Error::refused(
            &lib.bases_dir(),
            format!("the base of leaf {:?} ({:?}) is not in this library", leaf.record.name, leaf.record.base_name),
        )
        .fix("move the base into Bases, or give the library that holds it with --root"),
    })
}

/// Points `leaf`'s parent copies at its base in `lib`.
pub(crate) fn relink(lib: &Library, arg: &Path, opts: &Options) -> Result<Relinked> {
    let env = opts.env();
    let leaf = lib.find_leaf(arg)?;
    let copies: Vec<(PathBuf, Descriptor)> = leaf
        .record
        .disks
        .iter()
        .map(|d| {
            let p = leaf.dir.join(&d.parent_copy);
            read_descriptor(&env, &p).map(|(desc, _)| (p, desc)).map_err(Error::from)
        })
        .collect::<Result<_>>()?;
    let descriptors: Vec<Descriptor> = copies.iter().map(|(_, d)| d.clone()).collect();
    let base = find_base(lib, &leaf, &descriptors)?;
    let _lock = lib.lock_base(&base.record.id)?;
    // Both under the library's root: relative, so the library can move as a whole.
    let style = if leaf.dir.starts_with(lib.root()) { opts.path_style } else { PathStyle::Absolute };
    let mut plans = Vec::new();
    for (d, (path, copy)) in leaf.record.disks.iter().zip(&copies) {
        let bd = base.record.disks.iter().find(|b| b.node == d.base_node()).ok_or_else(|| {
            Error::refused(
                &base.dir,
                format!("base {:?} has no disk {} for leaf {:?}", base.record.name, d.node, leaf.record.name),
            )
        })?;
        if Some(bd.cid.as_str()) != copy.header("CID") || bd.capacity != copy.capacity() {
            return Err(Error::refused(
                &base.descriptor_path(bd),
                format!("CID {} or capacity does not match the leaf's parent copy {}", bd.cid, path.display()),
            )
            .fix("this is not the base the leaf was made from; put the original back"));
        }
        let base_disk = Disk::open(&env, &base.descriptor_path(bd))?;
        if let Some(recorded) = &bd.fingerprint
            && *recorded != fsutil::fingerprint(&base_disk.extent_files(), &opts.cancel)?
        {
            return Err(Error::refused(
                &base.descriptor_path(bd),
                "the base's content no longer matches its fingerprint",
            )
            .fix("restore the base from a backup; run `leafd verify --deep`"));
        }
        if Disk::open(&env, &leaf.dir.join(&d.delta))
            .is_ok_and(|c| c.parent().is_some_and(|p| extent_keys(p) == extent_keys(&base_disk)))
        {
            continue; // already reaches this base
        }
        let from = path.parent().unwrap_or(&leaf.dir);
        let new = repoint(copy, &base_disk.extent_files(), from, style)?;
        // As bytes: a copy of a descriptor in a legacy code page keeps it.
        plans.push((path.clone(), copy.to_bytes(), new.to_bytes()));
    }
    // Not journaled: from here on a failure puts back what was changed, so the leaf is as it was
    // or relinked, never half of each.
    durable::arm();
    let mut changed = Vec::new();
    let relinked = (|| {
        for (path, _, text) in &plans {
            changed.push(Changed::file(path)?);
            durable::write_atomic(path, text)?;
        }
        // Every chain must open now, or the old parent copies go back.
        for d in &leaf.record.disks {
            Disk::open(&env, &leaf.dir.join(&d.delta))?;
        }
        update_records(&leaf, &base, &mut changed)
    })();
    if let Err(e) = relinked {
        return Err(undo_after(e, || changed.iter().rev().try_for_each(|c| c.undo(&leaf))));
    }
    Ok(Relinked { leaf: leaf.record.name.clone(), base: base.record.name.clone(), rewritten: plans.len() })
}

/// Something relink is about to change, as it was.
enum Changed {
    /// A file and its bytes (`None`: it did not exist).
    File(PathBuf, Option<Vec<u8>>),
    /// The leaf's record (file and mirror).
    LeafRecord,
}

impl Changed {
    fn file(path: &Path) -> Result<Changed> {
        match std::fs::read(path) {
            Ok(bytes) => Ok(Changed::File(path.to_path_buf(), Some(bytes))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Changed::File(path.to_path_buf(), None)),
            Err(e) => Err(Error::io(path, "cannot read", e)),
        }
    }

    /// Puts it back as it was (nothing when it still is).
    fn undo(&self, leaf: &Leaf) -> Result<()> {
        match self {
            Changed::File(path, Some(old)) => {
                if std::fs::read(path).ok().as_ref() != Some(old) {
                    durable::write_atomic(path, old)?;
                }
                Ok(())
            }
            Changed::File(path, None) => {
                durable::remove_file(path)?;
                durable::flush_parent(path, durable::Flush::Order)
            }
            Changed::LeafRecord => {
                if records::read_leaf(&leaf.dir).ok().flatten().as_ref() != Some(&leaf.record) {
                    records::write_leaf(&leaf.dir, &leaf.record)?;
                }
                Ok(())
            }
        }
    }
}

/// The leaf's record, its `.vmsd`'s clone source and the base's list follow the move; each
/// change is listed in `changed` before it is made.
fn update_records(leaf: &Leaf, base: &Base, changed: &mut Vec<Changed>) -> Result<()> {
    let mut record = leaf.record.clone();
    record.path = leaf.dir.to_string_lossy().into();
    record.base_id = base.record.id.clone();
    record.base_name = base.record.name.clone();
    changed.push(Changed::LeafRecord);
    records::write_leaf(&leaf.dir, &record)?;
    let vmsd = leaf.vmx_path().with_extension("vmsd");
    if vmsd.is_file() {
        let mut d = read_dict(&vmsd)?;
        if d.get("cloneOf0").is_some() {
            d.set("cloneOf0", &base.vmx_path().to_string_lossy());
            changed.push(Changed::file(&vmsd)?);
            durable::write_atomic(&vmsd, &d.to_bytes())?;
        }
    }
    let listing = Leaf { dir: leaf.dir.clone(), record }.listing();
    changed.push(Changed::file(&records::leaf_ref_file(&base.dir, &listing.id))?);
    records::link_leaf(&base.dir, &listing)
}
