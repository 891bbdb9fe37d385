//! A partition worker: one thread and one plugin instance per assigned
//! partition, so partitions are handled concurrently while each keeps its
//! order. It reads its partition's own librdkafka queue (split from the
//! consumer's), settles the messages in batches straight from librdkafka's
//! buffers and reports the last settled offset back; the poll loop alone
//! stores offsets and serves the group.
//!
//! Flow control is librdkafka's: a worker that is busy (or holding on a
//! retry) does not read its queue, and the fetcher stops fetching a
//! partition whose queue holds `partition_buffer` messages. Other
//! partitions keep flowing.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::mpsc::Sender;
use std::thread::JoinHandle;
use std::time::Duration;

use rdkafka::consumer::ConsumerContext;
use rdkafka::consumer::base_consumer::PartitionQueue;
use rdkafka::message::{BorrowedMessage, Headers, Message};

use crate::catalog::LivePlugin;
use crate::commit::Settled;
use crate::decode::DecodeError;
use crate::dispatch::Dispatcher;
use crate::event::BookingEvent;
use crate::hold::ALL_PARTITIONS;
use crate::runtime::convert::Envelope;
use crate::shutdown::Shutdown;

/// Settles one batch of a partition and returns how many records from
/// the start are settled (see [`crate::settle::settle`]).
pub type Settle =
    Arc<dyn for<'m> Fn(&mut Dispatcher, &[BorrowedMessage<'m>], &Shutdown) -> usize + Send + Sync>;

/// Whether the brokers answer, shared by the poll loop (which learns of
/// trouble) and the workers (whose messages prove they answer again).
pub struct Broker {
    plugin: String,
    down: AtomicBool,
}

impl Broker {
    pub fn new(plugin: &str) -> Self {
        Broker {
            plugin: plugin.to_string(),
            down: AtomicBool::new(false),
        }
    }

    /// The brokers cannot be reached (the consumer holds meanwhile).
    pub fn lost(&self) {
        self.down.store(true, Ordering::SeqCst);
    }

    pub fn is_down(&self) -> bool {
        self.down.load(Ordering::SeqCst)
    }

    /// A message or statistics came: the brokers answer. Called per batch,
    /// so it only reads the flag unless they were down.
    pub fn answers(&self, live: &LivePlugin) {
        if self.down.load(Ordering::Relaxed) && self.down.swap(false, Ordering::SeqCst) {
            let metrics = live.current().metrics().clone();
            if let Some(lasted) = metrics.holds.release(&self.plugin, ALL_PARTITIONS) {
                tracing::info!(
                    plugin = self.plugin,
                    "the broker answers again after {lasted:.1?}"
                );
            }
        }
    }
}

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
    pub broker: Arc<Broker>,
    /// Set while an operator has the plugin paused: no batch is taken.
    pub paused: Arc<AtomicBool>,
}

/// No offset known yet.
const UNKNOWN: i64 = -1;

/// The poll loop's handle on a running worker.
pub struct Worker {
    /// The first offset the worker took and has not settled: where a
    /// replacement must read again from if it dies.
    next: Arc<AtomicI64>,
    stop: Shutdown,
    thread: JoinHandle<()>,
}

impl Worker {
    /// Starts the worker of `partition`, reading `queue`, the partition's
    /// own queue of fetched messages.
    pub fn spawn<C: ConsumerContext + 'static>(
        setup: WorkerSetup,
        partition: i32,
        queue: PartitionQueue<C>,
    ) -> Worker {
        let next = Arc::new(AtomicI64::new(UNKNOWN));
        let stop = Shutdown::new();
        let thread = {
            let (stop, next) = (stop.clone(), next.clone());
            std::thread::Builder::new()
                .name(format!("{}-p{partition}", setup.live.current().name))
                .spawn(move || run(setup, partition, queue, next, stop))
                .expect("cannot start a partition worker thread")
        };
        Worker { next, stop, thread }
    }

    /// The first offset taken and not settled, if the worker took any.
    pub fn unsettled_from(&self) -> Option<i64> {
        Some(self.next.load(Ordering::SeqCst)).filter(|&o| o != UNKNOWN)
    }

    /// Whether the worker ended without being asked to: it panicked.
    pub fn died(&self) -> bool {
        self.thread.is_finished() && !self.stop.is_requested()
    }

    /// Asks the worker to stop after its batch in flight, without waiting.
    pub fn request_stop(&self) {
        self.stop.request();
    }

    /// Lets the batch in flight finish (a retry backoff is cut short and
    /// its batch left unsettled) and waits. Messages still queued are not
    /// settled: the partition's next owner gets them again from the last
    /// commit.
    pub fn stop(self) {
        self.stop.request();
        if self.thread.join().is_err() {
            tracing::error!("a partition worker panicked");
        }
    }
}

