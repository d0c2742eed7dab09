"""Liveness, readiness and metrics: unauthenticated, for kubelets and Prometheus.

Liveness and readiness answer on both listeners (the kubelet probes the public one). Metrics and the
OpenAPI document answer only on the ops listener (`app.create_ops_app`): per-tenant load figures and
the full API surface are for the platform, not for whoever can reach the public port.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST

from .state import AppState

router = APIRouter()
ops_router = APIRouter()


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz", response_model=None)
async def readyz(request: Request) -> JSONResponse:
    state: AppState = request.app.state.realm
    if state.draining:
        return JSONResponse({"status": "draining"}, status_code=503)
    if not state.ready:
        loaded = sorted(state.engines)
        return JSONResponse({"status": "loading", "loaded": loaded}, status_code=503)
    return JSONResponse({"status": "ready", "models": sorted(state.engines)})


@ops_router.get("/metrics")
async def metrics(request: Request) -> Response:
    state: AppState = request.app.state.realm
    return Response(state.metrics.render(), media_type=CONTENT_TYPE_LATEST)


@ops_router.get("/openapi.json")
async def openapi(request: Request) -> dict[str, Any]:
    """The public API's document (the ops app's own routes are not the API)."""
    api: FastAPI = request.app.state.api
    document: dict[str, Any] = api.openapi()
    return document
