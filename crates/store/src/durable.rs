//! fsync helpers shared by the commit log and the consume queues.

use std::fs::File;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::error::{Result, StoreError};

/// Makes a new or removed directory entry in `dir` survive a power loss.
pub(crate) fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(StoreError::io(dir))
}

/// fdatasyncs `file` if it was written since the last sync. A failed sync leaves it dirty, so
/// nothing can later claim the unsynced data is durable. `lock` (one per file) is held across
/// the check and the fsync: a caller that finds the file clean while another thread's fsync of
/// it is still running waits for that fsync instead of returning early.
pub(crate) fn sync_if_dirty(
    file: &File,
    dirty: &AtomicBool,
    lock: &parking_lot::Mutex<()>,
    path: &Path,
) -> Result<()> {
    let _one_sync_at_a_time = lock.lock();
    if dirty.swap(false, Ordering::AcqRel) {
        if let Err(source) = file.sync_data() {
            dirty.store(true, Ordering::Release);
            return Err(StoreError::Io {
                path: path.to_path_buf(),
                source,
            });
        }
    }
    Ok(())
}
