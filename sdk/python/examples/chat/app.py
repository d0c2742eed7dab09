"""Chat: answers {"question": "..."} with {"answer": "..."} from SmolLM2."""

from typing import Any

import realm_tenant as rt

MODEL = "smollm2-135m-instruct"


def handle(request: Any) -> dict[str, str]:
    question = (request or {}).get("question", "") if isinstance(request, dict) else ""
    if not question.strip():
        raise ValueError('input needs a "question"')
    g = rt.generate(
        rt.chatml(question, system="You are a helpful assistant. Answer briefly."),
        model=MODEL,
        max_tokens=32,
        stop=rt.prompts.CHATML_STOP,
    )
    return {"answer": g.text.strip()}


WitWorld = rt.tenant(handle)
