"""Tenant modules pinned by sha256 reach a runtime from modulesDir, from the ConfigMap the operator
projects under it, or from S3 (MinIO on loopback, tests/s3server.py): verified before they are deployed
into a real Sandbox or written to disk, with a clear error and a metric otherwise."""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from pathlib import Path
from typing import Any

import pytest
import wasmtime
from pydantic import ValidationError
from repo_paths import WAT
from runtime_thread import running

from realm.operator import builders as b
from realm.runtime.api.state import AppState
from realm.runtime.metrics import Metrics
from realm.runtime.sandbox.runner import Sandbox
from realm.runtime.serving import module_sources as ms
from realm.runtime.serving.errors import ModulePinned
from realm.runtime.serving.modules import deploy_configured_modules, deploy_module
from realm.runtime.spec.model import ModelSpec
from realm.runtime.spec.runtime_config import TenantEntry
from realm.runtime.spec.tenant import TenantSpec, WasmModuleSource

ECHO = bytes(wasmtime.wat2wasm((WAT / "echo.wat").read_text()))
OTHER = bytes(  # the same program with two memory pages: other bytes, another digest
    wasmtime.wat2wasm((WAT / "echo.wat").read_text().replace('(export "memory") 1', '(export "memory") 2'))
)
assert OTHER != ECHO


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def source(**kw: Any) -> WasmModuleSource:
    return WasmModuleSource.model_validate({"sha256": sha(ECHO), **kw})


def entry(name: str, wasm: WasmModuleSource | None) -> TenantEntry:
    return TenantEntry(name=name, api_key_sha256=["0" * 64], spec=TenantSpec(allowed_models=["m"], wasm=wasm))


@pytest.fixture
def state(tmp_path: Path) -> AppState:
    s = AppState(models={}, metrics=Metrics())
    s.sandbox = Sandbox(tmp_path / "cache")
    return s


def failures(state: AppState, tenant: str) -> float:
    value = state.metrics.registry.get_sample_value("realm_wasm_deploy_failures_total", {"tenant": tenant})
    return value or 0.0


def test_modules_dir_and_projected_configmap(state: AppState, tmp_path: Path) -> None:
    modules = tmp_path / "modules"
    (modules / ms.CONFIGMAP_SUBDIR).mkdir(parents=True)
    (modules / f"{sha(ECHO)}.wasm").write_bytes(ECHO)
    (modules / ms.CONFIGMAP_SUBDIR / f"{sha(OTHER)}.wasm").write_bytes(OTHER)
    other = WasmModuleSource(config_map="beta-module", sha256=sha(OTHER))
    state.apply_tenants([entry("alpha", source()), entry("beta", other)])
    deploy_configured_modules(state, modules)
    assert state.sandbox is not None
    assert state.sandbox.current("alpha").sha256 == sha(ECHO)  # type: ignore[union-attr]
    assert state.sandbox.current("beta").sha256 == sha(OTHER)  # type: ignore[union-attr]
    assert failures(state, "alpha") == failures(state, "beta") == 0


def test_a_file_that_does_not_match_its_pin_is_never_deployed(state: AppState, tmp_path: Path) -> None:
    modules = tmp_path / "modules"
    modules.mkdir()
    (modules / f"{sha(ECHO)}.wasm").write_bytes(OTHER)  # right name, wrong bytes
    state.apply_tenants([entry("alpha", source())])
    deploy_configured_modules(state, modules)
    assert state.sandbox is not None and state.sandbox.current("alpha") is None
    assert failures(state, "alpha") == 1
    with pytest.raises(ms.ModuleUnavailable, match="sha256 differs"):
        ms.module_bytes(source(), modules, None)


