"""A real Kubernetes control plane for e2e tests: etcd + kube-apiserver (+ controller-manager, scheduler).

The binaries come from `e2e/cluster/build.sh`, which compiles them from the Go module proxy into
`${REALM_E2E_CACHE:-~/.cache/realm-e2e}/<key>/bin/`. Everything listens on 127.0.0.1 only, state lives in a
temporary directory, and every process is stopped when the context manager exits (also on errors; on Linux the
children are also tied to this process with PR_SET_PDEATHSIG, so a killed test run leaves no orphans).

    with control_plane() as cluster:
        cluster.kubectl("apply", "--server-side", "-f", "crds/")

With `REALM_E2E_USE_KUBECONFIG=1` and `KUBECONFIG` set, `control_plane()` uses that cluster instead (kind,
k3d, a cloud cluster) and starts nothing.

Command line (works as `python -m e2e.cluster.cluster` from the repository root or as a plain script path):

    python e2e/cluster/cluster.py up [--controllers]   # prints the kubeconfig path, runs until Ctrl-C
    python e2e/cluster/cluster.py bin-dir              # prints the cache directory the binaries are read from

Only the standard library and `cryptography` are used.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import datetime
import hashlib
import ipaddress
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

HERE = Path(__file__).resolve().parent
VERSIONS_FILE = HERE / "versions.env"
BUILD_SCRIPT = HERE / "build.sh"

#: The binaries a control plane needs; kubectl is used by `Cluster.kubectl`.
REQUIRED_BINARIES = ("etcd", "kube-apiserver", "kubectl")
CONTROLLER_BINARIES = ("kube-controller-manager", "kube-scheduler")
KWOK_BINARIES = ("kwok", "kwok-stages.yaml")
#: Nodes with this annotation are simulated by kwok (see `Cluster.add_fake_node`).
KWOK_NODE_ANNOTATION = ("kwok.x-k8s.io/node", "fake")

SERVICE_CLUSTER_IP_RANGE = "10.0.0.0/24"
KUBERNETES_SERVICE_IP = "10.0.0.1"
SERVICE_ACCOUNT_ISSUER = "https://kubernetes.default.svc.cluster.local"
ADMIN_USER = "realm-e2e-admin"


class ControlPlaneError(RuntimeError):
    """A component failed to start or did not become ready in time."""


class KubectlError(subprocess.CalledProcessError):
    """A failed kubectl run; unlike CalledProcessError its message includes stderr."""

    def __str__(self) -> str:
        return f"{super().__str__()}\nstderr: {self.stderr}"


# --------------------------------------------------------------------------------------------- binaries


def read_versions(path: Path = VERSIONS_FILE) -> dict[str, str]:
    """The KEY=VALUE pairs of versions.env (comments and blank lines skipped)."""
    versions: dict[str, str] = {}
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, _, value = line.partition("=")
        versions[key.strip()] = value.strip().strip("'\"")
    return versions


def cache_root() -> Path:
    return Path(os.environ.get("REALM_E2E_CACHE") or Path.home() / ".cache" / "realm-e2e")


def cache_key(go_version: str) -> str:
    """The same key build.sh computes: sha256(versions.env + `go version` + newline), 16 hex digits."""
    digest = hashlib.sha256(VERSIONS_FILE.read_bytes() + go_version.encode() + b"\n")
    return digest.hexdigest()[:16]


def find_bin_dir() -> Path:
    """Where build.sh puts (or put) the binaries for the pinned versions.

    `REALM_E2E_BIN_DIR` overrides everything. Otherwise the key is computed from `go version`; without a Go
    toolchain, a cache entry whose recorded versions.env equals ours is used.
    """
    override = os.environ.get("REALM_E2E_BIN_DIR")
    if override:
        return Path(override)
    go = shutil.which("go")
    if go is not None:
        out = subprocess.run(
            [go, "version"],
            capture_output=True,
            text=True,
            check=True,
            env={**os.environ, "GOTOOLCHAIN": "local"},
        )
        return cache_root() / cache_key(out.stdout.strip()) / "bin"
    wanted = VERSIONS_FILE.read_bytes()
    for entry in sorted(cache_root().glob("*/versions.env")):
        if entry.read_bytes() == wanted:
            return entry.parent / "bin"
    return cache_root() / "unknown" / "bin"


def missing_binaries(bin_dir: Path, names: Sequence[str]) -> list[str]:
    """The names not in bin_dir (executables, or data files such as kwok-stages.yaml)."""

    def present(path: Path) -> bool:
        return path.is_file() if path.suffix == ".yaml" else os.access(path, os.X_OK)

    return [name for name in names if not present(bin_dir / name)]


def build_binaries(names: Sequence[str]) -> Path:
    """Run build.sh for `names` (slow from cold: many minutes on 2 cores) and return the bin directory."""
    subprocess.run(["bash", str(BUILD_SCRIPT), *names], check=True)
    return find_bin_dir()


# --------------------------------------------------------------------------------------------- certificates


def _pem_cert(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _name(common_name: str, organization: str | None = None) -> x509.Name:
    attrs = [x509.NameAttribute(NameOID.COMMON_NAME, common_name)]
    if organization is not None:
        attrs.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, organization))
    return x509.Name(attrs)


@dataclass(frozen=True)
class Pki:
    """PEM files for one control plane, all under `directory`."""

    directory: Path
    ca_cert: Path
    serving_cert: Path
    serving_key: Path
    admin_cert: Path
    admin_key: Path
    sa_public_key: Path
    sa_private_key: Path

    @classmethod
    def generate(cls, directory: Path) -> Pki:
        directory.mkdir(parents=True, exist_ok=True)
        now = datetime.datetime.now(datetime.UTC)
        not_before, not_after = now - datetime.timedelta(hours=1), now + datetime.timedelta(days=7)

        ca_key = _new_key()
        ca_name = _name("realm-e2e-ca")
        ca_cert = (
            x509.CertificateBuilder()
            .subject_name(ca_name)
            .issuer_name(ca_name)
            .public_key(ca_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(not_before)
            .not_valid_after(not_after)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256())
        )

        def leaf(
            subject: x509.Name, usage: x509.ObjectIdentifier, sans: list[x509.GeneralName] | None
        ) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
            key = _new_key()
            builder = (
                x509.CertificateBuilder()
                .subject_name(subject)
                .issuer_name(ca_name)
                .public_key(key.public_key())
                .serial_number(x509.random_serial_number())
                .not_valid_before(not_before)
                .not_valid_after(not_after)
                .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                .add_extension(
                    x509.KeyUsage(
                        digital_signature=True,
                        content_commitment=False,
                        key_encipherment=False,
                        data_encipherment=False,
                        key_agreement=False,
                        key_cert_sign=False,
                        crl_sign=False,
                        encipher_only=False,
                        decipher_only=False,
                    ),
                    critical=True,
                )
                .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
                .add_extension(
                    x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
                )
            )
            if sans:
                builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
            return builder.sign(ca_key, hashes.SHA256()), key

        serving_sans: list[x509.GeneralName] = [
            x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
            x509.IPAddress(ipaddress.ip_address(KUBERNETES_SERVICE_IP)),
            x509.DNSName("localhost"),
            x509.DNSName("kubernetes"),
            x509.DNSName("kubernetes.default"),
            x509.DNSName("kubernetes.default.svc"),
            x509.DNSName("kubernetes.default.svc.cluster.local"),
        ]
        serving, serving_key = leaf(_name("kube-apiserver"), ExtendedKeyUsageOID.SERVER_AUTH, serving_sans)
        admin, admin_key = leaf(_name(ADMIN_USER, "system:masters"), ExtendedKeyUsageOID.CLIENT_AUTH, None)
        sa_key = _new_key()

        pki = cls(
            directory=directory,
            ca_cert=directory / "ca.crt",
            serving_cert=directory / "apiserver.crt",
            serving_key=directory / "apiserver.key",
            admin_cert=directory / "admin.crt",
            admin_key=directory / "admin.key",
            sa_public_key=directory / "sa.pub",
            sa_private_key=directory / "sa.key",
        )
        pki.ca_cert.write_bytes(_pem_cert(ca_cert))
        pki.serving_cert.write_bytes(_pem_cert(serving) + _pem_cert(ca_cert))
        pki.admin_cert.write_bytes(_pem_cert(admin))
        pki.sa_public_key.write_bytes(
            sa_key.public_key().public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        )
        for path, key in (
            (pki.serving_key, serving_key),
            (pki.admin_key, admin_key),
            (pki.sa_private_key, sa_key),
        ):
            path.write_bytes(_pem_key(key))
            path.chmod(0o600)
        return pki


def write_kubeconfig(path: Path, server: str, pki: Pki) -> None:
    """A kubeconfig (JSON is valid YAML) with the admin client certificate embedded."""

    def b64(p: Path) -> str:
        return base64.b64encode(p.read_bytes()).decode()

    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": "realm-e2e",
                "cluster": {"server": server, "certificate-authority-data": b64(pki.ca_cert)},
            }
        ],
        "users": [
            {
                "name": ADMIN_USER,
                "user": {
                    "client-certificate-data": b64(pki.admin_cert),
                    "client-key-data": b64(pki.admin_key),
                },
            }
        ],
        "contexts": [{"name": "realm-e2e", "context": {"cluster": "realm-e2e", "user": ADMIN_USER}}],
        "current-context": "realm-e2e",
    }
    path.write_text(json.dumps(config, indent=2) + "\n")
    path.chmod(0o600)


# --------------------------------------------------------------------------------------------- processes


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _die_with_parent() -> None:
    """preexec_fn: new process group, and SIGKILL when the parent thread dies (Linux)."""
    os.setpgrp()
    if sys.platform.startswith("linux"):
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        pr_set_pdeathsig = 1
        libc.prctl(pr_set_pdeathsig, signal.SIGKILL)


@dataclass
class Component:
    name: str
    process: subprocess.Popen[bytes]
    log_path: Path

    def log_tail(self, lines: int = 40) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def stop(self, timeout: float = 10.0) -> None:
        if self.process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout)


def _get(url: str, context: ssl.SSLContext | None, timeout: float = 2.0) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, context=context, timeout=timeout) as response:
            return int(response.status), response.read().decode(errors="replace")
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode(errors="replace")


# --------------------------------------------------------------------------------------------- cluster


@dataclass
class Cluster:
    """A running (or external) cluster: its kubeconfig and how to talk to it."""

    kubeconfig: Path
    server: str
    kubectl_path: str
    external: bool = False
    startup_seconds: float = 0.0
    workdir: Path | None = None
    timings: dict[str, float] = field(default_factory=dict)
    #: The local control plane behind this cluster (None for an external one); see `restart_apiserver`.
    control: LocalControlPlane | None = field(default=None, repr=False, compare=False)

    def kubectl(
        self, *args: str, input: str | None = None, check: bool = True, timeout: float = 120.0
    ) -> subprocess.CompletedProcess[str]:
        """Run kubectl on this cluster; raises KubectlError (with stderr) if `check` and it fails."""
        result = subprocess.run(
            [self.kubectl_path, "--kubeconfig", str(self.kubeconfig), *args],
            input=input,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if check and result.returncode != 0:
            raise KubectlError(result.returncode, result.args, result.stdout, result.stderr)
        return result

    def add_fake_node(
        self, name: str, *, gpus: int = 0, cpu: str = "32", memory: str = "256Gi", pods: int = 110
    ) -> None:
        """A Node kwok keeps Ready (with `nvidia.com/gpu` allocatable when `gpus`) and whose pods it runs.

        Needs a control plane started with `kwok=True` (and `controllers=True` to schedule pods onto it).
        """
        resources = {"cpu": cpu, "memory": memory, "pods": str(pods)}
        if gpus:
            resources["nvidia.com/gpu"] = str(gpus)
        key, value = KWOK_NODE_ANNOTATION
        node = {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {
                "name": name,
                "annotations": {key: value, "node.alpha.kubernetes.io/ttl": "0"},
                "labels": {"kubernetes.io/hostname": name, "type": "kwok"},
            },
            "spec": {"taints": []},
            "status": {"allocatable": resources, "capacity": resources},
        }
        self.kubectl("apply", "-f", "-", input=json.dumps(node))

    def env(self) -> dict[str, str]:
        """os.environ with KUBECONFIG pointing at this cluster (for subprocesses: helm, an operator)."""
        return {**os.environ, "KUBECONFIG": str(self.kubeconfig)}

    def _local(self) -> LocalControlPlane:
        if self.control is None:
            raise ControlPlaneError("only a local control plane's kube-apiserver can be stopped or started")
        return self.control

    def stop_apiserver(self) -> None:
        """Stop kube-apiserver (SIGTERM, then SIGKILL); etcd and every other component keep running."""
        self._local().stop_apiserver()

    def start_apiserver(self) -> float:
        """Start kube-apiserver again on the same port, certificates and etcd; seconds until /readyz."""
        return self._local().start_apiserver()

    def restart_apiserver(self, down_seconds: float = 0.0) -> float:
        """Stop kube-apiserver, wait `down_seconds`, start it again; returns seconds until /readyz."""
        self.stop_apiserver()
        time.sleep(down_seconds)
        return self.start_apiserver()


class LocalControlPlane:
    """etcd + kube-apiserver (+ kube-controller-manager, kube-scheduler) on loopback; a context manager."""

    def __init__(
        self,
        bin_dir: Path | None = None,
        *,
        controllers: bool = False,
        kwok: bool = False,
        startup_timeout: float = 120.0,
        workdir: Path | None = None,
        keep_workdir: bool | None = None,
        apiserver_args: Sequence[str] = (),
    ) -> None:
        self.bin_dir = bin_dir or find_bin_dir()
        # Extra kube-apiserver flags, e.g. an audit log for the operator benchmark.
        self.apiserver_args = tuple(apiserver_args)
        self.controllers = controllers
        self.kwok = kwok
        self.startup_timeout = startup_timeout
        self._own_workdir = workdir is None
        self.workdir = workdir or Path(tempfile.mkdtemp(prefix="realm-e2e-"))
        self.keep_workdir = (
            keep_workdir if keep_workdir is not None else os.environ.get("REALM_E2E_KEEP_WORKDIR") == "1"
        )
        self.components: list[Component] = []
        self.cluster: Cluster | None = None
        # What kube-apiserver was started with, so it can be restarted identically.
        self._apiserver_args: tuple[Pki, str, int] | None = None

    # -- lifecycle

    def __enter__(self) -> Cluster:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def start(self) -> Cluster:
        needed = [
            *REQUIRED_BINARIES,
            *(CONTROLLER_BINARIES if self.controllers else ()),
            *(KWOK_BINARIES if self.kwok else ()),
        ]
        missing = missing_binaries(self.bin_dir, needed)
        if missing:
            raise ControlPlaneError(
                f"missing {', '.join(missing)} in {self.bin_dir}; "
                f"build them with {BUILD_SCRIPT} {' '.join(missing)}"
            )
        began = time.monotonic()
        timings: dict[str, float] = {}

        pki = Pki.generate(self.workdir / "pki")
        timings["certs"] = time.monotonic() - began

        etcd_url = self._start_etcd()
        timings["etcd"] = time.monotonic() - began

        port = free_port()
        server = f"https://127.0.0.1:{port}"
        kubeconfig = self.workdir / "kubeconfig"
        write_kubeconfig(kubeconfig, server, pki)
        self._start_apiserver(pki, etcd_url, port)
        timings["kube-apiserver"] = time.monotonic() - began

        if self.controllers:
            self._start_controller_manager(pki, kubeconfig)
            self._start_scheduler(kubeconfig)
            timings["controllers"] = time.monotonic() - began
        if self.kwok:
            self._start_kwok(kubeconfig)
            timings["kwok"] = time.monotonic() - began

        self.cluster = Cluster(
            kubeconfig=kubeconfig,
            server=server,
            kubectl_path=str(self.bin_dir / "kubectl"),
            startup_seconds=time.monotonic() - began,
            workdir=self.workdir,
            timings=timings,
            control=self,
        )
        return self.cluster

    def stop(self) -> None:
        """Stop every component (newest first), then remove the work directory unless asked to keep it."""
        errors: list[str] = []
        for component in reversed(self.components):
            try:
                component.stop()
            except Exception as err:  # keep stopping the others
                errors.append(f"{component.name}: {err}")
        self.components.clear()
        if self._own_workdir and not self.keep_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)
        if errors:
            raise ControlPlaneError("teardown failed: " + "; ".join(errors))

    def stop_apiserver(self) -> None:
        """Stop kube-apiserver only (etcd, controllers and kwok keep running); see `start_apiserver`."""
        for component in self.components:
            if component.name == "kube-apiserver":
                component.stop()

    def start_apiserver(self) -> float:
        """(Re)start kube-apiserver with its original port, certificates and etcd; seconds until ready.

        The new process takes the old one's place in `components` (teardown order is unchanged) and
        appends to the same log file.
        """
        if self._apiserver_args is None:
            raise ControlPlaneError("kube-apiserver was never started")
        old = [c for c in self.components if c.name == "kube-apiserver"]
        if any(c.process.poll() is None for c in old):
            raise ControlPlaneError("kube-apiserver is still running; stop_apiserver() first")
        index = self.components.index(old[0]) if old else len(self.components)
        self.components = [c for c in self.components if c.name != "kube-apiserver"]
        began = time.monotonic()
        self._start_apiserver(*self._apiserver_args, append_log=True)
        self.components.insert(index, self.components.pop())
        return time.monotonic() - began

    # -- components

    def _spawn(self, name: str, args: Sequence[str], *, append_log: bool = False) -> Component:
        log_path = self.workdir / "logs" / f"{name}.log"
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with log_path.open("ab" if append_log else "wb") as log:
            process = subprocess.Popen(
                [str(self.bin_dir / name), *args],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.workdir,
                preexec_fn=_die_with_parent,  # no threads of ours run in between fork and exec
            )
        component = Component(name, process, log_path)
        self.components.append(component)
        return component

    def _wait(self, component: Component, probe: Callable[[], bool], what: str) -> None:
        deadline = time.monotonic() + self.startup_timeout
        while True:
            if component.process.poll() is not None:
                raise ControlPlaneError(
                    f"{component.name} exited with {component.process.returncode} before {what}:\n"
                    f"{component.log_tail()}"
                )
            with contextlib.suppress(OSError, ValueError):
                if probe():
                    return
            if time.monotonic() > deadline:
                raise ControlPlaneError(
                    f"{component.name} not {what} after {self.startup_timeout:.0f}s:\n{component.log_tail()}"
                )
            time.sleep(0.2)

    def _start_etcd(self) -> str:
        client_url = f"http://127.0.0.1:{free_port()}"
        peer_url = f"http://127.0.0.1:{free_port()}"
        etcd = self._spawn(
            "etcd",
            [
                "--name=default",
                f"--data-dir={self.workdir / 'etcd'}",
                f"--listen-client-urls={client_url}",
                f"--advertise-client-urls={client_url}",
                f"--listen-peer-urls={peer_url}",
                f"--initial-advertise-peer-urls={peer_url}",
                f"--initial-cluster=default={peer_url}",
                "--unsafe-no-fsync=true",
                "--log-level=warn",
            ],
        )

        def healthy() -> bool:
            status, body = _get(f"{client_url}/health", None)
            return status == 200 and '"health":"true"' in body.replace(" ", "")

        self._wait(etcd, healthy, "healthy")
        return client_url

    def _start_apiserver(self, pki: Pki, etcd_url: str, port: int, *, append_log: bool = False) -> None:
        self._apiserver_args = (pki, etcd_url, port)
        apiserver = self._spawn(
            "kube-apiserver",
            [
                f"--etcd-servers={etcd_url}",
                f"--secure-port={port}",
                "--bind-address=127.0.0.1",
                "--advertise-address=127.0.0.1",
                # 1.3x rejects a loopback advertise address for the `kubernetes` Endpoints; no pod runs here
                # that would need them (envtest does the same).
                "--endpoint-reconciler-type=none",
                f"--cert-dir={self.workdir / 'apiserver-certs'}",
                f"--tls-cert-file={pki.serving_cert}",
                f"--tls-private-key-file={pki.serving_key}",
                f"--client-ca-file={pki.ca_cert}",
                f"--service-cluster-ip-range={SERVICE_CLUSTER_IP_RANGE}",
                "--allow-privileged=true",
                "--authorization-mode=RBAC",
                f"--service-account-issuer={SERVICE_ACCOUNT_ISSUER}",
                f"--service-account-key-file={pki.sa_public_key}",
                f"--service-account-signing-key-file={pki.sa_private_key}",
                "--profiling=false",
                "--v=1",
                *self.apiserver_args,
            ],
            append_log=append_log,
        )
        context = ssl.create_default_context(cafile=str(pki.ca_cert))
        context.load_cert_chain(str(pki.admin_cert), str(pki.admin_key))

        def ready() -> bool:
            status, _ = _get(f"https://127.0.0.1:{port}/readyz", context)
            return status == 200

        self._wait(apiserver, ready, "ready (/readyz)")

    def _health_probe(self, port: int) -> Callable[[], bool]:
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE  # the component's self-signed serving cert; /healthz only

        def healthy() -> bool:
            status, _ = _get(f"https://127.0.0.1:{port}/healthz", context)
            return status == 200

        return healthy

    def _start_controller_manager(self, pki: Pki, kubeconfig: Path) -> None:
        port = free_port()
        manager = self._spawn(
            "kube-controller-manager",
            [
                f"--kubeconfig={kubeconfig}",
                f"--authentication-kubeconfig={kubeconfig}",
                f"--authorization-kubeconfig={kubeconfig}",
                "--leader-elect=false",
                f"--service-account-private-key-file={pki.sa_private_key}",
                f"--root-ca-file={pki.ca_cert}",
                f"--service-cluster-ip-range={SERVICE_CLUSTER_IP_RANGE}",
                "--bind-address=127.0.0.1",
                f"--secure-port={port}",
                f"--cert-dir={self.workdir / 'controller-manager-certs'}",
                "--v=1",
            ],
        )
        self._wait(manager, self._health_probe(port), "healthy (/healthz)")

    def _start_scheduler(self, kubeconfig: Path) -> None:
        port = free_port()
        scheduler = self._spawn(
            "kube-scheduler",
            [
                f"--kubeconfig={kubeconfig}",
                f"--authentication-kubeconfig={kubeconfig}",
                f"--authorization-kubeconfig={kubeconfig}",
                "--leader-elect=false",
                "--bind-address=127.0.0.1",
                f"--secure-port={port}",
                f"--cert-dir={self.workdir / 'scheduler-certs'}",
                "--v=1",
            ],
        )
        self._wait(scheduler, self._health_probe(port), "healthy (/healthz)")

    def _start_kwok(self, kubeconfig: Path) -> None:
        port = free_port()
        key, value = KWOK_NODE_ANNOTATION
        kwok = self._spawn(
            "kwok",
            [
                f"--kubeconfig={kubeconfig}",
                f"--config={self.bin_dir / 'kwok-stages.yaml'}",
                "--manage-all-nodes=false",
                f"--manage-nodes-with-annotation-selector={key}={value}",
                "--cidr=10.1.0.0/16",
                "--node-ip=10.2.0.1",  # outside the pod CIDR
                f"--server-address=127.0.0.1:{port}",
            ],
        )

        def healthy() -> bool:
            status, _ = _get(f"http://127.0.0.1:{port}/healthz", None)
            return status == 200

        self._wait(kwok, healthy, "healthy (/healthz)")


def use_external_kubeconfig() -> Path | None:
    """The user's cluster when REALM_E2E_USE_KUBECONFIG=1 and KUBECONFIG names one file, else None."""
    if os.environ.get("REALM_E2E_USE_KUBECONFIG") != "1":
        return None
    value = os.environ.get("KUBECONFIG", "")
    if not value:
        raise ControlPlaneError("REALM_E2E_USE_KUBECONFIG=1 but KUBECONFIG is not set")
    return Path(value.split(os.pathsep)[0])


