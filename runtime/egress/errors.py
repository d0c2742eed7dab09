"""Why an outbound call was refused or failed, before the serving layer names it for its doors.

`code` is machine-readable and stable (docs/egress.md lists them); the message says why in words a
module's author can act on. The serving layer (runtime/serving/egress.py) maps each class to its own
domain error; nothing here knows HTTP statuses or ABI codes.
"""

from __future__ import annotations


class EgressError(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class Refused(EgressError):
    """The call may not be made: a malformed or forbidden URL, a host off the allowlist, a forbidden
    address, a header the caller may not set. Retrying it unchanged will not help."""


class Unreachable(EgressError):
    """The target could not be reached or answered badly: DNS, connect, TLS, protocol, redirects."""


class TimedOut(EgressError):
    """The call ran past its deadline (the per-call timeout or the invocation's, whichever is first)."""


class TooLarge(EgressError):
    """The response (or request) is larger than the bytes the call may still move."""
