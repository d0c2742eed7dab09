"""Which ready pod takes a call: consistent hashing with bounded loads, then the shortest queue.

Rendezvous hashing of (tenant, model, the prompt's first block) ranks the pods the same way on every
caller, so a tenant's requests sharing a prefix land where that prefix is cached. A pod may be
preferred only while its load stays within `bound` times the mean load (the new call counted), as in
"consistent hashing with bounded loads" (Mirrokni, Thorup, Zadimoghaddam): beyond it the call goes to
the least loaded pod instead, so a hot prefix cannot pile onto one pod. A pod's load is what this
process has outstanding on it plus the queue depth it last reported.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Sequence

from .discovery import Endpoint

#: The bounded-load factor: a pod may hold up to this multiple of the mean load and still be preferred.
DEFAULT_BOUND = 1.25
#: Characters of the prompt that choose its pod: a block long enough to cover a system prompt's start.
FIRST_BLOCK_CHARS = 256


def rank(endpoints: Sequence[Endpoint], key: str) -> list[Endpoint]:
    """The endpoints by rendezvous score of `key`, best first (the same order on every pod)."""

    def score(ep: Endpoint) -> bytes:
        return hashlib.blake2b(f"{key}\0{ep.address}:{ep.port}".encode(), digest_size=8).digest()

    return sorted(endpoints, key=score, reverse=True)


def rendezvous_key(tenant: str, model: str, prompt: str) -> str:
    return f"{tenant}\0{model}\0{prompt[:FIRST_BLOCK_CHARS]}"


def pick(
    endpoints: Sequence[Endpoint],
    key: str,
    load: Callable[[Endpoint], float],
    *,
    bound: float = DEFAULT_BOUND,
) -> Endpoint | None:
    """The pod for a call keyed `key` (None: no endpoint)."""
    if not endpoints:
        return None
    ranked = rank(endpoints, key)
    loads = {ep: load(ep) for ep in ranked}
    cap = math.ceil(bound * (sum(loads.values()) + 1) / len(ranked))
    top = ranked[0]
    if loads[top] + 1 <= cap:
        return top
    # min keeps the first of equals: among equally loaded pods, the better ranked.
    return min(ranked, key=lambda ep: loads[ep])
