"""{{name}}: a plugboard plugin. The host calls `init` once per instance
with the manifest's [config], then `handle` with batches of booking events,
in order; see wit/plugin.wit for the whole contract."""

from wit_world import exports
from wit_world.exports.handler import BatchOutcome
from wit_world.imports import log


class Handler(exports.Handler):
    def init(self, config):
        pass

    def handle(self, batch):
        for event in batch:
            b = event.booking
            log.log(log.Level.INFO, f"{b.booking_id} v{b.version} {b.state.name.lower()}")
        return BatchOutcome(handled=len(batch), failure=None)
