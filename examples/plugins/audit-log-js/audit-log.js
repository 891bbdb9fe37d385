// audit-log-js: an audit trail of every booking event, written through the
// host's log, with a count per state in the host's metrics. It shows that a
// plugin in JavaScript gets the same typed events as a Rust one: no protobuf
// library, no Kafka client.
import { log } from 'plugboard:plugin/log@0.3.0';
import { counterAdd, describe } from 'plugboard:plugin/metrics@0.3.0';

let prefix = 'audit';

// A state as the contract writes it (`upcoming`); one a newer producer added
// arrives as { tag: 'unknown', val: { name, number } } and goes by its name.
const stateName = (state) => (state.tag === 'unknown' ? state.val.name : state.tag);

export const handler = {
  init(config) {
    for (const [key, value] of config) {
      if (key === 'prefix') prefix = value;
    }
    describe('audit_events_total', 'Booking events seen by the audit log, by state', []);
  },

  handle(batch) {
    for (const event of batch) {
      const b = event.booking;
      const e = event.envelope;
      log(
        'info',
        `${prefix}: booking ${b.bookingId} v${b.version} ${stateName(b.state)} ` +
          `(event ${b.eventId}, ${e.source}/${e.partition}@${e.offset})`,
      );
      counterAdd('audit_events_total', [{ name: 'state', value: stateName(b.state) }], 1);
    }
    return { tag: 'all' };
  },
};
