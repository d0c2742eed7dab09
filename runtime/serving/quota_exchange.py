"""Cluster-wide rate quotas: every pod tells every other its demand, twice a second.

Each pod enforces its share of a tenant's requestsPerMinute and tokensPerMinute in its own buckets
(scheduler/quotas.py), the share following its part of the demand (scheduler/shares.py). This module
moves the demand between pods:

    POST /internal/v1/quota-demand    on the internal listener (api/internal.py)
        header x-realm-signature      HMAC under the namespace secret (runtime/peers/signed.py)
        body and answer               DemandReport: the sender's instance, its wall-clock time, and
                                      its demand per tenant (requests and estimated tokens per second)

Every `INTERVAL_S` a pod posts its report to every ready pod of the namespace's cluster.models
Services (the same EndpointSlice discovery as cross-pod calls) and takes each answer, which is the
receiver's own report: a pod that has just started learns everybody's demand from its first round,
before the others have discovered it. A pod recognises itself among the endpoints by its instance in
an answer and stops calling it. After each round the scheduler resizes every tenant's buckets.

Nothing here is on a request's path: a slow or dead peer costs a timeout in this loop, never a
request's latency. What a receiver checks, in order: the size (413), the signature (401), the body
(400: shape, finite and bounded numbers, a timestamp within `MAX_CLOCK_SKEW_S` of its own clock);
tenants it does not serve are dropped, so a report can move only the shares of the tenants it names.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
import uuid
from collections.abc import Callable
from typing import Annotated

import aiohttp
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError

from realm.runtime.peers import Endpoint
from realm.runtime.peers.signed import QUOTA_DEMAND, SIGNATURE_HEADER, sign, verify
from realm.runtime.scheduler.shares import Demand, QuotaShares

from .errors import InvalidRequest
from .remote import RemoteGenerations
from .state import ServingState

log = logging.getLogger(__name__)

DEMAND_PATH = "/internal/v1/quota-demand"
#: Seconds between two rounds of reports (a fraction of scheduler/shares.py's REPORT_TTL_S, so that a
#: late round or two does not make a live pod look gone).
INTERVAL_S = 0.5
#: Longest one post may take: a peer that does not answer by then misses this round.
POST_TIMEOUT_S = 1.0
#: Largest report a receiver reads: tens of thousands of tenants' demand fit.
MAX_REPORT_BYTES = 1 << 20
#: Tenants one report may name.
MAX_REPORT_TENANTS = 10_000
#: A report stamped further than this from the receiver's clock is refused (a replay, or a clock gone
#: wrong); within it, a report older than the last one of the same pod is ignored.
MAX_CLOCK_SKEW_S = 30.0
#: The highest demand a report may state, per second: far above any real pod, far below overflow.
MAX_RATE = 1e9

TenantName = Annotated[str, StringConstraints(pattern=r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")]


class TenantDemand(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    requests: float = Field(0.0, ge=0.0, le=MAX_RATE)
    tokens: float = Field(0.0, ge=0.0, le=MAX_RATE)


class DemandReport(BaseModel):
    """One pod's demand for its tenants' rate quotas, as it sends it and as it answers one."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    pod: str = Field(..., min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")
    sent: float = Field(..., description="The sender's wall-clock time (Unix seconds).")
    tenants: dict[TenantName, TenantDemand] = Field(default_factory=dict, max_length=MAX_REPORT_TENANTS)


