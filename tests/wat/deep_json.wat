;; Emits JSON nested 100,000 arrays deep ("[[[...]]]"): valid JSON that Python's parser cannot take.
(module
  (import "realm" "realm_emit" (func $emit (param i32 i32) (result i32)))
  (memory (export "memory") 4)
  (func (export "realm_abi_version") (result i32) (i32.const 0x10000))
  (func (export "realm_run") (result i32)
    (memory.fill (i32.const 0) (i32.const 91) (i32.const 100000))        ;; '['
    (memory.fill (i32.const 100000) (i32.const 93) (i32.const 100000))   ;; ']'
    (drop (call $emit (i32.const 0) (i32.const 200000)))
    (i32.const 0)))
