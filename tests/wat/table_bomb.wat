;; Grows its table until table.grow fails (-1), then traps.
(module
  (memory (export "memory") 1)
  (table $t 1 funcref)
  (func (export "realm_abi_version") (result i32) (i32.const 0x10000))
  (func (export "realm_run") (result i32)
    (block $full
      (loop $grow
        (br_if $full (i32.eq (table.grow $t (ref.null func) (i32.const 1000)) (i32.const -1)))
        (br $grow)))
    unreachable))
