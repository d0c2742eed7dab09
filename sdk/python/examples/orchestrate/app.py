"""A module as the orchestrator of declared pipelines (ABI 1.5): runs the tenant's pipeline once per
question, keeps the answers, and reports what each run cost.

Input {"pipeline": "...", "questions": ["...", ...]}; output {"answers": [{"question", "answer", "run",
"steps", "tokens"}], "failed": [{"question", "error"}]}."""

from typing import Any

import realm_tenant as rt


def handle(request: Any) -> dict[str, Any]:
    req = request if isinstance(request, dict) else {}
    pipeline, questions = str(req.get("pipeline", "")), req.get("questions") or []
    if not pipeline or not isinstance(questions, list) or not questions:
        raise ValueError('input needs "pipeline" and "questions"')
    answers: list[dict[str, Any]] = []
    failed: list[dict[str, str]] = []
    for q in questions:
        try:
            run = rt.run_pipeline(pipeline, {"text": str(q)})
        except rt.RealmError as e:
            if e.code == "not-found":
                raise  # no such pipeline for this tenant: nothing else will run either
            failed.append({"question": str(q), "error": str(e)})
            continue
        answers.append(
            {
                "question": str(q),
                "answer": run.output,
                "run": run.id,
                "steps": [f"{s.name}:{s.phase}" for s in run.steps],
                "tokens": run.prompt_tokens + run.completion_tokens,
            }
        )
    return {"answers": answers, "failed": failed}


WitWorld = rt.tenant(handle)
