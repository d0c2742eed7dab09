;; Grows memory 1 MiB at a time until memory.grow fails (-1). Then returns 0 when the input is
;; empty (a guest that copes) or traps on unreachable (a guest that does not).
(module
  (import "realm" "realm_input" (func $input (result i64)))
  (memory (export "memory") 1)
  (func (export "realm_abi_version") (result i32) (i32.const 0x10000))
  (func (export "realm_run") (result i32)
    (block $full
      (loop $grow
        (br_if $full (i32.eq (memory.grow (i32.const 16)) (i32.const -1)))
        (br $grow)))
    (if (i64.gt_s (call $input) (i64.const 0)) (then unreachable))
    (i32.const 0)))
