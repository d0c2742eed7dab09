"""OpenAI's `logit_bias` as an engine logits processor (the same per-step hook WASM samplers use)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from realm.runtime.engines.base import LogitsProcessor

from .errors import bad_request


def logit_bias_processor(bias: dict[str, float] | None, vocab_size: int) -> LogitsProcessor | None:
    if not bias:
        return None
    try:
        ids = np.array([int(k) for k in bias], dtype=np.int64)
    except ValueError as e:
        raise bad_request(
            "logit_bias keys must be token ids.", code="invalid_value", param="logit_bias"
        ) from e
    if ((ids < 0) | (ids >= vocab_size)).any():
        raise bad_request(
            f"logit_bias token ids must be in [0, {vocab_size}).", code="invalid_value", param="logit_bias"
        )
    values = np.array(list(bias.values()), dtype=np.float32)
    # As OpenAI documents: -100 and 100 ban or force a token outright.
    values = np.where(values <= -100, -np.inf, np.where(values >= 100, np.float32(1e4), values))

    def apply(_rid: str, logits: np.ndarray[Any, np.dtype[np.float32]], _generated: Sequence[int]) -> None:
        logits[ids] += values

    return apply
