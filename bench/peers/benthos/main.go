// The Benthos (MIT, the open-source core of Redpanda Connect) binary the
// peer benchmark runs: the stock CLI with only the components its jobs
// use (kafka_franz input, protobuf processor, file and http_client
// outputs). Build: see scripts/bench-peers.sh.
package main

import (
	"context"

	"github.com/benthosdev/benthos/v4/public/service"

	_ "github.com/benthosdev/benthos/v4/public/components/io"
	_ "github.com/benthosdev/benthos/v4/public/components/kafka"
	_ "github.com/benthosdev/benthos/v4/public/components/pure"
	_ "github.com/benthosdev/benthos/v4/public/components/pure/extended"
)

func main() {
	service.RunCLI(context.Background())
}
