// Command sleep is a hostile tenant: it emits "asleep" and sleeps for an hour. Go's time.Sleep
// parks the goroutine and the runtime waits in WASI's poll_oneoff, that is in host code: the
// sandbox must end it at the invocation's deadline all the same.
package main

import (
	"time"

	"realm.dev/sdk/go/realm"
)

func init() { realm.Run(run) }

func run() error {
	if err := realm.Emit("asleep"); err != nil {
		return err
	}
	time.Sleep(time.Hour)
	return realm.Emit("awake")
}

func main() {}
