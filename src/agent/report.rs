//! Telling the user where they are looking: a red tag on the item, a note beside it, a
//! notification on macOS; and taking them away once the item goes through.

use std::path::Path;

use crate::error::Error;
use crate::library::note_path;
use crate::platform::{self, Tag};

/// Marks `item` as failed: red tag, note beside it, notification (when `notify`).
pub(crate) fn failed(item: &Path, what: &str, err: &Error, notify: bool) {
    let name = item.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let fix = err.fix.clone().unwrap_or_else(|| "see the log (`leafd log`) for details".into());
    let note = format!(
        "leafd could not {what} \"{name}\".\n\nWhat is wrong:\n  {}\n\nHow to fix it:\n  {fix}\n\n\
         leafd tries again by itself as soon as \"{name}\" changes; this note and the red tag go away when it works.\n",
        err.summary()
    );
    // Tagged first: once the note is there, so is the tag.
    if let Err(e) = crate::durable::set_tag(item, Tag::Failed, true) {
        tracing::debug!("cannot tag {}: {e}", item.display());
    }
    write_note(item, &note);
    if notify {
        platform::notify_user("leafd", &format!("Could not {what} \"{name}\": {}", err.message));
    }
}

/// A copy into `Make Base/` marked in progress that has not moved for a long time.
pub(crate) fn stalled(item: &Path) {
    let name = item.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    write_note(
        item,
        &format!(
            "The copy of \"{name}\" has not progressed for a long time.\n\n\
             leafd keeps waiting for it to finish. If the copy was cancelled, delete \"{name}\" and copy it again.\n"
        ),
    );
}

fn write_note(item: &Path, text: &str) {
    let note = note_path(item);
    if let Err(e) = crate::durable::write_atomic(&note, text.as_bytes()) {
        tracing::warn!("cannot write the note {}: {e}", note.display());
    }
}

/// Removes leafd's note and red tag from `item` (which may be gone).
pub(crate) fn clear(item: &Path) {
    let note = note_path(item);
    if note.exists()
        && let Err(e) = std::fs::remove_file(&note)
    {
        tracing::warn!("cannot remove the note {}: {e}", note.display());
    }
    untag(item);
}

/// Removes the red tag alone, before an item is tried again: a tag would travel with a bundle
/// into Bases, while the note beside it stays until the outcome is known.
pub(crate) fn untag(item: &Path) {
    if item.exists() {
        let _ = crate::durable::set_tag(item, Tag::Failed, false);
    }
}
