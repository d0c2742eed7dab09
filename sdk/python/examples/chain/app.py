"""Chain: SmolLM2 drafts an answer to {"question": "..."}, Gemma 3 rewrites it.

Output {"draft": "...", "answer": "...", "models": {name: version}}: both models' words and
the versions that produced them.
"""

from typing import Any

import realm_tenant as rt

DRAFTER = "smollm2-135m-instruct"
EDITOR = "gemma-3-270m"


class WitWorld(rt.Tenant):
    def handle(self, request: Any) -> dict[str, Any]:
        question = request.get("question", "") if isinstance(request, dict) else ""
        if not question.strip():
            raise ValueError('input needs a "question"')
        draft = rt.generate(rt.chatml(question), model=DRAFTER, max_tokens=32, stop=rt.prompts.CHATML_STOP)
        rt.log(f"draft: {draft.completion_tokens} tokens, {draft.finish_reason}")
        final = rt.generate(
            rt.gemma(f'Rewrite this answer to "{question}" in one clear sentence:\n{draft.text.strip()}'),
            model=EDITOR,
            max_tokens=32,
            stop=rt.prompts.GEMMA_STOP,
        )
        return {
            "draft": draft.text.strip(),
            "answer": final.text.strip(),
            "models": {name: rt.model_version(name) for name in (DRAFTER, EDITOR)},
        }
