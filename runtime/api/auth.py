"""Bearer API keys to tenants. Only sha256 digests of keys are ever held in memory."""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass

from realm.runtime.spec.runtime_config import TenantEntry

from .errors import APIError


@dataclass(frozen=True)
class AuthTable:
    """An immutable snapshot: a config reload swaps the whole table, so a lookup never sees half of one."""

    entries: tuple[tuple[bytes, TenantEntry], ...]

    @classmethod
    def build(cls, tenants: list[TenantEntry]) -> AuthTable:
        return cls(tuple((bytes.fromhex(h), t) for t in tenants for h in t.api_key_sha256))

    def lookup(self, api_key: str) -> TenantEntry | None:
        digest = hashlib.sha256(api_key.encode()).digest()
        found: TenantEntry | None = None
        # Compare against every entry, without stopping early, so timing says nothing about which matched.
        for stored, tenant in self.entries:
            if hmac.compare_digest(stored, digest):
                found = tenant
        return found


def authenticate(authorization: str | None, table: AuthTable) -> TenantEntry:
    """The tenant an `Authorization: Bearer <key>` header belongs to, or a 401."""
    scheme, _, token = (authorization or "").partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise APIError(
            401,
            "You didn't provide an API key. Send it as 'Authorization: Bearer YOUR_KEY'.",
            code="missing_api_key",
        )
    tenant = table.lookup(token)
    if tenant is None:
        raise APIError(401, "Incorrect API key provided.", code="invalid_api_key")
    return tenant
