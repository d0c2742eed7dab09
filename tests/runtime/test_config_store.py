"""Config loading, the default tenant's key file, and live reload of the tenant section."""

from __future__ import annotations

import json
import os
import stat
import threading
import time
from pathlib import Path

import httpx
import openai
import pytest
from conftest import KEYS, MODEL, Server, runtime_config

from realm.runtime.config_store import (
    ConfigError,
    ConfigWatcher,
    default_api_key,
    default_config,
    load_config,
    parse_config,
    runtime_identity,
)
from realm.runtime.spec.identity import SECRET_ENV, NamespaceIdentity, tenant_uid
from realm.runtime.spec.runtime_config import RuntimeConfig, default_models, hash_api_key


def test_yaml_and_json_files_load(tmp_path: Path) -> None:
    (tmp_path / "c.yaml").write_text(
        "models:\n  - name: m1\n    source: /x.gguf\n"
        "tenants:\n  - name: t1\n    spec:\n      allowedModels: [m1]\n"
    )
    (tmp_path / "c.json").write_text(json.dumps({"models": [{"name": "m1", "source": "/x.gguf"}]}))
    assert load_config(tmp_path / "c.yaml").tenants[0].spec.allowed_models == ["m1"]
    assert load_config(tmp_path / "c.json").models[0].name == "m1"


@pytest.mark.parametrize(
    "text",
    [b"models: [", b"- just\n- a list\n", b'{"models": [{"name": "BAD NAME", "source": "x"}]}', b"\xff\xfe"],
)
def test_invalid_config_raises_config_error(text: bytes) -> None:
    with pytest.raises(ConfigError):
        parse_config(text, source="bad.yaml")


def test_default_key_is_generated_once_private_and_only_hashed_in_config(tmp_path: Path) -> None:
    key = default_api_key(tmp_path)
    path = tmp_path / "default-api-key"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert default_api_key(tmp_path) == key  # persisted, not regenerated
    config = default_config(key, tmp_path)
    assert [m.name for m in config.models] == [m.name for m in default_models()]
    assert config.tenants[0].api_key_sha256 == [hash_api_key(key)]
    assert key not in config.model_dump_json()


def test_alone_the_identity_is_generated_once_private_and_stable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(SECRET_ENV, raising=False)
    config = default_config(default_api_key(tmp_path), tmp_path)
    first = runtime_identity(config, tmp_path)
    assert stat.S_IMODE((tmp_path / "installation-secret").stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "default-tenant-uid").stat().st_mode) == 0o600
    again = default_config(default_api_key(tmp_path), tmp_path)
    tenant = again.tenants[0]
    assert tenant.uid == config.tenants[0].uid  # a restart keeps the default tenant's conversations
    assert runtime_identity(again, tmp_path).owner_key(
        tenant_uid(tenant.uid, tenant.name)
    ) == first.owner_key(tenant_uid(tenant.uid, tenant.name))
    assert first.secret not in again.model_dump_json()


def test_in_a_cluster_the_identity_comes_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(SECRET_ENV, "from-the-secret")
    assert runtime_identity(RuntimeConfig(), tmp_path) == NamespaceIdentity("default", "from-the-secret")
    assert not (tmp_path / "installation-secret").exists()


def _config_with_tenant(name: str, key: str) -> RuntimeConfig:
    return RuntimeConfig.model_validate(
        {"tenants": [{"name": name, "apiKeySha256": [hash_api_key(key)], "spec": {"allowedModels": ["m"]}}]}
    )


