"""How this process reaches the Kubernetes API: the pod's service account inside a pod, a kubeconfig
outside one (`ClusterConfig.kubeconfig`; e2e uses it).

Only what reading EndpointSlices needs: the server's URL, its TLS trust, and the client's credential
(a bearer token, read again at every connection since projected service-account tokens rotate, or a
client certificate). Parsed with the standard library and yaml: the official client is synchronous,
and discovery waits on the network.
"""

from __future__ import annotations

import base64
import os
import ssl
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

SERVICE_ACCOUNT_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")


class KubeConfigError(ValueError):
    """The kubeconfig or the pod's service account cannot be used to reach the API."""


@dataclass(frozen=True)
class KubeAccess:
    """The API server and how to authenticate to it."""

    server: str
    ssl_context: ssl.SSLContext
    token: str | None = None
    token_file: Path | None = None

    def headers(self) -> dict[str, str]:
        token = self.token
        if self.token_file is not None:
            token = self.token_file.read_text().strip()
        return {"Authorization": f"Bearer {token}"} if token else {}


def in_cluster(sa_dir: Path = SERVICE_ACCOUNT_DIR) -> KubeAccess:
    """The pod's service account (its token and the cluster's CA) and the API's in-cluster address."""
    host = os.environ.get("KUBERNETES_SERVICE_HOST")
    port = os.environ.get("KUBERNETES_SERVICE_PORT", "443")
    token = sa_dir / "token"
    ca = sa_dir / "ca.crt"
    if not host or not token.is_file() or not ca.is_file():
        raise KubeConfigError(
            "not in a pod (no KUBERNETES_SERVICE_HOST or service-account token): set cluster.kubeconfig"
        )
    host = f"[{host}]" if ":" in host else host
    return KubeAccess(f"https://{host}:{port}", ssl.create_default_context(cafile=str(ca)), token_file=token)


def _named(items: Any, name: str, kind: str) -> dict[str, Any]:
    for item in items or []:
        if isinstance(item, dict) and item.get("name") == name and isinstance(item.get(kind), dict):
            found: dict[str, Any] = item[kind]
            return found
    raise KubeConfigError(f"the kubeconfig has no {kind} named {name!r}")


def _data_or_file(entry: dict[str, Any], key: str, base: Path) -> bytes | None:
    """A kubeconfig value given inline (`<key>-data`, base64) or as a file path (`<key>`)."""
    data = entry.get(f"{key}-data")
    if isinstance(data, str):
        return base64.b64decode(data)
    path = entry.get(key)
    if isinstance(path, str):
        return (base / path).read_bytes()
    return None


def from_kubeconfig(path: Path) -> KubeAccess:
    """The current context of a kubeconfig: its server, CA (or insecure-skip-tls-verify), and a token,
    token file or client certificate."""
    try:
        doc = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as e:
        raise KubeConfigError(f"cannot read the kubeconfig {path}: {e}") from e
    if not isinstance(doc, dict):
        raise KubeConfigError(f"the kubeconfig {path} is not a mapping")
    context = _named(doc.get("contexts"), str(doc.get("current-context", "")), "context")
    cluster = _named(doc.get("clusters"), str(context.get("cluster", "")), "cluster")
    user = _named(doc.get("users"), str(context.get("user", "")), "user")
    server = cluster.get("server")
    if not isinstance(server, str) or not server:
        raise KubeConfigError(f"the kubeconfig {path} names no server")
    try:
        return _access(cluster, user, server, path.parent)
    except (OSError, ValueError, ssl.SSLError) as e:
        raise KubeConfigError(f"the kubeconfig {path}: cannot load its certificates or keys: {e}") from e


def _access(cluster: dict[str, Any], user: dict[str, Any], server: str, base: Path) -> KubeAccess:
    ctx = ssl.create_default_context()
    if cluster.get("insecure-skip-tls-verify") is True:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    else:
        ca = _data_or_file(cluster, "certificate-authority", base)
        if ca is not None:
            ctx.load_verify_locations(cadata=ca.decode())
    cert = _data_or_file(user, "client-certificate", base)
    key = _data_or_file(user, "client-key", base)
    if cert is not None and key is not None:
        _load_client_cert(ctx, cert, key)
    token = user.get("token")
    token_file = user.get("tokenFile")
    return KubeAccess(
        server.rstrip("/"),
        ctx,
        token=token if isinstance(token, str) else None,
        token_file=base / token_file if isinstance(token_file, str) else None,
    )


def _load_client_cert(ctx: ssl.SSLContext, cert: bytes, key: bytes) -> None:
    # ssl loads certificate chains only from files: written to a private folder, read, removed.
    with tempfile.TemporaryDirectory(prefix="realm-kube-") as tmp:
        cert_path, key_path = Path(tmp) / "client.crt", Path(tmp) / "client.key"
        for p, data in ((cert_path, cert), (key_path, key)):
            fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(data)
        ctx.load_cert_chain(str(cert_path), str(key_path))


def access(kubeconfig: str | None) -> KubeAccess:
    """The kubeconfig when one is named, else the pod's service account."""
    return from_kubeconfig(Path(kubeconfig)) if kubeconfig else in_cluster()
