"""The operator's light watch (operator/lightwatch.py) against a real kube-apiserver: what it delivers,
from where it starts, that it resumes past server-side timeouts and misses nothing across an apiserver
restart, and that it stops promptly.

    .venv/bin/python -m pytest e2e/test_lightwatch.py -m e2e -s
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
from kubernetes import config

pytestmark = pytest.mark.e2e

from e2e.cluster.cluster import control_plane  # noqa: E402
from e2e.support import require_control_plane, wait_for  # noqa: E402

require_control_plane()

from e2e.operator_support import NS, prepare  # noqa: E402
from e2e.test_operator import World  # noqa: E402
from e2e.test_operator_resilience import _tenant  # noqa: E402
from realm.operator.kube import KINDS, Kube  # noqa: E402
from realm.operator.lightwatch import LightWatch  # noqa: E402

TIMEOUT = 60.0  # hang guard only


class Seen:
    """(type, name) of every event a watch delivered, in order."""

    def __init__(self) -> None:
        self.events: list[tuple[str, str]] = []
        self.lock = threading.Lock()

    def __call__(self, kind: str, obj: Mapping[str, Any]) -> None:
        with self.lock:
            self.events.append((kind, str(obj["metadata"]["name"])))

    def has(self, kind: str, name: str) -> bool:
        with self.lock:
            return (kind, name) in self.events

    def names(self) -> set[str]:
        with self.lock:
            return {n for _, n in self.events}


def test_light_watch_delivers_new_events_resumes_after_an_apiserver_restart_and_stops(tmp_path: Path) -> None:
    with control_plane() as cluster:
        prepare(cluster)
        world = World(cluster, tmp_path / "unused.log")
        world.apply(_tenant("before"))
        kube = Kube(config.new_client_from_config(config_file=str(cluster.kubeconfig)))
        path = KINDS["Tenant"].path(NS)
        fresh, listed = Seen(), Seen()
        watches = [
            LightWatch(kube, path, fresh, server_timeout=5, retry=0.2),
            LightWatch(kube, path, listed, initial=True, server_timeout=5, retry=0.2),
        ]
        for w in watches:
            w.start()
        wait_for("the listing's items", lambda: listed.has("ADDED", "before"), timeout=TIMEOUT, every=0.05)
        wait_for("the fresh watch to have listed", lambda: watches[0].version, timeout=TIMEOUT, every=0.05)

        world.apply(_tenant("after"))
        wait_for("ADDED after", lambda: fresh.has("ADDED", "after"), timeout=TIMEOUT, every=0.05)
        patched = _tenant("after")
        patched["spec"]["quotas"] = {"requestsPerMinute": 7}
        world.apply(patched)
        wait_for("MODIFIED after", lambda: fresh.has("MODIFIED", "after"), timeout=TIMEOUT, every=0.05)
        cluster.kubectl("delete", "tenant", "after", "-n", NS)
        wait_for("DELETED after", lambda: fresh.has("DELETED", "after"), timeout=TIMEOUT, every=0.05)
        # Past a server-side timeout (5 s) it resumes where it was: nothing is delivered twice.
        time.sleep(6)
        world.apply(_tenant("mid"))
        wait_for("ADDED mid", lambda: fresh.has("ADDED", "mid"), timeout=TIMEOUT, every=0.05)
        assert "before" not in fresh.names()  # started from "now": the past is kopf's listing's job
        assert fresh.events.count(("ADDED", "after")) == 1

        # An apiserver restart answers the old resourceVersion with 410: it lists again and replays what
        # exists as ADDED, so a Tenant created in the gap is not missed.
        cluster.restart_apiserver(down_seconds=1.0)
        world.apply(_tenant("later"))
        wait_for("ADDED later, after the restart", lambda: fresh.has("ADDED", "later"), timeout=TIMEOUT)
        wait_for("ADDED later (listing watch)", lambda: listed.has("ADDED", "later"), timeout=TIMEOUT)

        for w in watches:
            w.stop()
        for w in watches:
            assert w.join(timeout=10), "stop() did not end the watch thread"
