"""Lipogram: writing without the letter e. The sampler takes, at every step, the likeliest candidate
whose text has no "e" or "E", and ends the sequence when none of the step's candidates qualifies.

Input {"prompt": ..., "max_tokens"?: n}; output {"text", "completion_tokens", "finish_reason"}.
Mirrors sdk/go/examples/lipogram."""

from collections.abc import Sequence
from typing import Any

import realm_tenant as rt

MODEL = "smollm2-135m-instruct"


class Sampler(rt.Sampler):
    """Runs in the module's sampler instance: `config` is the generation's banned letters."""

    def decide(self, steps: Sequence[rt.SequenceStep]) -> list[rt.Decision]:
        out = []
        for s in steps:
            banned = s.config
            choice = rt.stop()
            for c in s.candidates:  # best first
                if not any(ch in c.text for ch in banned):
                    choice = rt.token(c.token)
                    break
            out.append(choice)
        return out


class WitWorld(rt.Tenant):
    def handle(self, request: Any) -> Any:
        request = request if isinstance(request, dict) else {}
        prompt = request.get("prompt")
        if not isinstance(prompt, str) or not prompt:
            raise ValueError('input needs a "prompt"')
        g = rt.generate_with(
            rt.GenerateParams(
                MODEL,
                f"<|im_start|>user\n{prompt}<|im_end|>\n<|im_start|>assistant\n",
                int(request.get("max_tokens") or 48),
            ),
            rt.GenerateOptions(sampler=rt.SamplerSpec(config="eE", top_k=64)),
        )
        return {"text": g.text, "completion_tokens": g.completion_tokens, "finish_reason": g.finish_reason}
