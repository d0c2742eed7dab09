// Command echo emits the invocation's input back unchanged.
package main

import "realm.dev/sdk/go/realm"

func init() { realm.Run(run) }

func run() error {
	in, err := realm.Input()
	if err != nil {
		return err
	}
	return realm.Emit(string(in))
}

func main() {}
