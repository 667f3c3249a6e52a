//! Frames waiting to be written to one connection.
//!
//! A sender writes its frame straight to the socket with a non-blocking write when nothing is
//! queued ahead of it, which saves a task switch per frame; whatever does not fit (a full
//! socket buffer) is queued, and from then on a writer task drains the queue in order,
//! coalescing frames into vectored writes, until it is empty again. The non-blocking write is
//! synchronous, so a sender that gives up (a timed-out request) can never leave half a frame
//! on the wire.

use std::collections::VecDeque;
use std::io::IoSlice;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use ferromq_protocol::Frame;
use parking_lot::Mutex;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tracing::debug;

use crate::socket::WriteSocket;
use crate::TransportError;

/// Most slices handed to one vectored write.
const MAX_SLICES: usize = 256;

struct Queued {
    prefix: Bytes,
    body: Bytes,
    /// Bytes of `prefix` + `body` already written.
    written: usize,
    _slot: OwnedSemaphorePermit,
}

impl Queued {
    fn len(&self) -> usize {
        self.prefix.len() + self.body.len()
    }

    fn is_done(&self) -> bool {
        self.written == self.len()
    }

    /// The unwritten parts as slices.
    fn remaining(&self) -> [&[u8]; 2] {
        if self.written < self.prefix.len() {
            [&self.prefix[self.written..], &self.body[..]]
        } else {
            [&[], &self.body[self.written - self.prefix.len()..]]
        }
    }
}

struct State {
    queue: VecDeque<Queued>,
    /// The writer task owns the write order while set; senders only enqueue.
    writer_busy: bool,
}

pub(crate) struct Outbox {
    socket: WriteSocket,
    state: Mutex<State>,
    wake: Notify,
    slots: Arc<Semaphore>,
    closed: CancellationToken,
    write_timeout: Duration,
}

/// Writes as much of `items` as the socket takes without blocking. Returns how many bytes.
fn write_some(socket: &WriteSocket, items: &mut [Queued]) -> std::io::Result<usize> {
    let mut slices: Vec<IoSlice<'_>> = Vec::with_capacity(items.len().min(MAX_SLICES / 2) * 2);
    for item in items.iter() {
        for part in item.remaining() {
            if !part.is_empty() && slices.len() < MAX_SLICES {
                slices.push(IoSlice::new(part));
            }
        }
    }
    if slices.is_empty() {
        return Ok(0);
    }
    let mut written = match socket.try_write_vectored(&slices) {
        Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
        Ok(n) => n,
        Err(err) if err.kind() == std::io::ErrorKind::WouldBlock => return Ok(0),
        Err(err) => return Err(err),
    };
    drop(slices);
    let total = written;
    for item in items.iter_mut() {
        let take = (item.len() - item.written).min(written);
        item.written += take;
        written -= take;
        if written == 0 {
            break;
        }
    }
    Ok(total)
}

impl Outbox {
    pub(crate) fn new(
        socket: WriteSocket,
        capacity: usize,
        closed: CancellationToken,
        write_timeout: Duration,
    ) -> Arc<Outbox> {
        Arc::new(Outbox {
            socket,
            state: Mutex::new(State {
                queue: VecDeque::new(),
                writer_busy: false,
            }),
            wake: Notify::new(),
            slots: Arc::new(Semaphore::new(capacity.max(1))),
            closed,
            write_timeout,
        })
    }

    /// Queues `frame` (or writes it at once). Waits only while the queue is full.
    pub(crate) async fn send(&self, frame: Frame) -> Result<(), TransportError> {
        let slot = self
            .slots
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| TransportError::Closed)?;
        if self.closed.is_cancelled() {
            return Err(TransportError::Closed);
        }
        let mut prefix = BytesMut::new();
        frame.encode_prefix(&mut prefix);
        let mut item = Queued {
            prefix: prefix.freeze(),
            body: frame.body,
            written: 0,
            _slot: slot,
        };
        let mut state = self.state.lock();
        if !state.writer_busy && state.queue.is_empty() {
            match write_some(&self.socket, std::slice::from_mut(&mut item)) {
                Ok(_) if item.is_done() => return Ok(()),
                Ok(_) => {}
                Err(err) => {
                    drop(state);
                    debug!(%err, "write failed; closing connection");
                    self.closed.cancel();
                    return Err(TransportError::Io(err));
                }
            }
        }
        state.queue.push_back(item);
        if !state.writer_busy {
            state.writer_busy = true;
            self.wake.notify_one();
        }
        Ok(())
    }

    /// The writer task: drains the queue whenever senders could not write directly; after the
    /// connection closes it writes what is queued, then shuts the socket down.
    pub(crate) async fn run(self: Arc<Self>) {
        loop {
            let batch: Vec<Queued> = {
                let mut state = self.state.lock();
                if state.queue.is_empty() {
                    state.writer_busy = false;
                    Vec::new()
                } else {
                    state.queue.drain(..).collect()
                }
            };
            if batch.is_empty() {
                if self.closed.is_cancelled() {
                    break;
                }
                tokio::select! {
                    _ = self.wake.notified() => {}
                    _ = self.closed.cancelled() => {}
                }
                continue;
            }
            let written = tokio::time::timeout(self.write_timeout, self.write_all(batch)).await;
            match written {
                Ok(Ok(())) => {}
                Ok(Err(err)) => {
                    debug!(%err, "write failed; closing connection");
                    break;
                }
                Err(_) => {
                    debug!("peer stopped reading; closing connection");
                    break;
                }
            }
        }
        self.closed.cancel();
        self.slots.close();
        self.socket.shutdown_write();
    }

    async fn write_all(&self, mut batch: Vec<Queued>) -> std::io::Result<()> {
        let mut done = 0;
        while done < batch.len() {
            self.socket.writable().await?;
            write_some(&self.socket, &mut batch[done..])?;
            while done < batch.len() && batch[done].is_done() {
                done += 1;
            }
        }
        Ok(())
    }
}
