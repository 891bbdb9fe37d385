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

func Init(config []witTypes.Tuple2[string, string]) witTypes.Result[witTypes.Unit, string] {
	defer witRuntime.Reset()
	return witTypes.Ok[witTypes.Unit, string](witTypes.Unit{})
}

func Handle(batch []types.Event) handler.BatchOutcome {
	defer witRuntime.Reset()
	for _, event := range batch {
		b := event.Booking
		plugboard_plugin_log.Log(plugboard_plugin_log.Level_Info,
			fmt.Sprintf("%s v%d state %d", b.BookingId, b.Version, b.State))
	}
	return handler.BatchOutcome{Handled: uint32(len(batch)), Failure: witTypes.None[handler.Failure]()}
}
