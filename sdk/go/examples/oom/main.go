// Command oom is a hostile tenant: it allocates (and touches) memory until the sandbox's
// memory limit stops it. The Go runtime then aborts the module.
package main

import "realm.dev/sdk/go/realm"

func init() { realm.Run(run) }

var hoard [][]byte

func run() error {
	for {
		b := make([]byte, 1<<20)
		for i := range b {
			b[i] = 1
		}
		hoard = append(hoard, b)
	}
}

func main() {}
