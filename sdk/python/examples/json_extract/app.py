"""JSON extract: fields pulled out of free text into JSON that a schema fixes. The host's
constraint (`rt.json_schema`) makes the output parse and validate, whatever the model.

Input {"text": ..., "schema"?: {...}} (the default schema: name, age, city); output
{"data": {...}, "completion_tokens": n}. Mirrors sdk/go/examples/json_extract."""

import json
from typing import Any

import realm_tenant as rt

MODEL = "smollm2-135m-instruct"
PERSON = {
    "type": "object",
    "properties": {"name": {"type": "string"}, "age": {"type": "integer"}, "city": {"type": "string"}},
    "required": ["name", "age", "city"],
    "additionalProperties": False,
}


class WitWorld(rt.Tenant):
    def handle(self, request: Any) -> Any:
        request = request if isinstance(request, dict) else {}
        text = request.get("text")
        if not isinstance(text, str) or not text:
            raise ValueError('input needs a "text"')
        schema = json.dumps(request.get("schema") or PERSON, separators=(",", ":"))
        prompt = (
            "<|im_start|>system\nYou extract facts from text into JSON with the fields of this schema: "
            f"{schema}"
            f"<|im_end|>\n<|im_start|>user\n{text}<|im_end|>\n<|im_start|>assistant\n"
        )
        g = rt.generate_with(
            rt.GenerateParams(MODEL, prompt, max_tokens=128),
            rt.GenerateOptions(constraint=rt.json_schema(schema)),
        )
        try:
            data = json.loads(g.text)
        except ValueError as e:
            raise ValueError(f"the output is not JSON (finish reason {g.finish_reason}): {e}") from None
        return {"data": data, "completion_tokens": g.completion_tokens}
