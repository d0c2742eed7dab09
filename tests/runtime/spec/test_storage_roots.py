"""Conversations and KV snapshots never share a root in one bucket: a config where they overlap is refused."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from realm.runtime.spec.runtime_config import RuntimeConfig, roots_overlap


def config(conversations: dict[str, Any], kv: dict[str, Any], tenant_kv: dict[str, Any] | None = None) -> Any:
    tenants = [{"name": "acme", "spec": {"kvSnapshots": tenant_kv}}] if tenant_kv is not None else []
    return RuntimeConfig.model_validate(
        {"conversations": conversations, "kvSnapshots": kv, "tenants": tenants}
    )


def test_overlap_is_by_segment() -> None:
    assert roots_overlap("realm", "realm/kv")
    assert roots_overlap("realm/kv/", "realm/kv")
    assert roots_overlap("", "realm/kv")
    assert not roots_overlap("realm/k", "realm/kv")
    assert not roots_overlap("realm/conversations", "realm/kv")


def test_the_defaults_do_not_overlap() -> None:
    assert config({"backend": "s3"}, {}).conversations.prefix == "realm/conversations"


def test_a_kv_prefix_inside_the_conversations_root_is_refused() -> None:
    with pytest.raises(ValidationError, match="never share a root"):
        config({"backend": "s3", "prefix": "realm"}, {"prefix": "realm/kv"})


def test_a_tenants_kv_prefix_over_the_conversations_root_is_refused() -> None:
    with pytest.raises(ValidationError, match=r"tenant acme's kvSnapshots\.prefix"):
        config({"backend": "s3"}, {}, {"enabled": True, "prefix": "realm"})


def test_different_buckets_may_use_the_same_prefix() -> None:
    assert config({"backend": "s3", "bucket": "a", "prefix": "realm"}, {"bucket": "b", "prefix": "realm"})


def test_sqlite_conversations_share_no_bucket() -> None:
    assert config({"backend": "sqlite"}, {"prefix": "realm/conversations"})
