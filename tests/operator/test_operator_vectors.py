"""The operator's half of `Tenant.spec.vectors` against a real S3 server (MinIO on loopback,
tests/s3server.py): what a Tenant's collections hold goes to its status, and its collections are deleted
with it per `deletionPolicy`, the finalizer holding it while S3 is unreachable. The collections are
written by the runtime's own store, the way the pods lay them out. The Kubernetes API is a fake here
(`StatusKube`, a seam no issue names): the operator's wiring on a real control plane is
e2e/test_operator_vectors.py."""

from __future__ import annotations

import base64
from typing import Any

import kopf
import numpy as np
import pytest
import s3server
from test_operator_finalizer import closed_endpoint
from test_operator_secrets import FakeKube
from test_operator_state import NS, tenant

from realm.operator import builders, handlers, tenants, vectors, world
from realm.operator.options import OperatorConfig
from realm.operator.outcome import now
from realm.operator.state import Operator
from realm.runtime.conversations.s3_store import make_client
from realm.runtime.spec.identity import NamespaceIdentity
from realm.runtime.vectors.collection import Collection
from realm.runtime.vectors.manifests import Manifest
from realm.runtime.vectors.objects import S3Objects
from realm.runtime.vectors.store import CollectionStore

INSTALLATION = "vectors-test-installation-secret"
CREDENTIALS = "realm-s3"


class StatusKube(FakeKube):
    """FakeKube that keeps the status patches it is sent."""

    def __init__(self, objects: dict[str, list[dict[str, Any]]]) -> None:
        super().__init__(objects)
        self.patches: list[tuple[str, str, dict[str, Any]]] = []

    def patch_status(self, kind: str, namespace: str, name: str, patch: dict[str, Any]) -> None:
        self.patches.append((kind, name, patch))


def credentials_secret(bucket: s3server.S3Bucket) -> dict[str, Any]:
    data = {
        "AWS_ACCESS_KEY_ID": base64.b64encode(bucket.access_key.encode()).decode(),
        "AWS_SECRET_ACCESS_KEY": base64.b64encode(bucket.secret_key.encode()).decode(),
    }
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": CREDENTIALS, "namespace": NS},
        "data": data,
    }


def operator(kube: StatusKube, s3: builders.S3Options | None) -> Operator:
    config = OperatorConfig(s3=s3, finalizer_timeout_s=600, installation_secret=INSTALLATION)
    op = handlers.new_operator(kube, config)  # type: ignore[arg-type]
    op.indexes = world.Indexes.empty()
    return op


def options(bucket: s3server.S3Bucket) -> builders.S3Options:
    return builders.S3Options(
        endpoint=bucket.endpoint, region=bucket.region, bucket=bucket.bucket, credentials_secret=CREDENTIALS
    )


def owner(name: str) -> str:
    return NamespaceIdentity.of(INSTALLATION, NS).owner_key(f"uid-{name}")


def runtime_store(bucket: s3server.S3Bucket) -> CollectionStore:
    """The store a runtime pod of this namespace opens (vectors.backend s3, the published prefix)."""
    client = make_client(bucket.endpoint, bucket.region, bucket.access_key, bucket.secret_key)
    return CollectionStore(S3Objects(client, bucket.bucket, vectors.PREFIX))


def collection(store: CollectionStore, owner_key: str, items: int, dims: int = 8) -> Manifest:
    made = store.create(owner_key, name="docs", dims=dims, model=None, metadata={})

    def add(_: Manifest, work: Collection) -> None:
        rows = np.random.default_rng(items).standard_normal((items, dims)).astype(np.float32)
        work.upsert([f"i{n}" for n in range(items)], rows, [None] * items, [{}] * items)

    return store.update(owner_key, made.id, add)[0] if items else made


