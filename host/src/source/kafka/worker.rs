//! A partition worker: one thread and one plugin instance per assigned
//! partition, so partitions are handled concurrently while each keeps its
//! order. It takes messages from the poll loop through a bounded channel,
//! settles them in batches and reports the last settled offset back; the
//! poll loop alone talks to the consumer.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender, TryRecvError};
use std::thread::JoinHandle;
use std::time::Duration;

use rdkafka::message::{Headers, Message, OwnedMessage};

use super::dead_letters::DeadLetters;
use crate::catalog::LivePlugin;
use crate::decode;
use crate::dispatch::{Dispatcher, Failure, FailureClass, Outcome};
use crate::runtime::convert::{self, Envelope};
use crate::shutdown::Shutdown;

/// A settled prefix of a partition: every offset up to and including
/// `offset` has its final outcome.
pub struct Settled {
    pub partition: i32,
    pub offset: i64,
}

/// What a worker needs besides its partition.
#[derive(Clone)]
pub struct WorkerSetup {
    /// The plugin version to serve, read again before every batch.
    pub live: Arc<LivePlugin>,
    pub dead_letters: Arc<DeadLetters>,
    pub settled: Sender<Settled>,
}

/// The poll loop's handle on a running worker.
pub struct Worker {
    inbox: Sender<OwnedMessage>,
    /// Messages sent and not yet settled; the poll loop bounds it.
    queued: Arc<AtomicUsize>,
    stop: Shutdown,
    thread: JoinHandle<()>,
}

impl Worker {
    /// Starts the worker of `partition`.
    pub fn spawn(setup: WorkerSetup, partition: i32) -> Worker {
        let (inbox, messages) = std::sync::mpsc::channel();
        let queued = Arc::new(AtomicUsize::new(0));
        let stop = Shutdown::new();
        let thread = {
            let (stop, queued) = (stop.clone(), queued.clone());
            std::thread::Builder::new()
                .name(format!("{}-p{partition}", setup.live.current().name))
                .spawn(move || run(setup, partition, messages, queued, stop))
                .expect("cannot start a partition worker thread")
        };
        Worker {
            inbox,
            queued,
            stop,
            thread,
        }
    }

    /// Messages handed over and not yet settled.
    pub fn queued(&self) -> usize {
        self.queued.load(Ordering::SeqCst)
    }

    /// Hands a message over (the caller bounds [`Worker::queued`]).
    pub fn send(&self, message: OwnedMessage) {
        self.queued.fetch_add(1, Ordering::SeqCst);
        // A worker that has exited was stopped: the message is left
        // unsettled, and redelivered from the last commit.
        let _ = self.inbox.send(message);
    }

    /// Whether the worker ended without being asked to: it panicked.
    pub fn died(&self) -> bool {
        self.thread.is_finished() && !self.stop.is_requested()
    }

    /// Asks the worker to stop after its batch in flight, without waiting.
    pub fn request_stop(&self) {
        self.stop.request();
    }

    /// Stops taking messages, lets the batch in flight finish (a retry
    /// backoff is cut short and its batch left unsettled) and waits.
    /// Messages still queued are not settled: the partition's next owner
    /// gets them again from the last commit.
    pub fn stop(self) {
        self.stop.request();
        drop(self.inbox);
        if self.thread.join().is_err() {
            tracing::error!("a partition worker panicked");
        }
    }
}

fn run(
    setup: WorkerSetup,
    partition: i32,
    messages: Receiver<OwnedMessage>,
    queued: Arc<AtomicUsize>,
    stop: Shutdown,
) {
    let WorkerSetup {
        live,
        dead_letters,
        settled,
    } = setup;
    let mut dispatcher = Dispatcher::lazy(live, partition);
    dispatcher.warm();
    let mut batch = Vec::new();
    while !stop.is_requested() {
        // A reload swaps the version between batches, never within one.
        dispatcher.follow();
        let batch_size = dispatcher.prepared().spec.limits.batch_size;
        match messages.recv_timeout(Duration::from_millis(200)) {
            Ok(first) => batch.push(first),
            Err(RecvTimeoutError::Timeout) => continue,
            Err(RecvTimeoutError::Disconnected) => break,
        }
        while batch.len() < batch_size {
            match messages.try_recv() {
                Ok(message) => batch.push(message),
                Err(TryRecvError::Empty | TryRecvError::Disconnected) => break,
            }
        }
        if stop.is_requested() || !settle(&mut dispatcher, &dead_letters, &batch, &stop) {
            break;
        }
        let offset = batch.last().expect("non-empty").offset();
        if settled.send(Settled { partition, offset }).is_err() {
            break;
        }
        queued.fetch_sub(batch.len(), Ordering::SeqCst);
        batch.clear();
    }
}

/// Decodes, dispatches and dead-letters one batch of a partition. Returns
/// false if `stop` came before every message had its final outcome: then
/// nothing of this batch may be stored.
fn settle(
    dispatcher: &mut Dispatcher,
    dead_letters: &DeadLetters,
    messages: &[OwnedMessage],
    stop: &Shutdown,
) -> bool {
    let wants_payload = dispatcher.prepared().spec.payload;
    let mut events = Vec::with_capacity(messages.len());
    let mut event_message = Vec::with_capacity(messages.len());
    let mut failed: Vec<(usize, Failure)> = Vec::new();
    for (i, message) in messages.iter().enumerate() {
        let payload = message.payload().unwrap_or_default();
        match decode::from_protobuf(payload) {
            Ok(event) => {
                let bytes = wants_payload.then(|| payload.to_vec());
                events.push(convert::to_wit(&event, envelope(message), bytes));
                event_message.push(i);
            }
            Err(err) => {
                dispatcher
                    .prepared()
                    .metrics()
                    .decode_failures
                    .with_label_values(&[message.topic()])
                    .inc();
                failed.push((
                    i,
                    Failure {
                        class: FailureClass::Decode,
                        reason: err.to_string(),
                        attempts: 0,
                    },
                ))
            }
        }
    }
    if !events.is_empty() {
        let outcomes = dispatcher.deliver(&events, stop);
        if outcomes.len() < events.len() {
            return false;
        }
        for (k, outcome) in outcomes.into_iter().enumerate() {
            if let Outcome::DeadLetter(failure) = outcome {
                failed.push((event_message[k], failure));
            }
        }
    }
    failed.sort_by_key(|(i, _)| *i);
    let version = dispatcher.prepared();
    failed
        .iter()
        .all(|(i, failure)| dead_letters.write(&messages[*i], failure, version, stop))
}

fn envelope(message: &OwnedMessage) -> Envelope {
    Envelope {
        source: message.topic().to_string(),
        partition: message.partition(),
        offset: message.offset(),
        key: message.key().map(<[u8]>::to_vec),
        timestamp_ms: message.timestamp().to_millis(),
        headers: message
            .headers()
            .map(|h| {
                h.iter()
                    .map(|h| (h.key.to_string(), h.value.unwrap_or_default().to_vec()))
                    .collect()
            })
            .unwrap_or_default(),
    }
}
