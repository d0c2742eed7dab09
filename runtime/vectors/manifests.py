"""What a collection is, as its manifest says, and the owner-wide operations that need no more than
the manifests: listing, counting (the Tenant's limits and status) and deleting everything an owner
has. No numpy and no index here, so that the operator can count and delete a Tenant's collections
with the objects layer alone (runtime/vectors/store.py builds the collections on top).

    <owner>/<collection id>/manifest.json      what the collection is, its counts, its data object's sha256
    <owner>/<collection id>/data-<n>-<rand>    the items and the index
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from pydantic import BaseModel, Field

from .objects import Objects

COLLECTION_ID = re.compile(r"^vs_[0-9a-f]{24}$")


class Manifest(BaseModel):
    id: str
    name: str = Field("", max_length=256)
    dims: int = Field(..., ge=1, le=4096)
    model: str | None = None  # the embedding model its texts were embedded with
    created_at: int
    version: int = 0
    count: int = 0
    vector_bytes: int = 0
    data_key: str | None = None
    sha256: str | None = None
    metadata: dict[str, str] = Field(default_factory=dict)


@dataclass(frozen=True)
class Usage:
    """What an owner's collections hold, in the units of the Tenant's `spec.vectors` limits."""

    collections: int
    vectors: int
    vector_bytes: int


def manifests(objects: Objects, owner: str) -> list[Manifest]:
    """The owner's collections as their manifests say, oldest first."""
    out = []
    for key in objects.list(f"{owner}/"):
        if key.endswith("/manifest.json"):
            got = objects.get(key)
            if got is not None:
                out.append(Manifest.model_validate_json(got[0]))
    return sorted(out, key=lambda m: (m.created_at, m.id))


def usage_of(objects: Objects, owner: str, *, besides: str | None = None) -> Usage:
    """The owner's collections counted, but for the one `besides`."""
    found = [m for m in manifests(objects, owner) if m.id != besides]
    return Usage(len(found), sum(m.count for m in found), sum(m.vector_bytes for m in found))


def delete_owner(objects: Objects, owner: str) -> int:
    """Delete every object of the owner (a deleted Tenant's): the manifests first, so that each
    collection is gone as a whole before its data objects go. Returns the collections deleted."""
    keys = objects.list(f"{owner}/")
    found = [k for k in keys if k.endswith("/manifest.json")]
    for key in found:
        objects.delete(key)
    for key in keys:
        if not key.endswith("/manifest.json"):
            objects.delete(key)
    return len(found)
