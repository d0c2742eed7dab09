// Command spin is a hostile tenant: it loops forever without calling the host. The sandbox
// must interrupt it (epoch deadline or fuel).
package main

import "realm.dev/sdk/go/realm"

func init() { realm.Run(run) }

var sink uint64

func run() error {
	for i := uint64(0); ; i++ {
		sink += i
	}
}

func main() {}
