;; Forwards a payload from its input to one host function and emits what came back, for fuzzing the
;; ABI through a real guest (tests/runtime/sandbox/test_abi_fuzz.py).
;;
;; Input: a JSON string "<selector><hex>" (the quotes included: an invocation's input is JSON), the
;; payload's bytes in lowercase hex. Selectors:
;;   g generate, s generate_stream, c conversation_create, p conversation_put, G conversation_get,
;;   d conversation_delete, l load_model_by_name, v get_model_version, E emit: the payload whole;
;;   e encode_tokens, D decode_tokens (model, then tokens as u32s): the first byte k splits the rest
;;     into its first k bytes and the others; L log: the first byte is the level, the rest the message;
;;   R generate with a raw pointer and length: the payload is two little-endian i32s;
;;   w generate_with, x sampler_decide (1.2): the payload whole.
;; Output: whatever the call emitted, then "#" and one character: "+" if the call succeeded, else
;; the character '@' + the error code ("#A" is invalid-argument). Always returns 0: the call's result
;; is the output, and anything else (a trap, a 5xx) is the host's failure.
(module
  (import "realm" "realm_input" (func $input (result i64)))
  (import "realm" "realm_result_read" (func $read (param i32 i32) (result i32)))
  (import "realm" "realm_emit" (func $emit (param i32 i32) (result i32)))
  (import "realm" "realm_log" (func $log (param i32 i32 i32) (result i32)))
  (import "realm" "realm_host_generate" (func $generate (param i32 i32) (result i64)))
  (import "realm" "realm_host_generate_stream" (func $generate_stream (param i32 i32) (result i64)))
  (import "realm" "realm_encode_tokens" (func $encode (param i32 i32 i32 i32) (result i64)))
  (import "realm" "realm_decode_tokens" (func $decode (param i32 i32 i32 i32) (result i64)))
  (import "realm" "realm_host_load_model_by_name" (func $load_model (param i32 i32) (result i64)))
  (import "realm" "realm_get_model_version" (func $model_version (param i32 i32) (result i64)))
  (import "realm" "realm_conversation_create" (func $conv_create (param i32 i32) (result i64)))
  (import "realm" "realm_conversation_get" (func $conv_get (param i32 i32) (result i64)))
  (import "realm" "realm_conversation_put" (func $conv_put (param i32 i32) (result i64)))
  (import "realm" "realm_conversation_delete" (func $conv_delete (param i32 i32) (result i32)))
  (import "realm" "realm_generate_with" (func $generate_with (param i32 i32) (result i64)))
  (import "realm" "realm_sampler_decide" (func $decide (param i32 i32) (result i32)))
  ;; 0..1023 scratch, the input at 1024 (256 KiB at most), the decoded payload at $PAYLOAD.
  (memory (export "memory") 8)
  (global $PAYLOAD i32 (i32.const 270000))

  (func (export "realm_abi_version") (result i32) (i32.const 0x10001))

  (func $nibble (param $c i32) (result i32)
    (if (result i32) (i32.le_u (local.get $c) (i32.const 57))
      (then (i32.sub (local.get $c) (i32.const 48)))
      (else (i32.sub (local.get $c) (i32.const 87)))))

  (func $status (param $r i64)
    (i32.store8 (i32.const 0) (i32.const 35))
    (i32.store8 (i32.const 1)
      (if (result i32) (i64.lt_s (local.get $r) (i64.const 0))
        (then (i32.add (i32.const 64) (i32.wrap_i64 (i64.sub (i64.const 0) (local.get $r)))))
        (else (i32.const 43))))
    (drop (call $emit (i32.const 0) (i32.const 2))))

  (func (export "realm_run") (result i32)
    (local $n i32) (local $i i32) (local $len i32) (local $sel i32) (local $k i32) (local $rest i32)
    (local $r i64)
    (drop (call $input))
    (local.set $n (call $read (i32.const 1024) (i32.const 262144)))
    (if (i32.lt_s (local.get $n) (i32.const 3)) (then (return (i32.const 97))))
    (local.set $sel (i32.load8_u (i32.const 1025)))
    (local.set $len (i32.shr_u (i32.sub (local.get $n) (i32.const 3)) (i32.const 1)))
    (block $decoded
      (loop $next
        (br_if $decoded (i32.ge_u (local.get $i) (local.get $len)))
        (i32.store8
          (i32.add (global.get $PAYLOAD) (local.get $i))
          (i32.or
            (i32.shl
              (call $nibble (i32.load8_u (i32.add (i32.const 1026) (i32.shl (local.get $i) (i32.const 1)))))
              (i32.const 4))
            (call $nibble (i32.load8_u (i32.add (i32.const 1027) (i32.shl (local.get $i) (i32.const 1)))))))
        (local.set $i (i32.add (local.get $i) (i32.const 1)))
        (br $next)))
    ;; Two-part calls: k = the first byte, at most what follows it.
    (if (i32.gt_u (local.get $len) (i32.const 0))
      (then
        (local.set $rest (i32.sub (local.get $len) (i32.const 1)))
        (local.set $k (i32.load8_u (global.get $PAYLOAD)))
        (if (i32.gt_u (local.get $k) (local.get $rest)) (then (local.set $k (local.get $rest))))))

    (if (i32.eq (local.get $sel) (i32.const 103)) ;; g
      (then (local.set $r (call $generate (global.get $PAYLOAD) (local.get $len)))))
    (if (i32.eq (local.get $sel) (i32.const 115)) ;; s
      (then (local.set $r (call $generate_stream (global.get $PAYLOAD) (local.get $len)))))
    (if (i32.eq (local.get $sel) (i32.const 99)) ;; c
      (then (local.set $r (call $conv_create (global.get $PAYLOAD) (local.get $len)))))
    (if (i32.eq (local.get $sel) (i32.const 112)) ;; p
      (then (local.set $r (call $conv_put (global.get $PAYLOAD) (local.get $len)))))
    (if (i32.eq (local.get $sel) (i32.const 71)) ;; G
      (then (local.set $r (call $conv_get (global.get $PAYLOAD) (local.get $len)))))
    (if (i32.eq (local.get $sel) (i32.const 100)) ;; d
      (then (local.set $r (i64.extend_i32_s (call $conv_delete (global.get $PAYLOAD) (local.get $len))))))
    (if (i32.eq (local.get $sel) (i32.const 108)) ;; l
      (then (local.set $r (call $load_model (global.get $PAYLOAD) (local.get $len)))))
    (if (i32.eq (local.get $sel) (i32.const 118)) ;; v
      (then (local.set $r (call $model_version (global.get $PAYLOAD) (local.get $len)))))
    (if (i32.eq (local.get $sel) (i32.const 69)) ;; E
      (then (local.set $r (i64.extend_i32_s (call $emit (global.get $PAYLOAD) (local.get $len))))))
    (if (i32.eq (local.get $sel) (i32.const 101)) ;; e
      (then (local.set $r (call $encode
        (i32.add (global.get $PAYLOAD) (i32.const 1)) (local.get $k)
        (i32.add (global.get $PAYLOAD) (i32.add (i32.const 1) (local.get $k)))
        (i32.sub (local.get $rest) (local.get $k))))))
    (if (i32.eq (local.get $sel) (i32.const 68)) ;; D
      (then (local.set $r (call $decode
        (i32.add (global.get $PAYLOAD) (i32.const 1)) (local.get $k)
        (i32.add (global.get $PAYLOAD) (i32.add (i32.const 1) (local.get $k)))
        (i32.shr_u (i32.sub (local.get $rest) (local.get $k)) (i32.const 2))))))
    (if (i32.eq (local.get $sel) (i32.const 76)) ;; L
      (then (local.set $r (i64.extend_i32_s (call $log
        (i32.load8_u (global.get $PAYLOAD))
        (i32.add (global.get $PAYLOAD) (i32.const 1))
        (local.get $rest))))))
    (if (i32.eq (local.get $sel) (i32.const 82)) ;; R
      (then (local.set $r (call $generate
        (i32.load (global.get $PAYLOAD)) (i32.load (i32.add (global.get $PAYLOAD) (i32.const 4)))))))
    (if (i32.eq (local.get $sel) (i32.const 119)) ;; w
      (then (local.set $r (call $generate_with (global.get $PAYLOAD) (local.get $len)))))
    (if (i32.eq (local.get $sel) (i32.const 120)) ;; x
      (then (local.set $r (i64.extend_i32_s (call $decide (global.get $PAYLOAD) (local.get $len))))))
    (call $status (local.get $r))
    (i32.const 0)))
