//! What every replica does with committed entries: apply them to the store, wake pulls waiting
//! on the queues that grew, and note topic changes so nameservers hear of them.

use std::sync::Arc;

use ferromq_raftlog::StateMachine;
use ferromq_store::{ApplyOutcome, CommittedEntry, Store, StoreError};
use tokio::sync::watch;

use crate::notifier::QueueNotifier;

pub struct BrokerStateMachine {
    pub store: Arc<Store>,
    pub notifier: Arc<QueueNotifier>,
    /// Bumped when the topic set changes; registration re-registers at once.
    pub topics_changed: watch::Sender<u64>,
}

impl StateMachine for BrokerStateMachine {
    type Output = ApplyOutcome;

    fn apply(&mut self, entries: &[CommittedEntry]) -> Result<Vec<ApplyOutcome>, StoreError> {
        let outcomes = self.store.apply(entries)?;
        for outcome in &outcomes {
            match outcome {
                ApplyOutcome::Appended {
                    topic,
                    queue_id,
                    first_offset,
                    count,
                    ..
                } => self
                    .notifier
                    .advanced(topic, *queue_id, first_offset + u64::from(*count)),
                ApplyOutcome::TopicCreated { created: true }
                | ApplyOutcome::TopicUpdated
                | ApplyOutcome::TopicDeleted => {
                    self.topics_changed.send_modify(|version| *version += 1);
                }
                _ => {}
            }
        }
        Ok(outcomes)
    }
}
