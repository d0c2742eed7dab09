"""The engine's side of the StepController seam: candidates, decisions, and a numpy sampler.

A controlled sequence's logits row is copied when its view is built (the next `llama_decode`
overwrites llama.cpp's buffer while the controller thinks), and "sample", "allow" and "bias"
decisions sample from that copy here: an argmax for greedy requests, otherwise top-k, top-p and
min-p over the softmax, then temperature, drawn from the sequence's own seeded numpy Generator.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from .base import Candidate, SamplingParams, StepController, StepDecision, StepFailure

# A bias at or below this bans the token outright (StepDecision.bias).
BAN = -1e30
MAX_TOP_K = 64

Row = npt.NDArray[np.float32]


class DecisionError(Exception):
    """A decision the engine cannot apply; it ends that sequence with "sampler_invalid"."""


@dataclass(eq=False)
class Submission:
    """One `submit` in flight: its sequences wait, out of decode, until it settles or expires."""

    controller: StepController
    seqs: list[Any]  # the engine's sequences, in the order of the views
    deadline: float  # time.monotonic() after which the engine stops waiting
    result: Sequence[StepDecision] | StepFailure | None = None
    expired: bool = False

    @staticmethod
    def deadline_for(controller: StepController) -> float:
        return time.monotonic() + 2 * controller.budget_s + 0.05


def log_softmax(row: Row) -> Row:
    m = float(row.max())
    shifted = row - m
    return shifted - np.float32(np.log(np.exp(shifted).sum()))


def candidates(lp: Row, k: int, piece: Callable[[int], bytes]) -> tuple[Candidate, ...]:
    """The `k` most likely tokens of a log-softmax row, best first, leaving out banned ones."""
    k = min(k, lp.shape[0])
    best = np.argpartition(lp, -k)[-k:]
    best = best[np.argsort(lp[best])[::-1]]
    return tuple(
        Candidate(int(t), float(lp[t]), piece(int(t)).decode("utf-8", errors="replace"))
        for t in best
        if np.isfinite(lp[t])
    )


def sample_row(row: Row, params: SamplingParams, rng: np.random.Generator) -> int:
    """One token from `row` under `params`, in llama.cpp's chain order (top-k, top-p, min-p, temp)."""
    if params.greedy:
        return int(row.argmax())
    ids = np.flatnonzero(np.isfinite(row))
    logits = row[ids].astype(np.float64)
    order = np.argsort(logits)[::-1]
    if params.top_k > 0:
        order = order[: params.top_k]
    ids, logits = ids[order], logits[order]
    probs = np.exp(logits - logits[0])
    probs /= probs.sum()
    keep = len(ids)
    if params.top_p < 1.0:
        keep = min(keep, int(np.searchsorted(np.cumsum(probs), params.top_p)) + 1)
    if params.min_p > 0.0:
        keep = min(keep, max(1, int((probs >= params.min_p * probs[0]).sum())))
    ids, logits = ids[:keep], logits[:keep]
    weights = np.exp((logits - logits[0]) / params.temperature)
    return int(ids[rng.choice(len(ids), p=weights / weights.sum())])


def check_ids(tokens: Sequence[int], n_vocab: int) -> None:
    for t in tokens:
        if not 0 <= t < n_vocab:
            raise DecisionError(f"token {t} is outside the vocabulary (0..{n_vocab - 1})")


def allowed(row: Row, tokens: Sequence[int]) -> Row:
    """`row` with every token but `tokens` banned; DecisionError when none of them is possible."""
    if not tokens:
        raise DecisionError("an allow decision names no token")
    out = np.full_like(row, -np.inf)
    ids = np.asarray(tokens, dtype=np.int64)
    out[ids] = row[ids]
    if not np.isfinite(out).any():
        raise DecisionError("none of the allowed tokens is permitted by the constraint")
    return out


def biased(row: Row, bias: Sequence[tuple[int, float]]) -> Row:
    """`row` plus each bias (a bias at or below BAN bans the token)."""
    out = row.copy()
    for t, b in bias:
        out[t] = -np.inf if b <= BAN else out[t] + np.float32(b)
    if not np.isfinite(out).any():
        raise DecisionError("the bias bans every token the constraint permits")
    return out
