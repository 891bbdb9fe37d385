//! Consume rate of `plugboard run` with a no-op plugin against a bare
//! rdkafka consumer reading the same topic, side by side in one run.
//!
//!     scripts/build-plugins.sh && scripts/kafka.sh start
//!     PLUGBOARD_BENCH_BROKERS=127.0.0.1:19092 cargo bench -p plugboard --bench consume
//!
//! `PLUGBOARD_BENCH_BOOKINGS` (default 12000, ~45k events) sets the size.
//! Both sides join a fresh consumer group and read the topic from the
//! start; the bare consumer stops at the last message, plugboard when its
//! group has committed every offset (lag 0), so plugboard's figure includes
//! decoding, the sandbox call and the commit.

use std::path::Path;
use std::time::{Duration, Instant};

use plugboard::config::HostConfig;
use plugboard::event::BookingEvent;
use plugboard::produce::{Input, produce};
use plugboard::shutdown::Shutdown;
use prost::Message as _;
use rdkafka::Message as _;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};

/// The allocator the `plugboard` binary runs with, so the in-process host
/// costs what the binary does.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() {
    let Ok(brokers) = std::env::var("PLUGBOARD_BENCH_BROKERS") else {
        eprintln!("set PLUGBOARD_BENCH_BROKERS=host:port (scripts/kafka.sh start) to run");
        return;
    };
    let bookings: usize = std::env::var("PLUGBOARD_BENCH_BOOKINGS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(12_000);
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let noop = repo.join("target/plugins/noop.wasm");
    assert!(noop.exists(), "run scripts/build-plugins.sh first");

    let topic = format!("plugboard-bench-{:08x}", rand::random::<u32>());
    create_topic(&brokers, &topic, 6);
    let report = produce(
        &brokers,
        &topic,
        &Input::Generate { bookings, seed: 3 },
        &Default::default(),
    )
    .unwrap();
    let messages = report.events + report.raw;
    println!("topic {topic}: {messages} messages in 6 partitions");

    for round in 1..=2 {
        let bare = bare_consumer(&brokers, &topic, messages);
        let (host, handled) = plugboard_noop(&brokers, &topic, &noop);
        println!(
            "round {round}: bare rdkafka + prost {:>8.0} msg/s ({:.2?}) | plugboard + no-op plugin {:>8.0} msg/s ({:.2?}, {handled} handled) | plugboard/bare {:.2}x",
            messages as f64 / bare.as_secs_f64(),
            bare,
            messages as f64 / host.as_secs_f64(),
            host,
            bare.as_secs_f64() / host.as_secs_f64()
        );
    }
}

fn create_topic(brokers: &str, topic: &str, partitions: i32) {
    let admin: AdminClient<_> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    for r in runtime
        .block_on(admin.create_topics(
            &[NewTopic::new(topic, partitions, TopicReplication::Fixed(1))],
            &AdminOptions::new(),
        ))
        .unwrap()
    {
        r.unwrap();
    }
}

/// Reads and decodes every message of the topic in a fresh group; returns
/// the time from subscribing to the last message.
fn bare_consumer(brokers: &str, topic: &str, messages: u64) -> Duration {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set(
            "group.id",
            format!("bench-bare-{:08x}", rand::random::<u32>()),
        )
        .set("auto.offset.reset", "earliest")
        // librdkafka waits 1 s before fetching a partition whose local
        // queue was full (100,000 messages); a consumer draining a backlog
        // empties it in a fraction of that. plugboard sets the same.
        .set("fetch.queue.backoff.ms", "10")
        .set("fetch.wait.max.ms", "50")
        .create()
        .unwrap();
    let started = Instant::now();
    consumer.subscribe(&[topic]).unwrap();
    let mut seen = 0;
    while seen < messages {
        if let Some(Ok(message)) = consumer.poll(Duration::from_millis(100)) {
            // Decoded like plugboard decodes, so both do the same work up
            // to the plugin call.
            let _ =
                std::hint::black_box(BookingEvent::decode(message.payload().unwrap_or_default()));
            seen += 1;
        }
    }
    started.elapsed()
}

/// Runs the Kafka source with the no-op plugin in-process until its group
/// has committed every offset.
fn plugboard_noop(brokers: &str, topic: &str, noop: &Path) -> (Duration, String) {
    let dir = tempfile::tempdir().unwrap();
    let plugins = dir.path().join("plugins");
    std::fs::create_dir(&plugins).unwrap();
    std::fs::copy(noop, plugins.join("noop.wasm")).unwrap();
    std::fs::write(plugins.join("noop.toml"), "[limits]\nbatch_size = 500\n").unwrap();
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let config_file = dir.path().join("plugboard.toml");
    std::fs::write(
        &config_file,
        format!(
            "plugins_dir = \"plugins\"\ndata_dir = \"{}\"\n[kafka]\nbrokers = \"{brokers}\"\ntopic = \"{topic}\"\ngroup_prefix = \"bench-{:08x}.\"\ncommit_interval_ms = 100\n",
            repo.join("target/bench-state").display(),
            rand::random::<u32>()
        ),
    )
    .unwrap();
    let config = HostConfig::load(&config_file).unwrap();
    let kafka = config.kafka.clone().unwrap();
    let shutdown = Shutdown::new();
    let started = Instant::now();
    let (elapsed, summary) = std::thread::scope(|scope| {
        let host = scope
            .spawn(|| plugboard::run::run(&config, &plugboard::source::Source::Kafka, &shutdown));
        // Lag is unknown (an error) until the group has committed once.
        while plugboard::source::kafka::group_lag(&kafka, "noop").unwrap_or(i64::MAX) > 0 {
            assert!(!host.is_finished(), "plugboard stopped early");
            std::thread::sleep(Duration::from_millis(20));
        }
        let elapsed = started.elapsed();
        shutdown.request();
        (elapsed, host.join().unwrap().unwrap())
    });
    let handled = summary
        .metrics
        .lines()
        .find_map(|l| {
            l.strip_prefix("plugboard_events_total{outcome=\"handled\",plugin=\"noop\"} ")
        })
        .unwrap_or("?")
        .to_string();
    (elapsed, handled)
}
