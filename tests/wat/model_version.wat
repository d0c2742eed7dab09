;; Calls realm_get_model_version on the model reference its input names and emits the result, or
;; "error <code>" (tests/runtime/api/test_versions_api.py).
;;
;; Input: a JSON string without escapes, e.g. "smol@v2" (the quotes included: an invocation's input
;; is JSON).
(module
  (import "realm" "realm_input" (func $input (result i64)))
  (import "realm" "realm_result_read" (func $read (param i32 i32) (result i32)))
  (import "realm" "realm_emit" (func $emit (param i32 i32) (result i32)))
  (import "realm" "realm_get_model_version" (func $model_version (param i32 i32) (result i64)))
  ;; The input at 0 (1 KiB at most), the result at 1024.
  (memory (export "memory") 1)
  (data (i32.const 2048) "error ")

  (func (export "realm_abi_version") (result i32) (i32.const 0x10000))

  (func (export "realm_run") (result i32)
    (local $n i32) (local $r i64)
    (drop (call $input))
    (local.set $n (call $read (i32.const 0) (i32.const 1024)))
    (if (i32.lt_s (local.get $n) (i32.const 2)) (then (return (i32.const 1))))
    ;; Between the quotes.
    (local.set $r (call $model_version (i32.const 1) (i32.sub (local.get $n) (i32.const 2))))
    (if (i64.lt_s (local.get $r) (i64.const 0))
      (then
        ;; "error " and the code as one character past '@' (as forward.wat reports codes).
        (i32.store8 (i32.const 2054)
          (i32.add (i32.const 64) (i32.wrap_i64 (i64.sub (i64.const 0) (local.get $r)))))
        (drop (call $emit (i32.const 2048) (i32.const 7)))
        (return (i32.const 0))))
    (local.set $n (call $read (i32.const 1024) (i32.const 1024)))
    (drop (call $emit (i32.const 1024) (local.get $n)))
    (i32.const 0)))
