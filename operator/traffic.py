"""A Model's traffic split as measured (`status.traffic`), not as asked for.

Every runtime counts the requests it routes per model version (`realm_model_requests_total{model,
version}` on its ops port, runtime/metrics.py): a request is counted once, by the pod that chose its
version (named, or picked by weight), wherever it is then served. The operator samples these counters
on the pods behind the Model's Services (their EndpointSlices' `metrics` ports) and reports the share
of each version among the requests counted over the last window (`WINDOW_SECONDS`).

The arithmetic is pure (`increase`, `measured_split`, `percentages`); `TrafficMeter` keeps the samples
between ticks (on the Operator object); `measure_traffic` is the periodic tick (handlers.py's timer
hands it to the meter's threads with `request_tick`): read the endpoints, scrape, record, write the
split when it changed. It runs beside the Model's passes, never in them, and never on kopf's handler
threads: nothing else waits on pods that do not answer.

What it does not see: requests for this Model routed by pods that serve only other Models (a module's
chain) are counted on those pods, which are not behind this Model's Services.
"""

from __future__ import annotations

import itertools
import logging
import os
import re
import threading
import urllib.request
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from realm.runtime.spec.model import TrafficTarget, traffic_summary

if TYPE_CHECKING:
    from realm.operator.state import Operator

log = logging.getLogger(__name__)

COUNTER = "realm_model_requests_total"
# The span the split is measured over, and how often it is sampled (handlers.py's timer).
WINDOW_SECONDS = float(os.environ.get("REALM_TRAFFIC_WINDOW_SECONDS") or 300)
SAMPLE_SECONDS = float(os.environ.get("REALM_TRAFFIC_SECONDS") or 15)
SCRAPE_TIMEOUT = 1.0
METRICS_PORT_NAME = "metrics"
SERVICE_NAME_LABEL = "kubernetes.io/service-name"

_LINE = re.compile(rf"^{COUNTER}\{{(?P<labels>[^}}]*)\}}\s+(?P<value>\S+)\s*$")
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


@dataclass(frozen=True)
class Sample:
    """One pod's counters for one model at one time: version -> requests routed since the pod started."""

    at: float
    counts: Mapping[str, float]


def parse_counts(text: str, model: str) -> dict[str, float]:
    """The counters of `model`'s versions in a runtime's Prometheus exposition."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        m = _LINE.match(line)
        if m is None:
            continue
        labels = dict(_LABEL.findall(m["labels"]))
        if labels.get("model") != model or "version" not in labels:
            continue
        try:
            out[labels["version"]] = out.get(labels["version"], 0.0) + float(m["value"])
        except ValueError:
            continue
    return out


def increase(samples: Sequence[Sample]) -> dict[str, float]:
    """Requests per version between the first sample and the last (time-ordered): the sum of the steps,
    where a counter that went down is a restarted pod, counting again from zero."""
    out: dict[str, float] = {}
    for before, after in itertools.pairwise(samples):
        for version, value in after.counts.items():
            previous = before.counts.get(version, 0.0)
            step = value - previous if value >= previous else value
            if step > 0:
                out[version] = out.get(version, 0.0) + step
    return out


def percentages(counts: Mapping[str, float]) -> list[TrafficTarget]:
    """Shares in whole percent summing to 100 (largest remainders), by version name; [] with no requests."""
    total = sum(counts.values())
    if total <= 0:
        return []
    exact = {v: 100 * c / total for v, c in counts.items() if c > 0}
    whole = {v: int(x) for v, x in exact.items()}
    left = 100 - sum(whole.values())
    for v in sorted(exact, key=lambda v: (whole[v] - exact[v], v))[:left]:
        whole[v] += 1
    return [TrafficTarget(version=v, weight=w) for v, w in sorted(whole.items())]


def measured_split(history: Mapping[str, Sequence[Sample]], *, since: float) -> list[TrafficTarget]:
    """The split of the requests counted after `since` over every pod's samples (pod -> time-ordered
    samples). A pod's last sample at or before `since` is its baseline; a pod with none counts from its
    first sample on (what it served before that is not known to fall in the window)."""
    total: dict[str, float] = {}
    for samples in history.values():
        baseline = [s for s in samples if s.at <= since][-1:]
        for version, n in increase(baseline + [s for s in samples if s.at > since]).items():
            total[version] = total.get(version, 0.0) + n
    return percentages(total)


class TrafficMeter:
    """Samples per (namespace, model, pod) across ticks, kept for one window (plus a baseline each), and
    the threads ticks run on. Ticks of different Models run at once, hence the lock."""

    def __init__(self, window: float = WINDOW_SECONDS) -> None:
        self.window = window
        self._samples: dict[tuple[str, str], dict[str, list[Sample]]] = {}
        self._running: set[tuple[str, str]] = set()
        self._lock = threading.Lock()
        # Ticks wait on pods (up to SCRAPE_TIMEOUT each): never on kopf's handler threads, which also
        # run every event handler.
        self.pool = ThreadPoolExecutor(max_workers=8, thread_name_prefix="traffic")

    def begin(self, namespace: str, model: str) -> bool:
        """Whether a tick for the Model may start (False: the previous one is still running)."""
        with self._lock:
            if (namespace, model) in self._running:
                return False
            self._running.add((namespace, model))
            return True

    def end(self, namespace: str, model: str) -> None:
        with self._lock:
            self._running.discard((namespace, model))

    def record(self, namespace: str, model: str, pod: str, sample: Sample) -> None:
        with self._lock:
            pods = self._samples.setdefault((namespace, model), {})
            pods.setdefault(pod, []).append(sample)

    def split(self, namespace: str, model: str, now: float) -> list[TrafficTarget]:
        """The split over the window ending now; forgets what no longer matters to it."""
        since = now - self.window
        with self._lock:
            pods = self._samples.get((namespace, model), {})
            for pod, samples in list(pods.items()):
                # Keep the newest sample at or before the window's start: the baseline of what follows.
                older = [i for i, s in enumerate(samples) if s.at <= since]
                kept = samples[older[-1] :] if older else samples
                if len(kept) == 1 and kept[0].at <= since:
                    del pods[pod]  # nothing from this pod within the window
                else:
                    pods[pod] = kept
            history = {pod: list(samples) for pod, samples in pods.items()}
        return measured_split(history, since=since)

    def forget(self, namespace: str, model: str) -> None:
        with self._lock:
            self._samples.pop((namespace, model), None)


def metrics_endpoints(slices: Iterable[Mapping[str, Any]]) -> dict[str, str]:
    """Pod key -> its /metrics URL, from EndpointSlices: every address of a slice with a `metrics` port.
    The key is the pod's uid when the slice names it, else its address and port."""
    out: dict[str, str] = {}
    for s in slices:
        port = next((p.get("port") for p in s.get("ports") or [] if p.get("name") == METRICS_PORT_NAME), None)
        if not isinstance(port, int):
            continue
        for endpoint in s.get("endpoints") or []:
            uid = (endpoint.get("targetRef") or {}).get("uid")
            for address in endpoint.get("addresses") or []:
                host = f"[{address}]" if ":" in address else address
                out[uid or f"{host}:{port}"] = f"http://{host}:{port}/metrics"
    return out


