"""The kustomize base and overlays and the example custom resources, as a GitOps tool would apply them.

One control plane with controllers and kwok (a fake GPU node) for the module:

1. `kubectl kustomize` builds manifests/base and both overlays, and each passes a server-side dry run
   with strict field validation.
2. The dev overlay is applied for real: CRDs Established, the operator's pod Ready on the kwok node.
3. The operator runs (as a host process, with the base's ServiceAccount token and the applied
   Deployment's arguments) and the examples (manifests/examples) are applied: every one becomes Ready
   (the Model's pods on the kwok GPU node), and after several resync passes no field a user set has
   changed: same values, `metadata.generation` still 1, no manager but the applier owns any `f:spec`
   field, and re-applying the same files server-side has no conflict.
4. The Argo CD Lua health checks in docs/gitops.md, run with a real Lua (lupa), call the live objects
   Healthy, and hand-made states Progressing or Degraded. The Argo CD and Flux documents in
   docs/gitops.md are checked for the order they promise (sync waves, dependsOn).

    .venv/bin/python -m pytest e2e/test_gitops.py -m e2e -s
"""

from __future__ import annotations

import copy
import json
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

pytestmark = pytest.mark.e2e

from e2e.support import require_control_plane  # noqa: E402

require_control_plane()

from e2e.test_helm import (  # noqa: E402
    NODE,
    PEERING_CRDS,
    REALM_CRDS,
    Env,
    conditions,
    current,
    deployment_args,
    dry_run,
    forbidden_lines,
    operator_as,
    running_ready,
    started_cluster,
    token_kubeconfig,
    wait_for,
)

REPO = Path(__file__).resolve().parent.parent
EXAMPLES = REPO / "manifests" / "examples"
DOCS = REPO / "docs" / "gitops.md"
NS, TEAM = "realm-system", "team-a"
APPLIER = "kubectl"  # kubectl apply --server-side's field manager


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    began = time.monotonic()
    with started_cluster(tmp_path_factory.mktemp("gitops")) as e:
        yield e
    print(f"\n[gitops e2e] module {time.monotonic() - began:.1f}s; " + ", ".join(
        f"{k} {v:.1f}s" for k, v in e.timings.items()) + f"; {e.notes}")  # fmt: skip


def kustomize(env: Env, path: str) -> str:
    return env.kubectl("kustomize", str(REPO / path)).stdout


def example_files() -> list[Path]:
    """The example custom resources (a kustomization.yaml, if the folder gets one, is not one of them)."""
    return [p for p in sorted(EXAMPLES.glob("*.yaml")) if p.name != "kustomization.yaml"]


def examples() -> list[dict[str, Any]]:
    return [d for p in example_files() for d in yaml.safe_load_all(p.read_text()) if d]


def apply_examples(env: Env, check: bool = True) -> Any:
    files = [a for p in example_files() for a in ("-f", str(p))]
    return env.kubectl("apply", "--server-side", "-n", TEAM, *files, check=check)


