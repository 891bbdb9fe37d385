// garage-notifier in Go (see build.sh): for each booking that becomes upcoming, POSTs
// {booking_id, garage_id, appointment_start, customer_name} to the
// configured webhook_url, with the event id as idempotency-key. Other
// states are skipped; an upcoming booking without an appointment is
// rejected. The same plugin as plugins/garage-notifier (Rust): both send
// identical requests.
package export_plugboard_plugin_handler

import (
	"encoding/json"
	"errors"
	"fmt"
	"regexp"
	"strconv"
	"strings"
	"time"

	witRuntime "go.bytecodealliance.org/pkg/wit/runtime"
	witTypes "go.bytecodealliance.org/pkg/wit/types"
	handler "wit_component/plugboard_plugin_handler"
	types "wit_component/plugboard_plugin_types"
	outgoing "wit_component/wasi_http_outgoing_handler"
	http "wit_component/wasi_http_types"
)

var webhook struct{ scheme, authority, path string }

var urlPattern = regexp.MustCompile(`^(https?)://([^/]+)(/.*)?$`)

// errDenied: the host refused the request because its origin is not
// granted. That cannot heal by waiting, so the event is rejected.
var errDenied = errors.New("the host denied the request")

func Init(config []witTypes.Tuple2[string, string]) witTypes.Result[witTypes.Unit, handler.InitError] {
	defer witRuntime.Reset()
	for _, kv := range config {
		if kv.F0 != "webhook_url" {
			continue
		}
		// Lifted strings live in the argument arena: keep copies.
		m := urlPattern.FindStringSubmatch(strings.Clone(kv.F1))
		if m == nil {
			return witTypes.Err[witTypes.Unit](handler.MakeInitErrorReject(fmt.Sprintf("webhook_url `%s` must be http(s)://host[:port][/path]", kv.F1)))
		}
		webhook.scheme, webhook.authority, webhook.path = m[1], m[2], m[3]
		if webhook.path == "" {
			webhook.path = "/"
		}
		return witTypes.Ok[witTypes.Unit, handler.InitError](witTypes.Unit{})
	}
	return witTypes.Err[witTypes.Unit](handler.MakeInitErrorReject("config `webhook_url` is required"))
}

func Handle(batch []types.Event) handler.BatchOutcome {
	defer witRuntime.Reset()
	for i, event := range batch {
		if failure := notify(event.Booking); failure.IsSome() {
			return handler.MakeBatchOutcomeStopped(handler.Stop{Handled: uint32(i), Failure: failure.Some()})
		}
	}
	return handler.MakeBatchOutcomeAll()
}

func retry(reason string, afterMs witTypes.Option[uint32]) witTypes.Option[handler.Failure] {
	return witTypes.Some(handler.MakeFailureRetry(handler.RetryInfo{Reason: reason, AfterMs: afterMs}))
}

func reject(reason string) witTypes.Option[handler.Failure] {
	return witTypes.Some(handler.MakeFailureReject(reason))
}

func notify(b types.BookingEvent) witTypes.Option[handler.Failure] {
	if b.State != types.BookingState_Upcoming {
		return witTypes.None[handler.Failure]()
	}
	if b.AppointmentStart.IsNone() {
		return reject(fmt.Sprintf("booking %s is upcoming but has no appointment", b.BookingId))
	}
	garage, customer := "", ""
	if b.Garage.IsSome() {
		garage = b.Garage.Some().GarageId
	}
	if b.Customer.IsSome() {
		customer = b.Customer.Some().Name
	}
	// encoding/json sorts map keys, as the other notifiers write them.
	body, _ := json.Marshal(map[string]string{
		"booking_id":        b.BookingId,
		"garage_id":         garage,
		"appointment_start": time.Unix(b.AppointmentStart.Some().Seconds, 0).UTC().Format("2006-01-02T15:04:05Z"),
		"customer_name":     customer,
	})
	status, retryAfter, err := post(body, b.EventId)
	switch {
	case errors.Is(err, errDenied):
		return reject("webhook refused: " + err.Error() + "; grant the origin in allow_hosts")
	case err != nil:
		return retry("webhook unreachable: "+err.Error(), witTypes.None[uint32]())
	case status >= 200 && status < 300:
		return witTypes.None[handler.Failure]()
	case status == 429 || status >= 500:
		return retry(fmt.Sprintf("webhook answered %d", status), retryAfter)
	default:
		return reject(fmt.Sprintf("webhook answered %d", status))
	}
}

func post(body []byte, key string) (uint16, witTypes.Option[uint32], error) {
	none := witTypes.None[uint32]()
	headers := http.FieldsFromList([]witTypes.Tuple2[string, []uint8]{
		{F0: "content-type", F1: []byte("application/json")},
		{F0: "idempotency-key", F1: []byte(key)},
		{F0: "content-length", F1: []byte(strconv.Itoa(len(body)))},
	})
	if headers.IsErr() {
		return 0, none, fmt.Errorf("bad header")
	}
	request := http.MakeOutgoingRequest(headers.Ok())
	request.SetMethod(http.MakeMethodPost())
	scheme := http.MakeSchemeHttp()
	if webhook.scheme == "https" {
		scheme = http.MakeSchemeHttps()
	}
	request.SetScheme(witTypes.Some(scheme))
	request.SetAuthority(witTypes.Some(webhook.authority))
	request.SetPathWithQuery(witTypes.Some(webhook.path))
	outgoingBody := request.Body().Ok()
	pending := outgoing.Handle(request, witTypes.None[*http.RequestOptions]())
	if pending.IsErr() {
		if pending.Err().Tag() == http.ErrorCode_HttpRequestDenied {
			return 0, none, errDenied
		}
		return 0, none, fmt.Errorf("request refused")
	}
	future := pending.Ok()
	stream := outgoingBody.Write().Ok()
	stream.BlockingWriteAndFlush(body)
	stream.Drop()
	http.OutgoingBodyFinish(outgoingBody, witTypes.None[*http.Fields]())
	ready := future.Subscribe()
	ready.Block()
	ready.Drop()
	answer := future.Get()
	if answer.IsNone() || answer.Some().IsErr() {
		return 0, none, fmt.Errorf("response taken twice")
	}
	if answer.Some().Ok().IsErr() {
		if answer.Some().Ok().Err().Tag() == http.ErrorCode_HttpRequestDenied {
			return 0, none, errDenied
		}
		return 0, none, fmt.Errorf("request failed (refused or timed out)")
	}
	response := answer.Some().Ok().Ok()
	retryAfter := none
	if values := response.Headers().Get("retry-after"); len(values) > 0 {
		if s, err := strconv.Atoi(string(values[0])); err == nil {
			retryAfter = witTypes.Some(uint32(s * 1000))
		}
	}
	return response.Status(), retryAfter, nil
}
