;; Emits the same 64 KiB chunk forever, whatever realm_emit answers.
(module
  (import "realm" "realm_emit" (func $emit (param i32 i32) (result i32)))
  (memory (export "memory") 1)
  (func (export "realm_abi_version") (result i32) (i32.const 0x10000))
  (func (export "realm_run") (result i32)
    (memory.fill (i32.const 0) (i32.const 120) (i32.const 65536))  ;; "xxx..."
    (loop $again
      (drop (call $emit (i32.const 0) (i32.const 65536)))
      (br $again))
    (i32.const 0)))
