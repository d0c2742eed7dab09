;; Fails by itself: emits a reason and returns a nonzero status.
(module
  (import "realm" "realm_emit" (func $emit (param i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 0) "bad input")
  (func (export "realm_abi_version") (result i32) (i32.const 0x10000))
  (func (export "realm_run") (result i32)
    (drop (call $emit (i32.const 0) (i32.const 9)))
    (i32.const 3)))
