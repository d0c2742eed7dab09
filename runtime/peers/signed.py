"""Signed pod-to-pod messages that carry no tenant's call: a body and its MAC under the namespace secret.

    header x-realm-signature = hex HMAC-SHA256(key, purpose \\0 body)
    key                      = the namespace secret's key for `purpose` (runtime/spec/identity.py)

The same secret as the internal credential (credential.py), under another purpose, so a signature
made for one kind of message is worthless for any other. Freshness (a timestamp in the body) and the
body's meaning are the receiver's to check: this module only says whether a pod of the namespace
wrote these exact bytes.
"""

from __future__ import annotations

import hashlib
import hmac

from realm.runtime.spec.identity import NamespaceIdentity

from .credential import CredentialError

SIGNATURE_HEADER = "x-realm-signature"
#: Every pod of the namespace exchanges its demand for tenants' rate quotas (serving/quota_exchange.py).
QUOTA_DEMAND = "realm-quota-demand"
#: A tenant's pipeline run asked of the pod that ran it (serving/pipeline_peers.py).
PIPELINE_RUN = "realm-pipeline-run"
_HEX_LENGTH = 64


def sign(identity: NamespaceIdentity, purpose: str, body: bytes) -> str:
    key = identity.derive(purpose).encode()
    return hmac.new(key, purpose.encode() + b"\0" + body, hashlib.sha256).hexdigest()


def verify(identity: NamespaceIdentity, purpose: str, body: bytes, signature: str | None) -> None:
    """Raise CredentialError unless `signature` is this namespace's for `purpose` over `body`."""
    if not signature:
        raise CredentialError("This listener needs a signed message.", code="missing_credential")
    if len(signature) != _HEX_LENGTH:
        raise CredentialError("The message's signature is malformed.", code="invalid_credential")
    if not hmac.compare_digest(signature.encode(), sign(identity, purpose, body).encode()):
        raise CredentialError("The message's signature is wrong.", code="invalid_credential")
