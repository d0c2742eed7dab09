"""The operator applies `Tenant.spec.vectors` to a real S3 server (MinIO on loopback) on a real control
plane: what a Tenant's collections hold in its status, and their deletion per `deletionPolicy`, held by the
finalizer while S3 is down. Nothing mocked; the collections are written by the runtime's own store, as the
pods lay them out (`realm/vectors/<owner key>/<collection id>/...`, the owner key from the Tenant's
namespace and uid under the installation secret, which this test puts in place before the operator starts).

    .venv/bin/python -m pytest e2e/test_operator_vectors.py -m e2e -s
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytestmark = pytest.mark.e2e

from e2e.cluster.cluster import control_plane  # noqa: E402
from e2e.support import require_control_plane  # noqa: E402

require_control_plane()

from e2e.operator_support import NS, REPO, operator, prepare  # noqa: E402
from e2e.support import wait_for  # noqa: E402
from e2e.test_operator import World  # noqa: E402

sys.path.insert(0, str(REPO / "tests"))
import s3server  # noqa: E402

from realm.operator.vectors import PREFIX  # noqa: E402
from realm.runtime.conversations.s3_store import make_client  # noqa: E402
from realm.runtime.spec.identity import NamespaceIdentity  # noqa: E402
from realm.runtime.vectors.collection import Collection  # noqa: E402
from realm.runtime.vectors.objects import S3Objects  # noqa: E402
from realm.runtime.vectors.store import CollectionStore, Manifest  # noqa: E402

INSTALLATION = "e2e-installation-secret"
DIMS = 8


@pytest.fixture(scope="module")
def s3() -> Iterator[s3server.S3Bucket]:
    with s3server.s3_server() as server:
        yield server.new_bucket()


def owner(uid: str) -> str:
    return NamespaceIdentity.of(INSTALLATION, NS).owner_key(uid)


def store_of(s3: s3server.S3Bucket) -> CollectionStore:
    client = make_client(s3.endpoint, s3.region, s3.access_key, s3.secret_key)
    return CollectionStore(S3Objects(client, s3.bucket, PREFIX))


def put_collection(store: CollectionStore, owner_key: str, items: int) -> Manifest:
    made = store.create(owner_key, name="docs", dims=DIMS, model=None, metadata={})

    def add(_: Manifest, work: Collection) -> None:
        rows = np.random.default_rng(items).standard_normal((items, DIMS)).astype(np.float32)
        work.upsert([f"i{n}" for n in range(items)], rows, [None] * items, [{}] * items)

    return store.update(owner_key, made.id, add)[0]


def keys_of(s3: s3server.S3Bucket, owner_key: str) -> list[str]:
    listed = (
        s3.client().list_objects_v2(Bucket=s3.bucket, Prefix=f"{PREFIX}/{owner_key}/").get("Contents") or []
    )
    return sorted(o["Key"] for o in listed)


def tenant(name: str, policy: str) -> dict[str, Any]:
    return {
        "apiVersion": "realm.dev/v1alpha1",
        "kind": "Tenant",
        "metadata": {"name": name, "namespace": NS},
        "spec": {"allowedModels": [], "vectors": {"deletionPolicy": policy}},
    }


def test_usage_and_deletion_follow_the_tenant_policy(s3: s3server.S3Bucket, tmp_path: Path) -> None:
    with control_plane() as cluster:
        prepare(cluster)
        world = World(cluster, tmp_path / "operator.log")
        cluster.kubectl(
            "create", "secret", "generic", "realm-installation", "-n", NS,
            f"--from-literal=installationSecret={INSTALLATION}",
        )  # fmt: skip
        world.apply(tenant("doomed", "Delete"))
        world.apply(tenant("keeper", "Retain"))
        uids = {n: (world.get("tenant", n) or {})["metadata"]["uid"] for n in ("doomed", "keeper")}
        doomed_owner, keeper_owner, bystander_owner = (
            owner(uids["doomed"]),
            owner(uids["keeper"]),
            owner("gone"),
        )
        store = store_of(s3)
        for items in (3, 4):
            put_collection(store, doomed_owner, items)
        put_collection(store, keeper_owner, 5)
        put_collection(store, bystander_owner, 2)
        kept, bystander = keys_of(s3, keeper_owner), keys_of(s3, bystander_owner)
        creds = {"AWS_ACCESS_KEY_ID": s3.access_key, "AWS_SECRET_ACCESS_KEY": s3.secret_key}
        cluster.kubectl(
            "create", "secret", "generic", "realm-s3", "-n", NS,
            *(f"--from-literal={k}={v}" for k, v in creds.items()),
        )  # fmt: skip
        flags = ["--s3-endpoint", s3.endpoint, "--s3-region", s3.region, "--s3-bucket", s3.bucket,
                 "--s3-credentials-secret", "realm-s3"]  # fmt: skip
        with operator(cluster, world.log, *flags, env={"REALM_VECTORS_MEASURE_SECONDS": "2"}):

            def usage(name: str) -> tuple[int, int, int] | None:
                st = (world.get("tenant", name) or {}).get("status") or {}
                got = (st.get("vectorCollections"), st.get("vectorCount"), st.get("vectorBytes"))
                return got if st.get("vectorsMeasured") else None  # type: ignore[return-value]

            assert wait_for("doomed's usage", lambda: usage("doomed")) == (2, 7, 7 * DIMS * 4)
            assert wait_for("keeper's usage", lambda: usage("keeper")) == (1, 5, 5 * DIMS * 4)
            # A third collection is seen at a later count.
            put_collection(store, doomed_owner, 1)
            assert wait_for("doomed's new usage", lambda: usage("doomed") == (3, 8, 8 * DIMS * 4))
            finalizers = (world.get("tenant", "doomed") or {})["metadata"].get("finalizers") or []
            assert finalizers, "a Tenant whose collections are deleted with it carries a finalizer"

            # Deleting with S3 down: the finalizer holds the Tenant until its collections can go.
            s3.server.stop()
            try:
                cluster.kubectl("delete", "tenant", "doomed", "-n", NS, "--wait=false")
                time.sleep(4)
                held = world.get("tenant", "doomed")
                assert held is not None and held["metadata"].get("deletionTimestamp"), (
                    "deleted without cleanup"
                )
            finally:
                s3.server.start()
            wait_for("doomed gone once S3 is back", lambda: world.get("tenant", "doomed") is None, timeout=90)
            assert keys_of(s3, doomed_owner) == []

            cluster.kubectl("delete", "tenant", "keeper", "-n", NS)
            wait_for("keeper gone", lambda: world.get("tenant", "keeper") is None)
            assert keys_of(s3, keeper_owner) == kept, "deletionPolicy Retain keeps the collections"
            assert keys_of(s3, bystander_owner) == bystander, "another tenant's collections were touched"
            events = json.loads(cluster.kubectl("get", "events", "-n", NS, "-o", "json").stdout)["items"]
            assert any(e["reason"] == "CollectionsDeleted" for e in events)
        assert "Traceback" not in world.log.read_text()