def test_s3_module_is_fetched_verified_and_kept(
    state: AppState, tmp_path: Path, s3_bucket: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    s3_bucket.client().put_object(Bucket=s3_bucket.bucket, Key="tenants/alpha.wasm", Body=ECHO)
    # The runtime's S3 settings, as the operator sets them on the pods (boto3's chain reads the keys).
    monkeypatch.setenv("REALM_S3_ENDPOINT", s3_bucket.endpoint)
    monkeypatch.setenv("REALM_S3_REGION", s3_bucket.region)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", s3_bucket.access_key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", s3_bucket.secret_key)
    modules = tmp_path / "modules"
    state.apply_tenants([entry("alpha", source(s3Uri=f"s3://{s3_bucket.bucket}/tenants/alpha.wasm"))])
    deploy_configured_modules(state, modules)
    assert state.sandbox is not None
    assert state.sandbox.current("alpha").sha256 == sha(ECHO)  # type: ignore[union-attr]
    # Kept, so a restart (or S3 going away) does not need S3 again.
    assert (modules / f"{sha(ECHO)}.wasm").read_bytes() == ECHO

    def s3_down(bucket: str, key: str, max_bytes: int) -> bytes:
        raise AssertionError("S3 must not be asked for a module already on disk")

    assert ms.module_bytes(source(s3Uri=f"s3://{s3_bucket.bucket}/x"), modules, s3_down) == ECHO


def test_a_tampered_s3_object_is_refused_and_nothing_is_written(
    state: AppState, tmp_path: Path, s3_bucket: Any
) -> None:
    client = s3_bucket.client()
    client.put_object(Bucket=s3_bucket.bucket, Key="m.wasm", Body=OTHER)
    modules = tmp_path / "modules"

    def get(bucket: str, key: str, max_bytes: int) -> bytes:
        body: bytes = client.get_object(Bucket=bucket, Key=key)["Body"].read()
        return body

    state.apply_tenants([entry("alpha", source(s3Uri=f"s3://{s3_bucket.bucket}/m.wasm"))])
    deploy_configured_modules(state, modules, get)
    assert state.sandbox is not None and state.sandbox.current("alpha") is None
    assert failures(state, "alpha") == 1
    assert not modules.exists() or not any(modules.iterdir())
    with pytest.raises(ms.ModuleUnavailable, match="not the pinned"):
        ms.module_bytes(source(s3Uri=f"s3://{s3_bucket.bucket}/m.wasm"), modules, get)
    with pytest.raises(ms.ModuleUnavailable, match="cannot fetch"):
        ms.module_bytes(source(s3Uri=f"s3://{s3_bucket.bucket}/absent.wasm"), modules, get)


