//! Holds: the partitions that wait instead of going on, and why.
//!
//! A partition holds when its next event cannot be settled yet: the plugin
//! answered `retry` (its sink is down, slow or rate-limiting), it trapped or
//! ran out of time and the event is tried again, or a part of the host
//! failed (the state store, the dead-letter producer, the broker,
//! a plugin instance that cannot start). A hold never parks an event; it
//! ends by itself when the cause goes away. What holds is visible in
//! `/plugins`, `/readyz` and the metrics, with the time it began and the
//! last reason, so a frozen partition is never silent.

use crate::locks::Lock;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, SystemTime};

use prometheus::{IntCounterVec, IntGaugeVec, Opts, Registry};
use serde::Serialize;

/// Whose failure holds the partition. The names are part of the metrics
/// and `/plugins`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Cause {
    /// The plugin asked to retry: what it writes to is unavailable.
    Sink,
    /// A part of the host failed; the host is not ready while it lasts.
    Host,
    /// The plugin trapped or ran out of time on the event, which is tried
    /// again (up to `max_attempts`) after a backoff.
    Plugin,
    /// A call to the plugin has lasted longer than [`CALL_SHOWN_AFTER`]:
    /// it computes, or waits in a host import (an outgoing request). Only
    /// in `/plugins` and `/readyz`; the time budget ends it.
    Call,
}

impl Cause {
    pub fn as_str(self) -> &'static str {
        match self {
            Cause::Sink => "sink",
            Cause::Host => "host",
            Cause::Plugin => "plugin",
            Cause::Call => "call",
        }
    }
}

/// The partition a hold that concerns a whole consumer is filed under (the
/// broker is unreachable).
pub const ALL_PARTITIONS: i32 = -1;

/// How long a call to a plugin runs before `waiting` shows it: longer
/// than the first backoff of a hold, far shorter than a time budget.
pub const CALL_SHOWN_AFTER: std::time::Duration = std::time::Duration::from_secs(1);

/// The call in progress of one plugin instance (one partition), which
/// `waiting` reads once it lasts. Set and cleared per call with two atomic
/// stores; only a host import that waits takes the lock, to say on what.
pub struct CallSlot {
    plugin: Arc<str>,
    partition: i32,
    /// When the call began, in ms since the epoch; 0 between calls.
    began_ms: AtomicU64,
    /// What it waits for in the host, if it does (an outgoing request).
    doing: Mutex<Option<String>>,
}

impl CallSlot {
    /// A slot no `waiting` reads: a shadow's calls.
    pub fn unlisted(plugin: Arc<str>) -> Self {
        CallSlot {
            plugin,
            partition: -1,
            began_ms: AtomicU64::new(0),
            doing: Mutex::new(None),
        }
    }

    pub fn begin(&self) {
        let now = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(1, |d| d.as_millis() as u64);
        self.began_ms.store(now.max(1), Ordering::Relaxed);
    }

    pub fn end(&self) {
        self.began_ms.store(0, Ordering::Relaxed);
    }

    /// The call waits on `doing` in the host (None: no longer).
    pub fn waits_on(&self, doing: Option<String>) {
        *self.doing.locked() = doing;
    }
}

/// One partition that waits.
#[derive(Debug, Clone, Serialize)]
pub struct Hold {
    pub plugin: String,
    /// The partition, or -1 for the whole consumer.
    pub partition: i32,
    pub cause: Cause,
    /// When this hold began (RFC 3339).
    pub since: String,
    #[serde(skip)]
    began: SystemTime,
    /// Seconds since it began, when the snapshot was taken.
    pub seconds: u64,
    /// The last reason given.
    pub reason: String,
    /// Attempts made while holding.
    pub attempts: u64,
}

/// Every hold of the process, with its metrics.
pub struct Holds {
    current: Mutex<BTreeMap<(String, i32), Hold>>,
    /// The call slots of live instances.
    calls: Mutex<Vec<Weak<CallSlot>>>,
    /// 1 while a partition holds, by cause.
    waiting: IntGaugeVec,
    /// Holds begun, by cause: how often a sink or the host made us wait.
    begun: IntCounterVec,
}

impl Holds {
    pub fn new(registry: &Registry) -> Self {
        let waiting = IntGaugeVec::new(
            Opts::new(
                "plugboard_partition_waiting",
                "1 while a partition waits for its sink (cause=sink) or for a part of the host (cause=host) instead of going on",
            ),
            &["plugin", "partition", "cause"],
        )
        .expect("valid metric");
        let begun = IntCounterVec::new(
            Opts::new(
                "plugboard_waits_total",
                "Times a partition began to wait for its sink or for a part of the host",
            ),
            &["plugin", "cause"],
        )
        .expect("valid metric");
        registry
            .register(Box::new(waiting.clone()))
            .expect("unique metric");
        registry
            .register(Box::new(begun.clone()))
            .expect("unique metric");
        Holds {
            current: Mutex::default(),
            calls: Mutex::default(),
            waiting,
            begun,
        }
    }

