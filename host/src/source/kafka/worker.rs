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

use crate::catalog::LivePlugin;
use crate::commit::Settled;
use crate::decode::{self, DecodeError};
use crate::dispatch::Dispatcher;
use crate::event::BookingEvent;
use crate::runtime::convert::Envelope;
use crate::shutdown::Shutdown;

/// Settles one batch of a partition and returns how many records from
/// the start are settled (see [`crate::settle::settle`]).
pub type Settle = Arc<dyn Fn(&mut Dispatcher, &[OwnedMessage], &Shutdown) -> usize + Send + Sync>;

/// What a worker needs besides its partition.
#[derive(Clone)]
pub struct WorkerSetup {
    /// The plugin version to serve, read again before every batch.
    pub live: Arc<LivePlugin>,
    /// How a batch of the partition is settled (decode, dispatch, dead
    /// letters): the pipeline's stage, handed in by whoever starts the
    /// consumer.
    pub settle: Settle,
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
        settle,
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
        if stop.is_requested() {
            break;
        }
        let done = settle(&mut dispatcher, &batch, &stop);
        if done > 0 {
            // The settled prefix may be committed, even if the rest of the
            // batch is not settled (a stop came while it held).
            let offset = batch[done - 1].offset();
            if settled.send(Settled { partition, offset }).is_err() {
                break;
            }
        }
        if done < batch.len() {
            break;
        }
        queued.fetch_sub(batch.len(), Ordering::SeqCst);
        batch.clear();
    }
}

/// A Kafka message is a record: protobuf, with its topic, partition,
/// offset, key, timestamp and headers.
impl crate::source::Record for OwnedMessage {
    fn source(&self) -> &str {
        self.topic()
    }

    fn decode(&self) -> Result<BookingEvent, DecodeError> {
        decode::from_protobuf(Message::payload(self).unwrap_or_default())
    }

    fn envelope(&self, _event: &BookingEvent) -> Envelope {
        envelope(self)
    }

    fn payload(&self, _event: &BookingEvent) -> Vec<u8> {
        // The bytes as produced, not a re-encoding.
        Message::payload(self).unwrap_or_default().to_vec()
    }
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
