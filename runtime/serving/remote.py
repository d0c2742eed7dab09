"""The cross-pod path: a generation for a model this pod does not load, run by a pod that does.

Both ends live here, whatever the door:

- the caller's (`remote_for`, `RemoteGenerations.open`, `RemoteStream`): the model reference names a
  version of `ClusterConfig.models` that this pod does not load; the tenant's rate quotas are charged
  here (`AdmissionScheduler.charge_only`, settled with the usage the other pod reports); a ready pod of
  the version's Service is picked (runtime/peers/picker.py) and called on its internal listener with an
  internal credential (runtime/peers/credential.py), the remaining deadline and the hop count; the text
  streams back. A pod that refuses the connection, resets it, drains, or goes away before any text came
  is replaced by the next pick within the deadline; after text came, the call fails with a clear error
  naming the pod (the text already passed on cannot be taken back).
- the serving pod's (`internal_generation`): the call, its credential already checked by the listener
  (runtime/api/internal.py), becomes a `GenerationStream` like any other, admitted for the tenant's
  weight and concurrency but not charged to its rate quotas again (`charge=False`), its metrics labelled
  with the endpoint `internal`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from pydantic import BaseModel, ConfigDict, Field, model_validator

from realm.runtime.engines.base import Constraint, FinishReason, TokenEvent
from realm.runtime.peers import Discovery, Endpoint, InternalCredential, pick
from realm.runtime.peers.credential import HEADER as CREDENTIAL_HEADER
from realm.runtime.peers.credential import MAX_LIFETIME_S
from realm.runtime.peers.picker import DEFAULT_BOUND, rendezvous_key
from realm.runtime.scheduler import AdmissionClosed, Ticket
from realm.runtime.scheduler import QuotaExceeded as RateQuotaExceeded
from realm.runtime.spec.identity import NamespaceIdentity, tenant_uid
from realm.runtime.spec.runtime_config import ClusterConfig, ClusterModel, TenantEntry

from .constraints import checked_constraint
from .errors import (
    EngineFailed,
    InvalidConstraint,
    InvalidRequest,
    ModelNotAllowed,
    ModelNotFound,
    NotReady,
    QuotaExceeded,
    ServingError,
    Unavailable,
)
from .generation import GenerationStream, Usage
from .requests import (
    SAMPLING_FIELDS,
    ServedModel,
    configured_tenant,
    max_tokens_within_limits,
    sampling_params,
    served_here,
    tokenize_chat,
    tokenize_text,
)
from .routing import ModelTarget
from .state import ServingState

log = logging.getLogger(__name__)

INTERNAL_PATH = "/internal/v1/generate"
INTERNAL_MODEL_PATH = "/internal/v1/model"
#: What a serving pod reports of its load with every answer: calls running and queued for the model.
QUEUE_DEPTH_HEADER = "x-realm-queue-depth"
#: The deadline of a cross-pod call made for an API request (which has none of its own).
API_DEADLINE_S = 600.0
#: Longest a connection to a peer may take to open before the next pod is tried.
CONNECT_TIMEOUT_S = 2.0


# ---- the version a reference names --------------------------------------------------------------


def remote_for(state: ServingState, target: ModelTarget) -> ClusterModel | None:
    """The cluster's entry to call for `target` (routing.resolve_target's choice) when this pod does not
    load it; None: serve it here, or refuse it as usual."""
    remote = state.remote
    if remote is None or state.key_of(target) is not None:
        return None
    return next(
        (m for m in remote.cluster.models if (m.name, m.version) == (target.name, target.version)), None
    )


# ---- the internal call's body --------------------------------------------------------------------


class InternalMessage(BaseModel):
    model_config = ConfigDict(extra="forbid")

    role: str = Field(..., min_length=1, max_length=32)
    content: str


class InternalGenerateBody(BaseModel):
    """The body of POST /internal/v1/generate: one generation, as the caller's door described it (chat
    messages or a prompt text: the serving pod tokenizes with its own model), and the sampling fields
    that mean the same through every door (serving/requests.py SAMPLING_FIELDS)."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field(..., min_length=1, max_length=63)
    version: str = Field(..., min_length=1, max_length=20)
    prompt: str | None = None
    messages: list[InternalMessage] | None = Field(None, min_length=1, max_length=100_000)
    max_tokens: int | None = Field(None, ge=1, le=1 << 20)
    default_max_tokens: int | None = Field(None, ge=1, le=1 << 20)
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    min_p: float | None = None
    repetition_penalty: float | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    seed: int | None = None
    ignore_eos: bool | None = None
    stop: list[str] = Field(default_factory=list, max_length=4)
    # What the output must match: bounded by the calling door, compiled here for this pod's model. Left
    # out of the body when None, so a pod that predates it still takes every unconstrained call.
    constraint: Constraint | None = None

    @model_validator(mode="after")
    def _one_prompt(self) -> InternalGenerateBody:
        if (self.prompt is None) == (self.messages is None):
            raise ValueError("give exactly one of prompt and messages")
        return self

    def first_block(self) -> str:
        if self.prompt is not None:
            return self.prompt
        return "\0".join(f"{m.role}:{m.content}" for m in self.messages or [])