def leaves(node: Any, path: tuple[str | int, ...] = ()) -> Iterator[tuple[tuple[str | int, ...], Any]]:
    """Every scalar a user set, by path (list items by index)."""
    if isinstance(node, dict):
        for k, v in node.items():
            yield from leaves(v, (*path, k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from leaves(v, (*path, i))
    else:
        yield path, node


def at(node: Any, path: tuple[str | int, ...]) -> Any:
    for p in path:
        node = node[p]
    return node


# 1-2. Build, validate, apply --------------------------------------------------------------------------


def test_base_and_overlays_build_and_pass_server_side_validation(env: Env) -> None:
    for ns in (NS, TEAM):
        env.kubectl("create", "namespace", ns)
    began = time.monotonic()
    for path in ("manifests/base", "manifests/overlays/dev", "manifests/overlays/prod"):
        built = kustomize(env, path)
        docs = [d for d in yaml.safe_load_all(built) if d]
        kinds = {d["kind"] for d in docs}
        assert {"CustomResourceDefinition", "Deployment", "ClusterRole", "ServiceAccount"} <= kinds, path
        out = dry_run(env, built)
        assert out.returncode == 0, f"{path}: {out.stderr}"
        assert out.stdout.count("(server dry run)") == len(docs), out.stdout
    env.timings["kustomize+dry-run x3"] = time.monotonic() - began


def test_dev_overlay_applies_and_the_operator_runs_on_a_kwok_node(env: Env) -> None:
    began = time.monotonic()
    env.kubectl("apply", "--server-side", "-k", str(REPO / "manifests/overlays/dev"))
    env.kubectl(
        "wait",
        "--for=condition=established",
        "--timeout=60s",
        *(f"crd/{c}" for c in REALM_CRDS + PEERING_CRDS),
    )
    env.kubectl("rollout", "status", "deployment/realm-operator", "-n", NS, "--timeout=90s")
    env.timings["apply dev overlay until rolled out"] = time.monotonic() - began
    (pod,) = env.items("pods", NS, "app.kubernetes.io/component=operator")
    assert pod["spec"]["nodeName"] == NODE and running_ready(pod)
    assert "--verbose" in deployment_args(env, NS, "realm-operator")
    for crd in REALM_CRDS:
        live = env.get("crd", crd)
        assert live is not None and live["metadata"]["annotations"]["argocd.argoproj.io/sync-wave"] == "-1"


# 3. Examples: Ready, and no user field changed ---------------------------------------------------------


def test_examples_become_ready_and_the_operator_changes_no_user_field(env: Env) -> None:
    docs = examples()
    assert sorted(d["kind"] for d in docs) == ["Model", "Pipeline", "Tenant"]
    model = next(d for d in docs if d["kind"] == "Model")
    pipeline = next(d for d in docs if d["kind"] == "Pipeline")
    tenant = next(d for d in docs if d["kind"] == "Tenant")
    assert [t["weight"] for t in model["spec"]["traffic"]] == [90, 10] and len(pipeline["spec"]["steps"]) == 3
    assert tenant["spec"]["quotas"] and tenant["spec"]["kvSnapshots"]

    # The runtime pods' account in the tenant namespace (docs/gitops.md: the base has it in realm-system).
    env.kubectl("create", "serviceaccount", "realm-runtime", "-n", TEAM)
    log = env.tmp / "operator.log"
    kubeconfig = token_kubeconfig(env, NS, "realm-operator")
    began = time.monotonic()
    with operator_as(env, kubeconfig, deployment_args(env, NS, "realm-operator"), log) as op:
        apply_examples(env)

        def ready(kind: str, name: str) -> dict[str, Any] | None:
            obj = current(env.get(kind, name, TEAM))
            return obj if conditions(obj).get("Ready", {}).get("status") == "True" else None

        for d in docs:
            wait_for(f"{d['kind']} {d['metadata']['name']} Ready",
                     lambda d=d: ready(d["kind"].lower(), d["metadata"]["name"]))  # type: ignore[misc]  # fmt: skip
        env.timings["examples Ready"] = time.monotonic() - began
        pods = [
            p
            for p in env.items("pods", TEAM, f"realm.dev/model={model['metadata']['name']}")
            if running_ready(p)
        ]
        assert len(pods) == 2 and {p["spec"]["nodeName"] for p in pods} == {NODE}
        # Several resync passes (REALM_RESYNC_SECONDS=5) over an unchanged world.
        time.sleep(12)
        assert op.poll() is None, log.read_text()[-3000:]
    assert not forbidden_lines(log), forbidden_lines(log)

    changed: list[str] = []
    for d in docs:
        obj = env.get(d["kind"].lower(), d["metadata"]["name"], TEAM, "--show-managed-fields")
        assert obj is not None
        for path, value in leaves(d["spec"]):
            if at(obj["spec"], path) != value:
                changed.append(
                    f"{d['kind']}.spec.{'.'.join(map(str, path))}: {value!r} -> {at(obj['spec'], path)!r}"
                )
        assert obj["metadata"]["generation"] == 1, f"{d['kind']}: spec written after the apply"
        for entry in obj["metadata"]["managedFields"]:
            if entry["manager"] != APPLIER:
                assert "f:spec" not in (entry.get("fieldsV1") or {}), f"{entry['manager']} owns spec fields"
        managers = {e["manager"] for e in obj["metadata"]["managedFields"]}
        assert "realm-operator" in managers, f"{d['kind']}: the operator wrote its status ({managers})"
    assert not changed, changed

    # A GitOps re-sync of the same files: server-side apply without --force-conflicts, no conflict.
    again = apply_examples(env, check=False)
    assert again.returncode == 0 and "conflict" not in again.stderr.lower(), again.stderr
    assert all("serverside-applied" in line for line in again.stdout.splitlines()), again.stdout
    for d in docs:
        obj = env.get(d["kind"].lower(), d["metadata"]["name"], TEAM)
        assert obj is not None and obj["metadata"]["generation"] == 1
    env.notes["objects checked"] = len(docs)


# 4. Argo CD health checks and the documented order ----------------------------------------------------


def doc_yaml() -> list[dict[str, Any]]:
    blocks = re.findall(r"```yaml\n(.*?)```", DOCS.read_text(), flags=re.S)
    return [d for b in blocks for d in yaml.safe_load_all(b) if d]


def health_scripts() -> dict[str, str]:
    (cm,) = [d for d in doc_yaml() if d.get("kind") == "ConfigMap" and d["metadata"]["name"] == "argocd-cm"]
    prefix = "resource.customizations.health.realm.dev_"
    return {k.removeprefix(prefix): v for k, v in cm["data"].items() if k.startswith(prefix)}


def health(script: str, obj: dict[str, Any]) -> dict[str, Any]:
    """Run an Argo CD health script the way Argo CD does: `obj` global, the returned table is the result."""
    lupa = pytest.importorskip("lupa", reason="lupa (a real Lua) runs the health checks: pip install lupa")
    lua = lupa.LuaRuntime(unpack_returned_tuples=True)
    lua.globals().obj = lua.table_from(json.loads(json.dumps(obj)), recursive=True)
    result = lua.execute(script)
    return dict(result.items())


def test_argocd_health_checks_read_the_operators_status(env: Env) -> None:
    scripts = health_scripts()
    assert set(scripts) == {"Tenant", "Model", "Pipeline"}
    for d in examples():
        live = env.get(d["kind"].lower(), d["metadata"]["name"], TEAM)
        assert live is not None
        hs = health(scripts[d["kind"]], live)
        assert hs["status"] == "Healthy", (d["kind"], hs)

        fresh = copy.deepcopy(live)
        fresh.pop("status", None)
        assert health(scripts[d["kind"]], fresh)["status"] == "Progressing"
        newer = copy.deepcopy(live)
        newer["metadata"]["generation"] += 1
        assert health(scripts[d["kind"]], newer)["status"] == "Progressing"
        for reason, expected in (("Invalid", "Degraded"), ("ModelNotReady", "Progressing")):
            broken = copy.deepcopy(live)
            for c in broken["status"]["conditions"]:
                if c["type"] == "Ready":
                    c.update(status="False", reason=reason, message="made up")
            hs = health(scripts[d["kind"]], broken)
            assert (hs["status"], hs["message"]) == (expected, f"{reason}: made up"), (d["kind"], hs)


def test_documented_argocd_and_flux_order() -> None:
    docs = doc_yaml()
    apps = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Application"}
    wave = {n: int(a["metadata"]["annotations"]["argocd.argoproj.io/sync-wave"]) for n, a in apps.items()}
    assert wave["realm-crds"] < wave["realm"] < wave["realm-team-a"]
    for name, path in (("realm-crds", "manifests/base/crds"), ("realm", "manifests/overlays/prod"),
                       ("realm-team-a", "manifests/examples")):  # fmt: skip
        assert apps[name]["spec"]["source"]["path"] == path and any((REPO / path).glob("*.yaml"))
    assert apps["realm-crds"]["spec"]["syncPolicy"]["automated"]["prune"] is False
    flux = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Kustomization"}
    assert [x["name"] for x in flux["realm"]["spec"]["dependsOn"]] == ["realm-crds"]
    assert [x["name"] for x in flux["realm-team-a"]["spec"]["dependsOn"]] == ["realm"]
    assert flux["realm-crds"]["spec"]["wait"] is True and flux["realm-crds"]["spec"]["prune"] is False
    checks = {c["kind"] for c in flux["realm-team-a"]["spec"]["healthCheckExprs"]}
    assert checks == {"Tenant", "Model", "Pipeline"}
    for f in flux.values():  # Flux generates a kustomization.yaml where a folder has none
        assert any((REPO / f["spec"]["path"]).glob("*.yaml")), f["spec"]["path"]
