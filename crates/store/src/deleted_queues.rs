//! Consume queues of deleted topics, kept until a checkpoint no longer lists them.
//!
//! Deleting a topic moves its queue directory from `cq/<topic>` to `cq-deleted/<index>-<topic>`
//! (`index`: the delete entry's). Until a checkpoint at or past `index` is saved, a restart
//! replays the delete from an older checkpoint that still lists those queues, so
//! [`restore`] moves them back first; after that checkpoint [`purge`] removes them. A topic
//! created again under the same name meanwhile gets a fresh `cq/<topic>`.

use std::fs;
use std::path::{Path, PathBuf};

use tracing::warn;

use crate::error::{Result, StoreError};

fn root(store_dir: &Path) -> PathBuf {
    store_dir.join("cq-deleted")
}

/// (delete index, topic, path) of every kept directory, oldest delete first.
fn kept(store_dir: &Path) -> Result<Vec<(u64, String, PathBuf)>> {
    let root = root(store_dir);
    if !root.exists() {
        return Ok(Vec::new());
    }
    let mut kept = Vec::new();
    for entry in fs::read_dir(&root).map_err(StoreError::io(&root))? {
        let path = entry.map_err(StoreError::io(&root))?.path();
        let parsed = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.split_once('-'))
            .and_then(|(index, topic)| Some((index.parse::<u64>().ok()?, topic.to_string())));
        match parsed {
            Some((index, topic)) => kept.push((index, topic, path)),
            None => {
                warn!(dir = %path.display(), "removing an unrecognised entry of cq-deleted");
                remove(&path)?;
            }
        }
    }
    kept.sort();
    Ok(kept)
}

fn remove(path: &Path) -> Result<()> {
    let removed = if path.is_dir() {
        fs::remove_dir_all(path)
    } else {
        fs::remove_file(path)
    };
    match removed {
        Err(err) if err.kind() != std::io::ErrorKind::NotFound => Err(StoreError::io(path)(err)),
        _ => Ok(()),
    }
}

/// Moves `topic`'s queue directory aside, deleted by the entry at `index`.
pub(crate) fn set_aside(store_dir: &Path, topic: &str, index: u64) -> Result<()> {
    let from = store_dir.join("cq").join(topic);
    if !from.exists() {
        return Ok(());
    }
    let root = root(store_dir);
    fs::create_dir_all(&root).map_err(StoreError::io(&root))?;
    let to = root.join(format!("{index}-{topic}"));
    // Replay of the same delete after a crash: the earlier move stands.
    remove(&to)?;
    fs::rename(&from, &to).map_err(StoreError::io(&from))
}

/// At open, before the checkpointed queues are opened: puts back the queues deleted after
/// the checkpoint at `checkpoint_index` (replay deletes them again) and removes the rest.
pub(crate) fn restore(store_dir: &Path, checkpoint_index: u64) -> Result<()> {
    let mut restored: Vec<String> = Vec::new();
    for (index, topic, path) in kept(store_dir)? {
        // Only the first delete of a topic after the checkpoint moved the checkpointed queues;
        // later ones moved queues of a re-creation that replay builds again.
        if index <= checkpoint_index || restored.contains(&topic) {
            remove(&path)?;
            continue;
        }
        let to = store_dir.join("cq").join(&topic);
        remove(&to)?;
        fs::rename(&path, &to).map_err(StoreError::io(&path))?;
        restored.push(topic);
    }
    Ok(())
}

/// After a checkpoint at `checkpoint_index` is saved: removes what it no longer needs.
pub(crate) fn purge(store_dir: &Path, checkpoint_index: u64) -> Result<()> {
    for (index, _, path) in kept(store_dir)? {
        if index <= checkpoint_index {
            remove(&path)?;
        }
    }
    Ok(())
}

/// Removes everything kept (a snapshot install replaces all queues).
pub(crate) fn clear(store_dir: &Path) -> Result<()> {
    remove(&root(store_dir))
}