def internal_body(
    *,
    model: ClusterModel,
    fields: BaseModel,
    prompt: str | None = None,
    messages: Sequence[tuple[str, str]] | None = None,
    max_tokens: int | None,
    default_max_tokens: int | None = None,
    constraint: Constraint | None = None,
) -> InternalGenerateBody:
    """The internal call's body from a request's sampling fields (the API's or the ABI's)."""
    given: dict[str, Any] = {
        name: value for name in SAMPLING_FIELDS if (value := getattr(fields, name, None)) is not None
    }
    stop: str | list[str] | None = getattr(fields, "stop", None)
    return InternalGenerateBody(
        model=model.name,
        version=model.version,
        prompt=prompt,
        messages=None if messages is None else [InternalMessage(role=r, content=c) for r, c in messages],
        max_tokens=max_tokens,
        default_max_tokens=default_max_tokens,
        stop=[] if stop is None else [stop] if isinstance(stop, str) else list(stop),
        constraint=constraint,
        **given,
    )


# ---- the serving pod's end --------------------------------------------------------------------------


async def internal_generation(
    state: ServingState, credential: InternalCredential, body: InternalGenerateBody, arrived: float
) -> GenerationStream:
    """The generation a checked internal call asks for, not yet started. Raises ModelNotAllowed (a
    tenant this pod does not serve as that identity), ModelNotFound (a model or version it does not
    load), InvalidRequest."""
    if (body.model, body.version) != (credential.model, credential.version):
        raise InvalidRequest("The body names another model than the credential.", code="credential_mismatch")
    entry = state.tenants.get(credential.tenant)
    if entry is None or tenant_uid(entry.uid, entry.name) != credential.uid:
        raise ModelNotAllowed(
            f"This pod serves no tenant {credential.tenant!r} with that identity.", code="unknown_tenant"
        )
    served = _loaded(state, entry, body.model, body.version)
    engine = served.engine
    if body.messages is not None:
        ids = await tokenize_chat(state, engine, [(m.role, m.content) for m in body.messages])
    else:
        ids = await tokenize_text(state, engine, body.prompt or "")
    max_tokens = max_tokens_within_limits(engine, entry, len(ids), body.max_tokens, body.default_max_tokens)
    constraint = None
    if body.constraint is not None:  # compiled off the event loop: a large schema takes a while
        constraint = await asyncio.to_thread(checked_constraint, engine, body.constraint)
    return GenerationStream(
        state,
        tenant=entry.name,
        model=served.key,
        engine=engine,
        endpoint="internal",
        prompt_ids=ids,
        params=sampling_params(body, max_tokens=max_tokens),
        constraint=constraint,
        arrived=arrived,
        id_prefix="internal",
        charge=False,
    )


def internal_model(state: ServingState, credential: InternalCredential) -> ServedModel:
    """The model a checked internal call names, for its description (ABI model info)."""
    entry = state.tenants.get(credential.tenant)
    if entry is None or tenant_uid(entry.uid, entry.name) != credential.uid:
        raise ModelNotAllowed(
            f"This pod serves no tenant {credential.tenant!r} with that identity.", code="unknown_tenant"
        )
    return _loaded(state, entry, credential.model, credential.version)


