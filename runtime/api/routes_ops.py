"""Liveness, readiness and metrics: unauthenticated, for kubelets and Prometheus."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST

from .state import AppState

router = APIRouter()


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


@router.get("/metrics")
async def metrics(request: Request) -> Response:
    state: AppState = request.app.state.realm
    return Response(state.metrics.render(), media_type=CONTENT_TYPE_LATEST)
