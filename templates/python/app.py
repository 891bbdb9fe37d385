"""{{name}}: a plugboard plugin. The host calls `init` once per instance
with the manifest's [config], then `handle` with batches of booking events,
in order; see wit/plugin.wit for the whole contract."""

from wit_world import exports
from wit_world.exports.handler import BatchOutcome_All
from wit_world.imports import log
from wit_world.imports.types import BookingState


def state_name(b):
    """A booking's state as the contract writes it (`upcoming`); one a newer
    producer added arrives as UNKNOWN, with its name in `unknown_state`."""
    if b.state == BookingState.UNKNOWN:
        return b.unknown_state.name
    return b.state.name.lower()


class Handler(exports.Handler):
    def init(self, config):
        # raise componentize_py_types.Err(InitError_Reject(why)) for a config
        # that can never work, InitError_Retry(why) if something it needs
        # is down for now.
        pass

    def handle(self, batch):
        for event in batch:
            b = event.booking
            log.log(log.Level.INFO, f"{b.booking_id} v{b.version} {state_name(b)}")
        # Or BatchOutcome_Stopped(Stop(handled=i, failure=...)) at the first
        # event not handled, with Failure_Retry(RetryInfo(...)) or
        # Failure_Reject(reason).
        return BatchOutcome_All()
