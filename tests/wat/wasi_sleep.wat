;; Emits "z", then sleeps through WASI: one poll_oneoff on the monotonic clock, relative timeout
;; 3600 s. Returns 0 when poll_oneoff reported the one clock event (userdata 7), else 1 to 3.
(module
  (import "wasi_snapshot_preview1" "poll_oneoff" (func $poll (param i32 i32 i32 i32) (result i32)))
  (import "realm" "realm_emit" (func $emit (param i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 0) "\07")   ;; subscription at 0: userdata 7, tag 0 (clock)
  (data (i32.const 16) "\01")  ;; clock id 1 (monotonic)
  (data (i32.const 200) "z")
  (func (export "realm_abi_version") (result i32) (i32.const 0x10000))
  (func (export "realm_run") (result i32)
    (drop (call $emit (i32.const 200) (i32.const 1)))
    (i64.store (i32.const 24) (i64.const 3600000000000))  ;; timeout, ns
    (if (call $poll (i32.const 0) (i32.const 64) (i32.const 1) (i32.const 128))
      (then (return (i32.const 1))))
    (if (i32.ne (i32.load (i32.const 128)) (i32.const 1)) (then (return (i32.const 2))))
    (if (i64.ne (i64.load (i32.const 64)) (i64.const 7)) (then (return (i32.const 3))))
    (i32.const 0)))
