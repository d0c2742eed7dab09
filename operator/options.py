"""Operator-wide options: what main.py sets from flags and environment before kopf starts, and how
they become the builders' BuildOptions. Kept apart from the handlers so the chart's knobs (flags) and
the reconcile logic change independently."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Any

from realm.operator import builders
from realm.operator.kube import Kube

GATEWAY_GROUP_VERSION = "gateway.networking.k8s.io/v1"


@dataclass
class OperatorConfig:
    """Operator-wide options (set by main.py from flags and environment before kopf starts)."""

    runtime_image: str = field(
        default_factory=lambda: os.environ.get("REALM_RUNTIME_IMAGE", "ghcr.io/realm/runtime:0.1.0")
    )
    gateway: builders.GatewayRef | None = None
    hostnames: tuple[str, ...] = ()
    service_account: str | None = None
    modules_dir: str | None = None
    gateway_check_seconds: float = 60.0
    # Runtime pod defaults (the chart's `runtime.*` and `s3.*` values): see BuildOptions.
    runtime_gpu_image: str | None = None
    gpu_resource: str = builders.GPU_RESOURCE
    node_selector: dict[str, str] = field(default_factory=dict)
    tolerations: list[dict[str, Any]] = field(default_factory=list)
    runtime_class: str | None = None
    image_pull_secrets: tuple[str, ...] = ()
    s3: builders.S3Options | None = None


CONFIG = OperatorConfig()
_gateway_cache: tuple[float, bool] | None = None


def gateway_api_served(k: Kube) -> bool:
    """Whether HTTPRoutes can be created; rechecked every minute (CRDs can be installed later)."""
    global _gateway_cache
    now = time.monotonic()
    if _gateway_cache is None or now - _gateway_cache[0] > CONFIG.gateway_check_seconds:
        _gateway_cache = (now, k.serves(GATEWAY_GROUP_VERSION, "httproutes"))
    return _gateway_cache[1]


def build_options(k: Kube) -> builders.BuildOptions:
    gateway = CONFIG.gateway if CONFIG.gateway is not None and gateway_api_served(k) else None
    return builders.BuildOptions(
        image=CONFIG.runtime_image,
        gateway=gateway,
        hostnames=CONFIG.hostnames,
        service_account=CONFIG.service_account,
        modules_dir=CONFIG.modules_dir,
        gpu_image=CONFIG.runtime_gpu_image,
        gpu_resource=CONFIG.gpu_resource,
        node_selector=tuple(sorted(CONFIG.node_selector.items())),
        tolerations=tuple(CONFIG.tolerations),
        runtime_class=CONFIG.runtime_class,
        image_pull_secrets=CONFIG.image_pull_secrets,
        s3=CONFIG.s3,
    )
