//! Property test: the commit log against an in-memory model, with crashes that lose or tear
//! everything after the last sync and leave garbage behind.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fs::OpenOptions;
use std::io::Write;

use bytes::Bytes;
use ferromq_store::{CommitLog, LogEntry, LogPoint};
use proptest::prelude::*;

#[derive(Debug, Clone)]
enum Step {
    Append {
        count: usize,
        size: usize,
        new_term: bool,
    },
    Sync,
    /// Crash: cut the newest segment somewhere after the synced data, append garbage, reopen.
    Crash {
        cut_fraction: f64,
        garbage: Vec<u8>,
    },
    Truncate {
        back: u64,
    },
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        4 => (1usize..20, 0usize..300, any::<bool>())
            .prop_map(|(count, size, new_term)| Step::Append { count, size, new_term }),
        2 => Just(Step::Sync),
        1 => (0.0f64..1.0, proptest::collection::vec(any::<u8>(), 0..64))
            .prop_map(|(cut_fraction, garbage)| Step::Crash { cut_fraction, garbage }),
        1 => (1u64..10).prop_map(|back| Step::Truncate { back }),
    ]
}

fn newest_segment(dir: &std::path::Path) -> std::path::PathBuf {
    let mut names: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    names.sort();
    names.pop().unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn log_matches_model_across_crashes(steps in proptest::collection::vec(step(), 1..50)) {
        let dir = tempfile::tempdir().unwrap();
        let segment_bytes = 2048;
        let (mut log, _) = CommitLog::open(dir.path(), segment_bytes, LogPoint::default()).unwrap();
        let mut model: Vec<LogEntry> = Vec::new();
        let mut synced = 0usize;
        let mut term = 1u64;
        for step in steps {
            match step {
                Step::Append { count, size, new_term } => {
                    if new_term {
                        term += 1;
                    }
                    let entries: Vec<LogEntry> = (0..count)
                        .map(|i| LogEntry {
                            term,
                            index: model.len() as u64 + 1 + i as u64,
                            entry_type: 0,
                            payload: Bytes::from(vec![(model.len() + i) as u8; size]),
                        })
                        .collect();
                    log.append(&entries).unwrap();
                    model.extend(entries);
                }
                Step::Sync => {
                    log.sync().unwrap();
                    synced = model.len();
                }
                Step::Truncate { back } => {
                    let from = (model.len() as u64).saturating_sub(back).max(synced as u64 + 1);
                    if from <= model.len() as u64 {
                        log.truncate_from(from).unwrap();
                        model.truncate(from as usize - 1);
                    }
                }
                Step::Crash { cut_fraction, garbage } => {
                    drop(log);
                    // Everything up to the synced entries survives; the rest may be cut anywhere.
                    let path = newest_segment(dir.path());
                    let len = std::fs::metadata(&path).unwrap().len();
                    let durable_in_segment = {
                        let (probe, _) = CommitLog::open(dir.path(), segment_bytes, LogPoint::default()).unwrap();
                        let keep = if synced == 0 { 0 } else {
                            probe.entries(synced as u64, synced as u64 + 1, None).map(|e| e[0].0 + e[0].1.record_len() as u64).unwrap_or(0)
                        };
                        let base: u64 = path.file_name().unwrap().to_str().unwrap().parse().unwrap();
                        keep.saturating_sub(base)
                    };
                    let cut = durable_in_segment + ((len - durable_in_segment) as f64 * cut_fraction) as u64;
                    let file = OpenOptions::new().write(true).open(&path).unwrap();
                    file.set_len(cut).unwrap();
                    let mut file = OpenOptions::new().append(true).open(&path).unwrap();
                    file.write_all(&garbage).unwrap();
                    drop(file);
                    let (reopened, _) = CommitLog::open(dir.path(), segment_bytes, LogPoint::default()).unwrap();
                    log = reopened;
                    let survived = log.last_index() as usize;
                    prop_assert!(survived >= synced, "synced entries lost: {} < {}", survived, synced);
                    model.truncate(survived);
                    synced = survived;
                }
            }
            prop_assert_eq!(log.last_index(), model.len() as u64);
            if !model.is_empty() {
                let read: Vec<LogEntry> = log
                    .entries(1, model.len() as u64 + 1, None)
                    .unwrap()
                    .into_iter()
                    .map(|(_, e)| e)
                    .collect();
                prop_assert_eq!(&read, &model);
                prop_assert_eq!(log.term(model.len() as u64), Some(model.last().unwrap().term));
            }
        }
    }
}
