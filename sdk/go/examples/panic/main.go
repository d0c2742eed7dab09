// Command panic is a hostile tenant: it emits a chunk, then panics mid-stream. The SDK
// recovers, logs the panic and returns realm.ExitPanic from realm_run, so the invocation
// fails with tenant_error after the caller has already seen the first chunk.
//
// With input {"fatal": true} it instead dies in a way Go cannot recover from (every
// goroutine blocked): the Go runtime prints "fatal error: ..." to stderr and aborts with the
// wasm `unreachable` instruction, which the host sees as a trap.
package main

import "realm.dev/sdk/go/realm"

func init() { realm.Run(run) }

func run() error {
	var req struct {
		Fatal bool `json:"fatal"`
	}
	_ = realm.DecodeInput(&req) // any input will do
	if err := realm.Emit("first chunk\n"); err != nil {
		return err
	}
	if req.Fatal {
		select {} // fatal error: all goroutines are asleep - deadlock!
	}
	var table map[string]int
	table["boom"] = 1 // panic: assignment to entry in nil map
	return nil
}

func main() {}
