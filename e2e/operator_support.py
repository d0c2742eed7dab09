"""The operator's e2e fixtures that are not tests: its namespace, what every cluster needs before it
(`prepare`), and the operator as a subprocess (`operator`). e2e tests and bench/bench_operator.py import
them from here (importing a test module would collect or skip its tests along with them)."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from e2e.cluster.cluster import Cluster
from e2e.support import stop
from realm.operator.chartgen import peering_crd

REPO = Path(__file__).resolve().parent.parent
# Override only to try CRDs other than the committed ones (e.g. a fix under test).
CRD_DIR = Path(os.environ.get("REALM_E2E_CRD_DIR") or REPO / "crds")
NS = "realm-e2e"
PEERING = "e2e"

# kopf's peering CRD (namespaced flavour), as the chart ships it: the operator refuses to act without it.
PEERING_CRD: dict[str, Any] = peering_crd("KopfPeering", "kopfpeerings", "Namespaced")


def prepare(cluster: Cluster) -> None:
    """Realm's CRDs, kopf's peering CRD, the namespace and its KopfPeering: what every e2e needs."""
    cluster.kubectl("apply", "--server-side", "-f", str(CRD_DIR))
    cluster.kubectl("apply", "--server-side", "-f", "-", input=json.dumps(PEERING_CRD))
    cluster.kubectl(
        "wait", "--for=condition=established", "--timeout=60s",
        "crd/tenants.realm.dev", "crd/models.realm.dev", "crd/modelpools.realm.dev",
        "crd/pipelines.realm.dev",
        "crd/kopfpeerings.kopf.dev",
    )  # fmt: skip
    cluster.kubectl("create", "namespace", NS)
    peering = {"apiVersion": "kopf.dev/v1", "kind": "KopfPeering", "metadata": {"name": PEERING}}
    cluster.kubectl("apply", "-n", NS, "-f", "-", input=json.dumps(peering))


@contextlib.contextmanager
def operator(
    cluster: Cluster, log: Path, *extra: str, env: dict[str, str] | None = None
) -> Iterator[subprocess.Popen[bytes]]:
    """The operator as a subprocess (what the chart runs); terminated (then killed) on exit."""
    with log.open("w") as sink:
        op = subprocess.Popen(
            [sys.executable, "-m", "realm.operator.main", "--namespace", NS, "--peering", PEERING,
             "--runtime-image", "realm-runtime:e2e", *extra],
            cwd=REPO, stdout=sink, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            env={**cluster.env(), "REALM_RESYNC_SECONDS": "10", **(env or {})},
        )  # fmt: skip
        try:
            yield op
        finally:
            stop(op)
    if op.returncode not in (0, -15):
        print(f"operator exited with {op.returncode}:\n{log.read_text()[-4000:]}")
