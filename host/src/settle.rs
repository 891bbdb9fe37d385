//! Settle: how every source ends a batch of one partition. Its records are
//! decoded, the events dispatched to one plugin, and every record that will
//! never be handled (it does not decode, or the plugin gave up on it) is
//! parked in the dead-letter sink, in order. A record is settled once it is
//! handled or parked; only a settled prefix may be committed. A shadow of
//! the plugin, if one runs, then gets the settled events (see
//! [`crate::shadow`]): it settles nothing.

use std::sync::Arc;

use crate::dead_letter::DeadLetters;
use crate::decode::DecodeError;
use crate::dispatch::{Dispatcher, Ended, Failure, FailureClass, Outcome};
use crate::event::BookingEvent;
use crate::runtime::bindings::wit;
use crate::runtime::convert;
use crate::runtime::plugin::Prepared;
use crate::schema::Decoded;
use crate::shadow::Served;
use crate::shutdown::Shutdown;
use crate::source::Record;

/// Settles `records` (one partition's, in order) with `dispatcher`'s plugin.
/// Returns how many records from the start are settled: all of them, unless
/// `stop` came while the partition held or a dead letter was being written.
///
/// Every record is parked before any record after it is delivered: the
/// records are delivered in runs that end at one that does not decode, and
/// the dispatcher parks a failed event before it goes on. So whatever stop
/// cuts a dead-letter write short, nothing past the unsettled record has
/// reached the plugin's state or metrics.
pub fn settle<R: Record>(
    dispatcher: &mut Dispatcher,
    records: &[R],
    dead_letters: &dyn DeadLetters<R>,
    stop: &Shutdown,
) -> usize {
    // The first record not settled.
    let mut next = 0;
    while next < records.len() {
        let prepared = dispatcher.prepared().clone();
        let (payload, extensions) = (prepared.spec.payload, prepared.spec.extensions);
        let schemas = prepared.schemas();
        let mut events = Vec::new();
        // Runs of events of one writer's schema, for the count per schema.
        let mut schema_runs: Vec<(Arc<str>, usize)> = Vec::new();
        let mut undecodable = None;
        for record in &records[next..] {
            match record.decode(schemas, extensions) {
                Ok(decoded) => {
                    let label = &decoded.writer().label;
                    match schema_runs.last_mut() {
                        Some((run, n)) if Arc::ptr_eq(run, label) => *n += 1,
                        _ => schema_runs.push((label.clone(), 1)),
                    }
                    events.push(decoded_to_wit(record, decoded, payload));
                }
                Err(err) => {
                    undecodable = Some(err);
                    break;
                }
            }
        }
        // The schema came: the hold for it ends.
        dispatcher.host_hold_over(!matches!(undecodable, Some(DecodeError::Unavailable(_))));
        if !events.is_empty() {
            let base = next;
            let shadow = dispatcher.shadow();
            if shadow.is_some() {
                // Only this batch's effects are compared.
                dispatcher.take_effects();
            }
            let (outcomes, ended) =
                dispatcher.deliver_parking(&events, stop, &mut |k, failure, version| {
                    dead_letters.park(&records[base + k], failure, version, stop)
                });
            count_schemas(
                &prepared,
                records[base].source(),
                &schema_runs,
                outcomes.len(),
            );
            if let Some(shadow) = shadow {
                let served: Vec<Served> = outcomes
                    .iter()
                    .map(|o| match o {
                        Outcome::Handled => Served::Handled,
                        Outcome::DeadLetter(f) => {
                            Served::Parked(f.class.as_str(), f.reason.clone())
                        }
                    })
                    .collect();
                let effects = dispatcher.take_effects();
                shadow.compare(
                    dispatcher.slot(),
                    &events[..outcomes.len()],
                    &served,
                    effects,
                    stop,
                );
            }
            next += outcomes.len();
            match ended {
                Ended::Settled => {}
                // The rest is made again in the shape the new version wants.
                Ended::Reshaped => continue,
                Ended::Stopped => return next,
            }
        }
        let Some(err) = undecodable else { continue };
        let class = match err {
            DecodeError::Unavailable(reason) => {
                // The host cannot read the record yet: never the
                // record's fault, so nothing after it goes on either.
                if !dispatcher.hold_for_host(&reason, stop) {
                    return next;
                }
                continue;
            }
            DecodeError::Schema(_) => FailureClass::Schema,
            _ => FailureClass::Decode,
        };
        let record = &records[next];
        let prepared = dispatcher.prepared().clone();
        let failure = Failure::new(class, &err.to_string(), 0);
        if !dead_letters.park(record, &failure, &prepared, stop) {
            return next;
        }
        // Counted once parked: a park cut short is tried again (after a
        // backoff, or by the partition's next owner) and counts then.
        prepared
            .metrics()
            .decode_failures
            .with_label_values(&[record.source()])
            .inc();
        next += 1;
    }
    records.len()
}

/// `record`'s `event` (of the compiled schema) as a plugin gets it: with
/// its protobuf encoding if the plugin asked for it.
pub fn to_wit<R: Record>(record: &R, event: BookingEvent, payload: bool) -> wit::Event {
    decoded_to_wit(record, Decoded::compiled(event), payload)
}

/// `record`, decoded with its writer's schema, as a plugin gets it.
pub fn decoded_to_wit<R: Record>(record: &R, decoded: Decoded, payload: bool) -> wit::Event {
    let envelope = record.envelope(&decoded.event);
    let payload = payload.then(|| record.payload(&decoded.event));
    convert::from_decoded(decoded, envelope, payload)
}

/// Counts the first `settled` events by their writer's schema, from the
/// runs of one schema each.
fn count_schemas(prepared: &Prepared, source: &str, runs: &[(Arc<str>, usize)], settled: usize) {
    let counter = &prepared.metrics().events_by_schema;
    let mut left = settled;
    for (id, n) in runs {
        if left == 0 {
            break;
        }
        let n = (*n).min(left);
        counter
            .with_label_values(&[&*prepared.name, source, id])
            .inc_by(n as u64);
        left -= n;
    }
}
