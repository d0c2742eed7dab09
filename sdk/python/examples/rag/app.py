"""RAG: answers {"collection": "vs_...", "question": "...", "k"?: 3} from the tenant's own documents.

It searches one of the tenant's vector collections (ABI 1.4), puts the best chunks in SmolLM2's
prompt, and returns {"answer": "...", "citations": [{"id": "<item>#<n>", "score": 0.61}, ...]}."""

from typing import Any

import realm_tenant as rt

MODEL = "smollm2-135m-instruct"


def handle(request: Any) -> dict[str, Any]:
    req = request if isinstance(request, dict) else {}
    question, collection = str(req.get("question", "")), str(req.get("collection", ""))
    if not question.strip() or not collection:
        raise ValueError('input needs a "collection" and a "question"')
    hits = rt.search(collection, question, int(req.get("k") or 3))
    context = "\n".join(f"[{n}] {h.text}" for n, h in enumerate(hits, start=1))
    g = rt.generate(
        rt.chatml(
            f"Context:\n{context}\n\nQuestion: {question}",
            system="Answer the question in one sentence, using only the context.",
        ),
        model=MODEL,
        max_tokens=48,
        stop=rt.prompts.CHATML_STOP,
    )
    return {"answer": g.text.strip(), "citations": [{"id": h.id, "score": h.score} for h in hits]}


WitWorld = rt.tenant(handle)
