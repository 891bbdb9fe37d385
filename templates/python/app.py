"""{{name}}: a plugboard plugin. The host calls `init` once per instance
with the manifest's [config], then `handle` with batches of booking events,
in order; see wit/plugin.wit for the whole contract."""

from wit_world import exports
from wit_world.exports.handler import BatchOutcome_All
from wit_world.imports import log


class Handler(exports.Handler):
    def init(self, config):
        # raise componentize_py_types.Err(InitError_Reject(why)) for a config
        # that can never work, InitError_Retry(why) if something it needs
        # is down for now.
        pass

    def handle(self, batch):
        for event in batch:
            b = event.booking
            log.log(log.Level.INFO, f"{b.booking_id} v{b.version} {b.state.name.lower()}")
        # Or BatchOutcome_Stopped(Stop(handled=i, failure=...)) at the first
        # event not handled, with Failure_Retry(RetryInfo(...)) or
        # Failure_Reject(reason).
        return BatchOutcome_All()