    /// `plugin`'s `partition` waits because of `cause`. Returns true when
    /// this begins a hold (or changes its cause), so callers log once per
    /// hold rather than once per attempt.
    pub fn hold(&self, plugin: &str, partition: i32, cause: Cause, reason: &str) -> bool {
        let mut current = self.current.locked();
        let key = (plugin.to_string(), partition);
        let partition_label = partition.to_string();
        if let Some(hold) = current.get_mut(&key) {
            hold.attempts += 1;
            hold.reason = reason.to_string();
            if hold.cause == cause {
                return false;
            }
            self.waiting
                .with_label_values(&[plugin, &partition_label, hold.cause.as_str()])
                .set(0);
            hold.cause = cause;
        } else {
            let now = SystemTime::now();
            current.insert(
                key,
                Hold {
                    plugin: plugin.to_string(),
                    partition,
                    cause,
                    since: prost_types::Timestamp::from(now).to_string(),
                    began: now,
                    seconds: 0,
                    reason: reason.to_string(),
                    attempts: 1,
                },
            );
        }
        self.waiting
            .with_label_values(&[plugin, &partition_label, cause.as_str()])
            .set(1);
        self.begun
            .with_label_values(&[plugin, cause.as_str()])
            .inc();
        true
    }

    /// The hold of `plugin`'s `partition` is over; returns how long it
    /// lasted, if there was one.
    pub fn release(&self, plugin: &str, partition: i32) -> Option<std::time::Duration> {
        let hold = self
            .current
            .locked()
            .remove(&(plugin.to_string(), partition))?;
        self.waiting
            .with_label_values(&[plugin, &partition.to_string(), hold.cause.as_str()])
            .set(0);
        Some(hold.began.elapsed().unwrap_or_default())
    }

    /// `plugin`'s `partition` left this host (revoked): its hold ends and
    /// its series go, so the metrics show only partitions it owns.
    pub fn forget(&self, plugin: &str, partition: i32) {
        self.current
            .locked()
            .remove(&(plugin.to_string(), partition));
        let partition = partition.to_string();
        self.remove_series(|p, part| p == plugin && part == partition);
    }

    /// Ends every hold of `plugin`: it was removed, and what it waited
    /// for is no longer this host's to wait for.
    pub fn release_plugin(&self, plugin: &str) {
        self.current.locked().retain(|(p, _), _| p != plugin);
        self.remove_series(|p, _| p == plugin);
    }

    /// Removes every `plugboard_partition_waiting` series whose plugin and
    /// partition `gone` picks, whatever its cause, the 0s of holds that
    /// ended too.
    fn remove_series(&self, gone: impl Fn(&str, &str) -> bool) {
        use prometheus::core::Collector;
        for family in self.waiting.collect() {
            for metric in family.get_metric() {
                let value = |name: &str| {
                    metric
                        .get_label()
                        .iter()
                        .find(|l| l.name() == name)
                        .map_or("", |l| l.value())
                };
                let (plugin, partition) = (value("plugin"), value("partition"));
                if gone(plugin, partition) {
                    let _ = self
                        .waiting
                        .remove_label_values(&[plugin, partition, value("cause")]);
                }
            }
        }
    }

    /// The call slot of a new instance of `plugin` serving `partition`.
    pub fn call_slot(&self, plugin: &Arc<str>, partition: i32) -> Arc<CallSlot> {
        let slot = Arc::new(CallSlot {
            plugin: plugin.clone(),
            partition,
            began_ms: AtomicU64::new(0),
            doing: Mutex::new(None),
        });
        let mut calls = self.calls.locked();
        calls.retain(|c| c.strong_count() > 0);
        calls.push(Arc::downgrade(&slot));
        slot
    }

    /// Every hold now, oldest first per plugin, and every call that has
    /// lasted longer than [`CALL_SHOWN_AFTER`] on a partition that does
    /// not hold.
    pub fn snapshot(&self) -> Vec<Hold> {
        let now = SystemTime::now();
        let current = self.current.locked();
        let mut holds: Vec<Hold> = current
            .values()
            .map(|h| Hold {
                seconds: now.duration_since(h.began).unwrap_or_default().as_secs(),
                ..h.clone()
            })
            .collect();
        let now_ms = now
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        for call in self.calls.locked().iter().filter_map(Weak::upgrade) {
            let began_ms = call.began_ms.load(Ordering::Relaxed);
            let lasted = Duration::from_millis(now_ms.saturating_sub(began_ms));
            let key = (call.plugin.to_string(), call.partition);
            if began_ms == 0 || lasted < CALL_SHOWN_AFTER || current.contains_key(&key) {
                continue;
            }
            let reason = match &*call.doing.locked() {
                Some(doing) => format!("the plugin's call waits on {doing}"),
                None => "the plugin's call has not returned yet".to_string(),
            };
            let began = SystemTime::UNIX_EPOCH + Duration::from_millis(began_ms);
            holds.push(Hold {
                plugin: key.0,
                partition: call.partition,
                cause: Cause::Call,
                since: prost_types::Timestamp::from(began).to_string(),
                began,
                seconds: lasted.as_secs(),
                reason,
                attempts: 1,
            });
        }
        holds
    }

