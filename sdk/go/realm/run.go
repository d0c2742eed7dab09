package realm

import (
	"fmt"
	"runtime/debug"
)

// Exit codes of realm_run besides 0 (success). Any nonzero value fails the invocation with
// code tenant_error; the reason has already been logged at LevelError.
const (
	ExitError     = 1 // the handler returned an error
	ExitPanic     = 2 // the handler panicked
	ExitNoHandler = 3 // Run was never called
)

var handler func() error

// Run registers the tenant's handler, which the host calls once per invocation through the
// realm_run export. Call it from an init function of package main: a reactor module
// (-buildmode=c-shared) runs init functions in _initialize, but never main.
//
// A handler that returns an error, or panics, fails the invocation; the error or panic
// message is logged at LevelError.
func Run(f func() error) { handler = f }

func runHandler() (code int32) {
	if handler == nil {
		Log(LevelError, "realm: no handler: call realm.Run from an init function of package main")
		return ExitNoHandler
	}
	defer func() {
		if r := recover(); r != nil {
			Log(LevelError, fmt.Sprintf("panic: %v\n\n%s", r, debug.Stack()))
			code = ExitPanic
		}
	}()
	if err := handler(); err != nil {
		Log(LevelError, err.Error())
		return ExitError
	}
	return 0
}
