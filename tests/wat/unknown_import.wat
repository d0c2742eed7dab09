;; Imports a realm function that does not exist, another module, and realm_emit with a wrong type.
(module
  (import "realm" "realm_future_thing" (func (param i32) (result i32)))
  (import "env" "abort" (func))
  (import "realm" "realm_emit" (func (param i32) (result i32)))
  (memory (export "memory") 1)
  (func (export "realm_abi_version") (result i32) (i32.const 0x10000))
  (func (export "realm_run") (result i32) (i32.const 0)))