def _loaded(state: ServingState, tenant: TenantEntry, model: str, version: str) -> ServedModel:
    """`model@version` loaded here, for a tenant allowed the model (not counted as traffic: the calling
    pod counted it when it chose the version)."""
    if model not in tenant.spec.allowed_models:
        raise ModelNotAllowed(
            f"Tenant '{tenant.name}' may not use the model '{model}'.",
            code="model_not_allowed",
            param="model",
        )
    target = ModelTarget(model, version)
    if state.key_of(target) is None:
        raise ModelNotFound(f"This pod does not load {target}.", code="model_not_loaded", param="model")
    return served_here(state, target)


def queue_depth(state: ServingState, model: str) -> int:
    """What this pod reports of its load for `model`: calls running and queued."""
    scheduler = state.scheduler
    if scheduler is None:
        return 0
    return scheduler.running(model=model) + scheduler.queue_depth(model=model)


# ---- the caller's end ----------------------------------------------------------------------------


class _Retry(Exception):
    """This pod could not take the call before any text came: the next one may."""


@dataclass
class RemoteGenerations:
    """This pod's calls to its peers: the cluster's placement, discovery, and what each peer holds."""

    cluster: ClusterConfig
    discovery: Discovery
    identity: NamespaceIdentity
    bound: float = DEFAULT_BOUND
    # Calls this pod has open on each peer, and the load each peer last reported for a Service's model
    # (a pod serving several models reports each one's queue).
    outstanding: dict[Endpoint, int] = field(default_factory=dict)
    reported: dict[tuple[str, Endpoint], int] = field(default_factory=dict)
    # What each Service listed at its last pick, to drop the reports of pods that left it.
    _listed: dict[str, frozenset[Endpoint]] = field(default_factory=dict)
    _session: aiohttp.ClientSession | None = None

    def session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            # One pool of kept-alive connections per pod: a call costs no handshake.
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=0, ttl_dns_cache=None), read_bufsize=1 << 20
            )
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def pick(self, target: ClusterModel, key: str, tried: set[Endpoint]) -> Endpoint | None:
        service = target.service
        listed = self.discovery.endpoints(service)
        # Pods come and go (a new address each time): the reports of those gone are dropped.
        for gone in self._listed.get(service, frozenset()) - set(listed):
            self.reported.pop((service, gone), None)
        self._listed[service] = frozenset(listed)
        ready = [ep for ep in listed if ep not in tried]
        return pick(
            ready,
            key,
            lambda ep: self.outstanding.get(ep, 0) + self.reported.get((service, ep), 0),
            bound=self.bound,
        )


