"""JSON rule: the host's constraint and a rule of the module's own. The output is JSON valid against
a schema (the sampler only ever sees candidates the schema allows), and the sampler keeps every
digit 7 out of it, taking the likeliest candidate without one; when all of a step's candidates
have one, it bans them and lets the constraint and the built-in sampler choose.

Input {"prompt"?: ..., "max_tokens"?: n}; output {"data": {...}, "text", "completion_tokens"}.
Mirrors sdk/go/examples/json_rule."""

import json
from collections.abc import Sequence
from typing import Any

import realm_tenant as rt

MODEL = "smollm2-135m-instruct"
SCHEMA = {
    "type": "object",
    "properties": {"numbers": {"type": "array", "items": {"type": "integer"}, "minItems": 3, "maxItems": 12}},
    "required": ["numbers"],
    "additionalProperties": False,
}


class Sampler(rt.Sampler):
    def decide(self, steps: Sequence[rt.SequenceStep]) -> list[rt.Decision]:
        out = []
        for s in steps:
            ok = [c.token for c in s.candidates if s.config not in c.text]
            out.append(rt.token(ok[0]) if ok else rt.ban(c.token for c in s.candidates))
        return out


class WitWorld(rt.Tenant):
    def handle(self, request: Any) -> Any:
        request = request if isinstance(request, dict) else {}
        prompt = request.get("prompt") or "List the first ten prime numbers as JSON."
        g = rt.generate_with(
            rt.GenerateParams(
                MODEL,
                f"<|im_start|>user\n{prompt}<|im_end|>\n<|im_start|>assistant\n",
                int(request.get("max_tokens") or 96),
            ),
            rt.GenerateOptions(
                constraint=rt.json_schema(SCHEMA), sampler=rt.SamplerSpec(config="7", top_k=32)
            ),
        )
        try:
            data = json.loads(g.text)
        except ValueError as e:
            raise ValueError(f"the output is not JSON (finish reason {g.finish_reason}): {e}") from None
        return {"data": data, "text": g.text, "completion_tokens": g.completion_tokens}
