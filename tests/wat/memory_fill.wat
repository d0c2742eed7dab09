;; Grows its memory 1 MiB at a time until memory.grow fails (-1), then writes every byte of it, so
;; the whole cap is resident, not only reserved. Returns 0.
(module
  (memory (export "memory") 1)
  (func (export "realm_abi_version") (result i32) (i32.const 0x10000))
  (func (export "realm_run") (result i32)
    (block $full
      (loop $grow
        (br_if $full (i32.eq (memory.grow (i32.const 16)) (i32.const -1)))
        (br $grow)))
    (memory.fill (i32.const 0) (i32.const 0xa5) (i32.mul (memory.size) (i32.const 65536)))
    (i32.const 0)))
