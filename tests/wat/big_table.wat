;; Declares a table larger than any tenant may have: instantiation fails.
(module
  (memory (export "memory") 1)
  (table 1000000 funcref)
  (func (export "realm_abi_version") (result i32) (i32.const 0x10000))
  (func (export "realm_run") (result i32) (i32.const 0)))
