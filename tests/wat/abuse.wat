;; Calls every host function wrongly and records each returned code as one character,
;; '0' + code ('2' out-of-bounds, '7' too-large, '8' invalid-utf8, '1' invalid-argument,
;; ':' no-result, ';' buffer-too-small), in sections separated by '|'. Then emits the record and,
;; as a second chunk, the input (read after a too-small buffer left it pending).
(module
  (import "realm" "realm_host_generate" (func $gen (param i32 i32) (result i64)))
  (import "realm" "realm_host_generate_stream" (func $gens (param i32 i32) (result i64)))
  (import "realm" "realm_encode_tokens" (func $enc (param i32 i32 i32 i32) (result i64)))
  (import "realm" "realm_decode_tokens" (func $dec (param i32 i32 i32 i32) (result i64)))
  (import "realm" "realm_host_load_model_by_name" (func $load (param i32 i32) (result i64)))
  (import "realm" "realm_get_model_version" (func $ver (param i32 i32) (result i64)))
  (import "realm" "realm_input" (func $input (result i64)))
  (import "realm" "realm_emit" (func $emit (param i32 i32) (result i32)))
  (import "realm" "realm_log" (func $log (param i32 i32 i32) (result i32)))
  (import "realm" "realm_result_read" (func $read (param i32 i32) (result i32)))
  (memory (export "memory") 1)  ;; 65536 bytes: [65000, 66000) is past the end
  (data (i32.const 0) "m")
  (data (i32.const 16) "\ff\fe")
  (data (i32.const 32) "{")
  (global $pos (mut i32) (i32.const 4096))
  (func $rec32 (param $rc i32)
    (i32.store8 (global.get $pos) (i32.sub (i32.const 48) (local.get $rc)))
    (global.set $pos (i32.add (global.get $pos) (i32.const 1))))
  (func $rec64 (param $rc i64) (call $rec32 (i32.wrap_i64 (local.get $rc))))
  (func $sep
    (i32.store8 (global.get $pos) (i32.const 124))
    (global.set $pos (i32.add (global.get $pos) (i32.const 1))))
  (func (export "realm_abi_version") (result i32) (i32.const 0x10000))
  (func (export "realm_run") (result i32)
    (local $n i32)
    ;; 1: out-of-bounds pointers (0x7ffffff0; -1 reaches past 4 GiB) and lengths, 22 calls
    (call $rec64 (call $gen (i32.const 0x7ffffff0) (i32.const 4)))
    (call $rec64 (call $gen (i32.const 65000) (i32.const 1000)))
    (call $rec64 (call $gens (i32.const -1) (i32.const 2)))
    (call $rec64 (call $gens (i32.const 65000) (i32.const 1000)))
    (call $rec64 (call $enc (i32.const 0x7ffffff0) (i32.const 1) (i32.const 0) (i32.const 1)))
    (call $rec64 (call $enc (i32.const 65000) (i32.const 1000) (i32.const 0) (i32.const 1)))
    (call $rec64 (call $enc (i32.const 0) (i32.const 1) (i32.const 0x7ffffff0) (i32.const 1)))
    (call $rec64 (call $enc (i32.const 0) (i32.const 1) (i32.const 65000) (i32.const 1000)))
    (call $rec64 (call $dec (i32.const 0x7ffffff0) (i32.const 1) (i32.const 0) (i32.const 1)))
    (call $rec64 (call $dec (i32.const 65000) (i32.const 1000) (i32.const 0) (i32.const 1)))
    (call $rec64 (call $dec (i32.const 0) (i32.const 1) (i32.const 0x7ffffff0) (i32.const 1)))
    (call $rec64 (call $dec (i32.const 0) (i32.const 1) (i32.const 65000) (i32.const 200)))
    (call $rec64 (call $load (i32.const 0x7ffffff0) (i32.const 1)))
    (call $rec64 (call $load (i32.const 65000) (i32.const 1000)))
    (call $rec64 (call $ver (i32.const 0x7ffffff0) (i32.const 1)))
    (call $rec64 (call $ver (i32.const 65000) (i32.const 1000)))
    (call $rec32 (call $emit (i32.const 0x7ffffff0) (i32.const 1)))
    (call $rec32 (call $emit (i32.const 65000) (i32.const 1000)))
    (call $rec32 (call $log (i32.const 1) (i32.const 0x7ffffff0) (i32.const 1)))
    (call $rec32 (call $log (i32.const 1) (i32.const 65000) (i32.const 1000)))
    (call $rec32 (call $read (i32.const 0x7ffffff0) (i32.const 1)))
    (call $rec32 (call $read (i32.const 65000) (i32.const 1000)))
    (call $sep)
    ;; 2: lengths over MAX_PAYLOAD_BYTES (1 MiB) are too large whatever the pointer
    (call $rec64 (call $gen (i32.const 0) (i32.const 0x100001)))
    (call $rec32 (call $emit (i32.const 0) (i32.const -1)))
    (call $rec64 (call $dec (i32.const 0) (i32.const 1) (i32.const 0) (i32.const 0x40001)))
    (call $sep)
    ;; 3: misuse
    (call $rec32 (call $emit (i32.const 16) (i32.const 2)))              ;; invalid UTF-8
    (call $rec64 (call $gen (i32.const 32) (i32.const 1)))               ;; not JSON
    (call $rec32 (call $log (i32.const 9) (i32.const 0) (i32.const 1)))  ;; no such level
    (drop (call $read (i32.const 8192) (i32.const 1000)))               ;; the not-JSON error message
    (call $rec32 (call $read (i32.const 8192) (i32.const 1000)))         ;; nothing pending
    (drop (call $input))
    (call $rec32 (call $read (i32.const 8192) (i32.const 1)))            ;; input longer than 1 byte
    (local.set $n (call $read (i32.const 8192) (i32.const 1000)))        ;; still pending: now it fits
    (drop (call $emit (i32.const 4096) (i32.sub (global.get $pos) (i32.const 4096))))
    (drop (call $emit (i32.const 8192) (local.get $n)))
    (i32.const 0)))