class RemoteStream:
    """A generation run by another pod, read like a `GenerationStream` (start, events, failure, close)."""

    def __init__(
        self,
        state: ServingState,
        remote: RemoteGenerations,
        *,
        tenant: TenantEntry,
        target: ClusterModel,
        body: InternalGenerateBody,
        deadline_s: float,
        hops: int,
        endpoint: str,
        id_prefix: str,
    ) -> None:
        self.state = state
        self.remote = remote
        self.tenant = tenant
        self.target = target
        self.body = body
        self.deadline = time.monotonic() + deadline_s
        self.hops = hops
        self.endpoint = endpoint
        self.model = body.model
        self.request_id = f"{id_prefix}-{uuid.uuid4().hex}"
        self.created = int(time.time())
        self.usage = Usage(prompt_tokens=0)
        self.finish_reason: str | None = None
        self.outcome = "error"
        self.kv_key: str | None = None
        self.pod: str | None = None  # the pod that took the call
        self.retries = 0
        self._ticket: Ticket | None = None
        self._gen: AsyncGenerator[TokenEvent, None] | None = None
        self._first: TokenEvent | None = None
        self._closed = False

    async def start(self) -> None:
        """Charge the tenant's quotas, call a pod, and wait for its first event, so that refusals come
        before any output."""
        scheduler = self.state.scheduler
        if scheduler is None:
            raise NotReady("The server is still loading.", code="loading")
        try:
            # The prompt's length is the serving pod's to count: charged as the usage it reports.
            self._ticket = scheduler.charge_only(
                self.tenant.name, prompt_tokens=0, max_tokens=self.body.max_tokens or 0
            )
        except RateQuotaExceeded as e:
            self.outcome = "rate_limited"
            self.state.metrics.quota_rejections.labels(self.tenant.name, self.model, e.kind).inc()
            raise QuotaExceeded(e.message, code=e.kind, retry_after=e.retry_after) from e
        except AdmissionClosed as e:
            self.outcome = "unavailable"
            raise Unavailable(
                "The server is shutting down; retry on another replica.", code="service_unavailable"
            ) from e
        self._gen = self._run()
        try:
            self._first = await anext(self._gen)
        except StopAsyncIteration as e:
            raise EngineFailed(f"The pod {self.pod} ended the call without a result.") from e

    async def events(self) -> AsyncIterator[TokenEvent]:
        event = self._first
        if event is None or self._gen is None:
            return
        self._first = None
        while True:
            yield event
            if event.finish_reason is not None:
                return
            event = await anext(self._gen)

    def failure(self) -> ServingError | None:
        return None  # a failed call raises from events(): its reason names the pod

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._gen is not None:
            with contextlib.suppress(Exception):
                await self._gen.aclose()
        if self._ticket is not None:
            self._ticket.release(
                prompt_tokens=self.usage.prompt_tokens, completion_tokens=self.usage.completion_tokens
            )
        metrics = self.state.metrics
        metrics.requests.labels(self.tenant.name, self.model, self.endpoint, self.outcome).inc()
        metrics.remote_calls.labels(self.model, self.outcome).inc()
        if self.retries:
            metrics.remote_retries.labels(self.model).inc(self.retries)

    def _credential(self) -> str:
        return InternalCredential(
            namespace=self.remote.identity.namespace,
            tenant=self.tenant.name,
            uid=tenant_uid(self.tenant.uid, self.tenant.name),
            model=self.target.name,
            version=self.target.version,
            # A credential lives at most MAX_LIFETIME_S (the receiver refuses longer ones); a longer
            # deadline is cut to it.
            expires=time.time() + min(MAX_LIFETIME_S, max(0.0, self.deadline - time.monotonic())),
            hops=self.hops,
        ).sign(self.remote.identity)

    async def _run(self) -> AsyncGenerator[TokenEvent, None]:
        key = rendezvous_key(self.tenant.name, self.target.name, self.body.first_block())
        tried: set[Endpoint] = set()
        failures: list[str] = []
        while True:
            left = self.deadline - time.monotonic()
            ep = self.remote.pick(self.target, key, tried)
            if ep is None or left <= 0:
                self.outcome = "unavailable"
                raise self._no_pod(failures, timed_out=left <= 0)
            tried.add(ep)
            self.pod = ep.pod
            streamed = False
            self.remote.outstanding[ep] = self.remote.outstanding.get(ep, 0) + 1
            try:
                async for event in self._call(ep, left):
                    streamed = streamed or bool(event.text)
                    yield event
                return
            except _Retry as e:
                failures.append(f"{ep.pod}: {e}")
                self.retries += 1
                log.warning("call to %s for %s failed before any text (%s): next pod", ep.pod, self.model, e)
            except (aiohttp.ClientError, TimeoutError, ConnectionError, json.JSONDecodeError) as e:
                reason = _describe(e)
                if not streamed:
                    # The loop's top ends the call if the deadline is what failed.
                    failures.append(f"{ep.pod}: {reason}")
                    self.retries += 1
                    log.warning("call to %s for %s failed before any text (%s)", ep.pod, self.model, reason)
                    continue
                self.outcome = "unavailable"
                raise Unavailable(
                    f"The pod {ep.pod} serving {self.target.name}@{self.target.version} failed after "
                    f"streaming part of the text: {reason}",
                    code="remote_failed",
                ) from e
            finally:
                self._drop(ep)

    def _drop(self, ep: Endpoint) -> None:
        left = self.remote.outstanding.get(ep, 0) - 1
        if left > 0:
            self.remote.outstanding[ep] = left
        else:
            self.remote.outstanding.pop(ep, None)

    def _no_pod(self, failures: list[str], *, timed_out: bool) -> Unavailable:
        what = f"{self.target.name}@{self.target.version} (Service {self.target.service})"
        if timed_out:
            return Unavailable(f"No pod serving {what} answered within the deadline.", code="remote_timeout")
        if not failures:
            return Unavailable(f"No ready pod serves {what}.", code="no_ready_pod")
        return Unavailable(
            f"No pod serving {what} could take the call: {'; '.join(failures)}", code="remote_unavailable"
        )

    async def _call(self, ep: Endpoint, left: float) -> AsyncIterator[TokenEvent]:
        timeout = aiohttp.ClientTimeout(total=left, sock_connect=min(left, CONNECT_TIMEOUT_S))
        began = time.perf_counter()
        async with self.remote.session().post(
            ep.url + INTERNAL_PATH,
            data=self.body.model_dump_json(exclude_none=True),
            headers={CREDENTIAL_HEADER: self._credential(), "content-type": "application/json"},
            timeout=timeout,
        ) as resp:
            depth = resp.headers.get(QUEUE_DEPTH_HEADER, "")
            if depth.isdigit():
                self.remote.reported[self.target.service, ep] = int(depth)
            if resp.status != 200:
                await self._refused(resp)
            async for line in resp.content:
                if not line.startswith(b"data: {"):
                    continue
                payload = json.loads(line[6:])
                event = self._event(ep, payload)
                if event is None:
                    continue
                if event.finish_reason is not None:
                    # Read to the end (the [DONE] line follows at once), so that the connection goes back
                    # to the pool instead of being closed half read.
                    await resp.content.read()
                    server_s = float(payload.get("server_ms", 0.0)) / 1000
                    self.state.metrics.remote_overhead.labels(self.model).observe(
                        max(0.0, time.perf_counter() - began - server_s)
                    )
                    yield event
                    return
                yield event
            raise aiohttp.ServerDisconnectedError("the stream ended without a final event")

    def _event(self, ep: Endpoint, payload: dict[str, Any]) -> TokenEvent | None:
        if "error" in payload:
            error = payload["error"] if isinstance(payload["error"], dict) else {}
            self.outcome = "error"
            raise EngineFailed(
                f"The pod {ep.pod} failed while generating: {error.get('message', 'unknown error')}",
                code=str(error.get("code") or "remote_error"),
            )
        finish = payload.get("finish_reason")
        if finish is None:
            return TokenEvent(token_id=None, text=str(payload.get("text", "")))
        usage = payload.get("usage") or {}
        # The serving pod reports other endings (cancelled, engine errors) as errors.
        reason: FinishReason = "length" if finish == "length" else "stop"
        self.finish_reason = reason
        self.usage = Usage(
            prompt_tokens=int(usage.get("prompt_tokens", 0)),
            completion_tokens=int(usage.get("completion_tokens", 0)),
            cached_prompt_tokens=int(usage.get("cached_tokens", 0)),
        )
        return TokenEvent(
            token_id=None,
            text=str(payload.get("text", "")),
            finish_reason=reason,
            prompt_tokens=self.usage.prompt_tokens,
            completion_tokens=self.usage.completion_tokens,
        )

    async def _refused(self, resp: aiohttp.ClientResponse) -> None:
        error = await _refusal(resp)
        self.outcome = (
            "rate_limited"
            if isinstance(error, QuotaExceeded)
            else "client_error"
            if resp.status < 500
            else "error"
        )
        raise error


