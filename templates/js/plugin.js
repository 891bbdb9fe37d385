// {{name}}: a plugboard plugin. The host calls `init` once per instance
// with the manifest's [config], then `handle` with batches of booking
// events, in order; see wit/plugin.wit for the whole contract.
import { log } from 'plugboard:plugin/log@0.1.0';

export const handler = {
  init(config) {},

  handle(batch) {
    for (const event of batch) {
      const b = event.booking;
      log('info', `${b.bookingId} v${b.version} ${b.state}`);
    }
    return { handled: batch.length, failure: undefined };
  },
};
