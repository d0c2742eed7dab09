"""Constrained output for the llama.cpp engine, through llguidance.

One `Constraints` per loaded model compiles a `Constraint` (JSON schema, JSON object, regex, Lark,
GBNF) into an llguidance grammar, checks it against the model's tokenizer and keeps a ready matcher
per constraint; every sequence gets a copy of it. The `LLTokenizer` is built from the model's vocab
once, on first use (it walks the whole vocabulary).

`StepMasks` is the per-step work: it fills the token bitmasks of every constrained row of a step in
one `fill_next_token_bitmask_par` call on a worker thread, started before `llama_decode` and joined
after it; both release the GIL, so the masks cost the step almost nothing on a machine with a spare
core. The rows are then masked in place, before the argmax or sampler chain reads them.
"""

from __future__ import annotations

import json
import threading
from collections import OrderedDict
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

import llguidance
import llguidance.llamacpp
import llguidance.numpy
import numpy as np
import numpy.typing as npt
from llguidance.gbnf_to_lark import gbnf_to_lark

from .base import Constraint, ConstraintError

if TYPE_CHECKING:  # a stub-only name
    from llguidance._lib import JsonCompileOptions

# Compiled constraints kept per model; a request naming another one compiles it again.
CACHE_SIZE = 128


def json_layout() -> JsonCompileOptions:
    """JSON as `json.dumps` writes it.

    llguidance's default allows any run of whitespace between tokens, and a small model can spend
    its whole budget on newlines; a schema's own `x-guidance` options still win over these.
    """
    return {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}


def grammar_of(constraint: Constraint) -> str:
    """The llguidance grammar text of `constraint`, or ConstraintError for text that is not one."""
    kind, value = constraint.kind, constraint.value
    if kind == "json_object":
        return llguidance.LLMatcher.grammar_from_json_schema({"type": "object"}, json_layout())
    if not value.strip():
        raise ConstraintError(f"the {kind} constraint is empty")
    if kind == "json_schema":
        try:
            schema = json.loads(value)
        except json.JSONDecodeError as e:
            raise ConstraintError(f"the JSON schema is not valid JSON: {e}") from e
        if not isinstance(schema, dict | bool):
            raise ConstraintError("the JSON schema must be a JSON object")
        try:
            return llguidance.LLMatcher.grammar_from_json_schema(value, json_layout())
        except ValueError as e:
            raise ConstraintError(f"invalid JSON schema: {e}") from e
    if kind == "regex":
        return llguidance.LLMatcher.grammar_from_regex(value)
    if kind == "gbnf":
        try:
            value = gbnf_to_lark(value)
        except Exception as e:  # GbnfToLarkError and the converter's own assertion failures
            raise ConstraintError(f"invalid GBNF grammar: {e}") from e
    return llguidance.LLMatcher.grammar_from_lark(value)


class Constraints:
    """Compiles and caches constraints for one model. Thread-safe."""

    def __init__(self, vocab: Any) -> None:
        self._vocab = vocab  # llama_vocab_p, alive as long as the model
        self._lock = threading.Lock()
        self._tokenizer: llguidance.LLTokenizer | None = None
        self._cache: OrderedDict[Constraint, llguidance.LLMatcher] = OrderedDict()

    @property
    def tokenizer(self) -> llguidance.LLTokenizer:
        with self._lock:
            if self._tokenizer is None:
                self._tokenizer = llguidance.llamacpp.lltokenizer_from_vocab(self._vocab)
            return self._tokenizer

    @property
    def eos_token(self) -> int:
        return int(self.tokenizer.eos_token)

    def matcher(self, constraint: Constraint) -> llguidance.LLMatcher:
        """A fresh matcher at the start of `constraint`; ConstraintError if it does not compile."""
        with self._lock:
            ready = self._cache.get(constraint)
            if ready is not None:
                self._cache.move_to_end(constraint)
                return ready.deep_copy()
        grammar = grammar_of(constraint)
        # Compiling drops the GIL; a grammar error leaves the matcher in its error state.
        ready = llguidance.LLMatcher(self.tokenizer, grammar, log_level=0)
        if ready.is_error():
            raise ConstraintError(f"invalid {constraint.kind} constraint: {ready.get_error().strip()}")
        with self._lock:
            self._cache[constraint] = ready
            while len(self._cache) > CACHE_SIZE:
                self._cache.popitem(last=False)
        return ready.deep_copy()


def allowed_row(mask: npt.NDArray[np.int32], n_vocab: int) -> npt.NDArray[np.bool_]:
    """One bitmask row as booleans over the vocabulary."""
    return np.unpackbits(mask.view(np.uint8), bitorder="little")[:n_vocab].astype(bool)


class StepMasks:
    """The constraint masks of one engine's steps, filled on a worker thread during decode."""

    def __init__(self, n_vocab: int, rows: int) -> None:
        self.n_vocab = n_vocab
        self._executor = llguidance.LLExecutor()
        self._bitmask = llguidance.numpy.allocate_token_bitmask(rows, n_vocab)
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="masks")
        self._pending: Future[None] | None = None

    def start(self, matchers: Sequence[tuple[llguidance.LLMatcher, int]]) -> None:
        """Begin filling row `index` for each (matcher, index); `wait` before reading them."""
        if matchers:
            self._pending = self._worker.submit(
                llguidance.numpy.fill_next_token_bitmask_par, self._executor, list(matchers), self._bitmask
            )

    def wait(self) -> None:
        if self._pending is not None:
            pending, self._pending = self._pending, None
            pending.result()

    def apply(self, index: int, logits: npt.NDArray[np.float32]) -> None:
        """Set the logits of every token row `index` forbids to -inf, in place."""
        logits[~allowed_row(self._bitmask[index], self.n_vocab)] = -np.inf

    def close(self) -> None:
        self.wait()
        self._worker.shutdown(wait=True)
