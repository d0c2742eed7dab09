"""Two operators, one peering (kopf's leader election), against a real control plane (nothing mocked).

kopf decides who acts from the KopfPeering object's status: every operator writes a keep-alive
(identity, priority, lifetime) there and watches it. An operator starts paused and resumes once the
peering shows no live peer of higher or equal priority. One that sees a live peer with a *higher*
priority pauses ("Pausing operations in favour of ..."); peers with the *same* priority pause each
other ("Pausing all operators, including self"), so same-priority replicas never both act -- nor does
either: replicas need distinct `--priority` values. On a clean exit (SIGTERM) an operator removes its
own entry and the paused peer resumes at once; after a hard kill it would wait for the dead peer's
lifetime (kopf's default 60 s, which operator/main.py keeps).

- Different priorities: only the higher one reconciles a Tenant and a Model; the lower one logged that
  it paused for it and ran no handler since. SIGTERM to the active one: the other resumes and
  reconciles a new Tenant.
- Same priority: both pause, a Tenant stays unreconciled; stop one and the other takes over.
- `--standalone` (one replica, no peering at all), namespaced and cluster-wide: the operator acts.

Both operators settle (and the one active at first has live watches, proved by a warm-up Tenant and
Model) before the objects under test exist: kopf's pause does not interrupt a watch's initial list
(e.g. in its retry back-off), so an operator that pauses during it still handles what that list
returns -- an ordering this test avoids rather than asserts.

    .venv/bin/python -m pytest e2e/test_operator_peering.py -m e2e -s
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from collections.abc import Collection
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.e2e

from e2e.cluster.cluster import (  # noqa: E402
    Cluster,
    control_plane,
)
from e2e.support import require_control_plane  # noqa: E402

require_control_plane()

# Same skip logic, CRDs, peering and helpers as the other operator e2e tests.
from e2e.operator_support import NS, PEERING, REPO, operator, prepare  # noqa: E402
from e2e.support import wait_for  # noqa: E402
from e2e.test_operator import World  # noqa: E402
from e2e.test_operator_resilience import _model, _tenant  # noqa: E402

# Hang guards only: the measured times are printed and are far shorter.
RECONCILE_TIMEOUT = 90.0
#: How long a paused operator is watched for doing nothing (it would act within ~1 s otherwise).
QUIET_SECONDS = 8.0
#: kopf's per-object log line for a handler run, e.g. "Handler 'tenant_event' succeeded."
PAUSING = "Pausing operations in favour of"
RESUMING = "Resuming operations after the pause"
#: The per-object lines are off by default (one per watch event); this test reads them.
HANDLER_LOGS = ("--object-log-level", "INFO")
HANDLER_LINE = re.compile(r"Handler '(\w+)[^']*' (succeeded|failed)")
#: What the operator's light watches set going ahead of kopf (operator/fastpath.py), logged at the same
#: level; they are gated by the same peering.
AHEAD = "ahead of kopf"
HELD = "left to kopf (this replica may not act now)"
#: What an acting replica's light watch logs when kopf's watch reached the object first (a race either
#: side may win on a loaded machine).
ALREADY = "already handled by kopf"
#: Logged once per light watch (Tenants, Models, the peering) when its first watch is open.
LIGHT_WATCHES = 3


def _early_decisions(log_text: str, obj: str) -> set[str]:
    """What the light watches decided for `obj` ("Tenant ns/name"): a subset of {AHEAD, ALREADY, HELD}."""
    lines = [line for line in log_text.splitlines() if f"{obj}: " in line]
    return {d for d in (AHEAD, ALREADY, HELD) if any(d in line for line in lines)}


def _peers(cluster: Cluster) -> dict[str, dict[str, Any]]:
    """The KopfPeering's status: identity -> {priority, lifetime, lastseen}."""
    out = cluster.kubectl("get", "kopfpeering", PEERING, "-n", NS, "-o", "json")
    peers: dict[str, dict[str, Any]] = json.loads(out.stdout).get("status") or {}
    return peers


