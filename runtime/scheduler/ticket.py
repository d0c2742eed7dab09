"""A granted admission: the right to have one request inside one model's engine until released."""

from __future__ import annotations

from collections.abc import Callable
from types import TracebackType


class Ticket:
    """Hold while the request runs; release exactly when it leaves the engine.

    Usable as `async with await scheduler.admit(...) as ticket:`, which releases on exit with the
    usage given to `report()` (by default the prompt estimate and no completion tokens).
    """

    __slots__ = (
        "_on_release",
        "_released",
        "_reported",
        "charged",
        "max_tokens",
        "model",
        "prompt_tokens",
        "queue_wait_s",
        "tenant",
    )

    def __init__(
        self,
        tenant: str,
        model: str,
        *,
        prompt_tokens: int,
        max_tokens: int,
        queue_wait_s: float,
        on_release: Callable[[Ticket, int], None],
        charged: bool = True,
    ) -> None:
        self.tenant = tenant
        self.model = model
        self.prompt_tokens = prompt_tokens  # as estimated at admission
        self.max_tokens = max_tokens
        self.queue_wait_s = queue_wait_s
        # False for a call another pod admitted against the tenant's rate quotas (a cross-pod call):
        # this one holds a slot for fairness, and neither charges nor settles the quotas.
        self.charged = charged
        self._on_release = on_release
        self._released = False
        self._reported: tuple[int, int] = (prompt_tokens, 0)

    @property
    def estimated_tokens(self) -> int:
        """What admission charged against the tenant's token quota."""
        return self.prompt_tokens + self.max_tokens

    @property
    def released(self) -> bool:
        return self._released

    def report(self, *, prompt_tokens: int, completion_tokens: int) -> None:
        """Record actual usage for the release that `async with` will do."""
        self._reported = (prompt_tokens, completion_tokens)

    def release(self, *, prompt_tokens: int, completion_tokens: int) -> None:
        """Free the slot and settle the token charge with actual usage. Later calls do nothing."""
        if self._released:
            return
        self._released = True
        self._on_release(self, max(0, prompt_tokens) + max(0, completion_tokens))

    async def __aenter__(self) -> Ticket:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        prompt_tokens, completion_tokens = self._reported
        self.release(prompt_tokens=prompt_tokens, completion_tokens=completion_tokens)

    def __repr__(self) -> str:
        state = "released" if self._released else "held"
        return f"Ticket(tenant={self.tenant!r}, model={self.model!r}, {state})"