async def _refusal(resp: aiohttp.ClientResponse) -> ServingError:
    """A peer's refusal as the serving error it stands for. Raises _Retry for a draining or overloaded
    pod, or one that does not (any more) load the model: the next pod may take the call."""
    try:
        error = (await resp.json()).get("error") or {}
    except (aiohttp.ContentTypeError, json.JSONDecodeError, ValueError, AttributeError):
        error = {}
    message = str(error.get("message") or f"HTTP {resp.status}")
    code = error.get("code")
    if resp.status == 503 or code == "model_not_loaded":
        raise _Retry(f"HTTP {resp.status} {message}")
    if resp.status == 429:
        retry_after = resp.headers.get("retry-after", "1")
        return QuotaExceeded(
            message,
            code=str(code or "queue_full"),
            retry_after=float(retry_after) if retry_after.isdigit() else 1.0,
        )
    kind: type[ServingError] = {400: InvalidRequest, 403: ModelNotAllowed, 404: ModelNotFound}.get(
        resp.status, EngineFailed
    )
    if resp.status == 400 and code == "invalid_constraint":  # the serving pod could not compile it
        kind = InvalidConstraint
    return kind(message, code=str(code) if code else None, param=error.get("param"))


def _describe(e: BaseException) -> str:
    if isinstance(e, aiohttp.ClientConnectorError):
        return f"connection failed ({e.os_error.strerror or e.os_error})"
    if isinstance(e, TimeoutError):
        return "the deadline passed"
    return f"{type(e).__name__}: {e}" if str(e) else type(e).__name__


