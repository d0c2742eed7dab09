"""What every e2e module needs before it can run: a control plane to start, or a cluster to use."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable
from typing import TypeVar

import pytest

from e2e.cluster.cluster import REQUIRED_BINARIES, find_bin_dir, missing_binaries, use_external_kubeconfig

T = TypeVar("T")


def wait_for(what: str, probe: Callable[[], T | None], timeout: float = 60.0, every: float = 0.5) -> T:
    """Poll `probe` until it returns something truthy; an AssertionError naming `what` after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(every)


def require_control_plane() -> None:
    """Skip the calling test module unless e2e/cluster's binaries are built (or KUBECONFIG is used)."""
    if use_external_kubeconfig() is None and missing_binaries(find_bin_dir(), REQUIRED_BINARIES):
        pytest.skip(
            f"control-plane binaries missing in {find_bin_dir()} (run e2e/cluster/build.sh, "
            "or set REALM_E2E_USE_KUBECONFIG=1 with KUBECONFIG)",
            allow_module_level=True,
        )


def stop(proc: subprocess.Popen[bytes] | subprocess.Popen[str]) -> None:
    """SIGTERM, then SIGKILL after 20 s: an operator that does not drain in time must not hang the suite."""
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