def _identity_with(cluster: Cluster, priority: int, exclude: Collection[str] = ()) -> str:
    """Wait for a keep-alive with `priority` (not in `exclude`) in the peering: that operator is up."""

    def found() -> str | None:
        return next(
            (i for i, p in _peers(cluster).items() if p.get("priority") == priority and i not in exclude),
            None,
        )

    return wait_for(f"a keep-alive with priority {priority}", found, timeout=RECONCILE_TIMEOUT, every=0.25)


def _log_has(log: Path, text: str) -> bool:
    return text in log.read_text(errors="replace")


def _handled(log: Path, after: str = "") -> list[str]:
    """The handlers an operator ran on Realm's objects (kopf logs one line per run), all or those after
    the first `after`. Not `peering_seen`: it only notes that kopf is up, and kopf keeps watching its own
    peering objects while paused (that is how it learns when to resume)."""
    text = log.read_text(errors="replace")
    if after:
        assert after in text, f"{after!r} not in {log}"
        text = text.split(after, 1)[1]
    return [m.group(1) for m in HANDLER_LINE.finditer(text) if m.group(1) != "peering_seen"]


def _setup(cluster: Cluster) -> None:
    """CRDs, namespace, KopfPeering; then wait until the new CRDs' storage serves lists.

    Right after a CRD is Established its list can still answer 429 "storage is (re)initializing"; an
    operator started then is in its watch's retry back-off, and kopf's pause does not interrupt that
    initial list: an operator that pauses during it still handles what the list returns (seen once).
    """
    prepare(cluster)

    def listable() -> bool:
        return cluster.kubectl("get", "tenants,models,pipelines", "-n", NS, check=False).returncode == 0

    wait_for("tenants/models/pipelines to be listable", listable, timeout=RECONCILE_TIMEOUT, every=0.25)


def _warm_up(world: World, name: str, log: Path) -> None:
    """A Tenant and a Model reconciled by the one active operator: its watches are live, not starting.
    Then its handlers fall quiet (the events its own status writes cause have been handled), so none of
    them is still running when a later operator makes it pause."""
    world.apply(_tenant(name))
    world.apply(_model(name, ["v1"], None))
    wait_for(f"{name}-api-key", lambda: world.get("secret", f"{name}-api-key"),
             timeout=RECONCILE_TIMEOUT, every=0.25)  # fmt: skip
    wait_for(f"deployment/{name}-v1", lambda: world.get("deployment", f"{name}-v1"),
             timeout=RECONCILE_TIMEOUT, every=0.25)  # fmt: skip

    def quiet() -> bool:
        before = len(_handled(log))
        time.sleep(2)
        return len(_handled(log)) == before

    wait_for(f"the operator's handlers for {name} to fall quiet", quiet, timeout=RECONCILE_TIMEOUT)


def _stop(op: subprocess.Popen[bytes]) -> float:
    """SIGTERM and wait for a clean exit; seconds it took."""
    began = time.monotonic()
    op.terminate()
    op.wait(timeout=30)
    assert op.returncode in (0, -15), op.returncode
    return time.monotonic() - began


