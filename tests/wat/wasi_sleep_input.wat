;; Sleeps through WASI (poll_oneoff on a relative monotonic-clock subscription, as Go's time.Sleep
;; does) for as many milliseconds as its input says (a JSON number, e.g. 2000), then returns 0.
(module
  (import "wasi_snapshot_preview1" "poll_oneoff" (func $poll (param i32 i32 i32 i32) (result i32)))
  (import "realm" "realm_input" (func $input (result i64)))
  (import "realm" "realm_result_read" (func $read (param i32 i32) (result i32)))
  ;; 0..47 the subscription, 64..95 the event, 128 the event count, the input at 1024.
  (memory (export "memory") 1)
  (func (export "realm_abi_version") (result i32) (i32.const 0x10000))
  (func (export "realm_run") (result i32)
    (local $n i32) (local $i i32) (local $c i32) (local $ms i64)
    (drop (call $input))
    (local.set $n (call $read (i32.const 1024) (i32.const 1024)))
    (block $end
      (loop $digit
        (br_if $end (i32.ge_s (local.get $i) (local.get $n)))
        (local.set $c (i32.sub (i32.load8_u (i32.add (i32.const 1024) (local.get $i))) (i32.const 48)))
        (br_if $end (i32.gt_u (local.get $c) (i32.const 9)))
        (local.set $ms (i64.add (i64.mul (local.get $ms) (i64.const 10)) (i64.extend_i32_u (local.get $c))))
        (local.set $i (i32.add (local.get $i) (i32.const 1)))
        (br $digit)))
    (i64.store (i32.const 0) (i64.const 7))                     ;; userdata
    (i32.store8 (i32.const 8) (i32.const 0))                    ;; tag: clock
    (i32.store (i32.const 16) (i32.const 1))                    ;; clock id: monotonic
    (i64.store (i32.const 24) (i64.mul (local.get $ms) (i64.const 1000000)))  ;; timeout, ns
    (i64.store (i32.const 32) (i64.const 0))                    ;; precision
    (i32.store16 (i32.const 40) (i32.const 0))                  ;; flags: relative
    (drop (call $poll (i32.const 0) (i32.const 64) (i32.const 1) (i32.const 128)))
    (i32.const 0)))
