;; Copies its input to address 1024, waits in a host call (generate), then emits what address
;; 1024 holds: another instance writing the same address must not change it.
(module
  (import "realm" "realm_input" (func $input (result i64)))
  (import "realm" "realm_host_generate" (func $generate (param i32 i32) (result i64)))
  (import "realm" "realm_result_read" (func $read (param i32 i32) (result i32)))
  (import "realm" "realm_emit" (func $emit (param i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 0) "{\"model\":\"m\",\"prompt\":\"x\"}")
  (func (export "realm_abi_version") (result i32) (i32.const 0x10000))
  (func (export "realm_run") (result i32)
    (local $n i32)
    (drop (call $input))
    (local.set $n (call $read (i32.const 1024) (i32.const 1024)))
    (drop (call $generate (i32.const 0) (i32.const 26)))
    (call $emit (i32.const 1024) (local.get $n))))
