"""Why a request was not admitted. The HTTP layer maps these to status codes; nothing here knows HTTP."""

from __future__ import annotations

from typing import Literal

QuotaKind = Literal["requests_per_minute", "tokens_per_minute", "module_deploys_per_minute"]


class QuotaExceeded(Exception):
    """A rate quota (requests, tokens or module deploys per minute) is exhausted; retrying before
    `retry_after` is futile."""

    def __init__(self, kind: QuotaKind, retry_after: float, message: str | None = None) -> None:
        self.kind: QuotaKind = kind
        self.retry_after = retry_after
        self.message = message or f"{kind} quota exhausted; retry in {retry_after:.3f}s"
        super().__init__(self.message)


class QueueFull(Exception):
    """The tenant already has `max_queued_requests` waiting.

    `retry_after` is a hint, not a promise: when a slot frees depends on other requests' lengths,
    which the scheduler cannot know.
    """

    def __init__(self, retry_after: float, message: str | None = None) -> None:
        self.retry_after = retry_after
        self.message = message or "too many queued requests"
        super().__init__(self.message)


class AdmissionClosed(Exception):
    """The scheduler is draining (server shutting down): nothing new enters the engine."""

    def __init__(self, message: str = "admission is closed") -> None:
        self.message = message
        super().__init__(message)
