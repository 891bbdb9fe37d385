// {{name}}: a plugboard plugin. The host calls `init` once per instance
// with the manifest's [config], then `handle` with batches of booking
// events, in order; see wit/plugin.wit for the whole contract.
import { log } from 'plugboard:plugin/log@0.3.0';

// A booking's state as the contract writes it (`upcoming`); one a newer
// producer added arrives as 'unknown', with its name in `unknownState`.
const stateName = (b) => (b.state === 'unknown' ? b.unknownState.name : b.state);

export const handler = {
  // Throw { tag: 'reject', val: why } for a config that can never work,
  // { tag: 'retry', val: why } if something it needs is down for now.
  init(config) {},

  handle(batch) {
    for (const event of batch) {
      const b = event.booking;
      log('info', `${b.bookingId} v${b.version} ${stateName(b)}`);
    }
    // Or { tag: 'stopped', val: { handled: i, failure } } at the first event
    // not handled, with failure { tag: 'retry', val: { reason, afterMs } }
    // or { tag: 'reject', val: reason }.
    return { tag: 'all' };
  },
};
