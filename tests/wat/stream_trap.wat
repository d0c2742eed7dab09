;; Streams a generation (its text is emitted as it comes), then traps.
(module
  (import "realm" "realm_input" (func $input (result i64)))
  (import "realm" "realm_host_generate_stream" (func $stream (param i32 i32) (result i64)))
  (import "realm" "realm_result_read" (func $read (param i32 i32) (result i32)))
  (memory (export "memory") 1)
  (func (export "realm_abi_version") (result i32) (i32.const 0x10000))
  (func (export "realm_run") (result i32)
    (local $n i32)
    (drop (call $input))
    (local.set $n (call $read (i32.const 1024) (i32.const 60000)))
    (drop (call $stream (i32.const 1024) (local.get $n)))
    unreachable))
