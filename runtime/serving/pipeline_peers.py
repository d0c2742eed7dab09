"""A pipeline run kept by another pod: read or cancelled through the pod that ran it.

A run's record lives on the pod that ran it (pipeline_runs.py), while a Service may send the tenant's
`GET` or `DELETE` of it to any pod. A pod that does not hold the run asks the pods serving the
pipeline's models (the pods the operator publishes the pipeline to, so the one that ran it is among
them) on their internal listeners, in one signed message each (peers/signed.py, purpose
PIPELINE_RUN); the pod holding the run answers with it as the public API renders it, the others 404.
The holder looks the run up by the tenant and pipeline the message names, exactly as for its own
caller, and never asks further: a forwarded lookup reaches nothing the tenant could not read directly,
and cannot loop.
"""

from __future__ import annotations

import asyncio
import json
import math
import re
import time
from collections.abc import Callable
from typing import Any, Literal

import aiohttp
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from realm.runtime.peers import Endpoint
from realm.runtime.peers.signed import PIPELINE_RUN, SIGNATURE_HEADER, sign, verify

from .errors import InvalidRequest
from .state import ServingState

PIPELINE_RUN_PATH = "/internal/v1/pipeline-run"
# Pods asked at most for one lookup, and how long each may take: a lookup of a made-up id costs this.
MAX_PEERS = 16
ASK_TIMEOUT_S = 3.0
MAX_QUERY_BYTES = 4096
MAX_CLOCK_SKEW_S = 60.0
RUN_ID = re.compile(r"^run-[0-9a-f]{32}$")


class RunQuery(BaseModel):
    """The signed message: which tenant's run of which pipeline, and what to do with it."""

    model_config = ConfigDict(extra="forbid")

    tenant: str = Field(..., min_length=1, max_length=63)
    pipeline: str = Field(..., min_length=1, max_length=253)
    run: str = Field(..., pattern=RUN_ID.pattern)
    action: Literal["get", "delete"]
    sent: float


def peers_for(state: ServingState, pipeline: str) -> list[Endpoint]:
    """The ready pods serving the pipeline's models (every version placed in the namespace), sorted."""
    remote, entry = state.remote, state.pipelines.get(pipeline)
    if remote is None or entry is None:
        return []
    models = {s.model_name for s in entry.steps if s.model_name is not None}
    services = {m.service for m in remote.cluster.models if m.name in models}
    found: set[Endpoint] = set()
    for service in services:
        found.update(remote.discovery.endpoints(service))
    return sorted(found, key=lambda ep: (ep.pod, ep.address, ep.port))


async def ask_peers(
    state: ServingState, tenant: str, pipeline: str, run_id: str, action: Literal["get", "delete"]
) -> dict[str, Any] | None:
    """The run as the pod holding it answers (after cancelling it, for "delete"); None when no pod
    asked holds it, or the id cannot be a run's."""
    remote = state.remote
    if remote is None or not RUN_ID.match(run_id):
        return None
    peers = peers_for(state, pipeline)[:MAX_PEERS]
    if not peers:
        return None
    query = RunQuery(tenant=tenant, pipeline=pipeline, run=run_id, action=action, sent=time.time())
    body = query.model_dump_json().encode()
    headers = {SIGNATURE_HEADER: sign(state.identity, PIPELINE_RUN, body), "content-type": "application/json"}
    session = remote.session()

    async def ask(ep: Endpoint) -> dict[str, Any] | None:
        try:
            async with session.post(
                ep.url + PIPELINE_RUN_PATH,
                data=body,
                headers=headers,
                timeout=aiohttp.ClientTimeout(total=ASK_TIMEOUT_S),
            ) as resp:
                if resp.status != 200:
                    return None
                answer = json.loads(await resp.read())
        except (aiohttp.ClientError, TimeoutError, ValueError):
            return None  # a pod gone, slow or confused holds nothing this lookup can use
        if not isinstance(answer, dict) or answer.get("id") != run_id:
            return None
        return answer

    for found in await asyncio.gather(*(ask(ep) for ep in peers)):
        if found is not None:
            return found
    return None


def checked_query(
    state: ServingState, raw: bytes, signature: str | None, wall_clock: Callable[[], float] = time.time
) -> RunQuery:
    """A peer's query, verified: signed by a pod of the namespace, well-formed and fresh. Raises
    CredentialError (unsigned, forged) and InvalidRequest (too large, malformed, stale)."""
    if len(raw) > MAX_QUERY_BYTES:
        raise InvalidRequest(f"A run query may hold at most {MAX_QUERY_BYTES} bytes.", code="query_too_large")
    verify(state.identity, PIPELINE_RUN, raw, signature)
    try:
        query = RunQuery.model_validate_json(raw)
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "body"
        raise InvalidRequest(f"Invalid run query: {where}: {first['msg']}", code="invalid_value") from e
    if not math.isfinite(query.sent) or abs(query.sent - wall_clock()) > MAX_CLOCK_SKEW_S:
        raise InvalidRequest(
            f"The query's time is more than {MAX_CLOCK_SKEW_S:.0f} s from this pod's clock.",
            code="stale_query",
        )
    return query
