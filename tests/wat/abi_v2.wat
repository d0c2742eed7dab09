;; Declares realm ABI 2.0, which this host does not speak.
(module
  (memory (export "memory") 1)
  (func (export "realm_abi_version") (result i32) (i32.const 0x20000))
  (func (export "realm_run") (result i32) (i32.const 0)))