def _scrape(url: str) -> str | None:
    try:
        with urllib.request.urlopen(url, timeout=SCRAPE_TIMEOUT) as resp:
            text: str = resp.read().decode("utf-8", "replace")
            return text
    except (OSError, ValueError):
        return None


def request_tick(op: Operator, namespace: str, name: str, status: Mapping[str, Any], now: float) -> None:
    """Run one `measure_traffic` on the meter's threads and return at once; skipped while the Model's
    previous tick still runs."""
    if not op.traffic.begin(namespace, name):
        return

    def tick() -> None:
        try:
            measure_traffic(op, namespace, name, status, now)
        except Exception as e:  # the next tick tries again; the split keeps its last value meanwhile
            log.warning("Model %s/%s: traffic not measured: %s", namespace, name, e)
        finally:
            op.traffic.end(namespace, name)

    op.traffic.pool.submit(tick)


def measure_traffic(op: Operator, namespace: str, name: str, status: Mapping[str, Any], now: float) -> None:
    """One tick: sample the Model's pods, and write status.traffic (and trafficSummary) when the split
    measured over the window changed. Pods that do not answer are left out of this tick."""
    k = op.kube
    services = sorted(s["metadata"]["name"] for s in k.list("Service", namespace, f"realm.dev/model={name}"))
    slices = (
        k.list("EndpointSlice", namespace, f"{SERVICE_NAME_LABEL} in ({','.join(services)})")
        if services
        else []
    )
    endpoints = metrics_endpoints(slices)
    scraped = {pod: op.io.submit(_scrape, url) for pod, url in endpoints.items()}
    for pod, text in ((pod, f.result()) for pod, f in scraped.items()):
        if text is not None:
            op.traffic.record(namespace, name, pod, Sample(now, parse_counts(text, name)))
    split = op.traffic.split(namespace, name, now)
    current = [t for t in (status or {}).get("traffic") or [] if isinstance(t, Mapping)]
    if [t.model_dump(by_alias=True) for t in split] == current:
        return
    patch = {
        "traffic": [t.model_dump(by_alias=True) for t in split],
        "trafficSummary": traffic_summary(split),
    }
    k.patch_status("Model", namespace, name, patch)
