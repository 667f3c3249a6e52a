//! Routes raft-rs's slog records into `tracing`, under the target `raft`.

use std::fmt::{self, Write};

use slog::{Drain, Key, OwnedKVList, Record, Serializer, KV};

struct KvText(String);

impl Serializer for KvText {
    fn emit_arguments(&mut self, key: Key, value: &fmt::Arguments<'_>) -> slog::Result {
        let _ = write!(self.0, " {key}={value}");
        Ok(())
    }
}

pub struct TracingDrain;

impl Drain for TracingDrain {
    type Ok = ();
    type Err = slog::Never;

    fn log(&self, record: &Record<'_>, values: &OwnedKVList) -> Result<(), slog::Never> {
        let mut kv = KvText(String::new());
        let _ = record.kv().serialize(record, &mut kv);
        let _ = values.serialize(record, &mut kv);
        let message = record.msg();
        match record.level() {
            slog::Level::Critical | slog::Level::Error => {
                tracing::error!(target: "raft", "{message}{}", kv.0)
            }
            slog::Level::Warning => tracing::warn!(target: "raft", "{message}{}", kv.0),
            slog::Level::Info => tracing::info!(target: "raft", "{message}{}", kv.0),
            slog::Level::Debug => tracing::debug!(target: "raft", "{message}{}", kv.0),
            slog::Level::Trace => tracing::trace!(target: "raft", "{message}{}", kv.0),
        }
        Ok(())
    }
}

/// raft-rs adds `raft_id` to its own records, so the root logger carries no extra keys.
pub fn logger() -> slog::Logger {
    slog::Logger::root(TracingDrain.fuse(), slog::o!())
}