class QuotaExchange:
    """This pod's side of the exchange: the loop that posts its reports, and the receiver of others'."""

    def __init__(
        self,
        state: ServingState,
        remote: RemoteGenerations,
        shares: QuotaShares,
        *,
        interval: float = INTERVAL_S,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.state = state
        self.remote = remote
        self.shares = shares
        self.interval = interval
        self.wall_clock = wall_clock
        # A new one per process: a restarted pod is a new reporter, its predecessor's report ages out.
        self.instance = uuid.uuid4().hex
        self._me: set[Endpoint] = set()
        self._session: aiohttp.ClientSession | None = None

    # -- the receiving end -----------------------------------------------------------------------

    def receive(self, raw: bytes, signature: str | None) -> tuple[bytes, str]:
        """Take a peer's report; answer with this pod's own (body, signature). Raises CredentialError
        (unsigned or forged) and InvalidRequest (too large, malformed, out-of-range, stale)."""
        if len(raw) > MAX_REPORT_BYTES:
            raise InvalidRequest(
                f"A quota demand report may hold at most {MAX_REPORT_BYTES} bytes.", code="report_too_large"
            )
        verify(self.state.identity, QUOTA_DEMAND, raw, signature)
        try:
            report = DemandReport.model_validate_json(raw)
        except ValidationError as e:
            first = e.errors()[0]
            where = ".".join(str(p) for p in first["loc"]) or "body"
            raise InvalidRequest(f"Invalid quota demand report: {where}: {first['msg']}") from e
        if not math.isfinite(report.sent) or abs(report.sent - self.wall_clock()) > MAX_CLOCK_SKEW_S:
            raise InvalidRequest(
                f"The report's time is more than {MAX_CLOCK_SKEW_S:.0f} s from this pod's clock.",
                code="stale_report",
            )
        if report.pod != self.instance:
            self._take(report)
        return self._own_report()

    def _take(self, report: DemandReport) -> None:
        served = self.state.tenants
        demand = {
            tenant: Demand(d.requests, d.tokens) for tenant, d in report.tenants.items() if tenant in served
        }
        self.shares.receive(report.pod, report.sent, demand)

    def _own_report(self) -> tuple[bytes, str]:
        report = DemandReport(
            pod=self.instance,
            sent=self.wall_clock(),
            tenants={
                t: TenantDemand(requests=d.requests, tokens=d.tokens) for t, d in self.shares.report().items()
            },
        )
        body = report.model_dump_json().encode()
        return body, sign(self.state.identity, QUOTA_DEMAND, body)

    # -- the sending end -------------------------------------------------------------------------

    def peers(self) -> list[Endpoint]:
        """The ready pods of every Service of the cluster's models, less this one once recognised."""
        found: set[Endpoint] = set()
        for service in {m.service for m in self.remote.cluster.models}:
            found.update(self.remote.discovery.endpoints(service))
        return sorted(found - self._me)

    async def round(self) -> None:
        """Post this pod's report to every peer, take their answers, then resize the buckets."""
        peers = self.peers()
        # This pod counts itself whether or not it is listed yet (ready pods only are).
        self.shares.known = len(peers) + 1
        body, signature = self._own_report()
        await asyncio.gather(*(self._post(ep, body, signature) for ep in peers))
        scheduler = self.state.scheduler
        if scheduler is not None:
            scheduler.refresh_quota_shares()

    async def run(self) -> None:
        while True:
            started = time.monotonic()
            try:
                await self.round()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("quota demand round failed")
            await asyncio.sleep(max(0.0, self.interval - (time.monotonic() - started)))

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
        return self._session

    async def _post(self, ep: Endpoint, body: bytes, signature: str) -> None:
        try:
            async with self._client().post(
                ep.url + DEMAND_PATH,
                data=body,
                headers={SIGNATURE_HEADER: signature, "content-type": "application/json"},
                timeout=aiohttp.ClientTimeout(total=POST_TIMEOUT_S),
            ) as resp:
                if resp.status != 200:
                    log.debug("quota demand to %s: HTTP %s", ep.pod, resp.status)
                    return
                raw = b""
                async for chunk in resp.content.iter_any():
                    raw += chunk
                    if len(raw) > MAX_REPORT_BYTES:
                        return
                with contextlib.suppress(Exception):
                    # An answer is believed only when signed by the namespace, like a report.
                    verify(self.state.identity, QUOTA_DEMAND, raw, resp.headers.get(SIGNATURE_HEADER))
                    answer = DemandReport.model_validate_json(raw)
                    if answer.pod == self.instance:
                        self._me.add(ep)
                    else:
                        self._take(answer)
        except (aiohttp.ClientError, TimeoutError, ConnectionError) as e:
            log.debug("quota demand to %s failed: %s", ep.pod, e)