def test_an_s3_module_over_the_cap_is_refused_unread_and_not_deployed(
    state: AppState, tmp_path: Path, s3_bucket: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    s3_bucket.client().put_object(Bucket=s3_bucket.bucket, Key="big.wasm", Body=ECHO)
    for name, value in (
        ("REALM_S3_ENDPOINT", s3_bucket.endpoint),
        ("REALM_S3_REGION", s3_bucket.region),
        ("AWS_ACCESS_KEY_ID", s3_bucket.access_key),
        ("AWS_SECRET_ACCESS_KEY", s3_bucket.secret_key),
    ):
        monkeypatch.setenv(name, value)
    uri = f"s3://{s3_bucket.bucket}/big.wasm"
    modules = tmp_path / "modules"
    state.max_s3_module_bytes = len(ECHO) - 1
    state.apply_tenants([entry("alpha", source(s3Uri=uri))])
    assert deploy_configured_modules(state, modules) == 1
    assert state.sandbox is not None and state.sandbox.current("alpha") is None
    assert failures(state, "alpha") == 1
    assert not modules.exists() or not any(modules.iterdir())
    message = f"{uri} holds {len(ECHO)} bytes, over this runtime's limit of {len(ECHO) - 1} bytes"
    with pytest.raises(ms.ModuleUnavailable, match=message):
        ms.module_bytes(source(s3Uri=uri), modules, ms.s3_getter(), len(ECHO) - 1)
    assert ms.module_bytes(source(s3Uri=uri), modules, ms.s3_getter(), len(ECHO)) == ECHO  # at the cap


def test_an_s3_read_longer_than_declared_is_refused(tmp_path: Path) -> None:
    """Whatever the getter returns past the cap (an object replaced after its HEAD) is not a module."""

    def swapped(bucket: str, key: str, max_bytes: int) -> bytes:
        return ECHO[: max_bytes + 1]

    with pytest.raises(ms.ModuleUnavailable, match="more than 16 bytes, over this runtime's limit"):
        ms.module_bytes(source(s3Uri="s3://bucket/key.wasm"), tmp_path, swapped, 16)


def test_missing_everywhere_names_where_it_looked(tmp_path: Path) -> None:
    with pytest.raises(ms.ModuleUnavailable, match=r"not found in .*S3 is not configured"):
        ms.module_bytes(source(s3Uri="s3://bucket/key.wasm"), tmp_path, None)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"configMap": "m", "s3Uri": "s3://bucket/k"}, "set configMap or s3Uri, not both"),
        ({"s3Uri": "https://bucket/k"}, "should match pattern"),
        ({"s3Uri": "s3://bucket/"}, "should match pattern"),
        ({"configMap": ""}, "at least 1 character"),
    ],
)
def test_the_spec_rejects_bad_sources(fields: dict[str, str], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        source(**fields)


def test_deployment_projects_configmap_modules_under_modules_dir() -> None:
    model = b.ModelResource(
        "chat", "team-a", "uid", ModelSpec.model_validate({"versions": [{"name": "v1", "source": "pypi:x"}]})
    )
    pin = sha(ECHO)
    tenants = [
        b.PublishedTenant(n, TenantSpec(allowed_models=["chat"], wasm=w), ())
        for n, w in [
            ("a", WasmModuleSource(config_map="a-module", sha256=pin)),
            ("b", WasmModuleSource(config_map="b-module", sha256=pin)),  # same bytes: one path
            ("c", WasmModuleSource(s3_uri="s3://bucket/c.wasm", sha256=sha(OTHER))),
            ("d", None),
        ]
    ]
    opts = b.BuildOptions(image="runtime:1", modules_dir="/var/lib/realm/modules")
    pod = b.deployment(model, "v1", tenants, opts)["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["modules"] == {"name": "modules", "emptyDir": {"sizeLimit": b.MODULES_SIZE_LIMIT}}
    assert volumes["configmap-modules"]["projected"]["sources"] == [
        {
            "configMap": {
                "name": "a-module",
                "optional": True,
                "items": [{"key": "module", "path": f"{pin}.wasm"}],
            }
        }
    ]
    mounts = {m["name"]: m for m in pod["containers"][0]["volumeMounts"]}
    assert mounts["configmap-modules"]["mountPath"] == "/var/lib/realm/modules/configmaps"
    assert mounts["configmap-modules"]["readOnly"] is True
    # No ConfigMap-held module, no projected volume.
    plain = b.deployment(model, "v1", tenants[2:], opts)["spec"]["template"]["spec"]
    assert "configmap-modules" not in {v["name"] for v in plain["volumes"]}


def test_a_module_that_arrives_late_is_deployed_without_a_config_change(tmp_path: Path) -> None:
    """The runtime keeps trying (backoff) while a pinned module is missing: S3 down at start, a
    ConfigMap not yet projected. No model is loaded: this is about the module path only."""
    modules = tmp_path / "modules"
    modules.mkdir()
    path = tmp_path / "config.json"
    doc = {"modulesDir": str(modules), "tenants": [entry("alpha", source()).model_dump(by_alias=True)]}
    path.write_text(json.dumps(doc))
    with running(path) as runtime:
        sandbox = runtime.state.sandbox
        assert sandbox is not None and sandbox.current("alpha") is None
        assert failures(runtime.state, "alpha") >= 1
        (modules / f"{sha(ECHO)}.wasm").write_bytes(ECHO)  # arrives after start, config unchanged
        deadline = time.monotonic() + 30
        while sandbox.current("alpha") is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert sandbox.current("alpha").sha256 == sha(ECHO)  # type: ignore[union-attr]


def test_an_upload_over_a_pinned_module_is_refused_unless_the_runtime_allows_it(state: AppState) -> None:
    state.tenants = {"alpha": entry("alpha", source(config_map="alpha-module")), "beta": entry("beta", None)}
    with pytest.raises(ModulePinned, match=r"pinned by its spec\.wasm") as refused:
        asyncio.run(deploy_module(state, "alpha", OTHER))
    assert refused.value.code == "module_pinned" and state.sandbox.current("alpha") is None  # type: ignore[union-attr]
    assert asyncio.run(deploy_module(state, "beta", OTHER)).sha256 == sha(OTHER)  # an unpinned tenant uploads
    state.module_upload_over_pin = True
    assert asyncio.run(deploy_module(state, "alpha", OTHER)).sha256 == sha(OTHER)
