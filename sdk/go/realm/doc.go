// Package realm is the Go SDK for Realm tenant modules: WebAssembly modules that run inside
// the Realm runtime and call its host functions (text generation, tokenization, model
// information, the invocation's input and output).
//
// A tenant is a wasip1 reactor that registers its handler from an init function:
//
//	package main
//
//	import "realm.dev/sdk/go/realm"
//
//	func init() { realm.Run(run) }
//
//	func run() error {
//		in, err := realm.Input()
//		if err != nil {
//			return err
//		}
//		return realm.Emit(string(in))
//	}
//
//	func main() {} // required by the compiler; never called in a reactor
//
// Build it with
//
//	GOOS=wasip1 GOARCH=wasm go build -buildmode=c-shared -o tenant.wasm .
//
// The SDK exports realm_abi_version and realm_run for the module; the host calls
// _initialize (which runs the init functions) and then realm_run.
//
// Host calls speak core-module ABI v1 (docs/abi.md): arguments are (pointer, length) pairs
// into the module's linear memory, results are staged by the host and copied out with
// realm_result_read. Failed calls return a *HostError; compare codes with errors.Is, for
// example errors.Is(err, realm.ErrModelNotAllowed).
//
// Outside GOARCH=wasm the package compiles, but every host call fails with ErrUnsupported.
package realm
