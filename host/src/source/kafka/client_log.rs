//! librdkafka's log lines and errors, at a level that fits and without
//! floods: while a broker is away librdkafka reports every failed
//! reconnect, several a second per client. The first line of each kind is
//! logged as it comes; repeats within [`QUIET`] are counted and summed up
//! in the next line of that kind.

use crate::locks::Lock;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use rdkafka::ClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};

/// How long repeats of one kind of line are held back.
const QUIET: Duration = Duration::from_secs(30);

/// Logs librdkafka's lines for one client, repeats held back.
pub struct ClientLog {
    /// The client, for the log lines: the plugin and its role.
    client: String,
    /// By kind: when it was last logged, and repeats since.
    seen: Mutex<HashMap<String, (Instant, u64)>>,
}

impl ClientLog {
    pub fn new(client: String) -> Self {
        ClientLog {
            client,
            seen: Mutex::default(),
        }
    }

    /// Whether a line of `kind` is logged now; if so, how many were held
    /// back since the last one.
    fn admit(&self, kind: &str) -> Option<u64> {
        let mut seen = self.seen.locked();
        let now = Instant::now();
        match seen.get_mut(kind) {
            Some((last, repeats)) if now.duration_since(*last) < QUIET => {
                *repeats += 1;
                None
            }
            Some((last, repeats)) => {
                *last = now;
                Some(std::mem::take(repeats))
            }
            None => {
                seen.insert(kind.to_string(), (now, 0));
                Some(0)
            }
        }
    }

    /// A librdkafka log line. Connection trouble is a warning: the client
    /// reconnects by itself, and what it costs shows as a hold.
    pub fn log(&self, level: RDKafkaLogLevel, facility: &str, message: &str) {
        let client = self.client.as_str();
        let serious = matches!(
            level,
            RDKafkaLogLevel::Emerg
                | RDKafkaLogLevel::Alert
                | RDKafkaLogLevel::Critical
                | RDKafkaLogLevel::Error
                | RDKafkaLogLevel::Warning
        );
        if !serious {
            tracing::debug!(target: "librdkafka", client, "{facility}: {message}");
            return;
        }
        let Some(repeats) = self.admit(facility) else {
            return;
        };
        let more = held_back(repeats);
        tracing::warn!(target: "librdkafka", client, "{facility}: {message}{more}");
    }

    /// A client-wide error (all brokers down, a transport failure). "All
    /// brokers down" is the one worth a warning; the transport failures
    /// behind it are in librdkafka's own lines already.
    pub fn error(&self, error: &KafkaError, reason: &str) {
        let code = error.rdkafka_error_code();
        if code != Some(RDKafkaErrorCode::AllBrokersDown) {
            tracing::debug!(target: "librdkafka", client = self.client.as_str(), "{error}: {reason}");
            return;
        }
        let Some(repeats) = self.admit("all brokers down") else {
            return;
        };
        let more = held_back(repeats);
        tracing::warn!(target: "librdkafka", client = self.client.as_str(), "{error}: {reason}{more}");
    }
}

fn held_back(repeats: u64) -> String {
    if repeats == 0 {
        String::new()
    } else {
        format!(" ({repeats} more like it in the last {}s)", QUIET.as_secs())
    }
}

/// The dead-letter producer's context: its lines through a [`ClientLog`].
pub struct ProducerContext(pub ClientLog);

impl ClientContext for ProducerContext {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, log_message: &str) {
        self.0.log(level, fac, log_message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        self.0.error(&error, reason);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeats_of_a_kind_are_held_back_and_counted() {
        let log = ClientLog::new("crm-sync".into());
        assert_eq!(log.admit("FAIL"), Some(0));
        assert_eq!(log.admit("FAIL"), None);
        assert_eq!(log.admit("FAIL"), None);
        assert_eq!(log.admit("REQTMOUT"), Some(0));
        // Past the quiet time, the next one says how many were held back.
        log.seen.lock().unwrap().get_mut("FAIL").unwrap().0 -= QUIET;
        assert_eq!(log.admit("FAIL"), Some(2));
    }
}
