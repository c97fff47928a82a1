//! Telling the user where they are looking: a red tag on the item, a note beside it, a desktop
//! notification; and taking them away once the item goes through.

use std::path::Path;

use crate::child;
use crate::error::Error;
use crate::library::{failure_note, note_path};
use crate::platform::{self, Tag};

/// Marks `item` as failed: red tag, note beside it, notification (when `notify`).
pub(crate) fn failed(item: &Path, what: &str, err: &Error, notify: bool) {
    let name = item.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let fix = err.fix.clone().unwrap_or_else(|| "see the log (`leafd log`) for details".into());
    let note = failure_note(what, &name, &err.summary(), &fix);
    // Tagged first: once the note is there, so is the tag.
    if let Err(e) = crate::durable::set_tag(item, Tag::Failed, true) {
        tracing::debug!("cannot tag {}: {e}", item.display());
    }
    write_note(item, &note);
    if notify {
        // Best effort: never waited for, never failing the caller.
        let posted = platform::notify("leafd", &format!("Could not {what} \"{name}\": {}", err.message));
        if let platform::Notification::Run(program) = posted {
            child::run_detached(program);
        }
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
        && let Err(e) = crate::durable::remove_file(&note)
            .and_then(|()| crate::durable::flush_parent(&note, crate::durable::Flush::Order))
    {
        tracing::warn!("cannot remove the note: {e}");
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
