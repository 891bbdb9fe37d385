// garage-notifier in JavaScript: for each booking that becomes upcoming,
// POSTs {booking_id, garage_id, appointment_start, customer_name} to the
// configured webhook_url, with the event id as idempotency-key. Other
// states are skipped; an upcoming booking without an appointment is
// rejected. The same plugin as plugins/garage-notifier (Rust): both send
// identical requests.
import { handle as send } from 'wasi:http/outgoing-handler@0.2.12';
import { Fields, OutgoingBody, OutgoingRequest } from 'wasi:http/types@0.2.12';

let webhook;

const encoder = new TextEncoder();
const decoder = new TextDecoder();

function parseUrl(url) {
  const m = /^(https?):\/\/([^/]+)(\/.*)?$/.exec(url);
  if (!m) throw { tag: 'reject', val: `webhook_url \`${url}\` must be http(s)://host[:port][/path]` };
  return { scheme: m[1], authority: m[2], path: m[3] ?? '/' };
}

// 2026-03-16T08:00:00Z: whole seconds, UTC.
function rfc3339(seconds) {
  return new Date(Number(seconds) * 1000).toISOString().replace(/\.\d{3}Z$/, 'Z');
}

function post(body, key) {
  const bytes = encoder.encode(body);
  const headers = Fields.fromList([
    ['content-type', encoder.encode('application/json')],
    ['idempotency-key', encoder.encode(key)],
    ['content-length', encoder.encode(String(bytes.length))],
  ]);
  const request = new OutgoingRequest(headers);
  request.setMethod({ tag: 'post' });
  request.setScheme({ tag: webhook.scheme.toUpperCase() });
  request.setAuthority(webhook.authority);
  request.setPathWithQuery(webhook.path);
  const outgoing = request.body();
  const pending = send(request, undefined);
  // If the body cannot be written, the response says why (the request was
  // denied, the connection refused): prefer its answer.
  let writeError;
  try {
    const stream = outgoing.write();
    stream.blockingWriteAndFlush(bytes);
    stream[Symbol.dispose]?.();
    OutgoingBody.finish(outgoing, undefined);
  } catch (e) {
    writeError = e;
  }
  pending.subscribe().block();
  // option<result<result<incoming-response, error-code>>>: nested results
  // arrive as { tag, val }.
  const outer = pending.get();
  if (outer?.tag !== 'ok') throw 'response taken twice';
  if (outer.val.tag !== 'ok') throw outer.val.val.tag ?? String(outer.val.val);
  if (writeError) throw writeError;
  const response = outer.val.val;
  const status = response.status();
  let retryAfter;
  const values = response.headers().get('retry-after');
  if (values.length > 0) retryAfter = Number(decoder.decode(values[0])) * 1000;
  return { status, retryAfter };
}

function notify(event) {
  const b = event.booking;
  if (b.state !== 'upcoming') return undefined;
  if (!b.appointmentStart) {
    return { tag: 'reject', val: `booking ${b.bookingId} is upcoming but has no appointment` };
  }
  const body = JSON.stringify({
    appointment_start: rfc3339(b.appointmentStart.seconds),
    booking_id: b.bookingId,
    customer_name: b.customer?.name ?? '',
    garage_id: b.garage?.garageId ?? '',
  });
  let answer;
  try {
    answer = post(body, b.eventId);
  } catch (e) {
    const why = typeof e === 'string' ? e : JSON.stringify(e?.payload ?? String(e));
    // The host refused it: the origin is not granted, and no retry can help.
    if (why === 'HTTP-request-denied') {
      return { tag: 'reject', val: `webhook refused: ${why} (grant the origin in allow_hosts)` };
    }
    return { tag: 'retry', val: { reason: `webhook unreachable: ${why}`, afterMs: undefined } };
  }
  const { status, retryAfter } = answer;
  if (status >= 200 && status < 300) return undefined;
  if (status === 429 || status >= 500) {
    return { tag: 'retry', val: { reason: `webhook answered ${status}`, afterMs: retryAfter } };
  }
  return { tag: 'reject', val: `webhook answered ${status}` };
}

export const handler = {
  init(config) {
    const url = config.find(([k]) => k === 'webhook_url')?.[1];
    // A config that can never work: init-error::reject.
    if (!url) throw { tag: 'reject', val: 'config `webhook_url` is required' };
    webhook = parseUrl(url);
  },

  handle(batch) {
    for (let i = 0; i < batch.length; i++) {
      const failure = notify(batch[i]);
      if (failure) return { tag: 'stopped', val: { handled: i, failure } };
    }
    return { tag: 'all' };
  },
};
