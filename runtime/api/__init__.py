"""The HTTP API of the runtime: each route parses its request, calls the serving layer
(runtime/serving) and renders the result. Never imports an engine backend.

    app.py                   the ASGI apps: the public API, and the ops app (its own port: metrics,
                             the OpenAPI document); middleware.py + auth.py: drain gate, API keys,
                             body limits
    state.py                 AppState: the serving state plus what only HTTP needs
    schemas.py               request bodies (OpenAI's field names), shared by the routes
    errors.py                every error's HTTP status and OpenAI-shaped body, in one place
    sse.py                   the one server-sent-events writer
    routes_openai.py         /v1/chat/completions, /v1/completions, /v1/models
    routes_conversations.py  /v1/conversations
    routes_invoke.py         /v1/tenants/{tenant}/invoke and /module
    routes_ops.py            /healthz, /readyz (both apps), /metrics, /openapi.json (ops app only)
    internal.py              the internal listener's app (pod-to-pod generations, cluster.internalPort)

No route module imports another.
"""

from .app import create_app, create_ops_app
from .state import AppState

__all__ = ["AppState", "create_app", "create_ops_app"]
