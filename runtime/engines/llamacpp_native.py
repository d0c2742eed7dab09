"""Thin wrappers over llama-cpp-python 0.3.36's low-level (ctypes) API.

Only this module and llamacpp.py import llama_cpp. Function names follow libllama 0.5:
`llama_memory_*` (the `llama_kv_self_*` family is gone), `llama_model_chat_template`.
"""

from __future__ import annotations

import ctypes
import functools
import logging
import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import llama_cpp as L

from ..spec.engine_args import LlamaCppArgs
from .cpu_features import cpu_info
from .ggml_backends import VARIANT_ENV, BackendSelection, load_backends

log = logging.getLogger("realm.engine")

_backend_lock = threading.Lock()


def _quiet_log_impl(level: int, text: bytes, user_data: Any) -> None:
    # llama.cpp logs every tensor at load; keep stderr for the runtime's own logs.
    return None


# llama.cpp keeps this pointer: it must live as long as the process.
_quiet_log = ctypes.CFUNCTYPE(None, ctypes.c_int, ctypes.c_char_p, ctypes.c_void_p)(_quiet_log_impl)


@functools.cache
def _init_once() -> BackendSelection:
    L.llama_log_set(_quiet_log, ctypes.c_void_p(0))
    selection = load_backends(cpu_info(), pinned=os.environ.get(VARIANT_ENV) or None)
    L.llama_backend_init()
    log.info("%s", selection.summary())
    for skipped in selection.skipped:
        log.info("ggml backend left out: %s", skipped)
    return selection


def init_backend() -> BackendSelection:
    """Load ggml's backends once per process (the registry is process-wide) and say which."""
    with _backend_lock:
        return _init_once()


class NativeError(RuntimeError):
    pass


@dataclass
class LoadedModel:
    model: Any  # llama_model_p
    vocab: Any  # llama_vocab_p
    n_vocab: int
    n_ctx_train: int
    chat_template: bytes | None

    def free(self) -> None:
        if self.model is not None:
            L.llama_model_free(self.model)
            self.model = None


# ggml_type values (ggml.h) of the KV cache types LlamaCppArgs accepts.
GGML_TYPES = {
    "f32": 0,
    "f16": 1,
    "q4_0": 2,
    "q4_1": 3,
    "q5_0": 6,
    "q5_1": 7,
    "q8_0": 8,
    "iq4_nl": 20,
    "bf16": 30,
}
FLASH_ATTN = {
    None: L.LLAMA_FLASH_ATTN_TYPE_AUTO,
    True: L.LLAMA_FLASH_ATTN_TYPE_ENABLED,
    False: L.LLAMA_FLASH_ATTN_TYPE_DISABLED,
}


def load_model(path: Path, args: LlamaCppArgs) -> LoadedModel:
    backends = init_backend()
    params = L.llama_model_default_params()
    # llama.cpp's default (-1) offloads every layer to a GPU device and none when there is none.
    params.n_gpu_layers = -1 if args.n_gpu_layers is None else args.n_gpu_layers
    if args.n_gpu_layers not in (None, 0) and not backends.gpu_devices:
        log.warning(
            "nGpuLayers=%d for %s, but no GPU backend is loaded: running on the CPU",
            args.n_gpu_layers,
            path.name,
        )
    params.use_extra_bufts = True if args.extra_buffer_types is None else args.extra_buffer_types
    model = L.llama_model_load_from_file(str(path).encode(), params)
    if not model:
        raise NativeError(f"llama.cpp could not load {path}")
    vocab = L.llama_model_get_vocab(model)
    template = L.llama_model_chat_template(model, None)
    return LoadedModel(
        model=model,
        vocab=vocab,
        n_vocab=L.llama_vocab_n_tokens(vocab),
        n_ctx_train=L.llama_model_n_ctx_train(model),
        chat_template=template or None,
    )


@dataclass(frozen=True)
class ContextSettings:
    """The llama_context parameters Realm sets, resolved from engineArgs and the model's runtime settings."""

    n_ctx: int
    n_batch: int
    n_ubatch: int
    n_seq_max: int
    n_threads: int
    n_threads_batch: int
    flash_attn: bool | None
    type_k: str
    type_v: str


