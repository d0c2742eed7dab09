;; Sleeps 3600 s through WASI's poll_oneoff in its start function, that is while it is loaded.
(module
  (import "wasi_snapshot_preview1" "poll_oneoff" (func $poll (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 16) "\01")  ;; subscription at 0: a clock (tag 0), id 1 (monotonic)
  (func $nap
    (i64.store (i32.const 24) (i64.const 3600000000000))
    (drop (call $poll (i32.const 0) (i32.const 64) (i32.const 1) (i32.const 128))))
  (start $nap)
  (func (export "realm_abi_version") (result i32) (i32.const 0x10000))
  (func (export "realm_run") (result i32) (i32.const 0)))
