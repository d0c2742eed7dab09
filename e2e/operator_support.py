"""The operator's e2e fixtures that are not tests: its namespace, what every cluster needs before it
(`prepare`), the operator as a subprocess (`operator`), and kubelet's projection of a ConfigMap volume
(`KubeletProjection`). e2e tests and bench/bench_operator.py import
them from here (importing a test module would collect or skip its tests along with them)."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

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


class ObjectReader(Protocol):
    """What the projection reads the ConfigMap through (an e2e test's World)."""

    def get(self, kind: str, name: str) -> dict[str, Any] | None: ...


@dataclass(frozen=True)
class Projection:
    """One swap of the projected volume: when it happened and the files it put there."""

    at: float  # time.monotonic()
    files: dict[str, str]


class KubeletProjection:
    """Projects a ConfigMap into `target` as kubelet does for a configMap volume; polls every `every` s.
    `edit`, when given, changes the files before they are compared and written: what a test adds that
    only a pod would have (a runtime outside a pod needs a kubeconfig, say); history holds the edited
    files."""

    def __init__(
        self,
        world: ObjectReader,
        name: str,
        target: Path,
        every: float = 0.5,
        edit: Callable[[dict[str, str]], dict[str, str]] | None = None,
    ) -> None:
        self.world = world
        self.name = name
        self.target = target
        self.every = every
        self.edit = edit
        self.history: list[Projection] = []
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="kubelet-projection", daemon=True)

    def __enter__(self) -> KubeletProjection:
        self.target.mkdir(parents=True, exist_ok=True)
        return self

    def start(self) -> None:
        self._thread.start()

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=30)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.sync()
            except Exception as err:  # keep projecting; the test reports these
                self.errors.append(repr(err))
            self._stop.wait(self.every)

    def sync(self) -> None:
        cm = self.world.get("configmap", self.name)
        if cm is None:
            return
        files: dict[str, str] = dict(cm.get("data") or {})
        if self.edit is not None:
            files = self.edit(files)
        if self.history and self.history[-1].files == files:
            return  # kubelet rewrites only when the payload changed
        self._write(files)
        self.history.append(Projection(time.monotonic(), files))

    def _write(self, files: dict[str, str]) -> None:
        # pkg/volume/util/atomic_writer.go: new timestamped dir, ..data_tmp -> it, rename onto ..data.
        stamp = datetime.now(UTC).strftime("..%Y_%m_%d_%H_%M_%S.")
        ts_dir = Path(tempfile.mkdtemp(prefix=stamp, dir=self.target))
        ts_dir.chmod(0o755)
        for key, text in files.items():
            (ts_dir / key).write_text(text)
            (ts_dir / key).chmod(0o644)
        data = self.target / "..data"
        old = os.readlink(data) if data.is_symlink() else None
        tmp = self.target / "..data_tmp"
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        tmp.symlink_to(ts_dir.name)
        tmp.rename(data)
        for key in files:
            visible = self.target / key
            if not visible.is_symlink():
                visible.symlink_to(Path("..data") / key)
        if old is not None and old != ts_dir.name:
            shutil.rmtree(self.target / old, ignore_errors=True)

    def first_with(self, needle: str) -> Projection | None:
        return next((p for p in self.history if needle in p.files.get("config.yaml", "")), None)

    def first_without(self, needle: str, after: float) -> Projection | None:
        return next(
            (p for p in self.history if p.at >= after and needle not in p.files.get("config.yaml", "")),
            None,
        )
