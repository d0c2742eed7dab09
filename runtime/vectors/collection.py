"""One collection in memory: items (id, unit vector, text, metadata) and their search.

Search is an exact scan (one matrix-vector product) below EXACT_BELOW items or under a metadata filter,
and a usearch HNSW index above: at 384 dimensions a scan of a few thousand rows is faster than a graph
walk, and exact. The index is kept up to date in place by upserts and deletes, and travels in the
collection's data object so that another pod or a restart loads it instead of building it again.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from .filters import Filter, MetadataValue, matches

EXACT_BELOW = 4096
# HNSW parameters that keep recall@10 above 0.99 at 100,000 x 384 (bench/bench_vectors.py).
CONNECTIVITY = 16
EXPANSION_ADD = 128
EXPANSION_SEARCH = 128
MAGIC = b"REALMVEC1\n"

Matrix = npt.NDArray[np.float32]


class CorruptCollection(Exception):
    """A data object that does not parse."""


@dataclass(frozen=True)
class Hit:
    id: str
    score: float
    text: str | None
    metadata: dict[str, MetadataValue]


def unit_rows(vectors: Matrix) -> Matrix:
    # In float64: the float32 norm of components near 1e30 overflows to inf (and the row to zeros).
    wide = vectors.astype(np.float64)
    norms = np.linalg.norm(wide, axis=1, keepdims=True)
    if not np.all(np.isfinite(wide)) or np.any(norms == 0) or not np.all(np.isfinite(norms)):
        raise ValueError("vectors must be finite and non-zero")
    out: Matrix = (wide / norms).astype(np.float32)
    return out


class Collection:
    def __init__(self, dims: int) -> None:
        self.dims = dims
        self.ids: list[str] = []
        self.keys: list[int] = []  # the usearch key of each row, stable across deletes
        self.texts: list[str | None] = []
        self.metadata: list[dict[str, MetadataValue]] = []
        self.vectors: Matrix = np.zeros((0, dims), dtype=np.float32)
        self._rows: dict[str, int] = {}
        self._next_key = 0
        self._index: Any = None  # usearch.index.Index once built
        self._key_rows: dict[int, int] | None = None  # usearch key -> row, built when first needed

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def vector_bytes(self) -> int:
        return int(self.vectors.nbytes)

    def upsert(
        self,
        ids: Sequence[str],
        vectors: Matrix,
        texts: Sequence[str | None],
        metadata: Sequence[dict[str, MetadataValue]],
    ) -> None:
        """Add items, replacing those whose id exists. `vectors` are made unit length here."""
        if vectors.ndim != 2 or vectors.shape[1] != self.dims:
            raise ValueError(f"vectors must have {self.dims} dimensions")
        if not (len(ids) == len(vectors) == len(texts) == len(metadata)):
            raise ValueError("ids, vectors, texts and metadata differ in length")
        if len(set(ids)) != len(ids):
            raise ValueError("an id appears twice in one upsert")
        unit = unit_rows(vectors)
        replaced = [i for i in ids if i in self._rows]
        if replaced:
            self.delete(replaced)
        new_keys = list(range(self._next_key, self._next_key + len(ids)))
        self._next_key += len(ids)
        base = len(self.ids)
        self.ids.extend(ids)
        self.keys.extend(new_keys)
        self.texts.extend(texts)
        self.metadata.extend(dict(m) for m in metadata)
        self.vectors = np.concatenate([self.vectors, unit]) if base else unit.copy()
        for n, item in enumerate(ids):
            self._rows[item] = base + n
        self._key_rows = None
        if self._index is not None:
            self._index.add(np.asarray(new_keys, dtype=np.uint64), unit)

    def delete(self, ids: Sequence[str]) -> int:
        """Remove the items with these ids; returns how many there were."""
        gone = sorted({self._rows[i] for i in ids if i in self._rows})
        if not gone:
            return 0
        if self._index is not None:
            for row in gone:
                self._index.remove(self.keys[row])
        keep = np.ones(len(self.ids), dtype=bool)
        keep[gone] = False
        self.vectors = self.vectors[keep]
        for name in ("ids", "keys", "texts", "metadata"):
            old = getattr(self, name)
            setattr(self, name, [x for x, k in zip(old, keep, strict=True) if k])
        self._rows = {item: row for row, item in enumerate(self.ids)}
        self._key_rows = None
        return len(gone)

    def search(
        self, query: Matrix, k: int, *, where: Filter | None = None, threshold: float | None = None
    ) -> list[Hit]:
        """The `k` items most similar to `query` (cosine), best first, at or above `threshold`."""
        if query.shape != (self.dims,):
            raise ValueError(f"the query must have {self.dims} dimensions")
        if not self.ids or k < 1:
            return []
        q = unit_rows(query[None, :])[0]
        if where is not None:
            rows = np.fromiter((matches(where, m) for m in self.metadata), dtype=bool, count=len(self.ids))
            candidates = np.flatnonzero(rows)
            found = self._exact(q, k, candidates)
        elif len(self.ids) < EXACT_BELOW:
            found = self._exact(q, k, None)
        else:
            found = self._approximate(q, k)
        return [
            Hit(self.ids[row], score, self.texts[row], self.metadata[row])
            for row, score in found
            if threshold is None or score >= threshold
        ]

    def _exact(self, q: Matrix, k: int, rows: npt.NDArray[np.intp] | None) -> list[tuple[int, float]]:
        subset = self.vectors if rows is None else self.vectors[rows]
        if len(subset) == 0:
            return []
        scores = subset @ q
        k = min(k, len(scores))
        best = np.argpartition(-scores, k - 1)[:k]
        best = best[np.argsort(-scores[best], kind="stable")]
        mapped = best if rows is None else rows[best]
        return [(int(r), float(scores[b])) for r, b in zip(mapped, best, strict=True)]

    def _approximate(self, q: Matrix, k: int) -> list[tuple[int, float]]:
        index = self.index()
        found = index.search(q, min(k, len(self.ids)))
        if self._key_rows is None:
            self._key_rows = {key: row for row, key in enumerate(self.keys)}
        by_key = self._key_rows
        out: list[tuple[int, float]] = []
        for key, distance in zip(found.keys, found.distances, strict=True):
            row = by_key.get(int(key))
            if row is not None:
                out.append((row, 1.0 - float(distance)))
        return out

    def index(self) -> Any:
        """The HNSW index, built now if it is not there."""
        if self._index is None:
            # Imported here, never at start-up: usearch's extension exports the OpenMP runtime it
            # links statically, and llama.cpp's CPU backend fails to load in a process that has it.
            from usearch.index import Index

            index = Index(
                ndim=self.dims,
                metric="cos",
                dtype="f32",
                connectivity=CONNECTIVITY,
                expansion_add=EXPANSION_ADD,
                expansion_search=EXPANSION_SEARCH,
            )
            if self.ids:
                index.add(np.asarray(self.keys, dtype=np.uint64), self.vectors)
            self._index = index
        return self._index

    # ---- the data object -------------------------------------------------------------------------

    def to_bytes(self) -> bytes:
        index_blob = b""
        if self._index is None and len(self.ids) >= EXACT_BELOW:
            self.index()
        if self._index is not None:
            index_blob = bytes(self._index.save())
        header = json.dumps(
            {
                "dims": self.dims,
                "ids": self.ids,
                "keys": self.keys,
                "next_key": self._next_key,
                "texts": self.texts,
                "metadata": self.metadata,
                "index_bytes": len(index_blob),
            },
            separators=(",", ":"),
        ).encode()
        vectors = self.vectors.astype("<f4").tobytes()
        return MAGIC + struct.pack("<Q", len(header)) + header + vectors + index_blob

    @classmethod
    def from_bytes(cls, data: bytes) -> Collection:
        try:
            if not data.startswith(MAGIC):
                raise CorruptCollection("not a collection data object")
            at = len(MAGIC)
            (size,) = struct.unpack_from("<Q", data, at)
            at += 8
            header = json.loads(data[at : at + size])
            at += size
            out = cls(int(header["dims"]))
            n = len(header["ids"])
            span = n * out.dims * 4
            out.vectors = (
                np.frombuffer(data[at : at + span], dtype="<f4").astype(np.float32).reshape(n, out.dims)
            )
            at += span
            out.ids, out.keys = list(header["ids"]), [int(k) for k in header["keys"]]
            out.texts, out.metadata = list(header["texts"]), list(header["metadata"])
            out._next_key = int(header["next_key"])
            out._rows = {item: row for row, item in enumerate(out.ids)}
            blob = data[at : at + int(header["index_bytes"])]
        except (ValueError, KeyError, TypeError, struct.error) as e:
            raise CorruptCollection(f"the collection's data object does not parse: {e}") from e
        if blob:
            from usearch.index import Index

            out._index = Index.restore(bytearray(blob), view=False)
            out._index.expansion_search = EXPANSION_SEARCH
        return out
