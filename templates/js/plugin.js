// {{name}}: a plugboard plugin. The host calls `init` once per instance
// with the manifest's [config], then `handle` with batches of booking
// events, in order; see wit/plugin.wit for the whole contract.
import { log } from 'plugboard:plugin/log@0.3.0';

// A state as the contract writes it (`upcoming`); one a newer producer added
// arrives as { tag: 'unknown', val: { name, number } } and goes by its name.
const stateName = (state) => (state.tag === 'unknown' ? state.val.name : state.tag);

export const handler = {
  // Throw { tag: 'reject', val: why } for a config that can never work,
  // { tag: 'retry', val: why } if something it needs is down for now.
  init(config) {},

  handle(batch) {
    for (const event of batch) {
      const b = event.booking;
      log('info', `${b.bookingId} v${b.version} ${stateName(b.state)}`);
    }
    // Or { tag: 'stopped', val: { handled: i, failure } } at the first event
    // not handled, with failure { tag: 'retry', val: { reason, afterMs } }
    // or { tag: 'reject', val: reason }.
    return { tag: 'all' };
  },
};
