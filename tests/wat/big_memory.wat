;; Declares 128 MiB of initial memory (2048 pages): more than a 64 MiB cap allows.
(module
  (memory (export "memory") 2048)
  (func (export "realm_abi_version") (result i32) (i32.const 0x10000))
  (func (export "realm_run") (result i32) (i32.const 0)))
