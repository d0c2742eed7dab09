"""What every e2e module needs before it can run: a control plane to start, or a cluster to use."""

from __future__ import annotations

import pytest

from e2e.cluster.cluster import REQUIRED_BINARIES, find_bin_dir, missing_binaries, use_external_kubeconfig


def require_control_plane() -> None:
    """Skip the calling test module unless e2e/cluster's binaries are built (or KUBECONFIG is used)."""
    if use_external_kubeconfig() is None and missing_binaries(find_bin_dir(), REQUIRED_BINARIES):
        pytest.skip(
            f"control-plane binaries missing in {find_bin_dir()} (run e2e/cluster/build.sh, "
            "or set REALM_E2E_USE_KUBECONFIG=1 with KUBECONFIG)",
            allow_module_level=True,
        )
