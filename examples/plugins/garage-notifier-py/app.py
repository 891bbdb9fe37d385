"""garage-notifier in Python: for each booking that becomes upcoming, POSTs
{booking_id, garage_id, appointment_start, customer_name} to the configured
webhook_url, with the event id as idempotency-key. Other states are
skipped; an upcoming booking without an appointment is rejected. The same
plugin as plugins/garage-notifier (Rust): both send identical requests.

Built with componentize-py against the plugin-with-http world; it calls
wasi:http/outgoing-handler itself, blocking, one request at a time."""

import json
import re
from datetime import datetime, timezone

from componentize_py_types import Err, Ok
from wit_world import exports
from wit_world.exports.handler import (
    BatchOutcome_All,
    BatchOutcome_Stopped,
    Failure_Reject,
    Failure_Retry,
    InitError_Reject,
    RetryInfo,
    Stop,
)
from wit_world.imports import outgoing_handler, wasi_http_types as http
from wit_world.imports.plugboard_plugin_types import BookingState

WEBHOOK = {}


def rfc3339(seconds):
    """2026-03-16T08:00:00Z: whole seconds, UTC."""
    return datetime.fromtimestamp(seconds, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def post(body, key):
    """Sends one request; returns (status, retry-after ms or None)."""
    headers = http.Fields.from_list([
        ("content-type", b"application/json"),
        ("idempotency-key", key.encode()),
        ("content-length", str(len(body)).encode()),
    ])
    request = http.OutgoingRequest(headers)
    request.set_method(http.Method_Post())
    request.set_scheme(http.Scheme_Https() if WEBHOOK["scheme"] == "https" else http.Scheme_Http())
    request.set_authority(WEBHOOK["authority"])
    request.set_path_with_query(WEBHOOK["path"])
    outgoing = request.body()
    pending = outgoing_handler.handle(request, None)
    # If the body cannot be written, the response says why (the request was
    # denied, the connection refused): prefer its answer.
    write_error = None
    try:
        with outgoing.write() as stream:
            stream.blocking_write_and_flush(body)
        http.OutgoingBody.finish(outgoing, None)
    except Err as e:
        write_error = e
    with pending.subscribe() as ready:
        ready.block()
    answer = pending.get()
    if not isinstance(answer, Ok):
        raise RuntimeError("response taken twice")
    if isinstance(answer.value, Err):
        code = answer.value.value
        raise RuntimeError(type(code).__name__.removeprefix("ErrorCode_"))
    if write_error is not None:
        raise RuntimeError(f"writing the request body: {write_error.value}")
    response = answer.value.value
    retry_after = response.headers().get("retry-after")
    after_ms = int(retry_after[0]) * 1000 if retry_after else None
    return response.status(), after_ms


def notify(event):
    b = event.booking
    if b.state != BookingState.UPCOMING:
        return None
    if b.appointment_start is None:
        return Failure_Reject(f"booking {b.booking_id} is upcoming but has no appointment")
    body = json.dumps({
        "appointment_start": rfc3339(b.appointment_start.seconds),
        "booking_id": b.booking_id,
        "customer_name": b.customer.name if b.customer else "",
        "garage_id": b.garage.garage_id if b.garage else "",
    }, separators=(",", ":")).encode()
    try:
        status, after_ms = post(body, b.event_id)
    except Exception as e:  # the request could not be made: try again later
        # ...unless the host refused it: the origin is not granted, and no
        # retry can help.
        if str(e) == "HttpRequestDenied":
            return Failure_Reject(f"webhook refused: the host denied the request ({e}); grant the origin in allow_hosts")
        return Failure_Retry(RetryInfo(reason=f"webhook unreachable: {e}", after_ms=None))
    if 200 <= status < 300:
        return None
    if status == 429 or status >= 500:
        return Failure_Retry(RetryInfo(reason=f"webhook answered {status}", after_ms=after_ms))
    return Failure_Reject(f"webhook answered {status}")


class Handler(exports.Handler):
    def init(self, config):
        url = dict(config).get("webhook_url")
        if not url:
            raise Err(InitError_Reject("config `webhook_url` is required"))
        m = re.match(r"^(https?)://([^/]+)(/.*)?$", url)
        if not m:
            raise Err(InitError_Reject(f"webhook_url `{url}` must be http(s)://host[:port][/path]"))
        WEBHOOK.update(scheme=m.group(1), authority=m.group(2), path=m.group(3) or "/")

    def handle(self, batch):
        for i, event in enumerate(batch):
            failure = notify(event)
            if failure is not None:
                return BatchOutcome_Stopped(Stop(handled=i, failure=failure))
        return BatchOutcome_All()