    /// Whether a part of the host fails right now: the host is not ready.
    pub fn host_failing(&self) -> bool {
        self.current
            .locked()
            .values()
            .any(|h| h.cause == Cause::Host)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hold_is_counted_once_and_visible_until_released() {
        let registry = Registry::new();
        let holds = Holds::new(&registry);
        assert!(holds.hold("crm", 2, Cause::Sink, "HTTP 503"));
        assert!(!holds.hold("crm", 2, Cause::Sink, "connection refused"));
        assert!(!holds.host_failing());
        let snapshot = holds.snapshot();
        assert_eq!(snapshot.len(), 1);
        assert_eq!(snapshot[0].reason, "connection refused");
        assert_eq!(snapshot[0].attempts, 2);
        assert_eq!(
            holds.waiting.with_label_values(&["crm", "2", "sink"]).get(),
            1
        );
        // The same partition now waits for the host: a new hold begins.
        assert!(holds.hold("crm", 2, Cause::Host, "disk full"));
        assert!(holds.host_failing());
        assert_eq!(
            holds.waiting.with_label_values(&["crm", "2", "sink"]).get(),
            0
        );
        assert!(holds.release("crm", 2).is_some());
        assert!(holds.release("crm", 2).is_none());
        assert!(holds.snapshot().is_empty());
        assert!(!holds.host_failing());
        assert_eq!(
            holds.waiting.with_label_values(&["crm", "2", "host"]).get(),
            0
        );
        assert_eq!(holds.begun.with_label_values(&["crm", "sink"]).get(), 1);
        assert_eq!(holds.begun.with_label_values(&["crm", "host"]).get(), 1);
    }

    #[test]
    fn a_call_that_lasts_shows_with_what_it_waits_on() {
        let holds = Holds::new(&Registry::new());
        let slot = holds.call_slot(&Arc::from("crm"), 0);
        slot.begin();
        assert!(holds.snapshot().is_empty(), "a short call is not a wait");
        slot.waits_on(Some("an outgoing request to http://crm:80".into()));
        slot.began_ms
            .fetch_sub(3 * CALL_SHOWN_AFTER.as_millis() as u64, Ordering::Relaxed);
        let snapshot = holds.snapshot();
        assert_eq!(snapshot.len(), 1);
        assert_eq!(snapshot[0].cause, Cause::Call);
        assert_eq!(snapshot[0].seconds, 3);
        assert!(snapshot[0].reason.contains("http://crm:80"));
        assert!(!holds.host_failing(), "a long call keeps the host ready");
        slot.waits_on(None);
        assert!(holds.snapshot()[0].reason.contains("not returned"));
        slot.end();
        assert!(holds.snapshot().is_empty());
        // A hold of the partition says more than its call.
        slot.begin();
        slot.began_ms.fetch_sub(3000, Ordering::Relaxed);
        holds.hold("crm", 0, Cause::Sink, "HTTP 503");
        assert_eq!(holds.snapshot()[0].cause, Cause::Sink);
        // An instance dropped takes its call along.
        holds.release("crm", 0);
        drop(slot);
        assert!(holds.snapshot().is_empty());
    }

    #[test]
    fn a_removed_plugin_takes_its_holds_along() {
        let holds = Holds::new(&Registry::new());
        holds.hold("crm", 0, Cause::Sink, "HTTP 503");
        holds.hold("crm", ALL_PARTITIONS, Cause::Host, "broker down");
        holds.hold("lake", 1, Cause::Host, "disk full");
        holds.hold("crm", 3, Cause::Sink, "HTTP 503");
        holds.release("crm", 3);
        holds.hold("lake", 4, Cause::Host, "disk full");
        holds.forget("lake", 4);
        holds.release_plugin("crm");
        let left: Vec<_> = holds.snapshot().into_iter().map(|h| h.plugin).collect();
        assert_eq!(left, ["lake"]);
        // No series of it is left, not even the 0 of a hold that ended.
        use prometheus::core::Collector;
        let series: Vec<String> = holds.waiting.collect()[0]
            .get_metric()
            .iter()
            .flat_map(|m| m.get_label().iter().filter(|l| l.name() == "plugin"))
            .map(|l| l.value().to_string())
            .collect();
        assert_eq!(series, ["lake"]);
    }
}
