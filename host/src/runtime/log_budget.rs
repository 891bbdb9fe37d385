//! How many log and output lines a plugin may write: a token bucket per
//! plugin version, shared by its instances. Lines past the budget are
//! dropped and counted, with one warning per second saying how many, so a
//! plugin logging in a loop costs the host almost nothing.

use crate::locks::Lock;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::metrics::Metrics;

pub struct LogBudget {
    plugin: Arc<str>,
    per_second: f64,
    metrics: Arc<Metrics>,
    bucket: Mutex<Bucket>,
}

struct Bucket {
    tokens: f64,
    refilled: Instant,
    dropped: u64,
    warned: Instant,
}

impl LogBudget {
    pub fn new(plugin: Arc<str>, per_second: u32, metrics: Arc<Metrics>) -> Self {
        let now = Instant::now();
        LogBudget {
            plugin,
            per_second: per_second as f64,
            metrics,
            bucket: Mutex::new(Bucket {
                tokens: per_second as f64,
                refilled: now,
                dropped: 0,
                warned: now,
            }),
        }
    }

    /// Whether one more line may be written now.
    pub fn admit(&self) -> bool {
        let mut b = self.bucket.locked();
        let now = Instant::now();
        let elapsed = now.duration_since(b.refilled).as_secs_f64();
        b.tokens = (b.tokens + elapsed * self.per_second).min(self.per_second);
        b.refilled = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            return true;
        }
        b.dropped += 1;
        self.metrics
            .plugin_log_dropped
            .with_label_values(&[&*self.plugin])
            .inc();
        if now.duration_since(b.warned) >= Duration::from_secs(1) {
            tracing::warn!(
                plugin = &*self.plugin,
                "{} log lines dropped: over the budget of {} lines/s (limits.log_lines_per_second)",
                b.dropped,
                self.per_second
            );
            b.dropped = 0;
            b.warned = now;
        }
        false
    }
}