def test_watcher_follows_a_configmap_style_symlink_swap(tmp_path: Path) -> None:
    """Kubernetes replaces `..data` (a symlink to a timestamped dir) atomically; the file path stays."""

    def publish(version: str, config: RuntimeConfig) -> None:
        target = tmp_path / f"..{version}"
        target.mkdir()
        (target / "config.json").write_text(config.model_dump_json(by_alias=True))
        tmp_link = tmp_path / "..data_tmp"
        tmp_link.symlink_to(target.name)
        os.replace(tmp_link, tmp_path / "..data")

    publish("v1", _config_with_tenant("a", "key-a"))
    (tmp_path / "config.json").symlink_to("..data/config.json")
    path = tmp_path / "config.json"
    seen: list[RuntimeConfig] = []
    outcomes: list[str] = []
    watcher = ConfigWatcher(path, load_config(path), seen.append, on_outcome=outcomes.append)
    watcher.check()
    assert seen == []  # nothing changed yet
    publish("v2", _config_with_tenant("b", "key-b"))
    watcher.check()
    assert [t.name for t in seen[-1].tenants] == ["b"] and outcomes == ["applied"]
    # A broken publication is rejected and the running config stays.
    target = tmp_path / "..v3"
    target.mkdir()
    (target / "config.json").write_text("{not json")
    (tmp_path / "..data3").symlink_to(target.name)
    os.replace(tmp_path / "..data3", tmp_path / "..data")
    watcher.check()
    assert outcomes == ["applied", "rejected"] and len(seen) == 1
    assert watcher.current.tenants[0].name == "b"


def _write_atomically(path: Path, document: dict[str, object]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(document))
    os.replace(tmp, path)


def _reloads(server: Server, outcome: str) -> float:
    value = server.runtime.metrics.registry.get_sample_value(
        "realm_config_reloads_total", {"outcome": outcome}
    )
    return value or 0.0


def _eventually(predicate: object, limit_s: float = 15.0) -> bool:
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return True
        time.sleep(0.1)
    return False


def test_new_tenant_key_is_accepted_without_restart_and_in_flight_stream_survives(server: Server) -> None:
    new_key = "sk-test-newcomer-0123456789"
    newcomer = openai.OpenAI(base_url=server.base_url + "/v1", api_key=new_key, max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        newcomer.models.list()

    events: list[str] = []
    # Greedy counting goes on until max_tokens, long enough for the reload to land mid-stream.
    body = {
        "model": MODEL,
        "prompt": "1, 2, 3, 4, 5, 6,",
        "max_tokens": 400,
        "temperature": 0,
        "stream": True,
    }
    started = threading.Event()

    def stream() -> None:
        with (
            httpx.Client(base_url=server.base_url, timeout=60) as http,
            http.stream("POST", "/v1/completions", json=body, headers=server.headers()) as r,
        ):
            for line in r.iter_lines():
                if line:
                    events.append(line)
                    started.set()

    reader = threading.Thread(target=stream)
    reader.start()
    assert started.wait(30)
    applied = _reloads(server, "applied")
    extra = [
        {"name": "newcomer", "apiKeySha256": [hash_api_key(new_key)], "spec": {"allowedModels": [MODEL]}}
    ]
    try:
        _write_atomically(server.config_path, runtime_config(extra))
        assert _eventually(lambda: _reloads(server, "applied") == applied + 1)
        assert [m.id for m in newcomer.models.list()] == [MODEL]
        assert "data: [DONE]" not in events  # the stream was still running across the reload
        seen = len(events)
        assert _eventually(lambda: len(events) > seen, 120)  # and it goes on producing tokens
        reader.join(300)
        assert events[-1] == "data: [DONE]" and '"finish_reason":"' in events[-2]

        # A broken file is ignored: the running config (with the newcomer) stays.
        rejected = _reloads(server, "rejected")
        server.config_path.write_text("tenants: [ {")
        assert _eventually(lambda: _reloads(server, "rejected") == rejected + 1)
        assert [m.id for m in newcomer.models.list()] == [MODEL]
    finally:
        _write_atomically(server.config_path, runtime_config())
    assert _eventually(lambda: server.runtime.state.auth.lookup(new_key) is None)
    assert server.runtime.state.auth.lookup(KEYS["acme"]) is not None
