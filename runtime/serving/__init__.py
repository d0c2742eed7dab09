"""The serving layer: what a request needs whatever door it came in by (the OpenAI endpoints, a
tenant's WebAssembly through the host ABI).

    state.py          ServingState: engines, scheduler, tenants, sandbox, stores, metrics
    errors.py         the domain errors every door maps to its own codes (HTTP, ABI)
    limits.py         a tenant's limits, checked here only: models, tokens, WebAssembly budgets
    engine_input.py   prompt token ids and the one mapping of sampling fields to the engine's
    generation.py     admission, the engine stream, KV policy, metrics, release (GenerationStream)
    conversations.py  the conversation store as requests use it, chat turns
    invocations.py    a tenant's module invoked, and the host services its calls reach
    modules.py        deploying modules, uploaded or pinned (module_sources.py: where they come from)

Depends on the scheduler, engines, sandbox, kvstore, conversations and spec; never on the API.
Kept free of imports here so that a light user (the operator reads module_sources) pays for none.
"""