def test_only_tenants_whose_collections_the_operator_can_reach_and_must_delete_carry_a_finalizer() -> None:
    body = tenant("acme", [])
    shared = operator(StatusKube({}), builders.S3Options(bucket="platform"))
    assert tenants.needs_cleanup(shared, body["spec"], body["metadata"])  # deletionPolicy Delete by default
    retained = {**body["spec"], "vectors": {"deletionPolicy": "Retain"}}
    changed = {**body["metadata"], "generation": 2}  # specs are parsed once per uid and generation
    assert not tenants.needs_cleanup(shared, retained, changed)
    # Without a platform bucket each pod keeps its collections on its own disk: nothing to delete.
    assert not tenants.needs_cleanup(operator(StatusKube({}), None), body["spec"], body["metadata"])
    no_bucket = operator(StatusKube({}), builders.S3Options(endpoint="http://127.0.0.1:1"))
    assert not tenants.needs_cleanup(no_bucket, body["spec"], body["metadata"])


def test_the_status_reports_what_the_collections_hold(s3_bucket: s3server.S3Bucket) -> None:
    store = runtime_store(s3_bucket)
    collection(store, owner("acme"), 5)
    collection(store, owner("acme"), 0)
    collection(store, owner("other"), 7)  # another Tenant's: never counted
    kube = StatusKube({"Secret": [credentials_secret(s3_bucket)]})
    op = operator(kube, options(s3_bucket))
    body = tenant("acme", [])
    tenants.measure_vectors(op, NS, "acme", body["spec"], body["status"], body)
    assert len(kube.patches) == 1
    kind, name, patch = kube.patches[0]
    assert (kind, name) == ("Tenant", "acme")
    assert (patch["vectorCollections"], patch["vectorCount"], patch["vectorBytes"]) == (2, 5, 5 * 8 * 4)
    assert patch["vectorsMeasured"].endswith("Z")
    # Unchanged counts are not written again.
    tenants.measure_vectors(op, NS, "acme", body["spec"], patch, body)
    assert len(kube.patches) == 1


def test_without_a_platform_bucket_nothing_is_measured() -> None:
    kube = StatusKube({})
    body = tenant("acme", [])
    tenants.measure_vectors(operator(kube, None), NS, "acme", body["spec"], body["status"], body)
    assert kube.patches == []


def deleted(name: str, policy: str) -> dict[str, Any]:
    body = tenant(name, [])
    body["spec"]["vectors"] = {"deletionPolicy": policy}
    body["metadata"]["deletionTimestamp"] = now().isoformat().replace("+00:00", "Z")
    return body


def test_a_deleted_tenant_takes_its_collections_with_it_and_nobody_elses(
    s3_bucket: s3server.S3Bucket,
) -> None:
    store = runtime_store(s3_bucket)
    for _ in range(3):
        collection(store, owner("acme"), 4)
    kept = collection(store, owner("other"), 2)
    op = operator(StatusKube({"Secret": [credentials_secret(s3_bucket)]}), options(s3_bucket))
    body = deleted("acme", "Delete")
    tenants.finalize(op, NS, "acme", body["spec"], body)
    assert store.objects.list(f"{owner('acme')}/") == []
    assert [m.id for m in store.list(owner("other"))] == [kept.id]


def test_deletion_policy_retain_keeps_the_collections(s3_bucket: s3server.S3Bucket) -> None:
    store = runtime_store(s3_bucket)
    made = collection(store, owner("acme"), 3)
    op = operator(StatusKube({"Secret": [credentials_secret(s3_bucket)]}), options(s3_bucket))
    body = deleted("acme", "Retain")
    tenants.finalize(op, NS, "acme", body["spec"], body)
    assert [m.id for m in store.list(owner("acme"))] == [made.id]


def test_while_s3_is_unreachable_the_finalizer_holds_the_tenant() -> None:
    s3 = builders.S3Options(endpoint=closed_endpoint(), region="us-east-1", bucket="platform")
    body = deleted("acme", "Delete")
    with pytest.raises(kopf.TemporaryError, match="cannot delete the vector collections yet"):
        tenants.finalize(operator(StatusKube({}), s3), NS, "acme", body["spec"], body)


def test_a_named_credentials_secret_that_is_missing_is_never_replaced_by_the_operators_own() -> None:
    s3 = builders.S3Options(endpoint=closed_endpoint(), bucket="platform", credentials_secret=CREDENTIALS)
    with pytest.raises(vectors.S3Unavailable, match="missing in namespace"):
        vectors.store_for(StatusKube({}), NS, s3)  # type: ignore[arg-type]
