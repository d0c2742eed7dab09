"""Operator-wide options: what main.py reads from flags and environment before kopf starts, and how
they become the builders' BuildOptions. Kept apart from the handlers so the chart's knobs (flags) and
the reconcile logic change independently. The Operator (state.py) holds the one OperatorConfig."""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from realm.operator import builders, snapshots
from realm.operator.kube import Kube
from realm.operator.snapshots import SnapshotLocations
from realm.runtime.spec.runtime_config import EgressConfig
from realm.runtime.spec.tenant import TenantSpec, wildcard_error

GATEWAY_GROUP_VERSION = "gateway.networking.k8s.io/v1"


@dataclass
class OperatorConfig:
    """Operator-wide options (built by main.py from flags and environment before kopf starts)."""

    runtime_image: str = field(
        default_factory=lambda: os.environ.get("REALM_RUNTIME_IMAGE", "ghcr.io/realm/runtime:0.1.0")
    )
    gateway: builders.GatewayRef | None = None
    hostnames: tuple[str, ...] = ()
    service_account: str | None = None
    modules_dir: str | None = builders.DEFAULT_MODULES_DIR  # None: no modulesDir (spec.wasm cannot work)
    gateway_check_seconds: float = 60.0
    # Runtime pod defaults (the chart's `runtime.*` and `s3.*` values): see BuildOptions.
    runtime_gpu_image: str | None = None
    gpu_resource: str = builders.GPU_RESOURCE
    node_selector: dict[str, str] = field(default_factory=dict)
    tolerations: list[dict[str, Any]] = field(default_factory=list)
    runtime_class: str | None = None
    image_pull_secrets: tuple[str, ...] = ()
    s3: builders.S3Options | None = None
    # How long a deleted Tenant's finalizer keeps retrying the deletion of its KV snapshots before it
    # lets the Tenant go with a warning event (the chart's operator.finalizerTimeoutSeconds).
    finalizer_timeout_s: float = 600.0
    # Where Tenants may keep KV snapshots (the chart's s3.allowedSnapshotBuckets/Prefixes).
    snapshot_locations: SnapshotLocations = field(default_factory=SnapshotLocations)
    # What tenants' outbound calls may reach at all (the chart's egress.*), published in every runtime
    # config; a Tenant listing a `*` host without allow_wildcard is refused.
    egress: EgressConfig = field(default_factory=EgressConfig)
    # The root of tenants' owner keys, read (or generated) at start by main.py (operator/identity.py).
    installation_secret: str | None = field(default=None, repr=False)


class GatewayApi:
    """Whether HTTPRoutes can be created; rechecked every `check_seconds` (CRDs can be installed later)."""

    def __init__(self, kube: Kube, check_seconds: float) -> None:
        self._kube = kube
        self._check_seconds = check_seconds
        self._lock = threading.Lock()
        self._checked: tuple[float, bool] | None = None  # (when, served)

    def served(self) -> bool:
        now = time.monotonic()
        with self._lock:
            checked = self._checked
        if checked is None or now - checked[0] > self._check_seconds:
            checked = (now, self._kube.serves(GATEWAY_GROUP_VERSION, "httproutes"))
            with self._lock:
                self._checked = checked
        return checked[1]


def build_options(config: OperatorConfig, gateway_api_served: bool) -> builders.BuildOptions:
    gateway = config.gateway if config.gateway is not None and gateway_api_served else None
    return builders.BuildOptions(
        image=config.runtime_image,
        gateway=gateway,
        hostnames=config.hostnames,
        service_account=config.service_account,
        modules_dir=config.modules_dir,
        gpu_image=config.runtime_gpu_image,
        gpu_resource=config.gpu_resource,
        node_selector=tuple(sorted(config.node_selector.items())),
        tolerations=tuple(config.tolerations),
        runtime_class=config.runtime_class,
        image_pull_secrets=config.image_pull_secrets,
        s3=config.s3,
        installation_secret=config.installation_secret,
        egress=config.egress,
    )


def platform_refusal(spec: TenantSpec, config: OperatorConfig) -> str | None:
    """Why the platform refuses a valid Tenant spec (a snapshot location or a `*` egress host it does
    not allow), or None. Such a Tenant's status says why and no runtime config lists it."""
    return snapshots.location_error(spec, config.s3, config.snapshot_locations) or wildcard_error(
        spec.egress, config.egress.allow_wildcard
    )
