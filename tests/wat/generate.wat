;; Passes its input (GenerateParams JSON) to realm_host_generate and emits what comes back: the
;; Generation JSON, or on failure the error message, returning the error code.
(module
  (import "realm" "realm_input" (func $input (result i64)))
  (import "realm" "realm_host_generate" (func $generate (param i32 i32) (result i64)))
  (import "realm" "realm_result_read" (func $read (param i32 i32) (result i32)))
  (import "realm" "realm_emit" (func $emit (param i32 i32) (result i32)))
  (memory (export "memory") 1)
  (func (export "realm_abi_version") (result i32) (i32.const 0x10000))
  (func (export "realm_run") (result i32)
    (local $n i32) (local $r i64)
    (drop (call $input))
    (local.set $n (call $read (i32.const 1024) (i32.const 60000)))
    (local.set $r (call $generate (i32.const 1024) (local.get $n)))
    (local.set $n (call $read (i32.const 1024) (i32.const 60000)))
    (drop (call $emit (i32.const 1024) (local.get $n)))
    (if (i64.lt_s (local.get $r) (i64.const 0))
      (then (return (i32.wrap_i64 (i64.sub (i64.const 0) (local.get $r))))))
    (i32.const 0)))