def test_higher_priority_acts_and_the_other_takes_over_on_sigterm(tmp_path: Path) -> None:
    with control_plane() as cluster:
        _setup(cluster)
        world = World(cluster, tmp_path / "high.log")
        high_log, low_log = tmp_path / "high.log", tmp_path / "low.log"
        # The lower-priority operator first: alone, it resumes (kopf starts every operator paused until it
        # has read the peering). Then the higher one: it resumes, and the lower one pauses in its favour.
        # Both settle before any object exists, so no start-up race decides who acts.
        with operator(cluster, low_log, "--priority", "10", *HANDLER_LOGS) as low:
            low_id = _identity_with(cluster, 10)
            wait_for("the low-priority operator to resume (alone)", lambda: _log_has(low_log, RESUMING),
                     timeout=RECONCILE_TIMEOUT, every=0.25)  # fmt: skip
            _warm_up(world, "warm", low_log)
            with operator(cluster, high_log, "--priority", "100", *HANDLER_LOGS) as high:
                high_id = _identity_with(cluster, 100)
                wait_for("the high-priority operator to resume", lambda: _log_has(high_log, RESUMING),
                         timeout=RECONCILE_TIMEOUT, every=0.25)  # fmt: skip
                wait_for("the low-priority operator to pause",
                         lambda: _log_has(low_log, PAUSING),
                         timeout=RECONCILE_TIMEOUT, every=0.25)  # fmt: skip
                paused = low_log.read_text(errors="replace")
                assert high_id in paused.split(PAUSING, 1)[1].splitlines()[0]
                # The new operator's light watches are open (they start with it, and would otherwise
                # race kopf's for the objects below).
                wait_for("the light watches of the high-priority operator",
                         lambda: high_log.read_text(errors="replace").count(": watching") >= LIGHT_WATCHES,
                         timeout=RECONCILE_TIMEOUT, every=0.25)  # fmt: skip

                began = time.monotonic()
                world.apply(_tenant("acme"))
                world.apply(_model("chat", ["v1"], None))
                secret = wait_for("acme-api-key", lambda: world.get("secret", "acme-api-key"),
                                  timeout=RECONCILE_TIMEOUT, every=0.25)  # fmt: skip
                wait_for("deployment/chat-v1", lambda: world.get("deployment", "chat-v1"),
                         timeout=RECONCILE_TIMEOUT, every=0.25)  # fmt: skip
                reconciled = time.monotonic() - began
                time.sleep(QUIET_SECONDS)  # what the paused operator would have done, it would do by now

                high_ran, low_ran = _handled(high_log), _handled(low_log, after=PAUSING)
                assert "tenant_event" in high_ran and "model_changed" in high_ran, high_ran
                assert low_ran == [], f"the paused operator ran handlers: {low_ran}\n{low_log.read_text()}"
                # The light watches of the active one were free to act: each new object was requested
                # ahead of kopf, or found already handled when kopf's watch won the race. Those of the
                # paused one saw the same events and held back.
                high_text = high_log.read_text(errors="replace")
                for obj in (f"Tenant {NS}/acme", f"Model {NS}/chat"):
                    decisions = _early_decisions(high_text, obj)
                    assert decisions and HELD not in decisions, (obj, decisions, high_text[-4000:])
                low_paused = low_log.read_text(errors="replace").split(PAUSING, 1)[1]
                assert f"Tenant {NS}/acme: {HELD}" in low_paused and f"Model {NS}/chat: {HELD}" in low_paused
                assert AHEAD not in low_paused
                # Created once: the Secret was never replaced (same uid), and exactly one key was generated.
                again = world.get("secret", "acme-api-key")
                assert again is not None and again["metadata"]["uid"] == secret["metadata"]["uid"]
                assert set(_peers(cluster)) == {high_id, low_id}
                assert low.poll() is None and high.poll() is None

                # SIGTERM to the active operator: it removes itself from the peering on the way out.
                stop_began = time.monotonic()
                stopped = _stop(high)
                high_final = _handled(high_log)
                assert high_id not in _peers(cluster)
                wait_for("the low-priority operator to resume again",
                         lambda: low_log.read_text(errors="replace").count(RESUMING) == 2,
                         timeout=RECONCILE_TIMEOUT, every=0.25)  # fmt: skip
                resumed = time.monotonic() - stop_began

                began = time.monotonic()
                world.apply(_tenant("beta"))
                wait_for("beta-api-key from the remaining operator",
                         lambda: world.get("secret", "beta-api-key"),
                         timeout=RECONCILE_TIMEOUT, every=0.25)  # fmt: skip
                took_over = time.monotonic() - began
                since_sigterm = time.monotonic() - stop_began
                assert "tenant_event" in _handled(low_log, after=PAUSING)
                assert _handled(high_log) == high_final  # the stopped one did nothing more
                assert low.poll() is None
    for log in (high_log, low_log):
        assert "Traceback" not in log.read_text(errors="replace"), log.read_text()[-4000:]
    print(
        f"\n[peering, priorities 100/10] Tenant+Model reconciled by the high-priority operator in "
        f"{reconciled:.1f}s (handlers: high {len(high_ran)}, low {len(low_ran)} over {QUIET_SECONDS:.0f}s "
        f"more); SIGTERM: exited in {stopped:.1f}s, the other resumed {resumed:.1f}s after SIGTERM; "
        f"new Tenant's Secret {took_over:.1f}s after apply ({since_sigterm:.1f}s after SIGTERM)"
    )


