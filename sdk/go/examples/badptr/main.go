// Command badptr is a hostile tenant: it hands host functions pointers outside its linear
// memory and emits the codes it got back, as JSON: {"emit": -2, "generate": -2, ...}.
// A correct host answers -2 (out_of_bounds) to every one and never traps or reads or
// writes outside the module. Give it a non-empty input: "result_read" stages the input
// as the pending result, then asks the host to copy it to a bad address.
package main

import (
	"encoding/json"

	"realm.dev/sdk/go/realm"
)

// Raw imports with integer pointers, so that the addresses can be anything.

//go:wasmimport realm realm_emit
func rawEmit(ptr, n uint32) int32

//go:wasmimport realm realm_log
func rawLog(level, ptr, n uint32) int32

//go:wasmimport realm realm_host_generate
func rawGenerate(ptr, n uint32) int64

//go:wasmimport realm realm_encode_tokens
func rawEncode(modelPtr, modelLen, textPtr, textLen uint32) int64

//go:wasmimport realm realm_decode_tokens
func rawDecode(modelPtr, modelLen, tokensPtr, nTokens uint32) int64

//go:wasmimport realm realm_input
func rawInput() int64

//go:wasmimport realm realm_result_read
func rawResultRead(ptr, n uint32) int32

func init() { realm.Run(run) }

func run() error {
	const far = 0xFFFF_FFF0 // beyond any memory a wasm32 module can have
	codes := map[string]int64{
		"emit":      int64(rawEmit(far, 64)),
		"emit_wrap": int64(rawEmit(0xFFFF_FFFF, 2)), // ptr+len overflows u32
		"log":       int64(rawLog(1, far, 8)),
		"generate":  rawGenerate(far, 64),
		"encode":    rawEncode(far, 4, far, 4),
		"decode":    rawDecode(far, 4, far, 4),
	}
	n := rawInput()
	if n > 0 {
		codes["result_read"] = int64(rawResultRead(far, uint32(n)))
	}
	out, err := json.Marshal(codes)
	if err != nil {
		return err
	}
	return realm.Emit(string(out))
}

func main() {}