fn run<C: ConsumerContext>(
    setup: WorkerSetup,
    partition: i32,
    queue: PartitionQueue<C>,
    next: Arc<AtomicI64>,
    stop: Shutdown,
) {
    let WorkerSetup {
        live,
        settle,
        settled,
        broker,
        paused,
    } = setup;
    // The plugin's name, which no reload changes.
    let name = live.current().name.clone();
    let mut dispatcher = Dispatcher::lazy(live.clone(), partition);
    dispatcher.warm();
    let mut batch: Vec<BorrowedMessage<'_>> = Vec::new();
    while !stop.is_requested() {
        // Paused: the batch before was settled; take none until resumed.
        if paused.load(Ordering::Relaxed) {
            stop.sleep(Duration::from_millis(100));
            continue;
        }
        // A reload swaps the version between batches, never within one.
        dispatcher.follow();
        let batch_size = dispatcher.prepared().spec.limits.batch_size;
        // Short enough that a stop is seen soon; the queue wakes the poll
        // as soon as a message arrives.
        match queue.poll(Duration::from_millis(100)) {
            None => continue,
            Some(Ok(first)) => batch.push(first),
            Some(Err(e)) => {
                partition_error(&live, partition, &e);
                continue;
            }
        }
        while batch.len() < batch_size {
            match queue.poll(Duration::ZERO) {
                Some(Ok(message)) => batch.push(message),
                Some(Err(e)) => {
                    partition_error(&live, partition, &e);
                    break;
                }
                None => break,
            }
        }
        let _ = next.compare_exchange(
            UNKNOWN,
            batch[0].offset(),
            Ordering::SeqCst,
            Ordering::SeqCst,
        );
        broker.answers(&live);
        if stop.is_requested() {
            break;
        }
        panic_hook::check(&name, partition, &batch);
        let done = settle(&mut dispatcher, &batch, &stop);
        if done > 0 {
            // The settled prefix may be committed, even if the rest of the
            // batch is not settled (a stop came while it held).
            let offset = batch[done - 1].offset();
            next.store(offset + 1, Ordering::SeqCst);
            if settled.send(Settled { partition, offset }).is_err() {
                break;
            }
        }
        if done < batch.len() {
            break;
        }
        batch.clear();
    }
}

/// A fault the tests inject: `PLUGBOARD_TEST_PANIC=<plugin>:<partition>:<offset>`
/// makes that partition's worker panic once, when it takes a batch holding
/// that offset and before it settles any of it, as a bug of the host
/// would. The fault matrix checks what a revive (and a revoke right after)
/// does then; unset, this costs one relaxed load per batch.
mod panic_hook {
    use std::sync::OnceLock;
    use std::sync::atomic::{AtomicBool, Ordering};

    use rdkafka::message::{BorrowedMessage, Message};

    static TARGET: OnceLock<Option<(String, i32, i64)>> = OnceLock::new();
    static FIRED: AtomicBool = AtomicBool::new(false);

    fn target() -> &'static Option<(String, i32, i64)> {
        TARGET.get_or_init(|| {
            let spec = std::env::var("PLUGBOARD_TEST_PANIC").ok()?;
            let mut parts = spec.rsplitn(3, ':');
            let offset = parts.next()?.parse().ok()?;
            let partition = parts.next()?.parse().ok()?;
            let plugin = parts.next()?.to_string();
            Some((plugin, partition, offset))
        })
    }

    pub fn check(plugin: &str, partition: i32, batch: &[BorrowedMessage<'_>]) {
        if FIRED.load(Ordering::Relaxed) {
            return;
        }
        let Some((p, part, offset)) = target() else {
            FIRED.store(true, Ordering::Relaxed);
            return;
        };
        if p == plugin
            && *part == partition
            && batch.iter().any(|m| m.offset() == *offset)
            && !FIRED.swap(true, Ordering::SeqCst)
        {
            panic!("PLUGBOARD_TEST_PANIC: {plugin} partition {partition} offset {offset}");
        }
    }
}

/// An error librdkafka reports on one partition (the brokers' trouble comes
/// to the poll loop).
fn partition_error(live: &LivePlugin, partition: i32, error: &rdkafka::error::KafkaError) {
    tracing::warn!(
        plugin = &*live.current().name,
        partition,
        "Kafka reports on the partition: {error}"
    );
}

/// A Kafka message is a record: protobuf, with its topic, partition,
/// offset, key, timestamp and headers. So is one a redrive took out of a
/// dead-letter topic, made with its original topic, partition and offset.
macro_rules! kafka_record {
    ($($message:ty),*) => {$(
        impl crate::source::Record for $message {
            fn source(&self) -> &str {
                self.topic()
            }

            fn decode(
                &self,
                schemas: &crate::schema::Schemas,
                extensions: bool,
            ) -> Result<crate::schema::Decoded, DecodeError> {
                schemas.decode_protobuf(Message::payload(self).unwrap_or_default(), extensions)
            }

            fn envelope(&self, _event: &BookingEvent) -> Envelope {
                envelope_of(self)
            }

            fn payload(&self, _event: &BookingEvent) -> Vec<u8> {
                // The bytes as produced, not a re-encoding.
                Message::payload(self).unwrap_or_default().to_vec()
            }
        }
    )*};
}

kafka_record!(BorrowedMessage<'_>, rdkafka::message::OwnedMessage);

fn envelope_of<M: Message>(message: &M) -> Envelope {
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
