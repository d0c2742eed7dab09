"""Top sampler: the sampler always takes the step's first (likeliest) candidate, so the text is
exactly greedy decoding's. With {"builtin": true} the same generation uses the built-in sampler
instead (greedy), for comparison and benchmarks.

Input {"prompt": ..., "max_tokens"?: n, "builtin"?: bool}; output {"text", "completion_tokens",
"finish_reason"}. Mirrors sdk/go/examples/top_sampler."""

from collections.abc import Sequence
from typing import Any

import realm_tenant as rt

MODEL = "smollm2-135m-instruct"


class Sampler(rt.Sampler):
    def decide(self, steps: Sequence[rt.SequenceStep]) -> list[rt.Decision]:
        return [rt.token(s.candidates[0].token) for s in steps]


class WitWorld(rt.Tenant):
    def handle(self, request: Any) -> Any:
        request = request if isinstance(request, dict) else {}
        prompt = request.get("prompt")
        if not isinstance(prompt, str) or not prompt:
            raise ValueError('input needs a "prompt"')
        options = (
            rt.GenerateOptions()
            if request.get("builtin")
            else rt.GenerateOptions(sampler=rt.SamplerSpec(top_k=1))
        )
        g = rt.generate_with(rt.GenerateParams(MODEL, prompt, int(request.get("max_tokens") or 32)), options)
        return {"text": g.text, "completion_tokens": g.completion_tokens, "finish_reason": g.finish_reason}
