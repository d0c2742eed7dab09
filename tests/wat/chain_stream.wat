;; A two-model chain whose second step streams: the input is a JSON array of two GenerateParams objects,
;; `[{...},{...}]` (split at the first `},{` as in chain.wat). The first is passed to realm_host_generate
;; and its result (the Generation JSON) emitted, then a newline; the second goes to
;; realm_host_generate_stream, whose text the host emits as it comes, and its Generation JSON is emitted
;; at the end. A failed call's message is logged at error level (as the Go SDK logs a handler's error)
;; and its error code returned, so the invocation fails with the call's reason.
(module
  (import "realm" "realm_input" (func $input (result i64)))
  (import "realm" "realm_host_generate" (func $generate (param i32 i32) (result i64)))
  (import "realm" "realm_host_generate_stream" (func $generate_stream (param i32 i32) (result i64)))
  (import "realm" "realm_result_read" (func $read (param i32 i32) (result i32)))
  (import "realm" "realm_emit" (func $emit (param i32 i32) (result i32)))
  (import "realm" "realm_log" (func $log (param i32 i32 i32) (result i32)))
  ;; The input at 1024 (60000 bytes at most), each result at 70000.
  (memory (export "memory") 4)
  (data (i32.const 0) "\n")
  (func (export "realm_abi_version") (result i32) (i32.const 0x10000))

  ;; What a call returned ($r): its result is emitted (0 back), or its message logged (its code back).
  (func $finish (param $r i64) (result i32)
    (local $n i32)
    (local.set $n (call $read (i32.const 70000) (i32.const 190000)))
    (if (result i32) (i64.lt_s (local.get $r) (i64.const 0))
      (then
        (drop (call $log (i32.const 3) (i32.const 70000) (local.get $n)))
        (i32.wrap_i64 (i64.sub (i64.const 0) (local.get $r))))
      (else
        (drop (call $emit (i32.const 70000) (local.get $n)))
        (i32.const 0))))

  (func (export "realm_run") (result i32)
    (local $n i32) (local $i i32) (local $code i32)
    (drop (call $input))
    (local.set $n (call $read (i32.const 1024) (i32.const 60000)))
    ;; Find "},{" from the second byte on.
    (local.set $i (i32.const 1025))
    (block $found
      (loop $scan
        (br_if $found (i32.ge_u (i32.add (local.get $i) (i32.const 2)) (i32.add (i32.const 1024) (local.get $n))))
        (br_if $found
          (i32.and
            (i32.and
              (i32.eq (i32.load8_u (local.get $i)) (i32.const 125))
              (i32.eq (i32.load8_u (i32.add (local.get $i) (i32.const 1))) (i32.const 44)))
            (i32.eq (i32.load8_u (i32.add (local.get $i) (i32.const 2))) (i32.const 123))))
        (local.set $i (i32.add (local.get $i) (i32.const 1)))
        (br $scan)))
    ;; First params: [1025, $i] inclusive of the brace; second: [$i+2, end-1) without the final ].
    (local.set $code
      (call $finish
        (call $generate (i32.const 1025) (i32.sub (i32.add (local.get $i) (i32.const 1)) (i32.const 1025)))))
    (if (local.get $code) (then (return (local.get $code))))
    (drop (call $emit (i32.const 0) (i32.const 1)))
    (call $finish
      (call $generate_stream
        (i32.add (local.get $i) (i32.const 2))
        (i32.sub (i32.add (i32.const 1023) (local.get $n)) (i32.add (local.get $i) (i32.const 2)))))))