def test_same_priority_both_pause_until_one_leaves(tmp_path: Path) -> None:
    with control_plane() as cluster:
        _setup(cluster)
        world = World(cluster, tmp_path / "a.log")
        a_log, b_log = tmp_path / "a.log", tmp_path / "b.log"
        with operator(cluster, a_log, "--priority", "5", *HANDLER_LOGS) as a:
            a_id = _identity_with(cluster, 5)
            wait_for("a to resume (alone)", lambda: _log_has(a_log, RESUMING),
                     timeout=RECONCILE_TIMEOUT, every=0.25)  # fmt: skip
            _warm_up(world, "warm", a_log)
            with operator(cluster, b_log, "--priority", "5", *HANDLER_LOGS) as b:
                _identity_with(cluster, 5, exclude={a_id})
                # a was alone and active; it sees b and pauses. b starts paused (as every kopf operator
                # does until it has read the peering), sees a, and stays paused: it never resumes.
                wait_for("a to pause", lambda: _log_has(a_log, "Pausing all operators, including self"),
                         timeout=RECONCILE_TIMEOUT, every=0.25)  # fmt: skip
                wait_for("b to see a", lambda: _log_has(b_log, "Possibly conflicting operators"),
                         timeout=RECONCILE_TIMEOUT, every=0.25)  # fmt: skip
                world.apply(_tenant("acme"))
                time.sleep(QUIET_SECONDS)
                assert world.get("secret", "acme-api-key") is None, "a paused operator acted"
                a_paused = "Pausing all operators, including self"
                assert _handled(a_log, after=a_paused) == [] and _handled(b_log) == []
                assert not _log_has(b_log, RESUMING)
                a_after = a_log.read_text(errors="replace").split(a_paused, 1)[1]
                assert f"Tenant {NS}/acme: {HELD}" in a_after and AHEAD not in a_after
                assert not _log_has(b_log, AHEAD)

                stop_began = time.monotonic()
                _stop(b)
                wait_for("acme-api-key once one operator is left",
                         lambda: world.get("secret", "acme-api-key"),
                         timeout=RECONCILE_TIMEOUT, every=0.25)  # fmt: skip
                took_over = time.monotonic() - stop_began
                assert a_log.read_text(errors="replace").count(RESUMING) == 2  # at start, and now
                assert "tenant_event" in _handled(a_log, after=a_paused) and _handled(b_log) == []
                assert a.poll() is None
    print(
        f"\n[peering, same priority] both paused, no Secret after {QUIET_SECONDS:.0f}s; SIGTERM to one: "
        f"the other created the Secret {took_over:.1f}s later"
    )


@pytest.mark.parametrize(
    "scope", [["--all-namespaces"], ["--namespace", NS]], ids=["cluster-wide", "namespaced"]
)
def test_standalone_operator_acts_without_any_peering(tmp_path: Path, scope: list[str]) -> None:
    """`--standalone` is the documented single-replica mode: no peering object, no leader election. It
    used to pause every watch for good (kopf made peering mandatory because a peering name was passed),
    so Tenants and Models never got a status."""
    with control_plane() as cluster:
        prepare(cluster)
        world = World(cluster, tmp_path / "operator.log")
        with world.log.open("w") as sink:
            op = subprocess.Popen(
                [sys.executable, "-m", "realm.operator.main", *scope, "--standalone",
                 "--runtime-image", "realm-runtime:e2e"],
                cwd=REPO, stdout=sink, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=cluster.env(),
            )  # fmt: skip
            try:
                world.apply(_tenant("solo"))
                world.apply(_model("solo-model", ["v1"], None))
                tenant = wait_for(
                    "Tenant solo with a status", lambda: (world.get("tenant", "solo") or {}).get("status"),
                    timeout=RECONCILE_TIMEOUT,
                )  # fmt: skip
                wait_for(
                    "Model solo-model with a status",
                    lambda: (world.get("model", "solo-model") or {}).get("status"),
                    timeout=RECONCILE_TIMEOUT,
                )
                assert world.get("secret", tenant["apiKeySecret"]) is not None
                assert world.get("deployment", "solo-model-v1") is not None
            finally:
                _stop(op)
