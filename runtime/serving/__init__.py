"""The serving layer: what a request needs whatever door it came in by (the OpenAI endpoints, a
tenant's WebAssembly through the host ABI).

    state.py          ServingState: engines, scheduler, tenants, sandbox, stores, metrics
    errors.py         the domain errors every door maps to its own codes (HTTP, ABI)
    requests.py       a request checked against its tenant's limits (model access, tokens: here
                      only) and made into the engine's input (prompt ids, the one sampling mapping)
    generation.py     admission, the engine stream, KV policy, metrics, release (GenerationStream)
    conversations.py  the conversation store as requests use it, chat turns
    invocations.py    a tenant's module invoked (its sandbox limits from its quotas), and the
                      host services its calls reach (RuntimeHostServices)
    modules.py        deploying modules, uploaded or pinned (module_sources.py: where they come from)
    remote.py         the cross-pod path: a generate for a model another pod loads, and an internal
                      call from another pod made into a generation here

Depends on the scheduler, engines, sandbox, kvstore, conversations, peers and spec; never on the API.
Kept free of imports here so that a light user (the operator reads module_sources) pays for none.
"""
