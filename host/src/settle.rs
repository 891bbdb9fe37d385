//! Settle: how every source ends a batch of one partition. Its records are
//! decoded, the events dispatched to one plugin, and every record that will
//! never be handled (it does not decode, or the plugin gave up on it) is
//! parked in the dead-letter sink, in order. A record is settled once it is
//! handled or parked; only a settled prefix may be committed.

use crate::dead_letter::DeadLetters;
use crate::dispatch::{Dispatcher, Failure, FailureClass, Outcome};
use crate::event::BookingEvent;
use crate::runtime::bindings::wit;
use crate::runtime::convert;
use crate::shutdown::Shutdown;
use crate::source::Record;

/// Settles `records` (one partition's, in order) with `dispatcher`'s plugin.
/// Returns how many records from the start are settled: all of them, unless
/// `stop` came while the partition held or a dead letter was being written.
pub fn settle<R: Record>(
    dispatcher: &mut Dispatcher,
    records: &[R],
    dead_letters: &dyn DeadLetters<R>,
    stop: &Shutdown,
) -> usize {
    let wants_payload = dispatcher.prepared().spec.payload;
    let mut events = Vec::with_capacity(records.len());
    // The record each event came from.
    let mut origin = Vec::with_capacity(records.len());
    let mut failed: Vec<(usize, Failure)> = Vec::new();
    for (i, record) in records.iter().enumerate() {
        match record.decode() {
            Ok(event) => {
                events.push(to_wit(record, event, wants_payload));
                origin.push(i);
            }
            Err(err) => {
                dispatcher
                    .prepared()
                    .metrics()
                    .decode_failures
                    .with_label_values(&[record.source()])
                    .inc();
                failed.push((
                    i,
                    Failure {
                        class: FailureClass::Decode,
                        reason: err.to_string(),
                        attempts: 0,
                    },
                ));
            }
        }
    }
    let outcomes = if events.is_empty() {
        Vec::new()
    } else {
        dispatcher.deliver(&events, stop)
    };
    // Records up to the first event not settled are settled (those that
    // did not decode included); none past it.
    let settled = origin.get(outcomes.len()).copied().unwrap_or(records.len());
    for (k, outcome) in outcomes.into_iter().enumerate() {
        if let Outcome::DeadLetter(failure) = outcome {
            failed.push((origin[k], failure));
        }
    }
    failed.retain(|(i, _)| *i < settled);
    failed.sort_by_key(|(i, _)| *i);
    let version = dispatcher.prepared().clone();
    for (i, failure) in failed {
        if !dead_letters.park(&records[i], &failure, &version, stop) {
            return i;
        }
    }
    settled
}

/// `record`'s `event` as a plugin gets it: with its protobuf encoding if
/// the plugin asked for it.
pub fn to_wit<R: Record>(record: &R, event: BookingEvent, payload: bool) -> wit::Event {
    let envelope = record.envelope(&event);
    let payload = payload.then(|| record.payload(&event));
    convert::to_wit(event, envelope, payload)
}
