"""A deleted Tenant's finalizer (its KV snapshots' deletion) is bounded: past the operator's finalizer
timeout, or at once when the Tenant is annotated realm.dev/force-release=true, it lets the Tenant go with
a warning event instead of retrying for as long as S3 is unreachable."""

from __future__ import annotations

import socket
from datetime import timedelta
from typing import Any

import kopf
import pytest
from test_operator_secrets import FakeKube
from test_operator_state import NS, tenant

from realm.operator import builders, handlers, tenants, world
from realm.operator.options import OperatorConfig
from realm.operator.outcome import now


def closed_endpoint() -> str:
    """An S3 endpoint nothing listens on: S3 unreachable, at once."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def deleted(seconds_ago: float, **annotations: str) -> dict[str, Any]:
    body = tenant("acme", ["chat"])
    body["spec"]["kvSnapshots"] = {"enabled": True, "deletionPolicy": "Delete"}
    since = now() - timedelta(seconds=seconds_ago)
    body["metadata"]["deletionTimestamp"] = since.isoformat().replace("+00:00", "Z")
    body["metadata"]["annotations"] = annotations
    return body


def finalize(body: dict[str, Any]) -> None:
    s3 = builders.S3Options(endpoint=closed_endpoint(), region="us-east-1", bucket="snapshots")
    config = OperatorConfig(s3=s3, finalizer_timeout_s=600, installation_secret="finalizer-test-secret")
    op = handlers.new_operator(FakeKube({}), config)  # type: ignore[arg-type]
    op.indexes = world.Indexes.empty()
    tenants.finalize(op, NS, "acme", body["spec"], body)


def test_within_the_timeout_an_unreachable_s3_keeps_the_finalizer() -> None:
    with pytest.raises(kopf.TemporaryError, match="cannot delete the KV snapshots yet"):
        finalize(deleted(seconds_ago=5))


def test_past_the_timeout_the_tenant_is_released() -> None:
    finalize(deleted(seconds_ago=601))  # returns: kopf removes the finalizer


def test_the_force_release_annotation_releases_at_once() -> None:
    finalize(deleted(seconds_ago=5, **{"realm.dev/force-release": "true"}))


def test_the_release_says_why() -> None:
    op = handlers.new_operator(FakeKube({}), OperatorConfig(finalizer_timeout_s=600))  # type: ignore[arg-type]
    assert tenants.release_reason(op, deleted(5), now()) is None
    assert "gave up after 601 s" in str(tenants.release_reason(op, deleted(601), now()))
    forced = tenants.release_reason(op, deleted(5, **{"realm.dev/force-release": "true"}), now())
    assert forced == "released by the annotation realm.dev/force-release=true"
