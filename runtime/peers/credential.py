"""The credential a cross-pod call carries: who the tenant is, what it may generate with, until when.

    credential = base64url(claims JSON) "." hex HMAC-SHA256(key, "realm-internal-call" \\0 claims JSON)
    key        = the namespace secret's key for internal calls (runtime/spec/identity.py, `derive`)

The claims name the tenant by its identity (namespace, name, uid), the target model and version, an
expiry (the caller's remaining deadline, in wall-clock seconds) and the hop count. Every runtime pod of
a namespace holds that namespace's secret (REALM_IDENTITY_SECRET, from the operator's Secret), so any
of them can sign and check; a pod of another namespace, or anything without the secret, cannot forge
one. A tenant's API key never leaves the pod it was presented to.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import time

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from realm.runtime.spec.identity import NamespaceIdentity

#: The most pods a generation may pass through: origin -> server, and one more for a server that
#: must itself call on (none does today: a pod serves internal calls only for models it loads).
MAX_HOPS = 2
#: Longest a credential may claim to live: a caller's deadline is bounded, a credential too.
MAX_LIFETIME_S = 3600.0
#: Bytes of a credential header a receiver reads at most.
MAX_CREDENTIAL_BYTES = 4096
HEADER = "x-realm-credential"
_PURPOSE = "realm-internal-call"


class CredentialError(Exception):
    """Why a credential was refused (`code`: a machine-readable reason)."""

    def __init__(self, message: str, *, code: str) -> None:
        super().__init__(message)
        self.message = message
        self.code = code


class InternalCredential(BaseModel):
    """The claims of one cross-pod call."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    namespace: str = Field(..., min_length=1, max_length=63)
    tenant: str = Field(..., min_length=1, max_length=63)
    uid: str = Field(..., min_length=1, max_length=140)
    model: str = Field(..., min_length=1, max_length=63)
    version: str = Field(..., min_length=1, max_length=20)
    expires: float = Field(..., description="Unix time after which the call is refused.")
    hops: int = Field(..., ge=1, le=64)

    def sign(self, identity: NamespaceIdentity) -> str:
        claims = json.dumps(self.model_dump(), sort_keys=True, separators=(",", ":"))
        body = base64.urlsafe_b64encode(claims.encode()).decode().rstrip("=")
        return f"{body}.{_mac(identity, claims)}"

    @classmethod
    def verify(
        cls, token: str | None, identity: NamespaceIdentity, *, now: float | None = None
    ) -> InternalCredential:
        """The claims of a credential signed under `identity`, unexpired and within the hop limit.
        Raises CredentialError (the tenant and model are the caller's to check)."""
        if not token:
            raise CredentialError("This listener needs an internal credential.", code="missing_credential")
        if len(token) > MAX_CREDENTIAL_BYTES or token.count(".") != 1:
            raise CredentialError("The internal credential is malformed.", code="invalid_credential")
        body, mac = token.split(".")
        try:
            claims = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)).decode()
        except (binascii.Error, UnicodeDecodeError, ValueError):
            raise CredentialError(
                "The internal credential is malformed.", code="invalid_credential"
            ) from None
        if not hmac.compare_digest(mac.encode(), _mac(identity, claims).encode()):
            raise CredentialError("The internal credential's signature is wrong.", code="invalid_credential")
        try:
            credential = cls.model_validate_json(claims)
        except ValidationError:
            raise CredentialError(
                "The internal credential is malformed.", code="invalid_credential"
            ) from None
        if credential.namespace != identity.namespace:
            raise CredentialError(
                "The internal credential is another namespace's.", code="invalid_credential"
            )
        now = time.time() if now is None else now
        if credential.expires <= now:
            raise CredentialError("The internal credential has expired.", code="credential_expired")
        if credential.expires > now + MAX_LIFETIME_S:
            raise CredentialError("The internal credential lives too long.", code="invalid_credential")
        if credential.hops > MAX_HOPS:
            raise CredentialError(
                f"The call passed {credential.hops} pods; at most {MAX_HOPS} may carry one generation.",
                code="hop_limit",
            )
        return credential


def _mac(identity: NamespaceIdentity, claims: str) -> str:
    key = identity.derive(_PURPOSE)
    return hmac.new(key.encode(), f"{_PURPOSE}\0{claims}".encode(), hashlib.sha256).hexdigest()
