//! The limit of the peer benchmark (`scripts/bench-peers.sh`): a bare
//! rdkafka consumer that reads a topic in a fresh consumer group from the
//! start and decodes every message with prost, on one thread, with no
//! plugin, no validation and no offsets stored. It exits after `--events`
//! messages and prints, as one JSON line, when the first and the last
//! arrived (seconds since the Unix epoch).
//!
//!     cargo run --release -p plugboard --example bare_consumer -- \
//!         --brokers 127.0.0.1:19092 --topic bench --events 1000000

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use plugboard::event::BookingEvent;
use prost::Message as _;
use rdkafka::Message as _;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};

fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let (mut brokers, mut topic, mut events) = (None, None, None);
    while let Some(flag) = args.next() {
        let value = args
            .next()
            .with_context(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--brokers" => brokers = Some(value),
            "--topic" => topic = Some(value),
            "--events" => events = Some(value.parse::<u64>().context("--events: a count")?),
            other => bail!("unknown flag {other}; expected --brokers, --topic, --events"),
        }
    }
    let (Some(brokers), Some(topic), Some(events)) = (brokers, topic, events) else {
        bail!("usage: bare_consumer --brokers HOST:PORT --topic NAME --events N");
    };
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .set("group.id", format!("bench-bare-{}", std::process::id()))
        .set("auto.offset.reset", "earliest")
        // librdkafka waits 1 s before fetching a partition whose local
        // queue was full (100,000 messages); a consumer draining a backlog
        // empties it in a fraction of that. plugboard sets the same.
        .set("fetch.queue.backoff.ms", "10")
        .set("fetch.wait.max.ms", "50")
        .set("enable.auto.commit", "false")
        .create()?;
    consumer.subscribe(&[&topic])?;
    let now = || {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs_f64()
    };
    let (mut seen, mut decoded, mut first) = (0u64, 0u64, None);
    while seen < events {
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(message)) => {
                first.get_or_insert_with(now);
                if BookingEvent::decode(message.payload().unwrap_or_default()).is_ok() {
                    decoded += 1;
                }
                seen += 1;
            }
            Some(Err(e)) => eprintln!("consumer error: {e}"),
            None => {}
        }
    }
    println!(
        "{{\"first\": {:.6}, \"last\": {:.6}, \"events\": {seen}, \"decoded\": {decoded}}}",
        first.unwrap_or_default(),
        now()
    );
    Ok(())
}