def open_remote(
    state: ServingState,
    *,
    tenant: TenantEntry,
    target: ClusterModel,
    body: InternalGenerateBody,
    deadline_s: float,
    endpoint: str,
    id_prefix: str,
    hops: int = 1,
) -> RemoteStream:
    """A cross-pod generation for `tenant` (not yet started), after the tenant's access to the model."""
    remote = state.remote
    if remote is None:
        raise ModelNotFound(
            f"The model '{body.model}' does not exist.", code="model_not_found", param="model"
        )
    entry = configured_tenant(state, tenant.name)
    if target.name not in entry.spec.allowed_models:
        raise ModelNotAllowed(
            f"Tenant '{entry.name}' may not use the model '{target.name}'.",
            code="model_not_allowed",
            param="model",
        )
    return RemoteStream(
        state,
        remote,
        tenant=entry,
        target=target,
        body=body,
        deadline_s=deadline_s,
        hops=hops,
        endpoint=endpoint,
        id_prefix=id_prefix,
    )


async def remote_model(
    state: ServingState, *, tenant: TenantEntry, target: ClusterModel, deadline_s: float
) -> dict[str, Any]:
    """The description of a model another pod serves (its engine's info), as that pod reports it."""
    stream = open_remote(
        state,
        tenant=tenant,
        target=target,
        body=InternalGenerateBody(model=target.name, version=target.version, prompt=""),
        deadline_s=deadline_s,
        endpoint="model",
        id_prefix="model",
    )
    remote = stream.remote
    tried: set[Endpoint] = set()
    failures: list[str] = []
    while (left := stream.deadline - time.monotonic()) > 0:
        ep = remote.pick(target, rendezvous_key(tenant.name, target.name, ""), tried)
        if ep is None:
            break
        tried.add(ep)
        try:
            async with remote.session().get(
                ep.url + INTERNAL_MODEL_PATH,
                headers={CREDENTIAL_HEADER: stream._credential()},
                timeout=aiohttp.ClientTimeout(total=left, sock_connect=min(left, CONNECT_TIMEOUT_S)),
            ) as resp:
                if resp.status != 200:
                    raise await _refusal(resp)
                info: dict[str, Any] = await resp.json()
                return info
        except _Retry as e:
            failures.append(f"{ep.pod}: {e}")
        except (aiohttp.ClientError, TimeoutError, ConnectionError, json.JSONDecodeError) as e:
            failures.append(f"{ep.pod}: {_describe(e)}")
    raise stream._no_pod(failures, timed_out=stream.deadline <= time.monotonic())


async def remote_text(stream: RemoteStream, on_text: Callable[[str], None] | None) -> str:
    """Run `stream` to its end (and close it), passing each piece of text to `on_text` as it comes."""
    parts: list[str] = []
    try:
        await stream.start()
        async for event in stream.events():
            if event.text:
                parts.append(event.text)
                if on_text is not None:
                    on_text(event.text)
        stream.outcome = "success"
    except asyncio.CancelledError:
        stream.outcome = "cancelled"
        raise
    finally:
        await stream.close()
    return "".join(parts)
