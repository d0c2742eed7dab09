"""The operator applies `Tenant.spec.kvSnapshots` to a real S3 server (MinIO on loopback) on a real
control plane: usage in the Tenant's status, eviction over maxBytes, and deletion per deletionPolicy,
held by a finalizer while S3 is down. Nothing mocked; the snapshot objects are written the way the runtime
lays them out (`<prefix>/<tenant>/<model>/<version>/<hash>`).

    .venv/bin/python -m pytest e2e/test_operator_snapshots.py -m e2e -s
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

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

PREFIX = "realm/kv"


@pytest.fixture(scope="module")
def s3() -> Iterator[s3server.S3Bucket]:
    with s3server.s3_server() as server:
        yield server.new_bucket()


def put_snapshots(s3: s3server.S3Bucket, tenant: str, n: int, size: int = 1000) -> list[str]:
    client = s3.client()
    keys = []
    for i in range(n):
        key = f"{PREFIX}/{tenant}/chat/v1/{i:064x}"
        client.put_object(Bucket=s3.bucket, Key=key, Body=bytes(size))
        keys.append(key)
        time.sleep(1.1)  # S3 keeps second-precision LastModified: make "oldest" unambiguous
    return keys


def keys_of(s3: s3server.S3Bucket, tenant: str) -> list[str]:
    listed = s3.client().list_objects_v2(Bucket=s3.bucket, Prefix=f"{PREFIX}/{tenant}/").get("Contents") or []
    return sorted(o["Key"] for o in listed)


def tenant(name: str, policy: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "realm.dev/v1alpha1",
        "kind": "Tenant",
        "metadata": {"name": name, "namespace": NS},
        "spec": {"allowedModels": [], "kvSnapshots": {"enabled": True, **policy}},
    }


def test_usage_eviction_and_deletion_follow_the_tenant_policy(s3: s3server.S3Bucket, tmp_path: Path) -> None:
    doomed = put_snapshots(s3, "doomed", 3)
    kept = put_snapshots(s3, "keeper", 2)
    bystander = put_snapshots(s3, "bystander", 1)
    with control_plane() as cluster:
        prepare(cluster)
        world = World(cluster, tmp_path / "operator.log")
        creds = {"AWS_ACCESS_KEY_ID": s3.access_key, "AWS_SECRET_ACCESS_KEY": s3.secret_key}
        cluster.kubectl(
            "create",
            "secret",
            "generic",
            "realm-s3",
            "-n",
            NS,
            *(f"--from-literal={k}={v}" for k, v in creds.items()),
        )
        flags = ["--s3-endpoint", s3.endpoint, "--s3-region", s3.region, "--s3-bucket", s3.bucket,
                 "--s3-credentials-secret", "realm-s3"]  # fmt: skip
        with operator(cluster, world.log, *flags, env={"REALM_KV_SWEEP_SECONDS": "2"}):
            world.apply(tenant("doomed", {"maxBytes": 2500, "deletionPolicy": "Delete"}))
            world.apply(tenant("keeper", {"deletionPolicy": "Retain"}))

            def usage(name: str) -> tuple[int, int] | None:
                st = (world.get("tenant", name) or {}).get("status") or {}
                got = (st.get("kvSnapshotObjects"), st.get("kvSnapshotBytes"))
                return got if st.get("kvSnapshotsSwept") else None  # type: ignore[return-value]

            assert wait_for("doomed's usage", lambda: usage("doomed") == (2, 2000) and usage("doomed"))
            assert keys_of(s3, "doomed") == doomed[1:], "the oldest snapshot is evicted over maxBytes"
            assert wait_for("keeper's usage", lambda: usage("keeper")) == (2, 2000)

            # Deleting with S3 down: the finalizer holds the Tenant until its snapshots can go.
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
            assert keys_of(s3, "doomed") == []

            cluster.kubectl("delete", "tenant", "keeper", "-n", NS)
            wait_for("keeper gone", lambda: world.get("tenant", "keeper") is None)
            assert keys_of(s3, "keeper") == kept, "deletionPolicy Retain keeps the snapshots"
            assert keys_of(s3, "bystander") == bystander, "another tenant's snapshots were touched"
            events = json.loads(cluster.kubectl("get", "events", "-n", NS, "-o", "json").stdout)["items"]
            assert any(e["reason"] == "SnapshotsDeleted" for e in events)
        assert "Traceback" not in world.log.read_text()