@contextlib.contextmanager
def control_plane(
    *,
    controllers: bool = False,
    kwok: bool = False,
    bin_dir: Path | None = None,
    startup_timeout: float = 120.0,
    apiserver_args: Sequence[str] = (),
) -> Iterator[Cluster]:
    """A cluster for the duration of the block: the user's (REALM_E2E_USE_KUBECONFIG=1) or a local one."""
    external = use_external_kubeconfig()
    if external is not None:
        kubectl = shutil.which("kubectl") or str((bin_dir or find_bin_dir()) / "kubectl")
        began = time.monotonic()
        cluster = Cluster(kubeconfig=external, server="", kubectl_path=kubectl, external=True)
        cluster.kubectl("get", "--raw", "/readyz", timeout=startup_timeout)
        cluster.startup_seconds = time.monotonic() - began
        yield cluster
        return
    with LocalControlPlane(
        bin_dir,
        controllers=controllers,
        kwok=kwok,
        startup_timeout=startup_timeout,
        apiserver_args=apiserver_args,
    ) as cluster:
        yield cluster


# --------------------------------------------------------------------------------------------- CLI


def _raise_keyboard_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m e2e.cluster.cluster", description=__doc__.split("\n\n")[0]
    )
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="start a control plane, print its kubeconfig, run until interrupted")
    up.add_argument(
        "--controllers", action="store_true", help="also run kube-controller-manager, kube-scheduler"
    )
    up.add_argument("--kwok", action="store_true", help="also run kwok (fake nodes: Cluster.add_fake_node)")
    up.add_argument("--bin-dir", type=Path, default=None, help="binaries (default: the build.sh cache)")
    up.add_argument(
        "--timeout", type=float, default=120.0, help="seconds each component may take to be ready"
    )
    sub.add_parser("bin-dir", help="print the directory the binaries are read from")
    args = parser.parse_args(argv)

    if args.command == "bin-dir":
        bin_dir = find_bin_dir()
        print(bin_dir)
        missing = missing_binaries(bin_dir, [*REQUIRED_BINARIES, *CONTROLLER_BINARIES, *KWOK_BINARIES])
        if missing:
            print(f"missing: {' '.join(missing)}", file=sys.stderr)
        return 0

    signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)
    signal.signal(signal.SIGHUP, _raise_keyboard_interrupt)
    try:
        with control_plane(
            controllers=args.controllers, kwok=args.kwok, bin_dir=args.bin_dir, startup_timeout=args.timeout
        ) as c:
            print(f"export KUBECONFIG={c.kubeconfig}", flush=True)
            print(
                f"# {c.server or 'external cluster'}, ready in {c.startup_seconds:.1f}s; Ctrl-C stops it",
                flush=True,
            )
            while True:
                time.sleep(3600)
    except KeyboardInterrupt:
        return 0
    except ControlPlaneError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
