// {{name}}: a plugboard plugin. The host calls Init once per instance with
// the manifest's [config], then Handle with batches of booking events, in
// order; see wit/plugin.wit for the whole contract.
//
// Strings in the arguments are valid during the call only: strings.Clone
// what you keep.
package export_plugboard_plugin_handler

import (
	"fmt"

	witRuntime "go.bytecodealliance.org/pkg/wit/runtime"
	witTypes "go.bytecodealliance.org/pkg/wit/types"
	handler "wit_component/plugboard_plugin_handler"
	"wit_component/plugboard_plugin_log"
	types "wit_component/plugboard_plugin_types"
)

// Init returns witTypes.Err[witTypes.Unit](handler.MakeInitErrorReject(why))
// for a config that can never work, MakeInitErrorRetry(why) if something it
// needs is down for now.
func Init(config []witTypes.Tuple2[string, string]) witTypes.Result[witTypes.Unit, handler.InitError] {
	defer witRuntime.Reset()
	return witTypes.Ok[witTypes.Unit, handler.InitError](witTypes.Unit{})
}

func Handle(batch []types.Event) handler.BatchOutcome {
	defer witRuntime.Reset()
	for _, event := range batch {
		b := event.Booking
		plugboard_plugin_log.Log(plugboard_plugin_log.Level_Info,
			fmt.Sprintf("%s v%d %s", b.BookingId, b.Version, stateName(b)))
	}
	// Or handler.MakeBatchOutcomeStopped(handler.Stop{Handled: uint32(i),
	// Failure: handler.MakeFailureReject(why)}) at the first event not handled.
	return handler.MakeBatchOutcomeAll()
}

// stateName is a booking's state as the contract writes it; one a newer
// producer added arrives as unknown, with its name in UnknownState.
func stateName(b types.BookingEvent) string {
	switch b.State {
	case types.BookingState_Created:
		return "created"
	case types.BookingState_Paid:
		return "paid"
	case types.BookingState_Upcoming:
		return "upcoming"
	case types.BookingState_Finalized:
		return "finalized"
	case types.BookingState_Cancelled:
		return "cancelled"
	case types.BookingState_Refunded:
		return "refunded"
	default:
		return b.UnknownState.Some().Name
	}
}
