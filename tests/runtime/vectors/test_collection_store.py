"""Collections as kept objects: on disk (a restart) and in a real MinIO bucket shared by two stores
standing for two pods; compare-and-swap between them, verification, and tenants kept apart by owner key."""

from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from realm.runtime.vectors.collection import Collection, CorruptCollection
from realm.runtime.vectors.objects import DirObjects, S3Objects
from realm.runtime.vectors.store import CollectionNotFound, CollectionStore


def _vectors(n: int, dims: int = 8, seed: int = 0) -> np.ndarray:  # type: ignore[type-arg]
    return np.random.default_rng(seed).normal(size=(n, dims)).astype(np.float32)


def _add(store: CollectionStore, owner: str, cid: str, ids: list[str], vecs: np.ndarray) -> None:  # type: ignore[type-arg]
    store.update(owner, cid, lambda _m, c: c.upsert(ids, vecs, [None] * len(ids), [{} for _ in ids]))


def test_a_collection_survives_a_restart_on_disk(tmp_path: Path) -> None:
    store = CollectionStore(DirObjects(tmp_path))
    m = store.create("owner-a", name="n", dims=8, model=None, metadata={})
    vecs = _vectors(10)
    _add(store, "owner-a", m.id, [f"i{n}" for n in range(10)], vecs)
    again = CollectionStore(DirObjects(tmp_path))  # a new process
    manifest, coll = again.read("owner-a", m.id)
    assert manifest.count == 10 and manifest.version == 1
    assert coll.search(vecs[4], 1)[0].id == "i4"


def test_two_pods_on_one_bucket_see_each_others_writes_and_lose_none(s3_bucket: object) -> None:
    bucket = s3_bucket
    pods = [CollectionStore(S3Objects(bucket.client(), bucket.bucket, "realm/vectors")) for _ in range(2)]  # type: ignore[attr-defined]
    m = pods[0].create("owner-a", name="shared", dims=8, model=None, metadata={})
    vecs = _vectors(40)

    def writer(pod: int) -> None:
        for n in range(pod, 40, 2):  # interleaved writes to the same collection from both pods
            _add(pods[pod], "owner-a", m.id, [f"i{n}"], vecs[n : n + 1])

    threads = [threading.Thread(target=writer, args=(p,)) for p in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for pod in pods:
        manifest, coll = pod.read("owner-a", m.id, fresh_s=0)
        assert manifest.count == 40 and sorted(coll.ids) == sorted(f"i{n}" for n in range(40))
    # One data object is left per collection: replaced ones are deleted after the swap.
    keys = pods[0].objects.list(f"owner-a/{m.id}/")
    assert len([k for k in keys if "/data-" in k]) == 1


def test_a_data_object_that_does_not_match_its_manifest_is_refused(tmp_path: Path) -> None:
    store = CollectionStore(DirObjects(tmp_path))
    m = store.create("owner-a", name="", dims=8, model=None, metadata={})
    _add(store, "owner-a", m.id, ["a"], _vectors(1))
    manifest = store.manifest("owner-a", m.id)
    path = tmp_path / (manifest.data_key or "")
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(CorruptCollection, match="sha256"):
        CollectionStore(DirObjects(tmp_path)).read("owner-a", m.id)


def test_owners_are_apart_and_odd_ids_do_not_reach_other_keys(tmp_path: Path) -> None:
    store = CollectionStore(DirObjects(tmp_path))
    m = store.create("owner-a", name="", dims=8, model=None, metadata={})
    assert store.list("owner-b") == []
    for cid in (m.id, "../owner-a/" + m.id, "vs_../../x", ""):
        with pytest.raises(CollectionNotFound):
            store.read("owner-b", cid)
    with pytest.raises(CollectionNotFound):
        store.delete("owner-b", m.id)
    assert store.read("owner-a", m.id)[0].id == m.id


def test_a_refused_change_writes_nothing(tmp_path: Path) -> None:
    store = CollectionStore(DirObjects(tmp_path))
    m = store.create("o", name="", dims=8, model=None, metadata={})

    def refuse(_m: object, c: Collection) -> None:
        c.upsert(["x"], _vectors(1), [None], [{}])
        raise RuntimeError("quota")

    with pytest.raises(RuntimeError):
        store.update("o", m.id, refuse)
    assert store.read("o", m.id, fresh_s=0)[1].ids == []


_HNSW_CHECK = """
import sys
from pathlib import Path
import numpy as np
from realm.runtime.vectors.collection import EXACT_BELOW
from realm.runtime.vectors.filters import Comparison
from realm.runtime.vectors.objects import DirObjects
from realm.runtime.vectors.store import CollectionStore

root = Path(sys.argv[1])
store = CollectionStore(DirObjects(root))
m = store.create("o", name="", dims=16, model=None, metadata={})
n = EXACT_BELOW + 100
vecs = np.random.default_rng(1).normal(size=(n, 16)).astype(np.float32)
store.update("o", m.id, lambda _m, c: c.upsert([f"i{k}" for k in range(n)], vecs, [None] * n, [{}] * n))
coll = CollectionStore(DirObjects(root)).read("o", m.id)[1]
assert coll._index is not None, "the index was rebuilt, not loaded"
assert coll.search(vecs[123], 5)[0].id == "i123"
assert coll.search(vecs[123], 5, where=Comparison(type="ne", key="none", value=1))[0].id == "i123"
print("ok")
"""


def test_above_the_exact_size_the_hnsw_index_travels_with_the_data(tmp_path: Path) -> None:
    """In a child process: usearch's extension exports the OpenMP runtime it links statically, and once
    it is loaded llama.cpp's CPU backend no longer loads in that process (the runtime imports usearch
    only when a collection first needs its index, after its engines are loaded; see collection.py).
    The test session starts runtimes in process, so it never imports usearch itself."""
    out = subprocess.run(
        [sys.executable, "-c", _HNSW_CHECK, str(tmp_path)], capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"
