// audit-log-js: an audit trail of every booking event, written through the
// host's log, with a count per state in the host's metrics. It shows that a
// plugin in JavaScript gets the same typed events as a Rust one: no protobuf
// library, no Kafka client.
import { log } from 'plugboard:plugin/log@0.3.0';
import { counterAdd, describe } from 'plugboard:plugin/metrics@0.3.0';

let prefix = 'audit';

// A booking's state as the contract writes it (`upcoming`); one a newer
// producer added arrives as 'unknown', with its name in `unknownState`.
const stateName = (b) => (b.state === 'unknown' ? b.unknownState.name : b.state);

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
        `${prefix}: booking ${b.bookingId} v${b.version} ${stateName(b)} ` +
          `(event ${b.eventId}, ${e.source}/${e.partition}@${e.offset})`,
      );
      counterAdd('audit_events_total', [{ name: 'state', value: stateName(b) }], 1);
    }
    return { tag: 'all' };
  },
};
