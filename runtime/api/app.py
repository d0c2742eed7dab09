"""The ASGI application factories: one public app and one ops app per AppState, nothing global, so tests
can build several. The public app serves the API (and the probes); the ops app, on its own port,
serves metrics and the OpenAPI document beside the probes."""

from __future__ import annotations

from fastapi import FastAPI

from . import (
    routes_conversations,
    routes_embeddings,
    routes_invoke,
    routes_openai,
    routes_ops,
    routes_pipelines,
    routes_vectors,
)
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
        openapi_url=None,  # served by the ops app
    )
    app.state.realm = state
    install_handlers(app)
    app.include_router(routes_openai.router)
    app.include_router(routes_embeddings.router)
    app.include_router(routes_vectors.router)
    app.include_router(routes_ops.router)
    app.include_router(routes_invoke.router)
    app.include_router(routes_conversations.router)
    app.include_router(routes_pipelines.router)
    app.add_middleware(RealmMiddleware, state=state)

    state.metrics.watch(
        lambda: dict(state.engines),
        lambda: (
            state.scheduler,
            [
                (t.name, key)
                for t in state.tenants.values()
                for key in state.engines
                if state.models[key].name in t.spec.allowed_models
            ],
        ),
    )
    return app


def create_ops_app(state: AppState, api: FastAPI) -> FastAPI:
    """The ops listener's app: /metrics, /openapi.json (the document of `api`), /healthz, /readyz."""
    ops = FastAPI(title="Realm runtime (ops)", docs_url=None, redoc_url=None, openapi_url=None)
    ops.state.realm = state
    ops.state.api = api
    install_handlers(ops)
    ops.include_router(routes_ops.router)
    ops.include_router(routes_ops.ops_router)
    return ops
