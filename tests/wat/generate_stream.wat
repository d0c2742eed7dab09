;; Passes its input (GenerateParams JSON) to realm_host_generate_stream, whose text the host emits as it
;; is generated, then emits what comes back: the Generation JSON, or on failure the error message.
;; Returns 0 either way: a failed call's message is the output.
(module
  (import "realm" "realm_input" (func $input (result i64)))
  (import "realm" "realm_host_generate_stream" (func $generate (param i32 i32) (result i64)))
  (import "realm" "realm_result_read" (func $read (param i32 i32) (result i32)))
  (import "realm" "realm_emit" (func $emit (param i32 i32) (result i32)))
  (memory (export "memory") 1)
  (func (export "realm_abi_version") (result i32) (i32.const 0x10000))
  (func (export "realm_run") (result i32)
    (local $n i32)
    (drop (call $input))
    (local.set $n (call $read (i32.const 1024) (i32.const 60000)))
    (drop (call $generate (i32.const 1024) (local.get $n)))
    (local.set $n (call $read (i32.const 1024) (i32.const 60000)))
    (drop (call $emit (i32.const 1024) (local.get $n)))
    (i32.const 0)))