def new_context(model: LoadedModel, settings: ContextSettings) -> Any:
    params = L.llama_context_default_params()
    params.n_ctx = settings.n_ctx
    params.n_batch = settings.n_batch
    params.n_ubatch = settings.n_ubatch
    params.n_seq_max = settings.n_seq_max
    params.n_threads = settings.n_threads
    params.n_threads_batch = settings.n_threads_batch
    params.flash_attn_type = FLASH_ATTN[settings.flash_attn]
    params.type_k = GGML_TYPES[settings.type_k]
    params.type_v = GGML_TYPES[settings.type_v]
    # One KV pool for all sequences: any sequence may use the whole per-sequence context, and
    # admission reserves space (split streams would cap every sequence at n_ctx / n_seq_max).
    params.kv_unified = True
    params.no_perf = True
    ctx = L.llama_init_from_model(model.model, params)
    if not ctx:
        raise NativeError(
            f"llama.cpp could not create a context (KV cache {settings.type_k}/{settings.type_v}, "
            f"flash attention {'auto' if settings.flash_attn is None else settings.flash_attn})"
        )
    return ctx


def tokenize(model: LoadedModel, text: str, *, add_special: bool, parse_special: bool) -> list[int]:
    raw = text.encode("utf-8")
    cap = len(raw) + 16
    buf = (L.llama_token * cap)()
    n = L.llama_tokenize(model.vocab, raw, len(raw), buf, cap, add_special, parse_special)
    if n < 0:
        cap = -n
        buf = (L.llama_token * cap)()
        n = L.llama_tokenize(model.vocab, raw, len(raw), buf, cap, add_special, parse_special)
    if n < 0:
        raise NativeError("tokenization failed")
    return list(buf[:n])


class PieceCache:
    """Token → bytes, memoized: a piece never changes and the lookup is on the per-token path."""

    def __init__(self, model: LoadedModel) -> None:
        self._vocab = model.vocab
        self._buf = ctypes.create_string_buffer(256)
        self._cache: dict[int, bytes] = {}

    def __call__(self, token: int) -> bytes:
        piece = self._cache.get(token)
        if piece is None:
            n = L.llama_token_to_piece(self._vocab, token, self._buf, len(self._buf), 0, False)
            if n < 0:
                big = ctypes.create_string_buffer(-n)
                n = L.llama_token_to_piece(self._vocab, token, big, -n, 0, False)
                piece = big.raw[:n]
            else:
                piece = self._buf.raw[:n]
            self._cache[token] = piece
        return piece


def detokenize(model: LoadedModel, tokens: Sequence[int]) -> str:
    if not tokens:
        return ""
    arr = (L.llama_token * len(tokens))(*tokens)
    cap = max(64, len(tokens) * 8)
    for _ in range(2):
        buf = ctypes.create_string_buffer(cap)
        n = L.llama_detokenize(model.vocab, arr, len(tokens), buf, cap, True, False)
        if n >= 0:
            return buf.raw[:n].decode("utf-8", errors="replace")
        cap = -n
    raise NativeError("detokenization failed")


def apply_chat_template(
    template: bytes | None, messages: Sequence[tuple[str, str]], add_assistant: bool
) -> str:
    # Keep the encoded strings alive until the call returns: the structs hold raw pointers.
    encoded = [(r.encode(), c.encode()) for r, c in messages]
    chat = (L.llama_chat_message * len(encoded))()
    for i, (role, content) in enumerate(encoded):
        chat[i].role = role
        chat[i].content = content
    size = sum(len(r) + len(c) for r, c in encoded) * 2 + 256
    for _ in range(2):
        buf = ctypes.create_string_buffer(size)
        n = L.llama_chat_apply_template(template, chat, len(encoded), add_assistant, buf, size)
        if n < 0:
            raise NativeError("the model's chat template is not supported by llama.cpp")
        if n <= size:
            return buf.raw[:n].decode("utf-8", errors="replace")
        size = n + 1
    raise NativeError("chat template output did not fit")


def meta(model: LoadedModel, key: str) -> str | None:
    buf = ctypes.create_string_buffer(512)
    n = L.llama_model_meta_val_str(model.model, key.encode(), buf, len(buf))
    return buf.value.decode("utf-8", errors="replace") if n >= 0 else None


def state_seq_get(ctx: Any, seq_id: int) -> bytes:
    size = L.llama_state_seq_get_size(ctx, seq_id)
    buf = (ctypes.c_uint8 * size)()
    written = L.llama_state_seq_get_data(ctx, buf, size, seq_id)
    return bytes(memoryview(buf)[:written])


def state_seq_set(ctx: Any, seq_id: int, data: bytes) -> bool:
    # llama.cpp only reads the buffer: point at the bytes object's own storage instead of copying it
    # (a copy of a 46 MB snapshot was 20 of the 23 ms a restore took).
    ptr = ctypes.cast(ctypes.c_char_p(data), ctypes.POINTER(ctypes.c_uint8))
    return bool(L.llama_state_seq_set_data(ctx, ptr, len(data), seq_id))
