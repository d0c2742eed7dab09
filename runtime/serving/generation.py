"""One generation's trip through admission and the engine, with its KV policy, its metrics and
its release, whatever door the request came in by.

The HTTP routes turn the events of a `GenerationStream` into OpenAI's JSON or SSE; the ABI's
generate takes the whole text (`complete_text`). Everything about tickets, engine streams, KV
snapshots and cancellation lives here so every door gets it right the same way.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import anyio

from realm.runtime.engines.base import (
    Constraint,
    ConstraintError,
    Engine,
    EngineError,
    EngineRequest,
    KVSnapshot,
    LogitsProcessor,
    SamplingParams,
    StepController,
    TokenEvent,
)
from realm.runtime.scheduler import AdmissionClosed, QueueFull, Ticket
from realm.runtime.scheduler import QuotaExceeded as RateQuotaExceeded

from .errors import (
    EngineFailed,
    InvalidConstraint,
    InvalidRequest,
    NotReady,
    QuotaExceeded,
    ServingError,
    Unavailable,
)
from .state import ServingState

log = logging.getLogger(__name__)


@dataclass
class Usage:
    prompt_tokens: int
    completion_tokens: int = 0
    cached_prompt_tokens: int = 0

    def as_openai(self) -> dict[str, object]:
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.prompt_tokens + self.completion_tokens,
            "prompt_tokens_details": {"cached_tokens": self.cached_prompt_tokens},
        }


async def admitted(
    state: ServingState, tenant: str, model: str, *, prompt_tokens: int, max_tokens: int, charge: bool = True
) -> Ticket:
    """The scheduler's ticket for one request on `model` (an engine's or an embedding model's), its
    refusals as the serving errors every door maps (QuotaExceeded, Unavailable, NotReady) and counted
    in the metrics, its queue wait observed."""
    scheduler = state.scheduler
    if scheduler is None:
        raise NotReady("The server is still loading.", code="loading")
    labels = (tenant, model)
    try:
        ticket = await scheduler.admit(
            tenant, model, prompt_tokens=prompt_tokens, max_tokens=max_tokens, charge=charge
        )
    except RateQuotaExceeded as e:
        state.metrics.quota_rejections.labels(*labels, e.kind).inc()
        raise QuotaExceeded(e.message, code=e.kind, retry_after=e.retry_after) from e
    except QueueFull as e:
        state.metrics.quota_rejections.labels(*labels, "queue_full").inc()
        raise QuotaExceeded(e.message, code="queue_full", retry_after=e.retry_after) from e
    except AdmissionClosed as e:
        raise Unavailable(
            "The server is shutting down; retry on another replica.", code="service_unavailable"
        ) from e
    state.metrics.queue_wait.labels(*labels).observe(ticket.queue_wait_s)
    return ticket


class GenerationStream:
    """Admit, generate, release. Always `close()` it (its callers do so in `finally`)."""

    def __init__(
        self,
        state: ServingState,
        *,
        tenant: str,
        model: str,
        engine: Engine,
        endpoint: str,
        prompt_ids: list[int],
        params: SamplingParams,
        arrived: float,
        logits_processor: LogitsProcessor | None = None,
        constraint: Constraint | None = None,
        step_controller: StepController | None = None,
        id_prefix: str,
        kv_hint: int | None = None,
        charge: bool = True,
    ) -> None:
        self.state = state
        # False for a call another pod admitted (serving/remote.py): the tenant's rate quotas were
        # charged there; here it only queues by the tenant's weight and concurrency.
        self.charge = charge
        self.tenant = tenant
        self.model = model
        self.engine = engine
        self.endpoint = endpoint
        self.prompt_ids = prompt_ids
        self.params = params
        self.logits_processor = logits_processor
        self.constraint = constraint
        self.step_controller = step_controller
        self.arrived = arrived
        self.request_id = f"{id_prefix}-{uuid.uuid4().hex}"
        self.created = int(time.time())
        self.usage = Usage(prompt_tokens=len(prompt_ids))
        self.finish_reason: str | None = None
        # Why the engine ended the stream "error", where it says (TokenEvent.error_code, .error).
        self.error_code: str | None = None
        self.error: str | None = None
        self.outcome = "error"
        self._ticket: Ticket | None = None
        self._stream: AsyncIterator[TokenEvent] | None = None
        self._first: TokenEvent | None = None
        self._last_token_at: float | None = None
        self._closed = False
        self.kv_hint = kv_hint  # where the previous turn's snapshot ends (a conversation's record)
        self.kv_key: str | None = None  # the key this sequence's KV was kept under, if it was

    async def start(self) -> None:
        """Wait for admission and for the first event, so that refusals come before any output."""
        scheduler = self.state.scheduler
        if scheduler is None:
            raise NotReady("The server is still loading.", code="loading")
        try:
            self._ticket = await admitted(
                self.state,
                self.tenant,
                self.model,
                prompt_tokens=len(self.prompt_ids),
                max_tokens=self.params.max_tokens,
                charge=self.charge,
            )
        except QuotaExceeded:
            self.outcome = "rate_limited"
            raise
        except Unavailable:
            self.outcome = "unavailable"
            raise
        restore, export = await self._kv_plan()
        self._stream = self.engine.generate(
            EngineRequest(
                request_id=self.request_id,
                prompt_token_ids=self.prompt_ids,
                params=self.params,
                logits_processor=self.logits_processor,
                constraint=self.constraint,
                step_controller=self.step_controller,
                # Engines know no tenants; the owner key (namespace and uid, not the name) keeps prefix
                # caches apart.
                cache_salt=self.state.owners.get(self.tenant) or f"unserved\0{self.tenant}",
                restore_kv=restore,
                export_kv=export,
            )
        )
        try:
            self._first = await self._next()
        except ConstraintError as e:
            self.outcome = "client_error"
            raise InvalidConstraint(str(e)) from e
        except EngineError as e:
            self.outcome = "client_error"
            raise InvalidRequest(str(e), code="engine_rejected") from e
        except StopAsyncIteration as e:
            raise EngineFailed("The engine ended the stream without a result.") from e

    async def _kv_plan(self) -> tuple[KVSnapshot | None, bool]:
        """The tenant's KV policy for this sequence: the cached prefix to restore (a miss, a slow
        store, anything odd: None, so it prefills) and whether to ask the engine for this
        sequence's KV when it ends."""
        kv = self.state.kv
        if kv is None:
            return None, False
        entry = self.state.tenants.get(self.tenant)
        owner = self.state.owners.get(self.tenant)
        if owner is None:  # not a served tenant (gone in a reload): nothing cached is its own
            return None, False
        spec = entry.spec if entry is not None else None
        info = self.engine.info
        try:
            restore = await kv.restore(owner, spec, info, self.prompt_ids, hint=self.kv_hint)
        except Exception:  # the store must never fail a request: prefilling is always correct
            log.exception("KV snapshot lookup failed for %s", self.request_id)
            restore = None
        return restore, kv.wants_export(owner, spec, info)

    def _keep_kv(self, snapshot: KVSnapshot) -> None:
        kv = self.state.kv
        if kv is None:
            return
        entry = self.state.tenants.get(self.tenant)
        owner = self.state.owners.get(self.tenant)
        if owner is None:
            return
        try:
            self.kv_key = kv.keep(owner, entry.spec if entry else None, self.engine.info, snapshot)
        except Exception:
            log.exception("keeping the KV snapshot of %s failed", self.request_id)

    async def _next(self) -> TokenEvent:
        assert self._stream is not None
        event = await anext(self._stream)
        now = time.perf_counter()
        if event.token_id is not None:
            labels = (self.tenant, self.model)
            if self._last_token_at is None:
                self.state.metrics.ttft.labels(*labels).observe(now - self.arrived)
            else:
                self.state.metrics.itl.labels(*labels).observe(now - self._last_token_at)
            self._last_token_at = now
            self.usage.completion_tokens += 1
        if event.finish_reason is not None:
            self.finish_reason = event.finish_reason
            self.error_code, self.error = event.error_code, event.error
            if event.kv is not None:
                self._keep_kv(event.kv)
            # The engine's final counts are authoritative (they include tokens it held back).
            self.usage = Usage(
                prompt_tokens=event.prompt_tokens or len(self.prompt_ids),
                completion_tokens=event.completion_tokens or self.usage.completion_tokens,
                cached_prompt_tokens=event.cached_prompt_tokens,
            )
        return event

    async def events(self) -> AsyncIterator[TokenEvent]:
        """Every event, the one `start()` read first included, up to and including the final one."""
        event = self._first
        if event is None:
            return
        self._first = None
        while True:
            yield event
            if event.finish_reason is not None:
                return
            event = await self._next()

    def failure(self) -> ServingError | None:
        """Engine-side endings that are not a completion: errors, never a silent truncation."""
        if self.finish_reason == "cancelled":
            return Unavailable("The request was cancelled by the server.", code="service_unavailable")
        if self.finish_reason == "error" and self.error_code == "invalid_constraint":
            return InvalidConstraint(self.error or "The constraint is invalid.")
        if self.finish_reason == "error" and self.error_code is not None:
            # A step controller's failure (sampler_timeout, sampler_trap, sampler_invalid): the door
            # that gave it the controller maps `code` to its own.
            return EngineFailed(self.error or "The step controller failed.", code=self.error_code)
        if self.finish_reason == "error":
            return EngineFailed("The engine failed while generating.", code="engine_error")
        return None

    async def close(self) -> None:
        """Cancel the sequence if it is still running, release the ticket, count the request."""
        if self._closed:
            return
        self._closed = True
        # Shielded: this runs while a disconnect is cancelling the request, and it must still finish.
        with anyio.CancelScope(shield=True):
            if self._stream is not None:
                if self.finish_reason is None:
                    self.engine.cancel(self.request_id)
                aclose = getattr(self._stream, "aclose", None)
                if aclose is not None:
                    try:
                        await aclose()
                    except Exception:
                        log.exception("closing the engine stream of %s failed", self.request_id)
            if self._ticket is not None:
                self._ticket.release(
                    prompt_tokens=self.usage.prompt_tokens, completion_tokens=self.usage.completion_tokens
                )
            labels = (self.tenant, self.model)
            metrics = self.state.metrics
            if self._stream is not None:
                metrics.prompt_tokens.labels(*labels).inc(self.usage.prompt_tokens)
                metrics.completion_tokens.labels(*labels).inc(self.usage.completion_tokens)
            metrics.requests.labels(self.tenant, self.model, self.endpoint, self.outcome).inc()


@dataclass(frozen=True)
class CompletedText:
    """A whole generation as one text, for callers that do not stream tokens (the ABI's generate)."""

    text: str
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int


async def complete_text(stream: GenerationStream, on_text: Callable[[str], None] | None) -> CompletedText:
    """Run `stream` to its end (and close it), passing each piece of text to `on_text` as it comes."""
    parts: list[str] = []
    try:
        await stream.start()
        async for event in stream.events():
            if event.text:
                parts.append(event.text)
                if on_text is not None:
                    on_text(event.text)
            if event.error:
                raise EngineFailed(event.error)
        stream.outcome = "success"
    finally:
        await stream.close()
    return CompletedText(
        text="".join(parts),
        finish_reason=stream.finish_reason or "stop",
        prompt_tokens=stream.usage.prompt_tokens,
        completion_tokens=stream.usage.completion_tokens,
    )
