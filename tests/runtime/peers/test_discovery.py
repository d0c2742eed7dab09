"""What discovery keeps of an EndpointSlice, and how it reads a kubeconfig. The watch itself runs
against a real kube-apiserver in e2e/test_remote_e2e.py."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest

from realm.runtime.peers import Endpoint
from realm.runtime.peers.discovery import slice_endpoints
from realm.runtime.peers.kube import KubeConfigError, from_kubeconfig


def endpoint(address: str, pod: str, **conditions: bool) -> dict[str, object]:
    return {"addresses": [address], "conditions": conditions, "targetRef": {"kind": "Pod", "name": pod}}


def test_only_ready_endpoints_are_kept() -> None:
    obj = {
        "endpoints": [
            endpoint("10.0.0.1", "a", ready=True),
            endpoint("10.0.0.2", "b", ready=False),
            endpoint("10.0.0.3", "c", ready=True, terminating=True),
        ]
    }
    assert slice_endpoints(obj, 8081) == [Endpoint("10.0.0.1", 8081, "a")]


def test_an_endpoint_without_a_ready_condition_counts_as_ready() -> None:
    # The API's own rule: an unknown readiness is to be read as ready.
    assert slice_endpoints({"endpoints": [endpoint("10.0.0.1", "a")]}, 8081) == [
        Endpoint("10.0.0.1", 8081, "a")
    ]


def test_the_slices_internal_port_wins_over_the_configured_one() -> None:
    obj = {
        "ports": [{"name": "http", "port": 8000}, {"name": "internal", "port": 18081}],
        "endpoints": [endpoint("10.0.0.1", "a", ready=True)],
    }
    assert slice_endpoints(obj, 8081) == [Endpoint("10.0.0.1", 18081, "a")]


def test_an_endpoint_without_an_address_is_skipped() -> None:
    assert slice_endpoints({"endpoints": [{"addresses": [], "conditions": {"ready": True}}]}, 8081) == []


def test_a_kubeconfig_with_a_token_names_its_server_and_credential(tmp_path: Path) -> None:
    path = tmp_path / "kubeconfig"
    path.write_text(
        json.dumps(
            {
                "current-context": "c",
                "contexts": [{"name": "c", "context": {"cluster": "k", "user": "u"}}],
                "clusters": [
                    {
                        "name": "k",
                        "cluster": {"server": "https://10.1.2.3:6443/", "insecure-skip-tls-verify": True},
                    }
                ],
                "users": [{"name": "u", "user": {"token": "t0ken"}}],
            }
        )
    )
    access = from_kubeconfig(path)
    assert (access.server, access.headers()) == ("https://10.1.2.3:6443", {"Authorization": "Bearer t0ken"})


def test_a_kubeconfig_naming_a_missing_context_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "kubeconfig"
    path.write_text(json.dumps({"current-context": "gone", "contexts": [], "clusters": [], "users": []}))
    with pytest.raises(KubeConfigError, match="no context named 'gone'"):
        from_kubeconfig(path)


def test_a_kubeconfig_with_a_bad_ca_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "kubeconfig"
    bad = base64.b64encode(b"not a certificate").decode()
    path.write_text(
        json.dumps(
            {
                "current-context": "c",
                "contexts": [{"name": "c", "context": {"cluster": "k", "user": "u"}}],
                "clusters": [
                    {"name": "k", "cluster": {"server": "https://x", "certificate-authority-data": bad}}
                ],
                "users": [{"name": "u", "user": {}}],
            }
        )
    )
    with pytest.raises(KubeConfigError, match="certificate"):
        from_kubeconfig(path)
