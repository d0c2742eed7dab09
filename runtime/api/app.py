"""The ASGI application factory: one app per AppState, nothing global, so tests can build several."""

from __future__ import annotations

from fastapi import FastAPI

from . import routes_conversations, routes_invoke, routes_openai, routes_ops
from .errors import install_handlers
from .middleware import RealmMiddleware
from .state import AppState


def create_app(state: AppState) -> FastAPI:
    app = FastAPI(
        title="Realm runtime",
        version="0.1.0",
        description="OpenAI-compatible completions served by one shared engine per model, for many tenants.",
        docs_url=None,
        redoc_url=None,
    )
    app.state.realm = state
    install_handlers(app)
    app.include_router(routes_openai.router)
    app.include_router(routes_ops.router)
    app.include_router(routes_invoke.router)
    app.include_router(routes_conversations.router)
    app.add_middleware(RealmMiddleware, state=state)

    state.metrics.watch(
        lambda: dict(state.engines),
        lambda: (
            state.scheduler,
            [
                (t.name, m)
                for t in state.tenants.values()
                for m in t.spec.allowed_models
                if m in state.engines
            ],
        ),
    )
    return app
