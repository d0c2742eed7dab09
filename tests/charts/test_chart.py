"""The Helm chart (charts/realm) and the kustomize base (manifests/) without a cluster.

- The CRDs they ship are the generated ones (chartgen --check), and the README lists every value.
- `helm lint --strict` and `helm template` with default and non-default values (charts/realm/ci/);
  the schema rejects typos. Helm is the one e2e/cluster/build.sh builds; these tests skip without it.
- What is rendered is what the issue asks: non-root, read-only, seccomp RuntimeDefault; no pinned
  peering priority; every flag the chart passes is one the operator accepts; least-privilege RBAC;
  CRDs kept on uninstall; the kustomize base equals the chart's default rendering where it matters.

Server-side validation against a real apiserver, install, upgrade, test and uninstall are in
e2e/test_helm.py.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from repo_paths import REPO

from e2e.cluster.cluster import find_bin_dir
from realm.operator import builders, chartgen, main, options

CHART = REPO / "charts" / "realm"
NONDEFAULT = CHART / "ci" / "nondefault-values.yaml"
KUBE_VERSION = "1.37.2"  # the e2e control plane's (e2e/cluster/versions.env)
BIN = find_bin_dir()
NS = "realm-system"

# The operator's complete permissions, per (apiGroup, resource): the test of record for least privilege.
NAMESPACED_RULES = {
    ("realm.dev", "tenants"): {"get", "list", "watch", "patch"},
    ("realm.dev", "models"): {"get", "list", "watch", "patch"},
    ("realm.dev", "modelpools"): {"get", "list", "watch", "patch"},
    ("realm.dev", "pipelines"): {"get", "list", "watch", "patch"},
    ("realm.dev", "tenants/status"): {"patch"},
    ("realm.dev", "models/status"): {"patch"},
    ("realm.dev", "modelpools/status"): {"patch"},
    ("realm.dev", "pipelines/status"): {"patch"},
    ("realm.dev", "tenants/finalizers"): {"update"},
    ("realm.dev", "models/finalizers"): {"update"},
    ("realm.dev", "modelpools/finalizers"): {"update"},
    ("", "secrets"): {"get", "list", "watch", "create"},
    ("", "configmaps"): {"get", "list", "watch", "create", "patch", "delete"},
    ("", "services"): {"get", "list", "watch", "create", "patch", "delete"},
    ("apps", "deployments"): {"get", "list", "watch", "create", "patch", "delete"},
    ("gateway.networking.k8s.io", "httproutes"): {"get", "list", "watch", "create", "patch", "delete"},
    ("", "pods"): {"list"},
    ("discovery.k8s.io", "endpointslices"): {"list"},
    ("", "events"): {"create"},
}
RUNTIME_RULES = {("discovery.k8s.io", "endpointslices"): {"get", "list", "watch"}}
CLUSTER_RULES = {("apiextensions.k8s.io", "customresourcedefinitions"): {"get", "list", "watch"}}
PEERING_VERBS = {"get", "list", "watch", "patch", "create"}


def flatten(rules: list[dict[str, Any]]) -> dict[tuple[str, str], set[str]]:
    out: dict[tuple[str, str], set[str]] = {}
    for rule in rules:
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                out.setdefault((group, resource), set()).update(rule["verbs"])
    return out


def helm(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    if not (BIN / "helm").exists():
        pytest.skip(f"helm not built in {BIN} (e2e/cluster/build.sh helm)")
    out = subprocess.run([str(BIN / "helm"), *args], capture_output=True, text=True, timeout=120)
    if check and out.returncode != 0:
        raise AssertionError(f"helm {' '.join(args)} failed:\n{out.stdout}\n{out.stderr}")
    return out


def render(*values: str, release: str = "realm") -> list[dict[str, Any]]:
    flags = [a for v in values for a in (("-f", v) if v.endswith(".yaml") else ("--set", v))]
    out = helm("template", release, str(CHART), "-n", NS, "--kube-version", KUBE_VERSION, *flags)
    return [d for d in yaml.safe_load_all(out.stdout) if d]


def by_kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind]


def container(docs: list[dict[str, Any]]) -> dict[str, Any]:
    (dep,) = by_kind(docs, "Deployment")
    (c,) = dep["spec"]["template"]["spec"]["containers"]
    assert isinstance(c, dict)
    return c


# Generated files ------------------------------------------------------------------------------------


def test_chart_and_base_crds_and_values_table_are_generated(capsys: pytest.CaptureFixture[str]) -> None:
    assert chartgen.main(["--check"]) == 0, capsys.readouterr().out
    for crd in sorted((REPO / "crds").glob("*.yaml")):
        assert (CHART / "files/crds" / crd.name).read_bytes() == crd.read_bytes()
        assert (REPO / "manifests/base/crds" / crd.name).read_bytes() == crd.read_bytes()


def test_check_mode_catches_a_hand_edit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    copy = tmp_path / "files"
    copy.mkdir()
    for p in (CHART / "files/crds").iterdir():
        (copy / p.name).write_text(p.read_text())
    (copy / "tenants.realm.dev.yaml").write_text((copy / "tenants.realm.dev.yaml").read_text() + "# edit\n")
    (copy / "extra.yaml").write_text("kind: Stale\n")
    monkeypatch.setattr(chartgen, "CHART_CRDS", copy)
    assert chartgen.main(["--check"]) == 1


def _leaf_keys(values: dict[str, Any], prefix: str = "") -> set[str]:
    out: set[str] = set()
    for name, v in values.items():
        key = f"{prefix}{name}"
        out |= _leaf_keys(v, f"{key}.") if isinstance(v, dict) and v else {key}
    return out


def test_schema_describes_every_value_and_the_readme_lists_it() -> None:
    schema = json.loads((CHART / "values.schema.json").read_text())
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    rows = {key: (kind, desc) for key, kind, _, desc in chartgen._leaves(schema, values)}
    for key in _leaf_keys(values):
        # A value is a row, or sits inside a free-form object row (resources, securityContext, ...).
        parents = [key.rsplit(".", n)[0] for n in range(key.count(".") + 1)]
        assert any(p in rows for p in parents), f"{key}: not in values.schema.json"
    for key, (_, desc) in rows.items():
        assert desc, f"{key} has no description"
    readme = (CHART / "README.md").read_text()
    for key in rows:
        assert f"| `{key}` |" in readme


# helm lint / template ---------------------------------------------------------------------------------


@pytest.mark.parametrize("values", [[], [str(NONDEFAULT)]], ids=["default", "nondefault"])
def test_helm_lint_strict(values: list[str]) -> None:
    flags = [a for v in values for a in ("-f", v)]
    out = helm("lint", "--strict", str(CHART), *flags)
    assert "0 chart(s) failed" in out.stdout


@pytest.mark.parametrize(
    "bad",
    [
        "operator.bogus=1",
        "image.digest=sha256:short",
        "operator.watchNamespaces[0]=team-*",
        "operator.replicas=0",
    ],
)
def test_schema_rejects_bad_values(bad: str) -> None:
    out = helm("template", "r", str(CHART), "--kube-version", KUBE_VERSION, "--set", bad, check=False)
    assert out.returncode != 0 and "schema" in out.stderr.lower(), out.stderr


@pytest.mark.parametrize("values", [[], [str(NONDEFAULT)]], ids=["default", "nondefault"])
def test_pods_are_locked_down(values: list[str]) -> None:
    docs = render(*values)
    pods = [d["spec"]["template"]["spec"] for d in docs if d["kind"] in ("Deployment", "Job")]
    assert len(pods) == 2
    for pod in pods:
        psc = pod["securityContext"]
        assert psc["runAsNonRoot"] is True and psc["runAsUser"] != 0
        assert psc["seccompProfile"] == {"type": "RuntimeDefault"}
        for c in pod["containers"]:
            sc = c["securityContext"]
            assert sc["allowPrivilegeEscalation"] is False and sc["readOnlyRootFilesystem"] is True
            assert sc["capabilities"] == {"drop": ["ALL"]}
            assert "limits" in c["resources"]


def test_default_flags_parse_and_pin_no_priority() -> None:
    c = container(render())
    assert c["command"] == ["python", "-m", "realm.operator.main"]
    args = main.parse_args(c["args"])
    assert args.priority is None and not any(a.startswith("--priority") for a in c["args"])
    assert args.all_namespaces and args.peering == "realm" and not args.standalone
    assert args.runtime_image == "ghcr.io/realm-dev/realm-runtime-cpu:0.1.0"
    assert args.service_account == "realm-runtime" and args.s3_bucket is None
    assert args.liveness == "http://0.0.0.0:8080/healthz"


def test_tenant_modules_work_with_the_defaults_and_can_be_turned_off() -> None:
    # By default the runtime pods get a modulesDir (an emptyDir), so a Tenant's spec.wasm is deployed;
    # an empty value turns it off (and such Tenants then say so in ModuleReady).
    on = main.config_from(main.parse_args(container(render())["args"]))
    off = main.config_from(main.parse_args(container(render("runtime.modulesDir="))["args"]))
    assert (on.modules_dir, off.modules_dir) == ("/var/lib/realm/modules", None)


def test_nondefault_values_reach_the_operator_flags() -> None:
    docs = render(str(NONDEFAULT))
    c = container(docs)
    args = main.parse_args(c["args"])
    assert c["image"].startswith("registry.example.com/platform/realm-operator@sha256:0123")
    assert args.namespace == ["team-a", "team-b"] and args.peering == "llm-peers" and args.verbose
    assert args.runtime_image == "registry.example.com/realm-runtime-cpu:0.2.0"
    assert args.runtime_gpu_image == "ghcr.io/realm-runtime-gpu:0.2.0-trtllm"
    assert (args.runtime_class, args.runtime_node_selector) == ("nvidia", {"pool": "llm"})
    assert args.runtime_tolerations == [
        {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
    ]
    assert args.image_pull_secret == ["regcred"] and args.service_account == "llm-runtime"
    assert str(args.gateway) == "GatewayRef(name='public', namespace='gateways', section_name='https')"
    assert args.hostname == ["llm.example.com", "alt.example.com"]
    assert (args.s3_endpoint, args.s3_region, args.s3_bucket) == (
        "http://minio.storage:9000",
        "eu-central-1",
        "realm-kv",
    )
    assert (args.s3_credentials_secret, args.s3_access_key_id_key) == ("realm-s3", "AWS_ACCESS_KEY_ID")
    assert args.modules_dir == "/modules"
    assert args.finalizer_timeout == 120.0
    # One replica: no PodDisruptionBudget; monitors on; the runtime account in each watched namespace.
    assert not by_kind(docs, "PodDisruptionBudget")
    assert {d["kind"] for d in docs} >= {"PodMonitor", "ServiceMonitor"}
    runtime_sas = [d for d in by_kind(docs, "ServiceAccount") if d["metadata"]["name"] == "llm-runtime"]
    assert sorted(d["metadata"]["namespace"] for d in runtime_sas) == ["team-a", "team-b"]
    assert all(d["automountServiceAccountToken"] is False for d in runtime_sas)


def test_egress_values_reach_the_operator_config() -> None:
    # Defaults: deny wildcards and every non-public range; the nondefault values carry through as given.
    default = main.config_from(main.parse_args(container(render())["args"])).egress
    assert (default.allow_wildcard, default.allowed_cidrs, default.cluster_cidrs) == (False, [], [])
    chosen = main.config_from(main.parse_args(container(render(str(NONDEFAULT)))["args"])).egress
    assert (chosen.allow_wildcard, chosen.allowed_cidrs, chosen.cluster_cidrs) == (
        True,
        ["10.40.0.0/16", "fd00:40::/48"],
        ["100.96.0.0/12"],
    )


def test_rbac_is_least_privilege_cluster_wide() -> None:
    docs = render()
    (role,) = by_kind(docs, "ClusterRole")
    assert flatten(role["rules"]) == {
        **NAMESPACED_RULES,
        **CLUSTER_RULES,
        ("kopf.dev", "clusterkopfpeerings"): PEERING_VERBS,
    }
    (binding,) = by_kind(docs, "ClusterRoleBinding")
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "realm-operator", "namespace": NS}]
    # The runtime pods' account: separate, no token of its own accord, no cluster-wide role, and in its
    # namespace only the right to read EndpointSlices (which pods serve the models a pod does not load).
    runtime = [d for d in by_kind(docs, "ServiceAccount") if d["metadata"]["name"] == "realm-runtime"]
    assert len(runtime) == 1 and runtime[0]["automountServiceAccountToken"] is False
    assert all(
        s["name"] != "realm-runtime" for b in by_kind(docs, "ClusterRoleBinding") for s in b["subjects"]
    )
    (role,) = by_kind(docs, "Role")
    assert flatten(role["rules"]) == RUNTIME_RULES
    (runtime_binding,) = by_kind(docs, "RoleBinding")
    assert runtime_binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "realm-runtime", "namespace": NS}
    ]
    assert runtime_binding["roleRef"]["name"] == role["metadata"]["name"]


def test_rbac_is_namespaced_with_watch_namespaces() -> None:
    docs = render(str(NONDEFAULT))
    (cluster_role,) = by_kind(docs, "ClusterRole")
    # kopf lists and watches Namespaces when it serves a list of them (not when cluster-wide).
    assert flatten(cluster_role["rules"]) == {**CLUSTER_RULES, ("", "namespaces"): {"list", "watch"}}
    roles = [
        r
        for r in by_kind(docs, "Role")
        if r["metadata"]["labels"]["app.kubernetes.io/component"] == "operator"
    ]
    assert sorted(r["metadata"]["namespace"] for r in roles) == ["team-a", "team-b"]
    for r in roles:
        assert flatten(r["rules"]) == {**NAMESPACED_RULES, ("kopf.dev", "kopfpeerings"): PEERING_VERBS}
    runtime_roles = [r for r in by_kind(docs, "Role") if r not in roles]
    assert all(flatten(r["rules"]) == RUNTIME_RULES for r in runtime_roles) and len(runtime_roles) == 2
    bindings = by_kind(docs, "RoleBinding")
    assert {b["subjects"][0]["name"] for b in bindings} == {"realm-op", "llm-runtime"}


def test_crds_are_the_generated_ones_and_kept() -> None:
    docs = render()
    crds = {d["metadata"]["name"]: d for d in by_kind(docs, "CustomResourceDefinition")}
    assert set(crds) == {
        "tenants.realm.dev", "models.realm.dev", "modelpools.realm.dev", "pipelines.realm.dev",
        "kopfpeerings.kopf.dev", "clusterkopfpeerings.kopf.dev",
    }  # fmt: skip
    for name, crd in crds.items():
        assert crd["metadata"]["annotations"] == {"helm.sh/resource-policy": "keep"}
        if name.endswith("realm.dev"):
            generated = yaml.safe_load((REPO / "crds" / f"{name}.yaml").read_text())
            assert {**crd, "metadata": generated["metadata"]} == generated
    unkept = by_kind(render("crds.keep=false"), "CustomResourceDefinition")
    assert len(unkept) == 6 and all("annotations" not in d["metadata"] for d in unkept)
    assert not by_kind(render("crds.install=false"), "CustomResourceDefinition")


def test_helm_test_hook() -> None:
    (job,) = by_kind(render(), "Job")
    assert job["metadata"]["annotations"]["helm.sh/hook"] == "test"
    assert "realm-operator.realm-system.svc:8080/healthz" in " ".join(
        job["spec"]["template"]["spec"]["containers"][0]["command"]
    )
    # NOTES.txt is rendered only by install/upgrade/status: e2e/test_helm.py checks it after `helm install`.


# The kustomize base -----------------------------------------------------------------------------------


def kustomize(path: str) -> list[dict[str, Any]]:
    if not (BIN / "kubectl").exists():
        pytest.skip(f"kubectl not built in {BIN}")
    out = subprocess.run(
        [str(BIN / "kubectl"), "kustomize", str(REPO / path)], capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    return [d for d in yaml.safe_load_all(out.stdout) if d]


def test_kustomize_base_matches_the_chart_defaults() -> None:
    base, chart = kustomize("manifests/base"), render()

    def kinds(docs: list[dict[str, Any]]) -> list[tuple[str, str]]:
        return sorted((d["kind"], d["metadata"]["name"]) for d in docs)

    # The same objects (the base adds the Namespace; the chart adds the helm test Job).
    assert [k for k in kinds(base) if k[0] != "Namespace"] == [k for k in kinds(chart) if k[0] != "Job"]
    assert flatten(by_kind(base, "ClusterRole")[0]["rules"]) == flatten(
        by_kind(chart, "ClusterRole")[0]["rules"]
    )
    b, c = container(base), container(chart)
    for key in ("command", "args", "securityContext", "resources", "livenessProbe", "readinessProbe", "env"):
        assert b[key] == c[key], key
    assert b["image"] == c["image"]
    bpod, cpod = (by_kind(d, "Deployment")[0]["spec"]["template"]["spec"] for d in (base, chart))
    assert bpod["securityContext"] == cpod["securityContext"]
    for crd in by_kind(base, "CustomResourceDefinition"):
        assert crd["metadata"]["annotations"]["argocd.argoproj.io/sync-wave"] == "-1"


@pytest.mark.parametrize("overlay", ["dev", "prod"])
def test_overlays_build(overlay: str) -> None:
    docs = kustomize(f"manifests/overlays/{overlay}")
    c = container(docs)
    args = main.parse_args(c["args"])
    (dep,) = by_kind(docs, "Deployment")
    if overlay == "dev":
        assert dep["spec"]["replicas"] == 1 and args.verbose and c["image"].endswith(":dev")
        assert not by_kind(docs, "PodDisruptionBudget")
    else:
        assert dep["spec"]["replicas"] == 2 and "@sha256:" in c["image"]
        assert "@sha256:" in args.runtime_image and args.runtime_class == "nvidia" and args.s3_bucket
    assert len(by_kind(docs, "CustomResourceDefinition")) == 6


# What the chart and the base hold and expose -----------------------------------------------------------


def _empty_dirs(node: Any) -> list[dict[str, Any]]:
    if isinstance(node, dict):
        own = [node] if "emptyDir" in node else []
        return own + [v for value in node.values() for v in _empty_dirs(value)]
    if isinstance(node, list):
        return [v for item in node for v in _empty_dirs(item)]
    return []


@pytest.mark.parametrize("source", ["default", "nondefault", "base"])
def test_every_empty_dir_has_a_size_limit(source: str) -> None:
    docs = {
        "default": render,
        "nondefault": lambda: render(str(NONDEFAULT)),
        "base": lambda: kustomize("manifests/base"),
    }[source]()
    volumes = _empty_dirs(docs)
    assert volumes
    assert [v["name"] for v in volumes if not (v["emptyDir"] or {}).get("sizeLimit")] == []


def test_monitors_scrape_the_runtime_ops_port_not_the_public_one() -> None:
    docs = render("monitoring.podMonitor.enabled=true", "monitoring.serviceMonitor.enabled=true")
    (pod_monitor,) = by_kind(docs, "PodMonitor")
    versions, pools = by_kind(docs, "ServiceMonitor")
    endpoints = [
        *pod_monitor["spec"]["podMetricsEndpoints"],
        *versions["spec"]["endpoints"],
        *pools["spec"]["endpoints"],
    ]
    assert [(e["port"], e["path"]) for e in endpoints] == [("metrics", "/metrics")] * 3
    # Version Services, and pools' Services: a pool's pods are behind several version Services, which
    # leave the metrics port out, so each pod is scraped once.
    keys = [m["spec"]["selector"]["matchExpressions"][0]["key"] for m in (versions, pools)]
    assert keys == ["realm.dev/model-version", "realm.dev/pool"]


def _network_policies(*values: str) -> list[dict[str, Any]]:
    return by_kind(render(*values), "NetworkPolicy")


def test_runtime_network_policy_by_default_ingress_from_the_operator_egress_to_dns_and_s3() -> None:
    (policy,) = _network_policies()
    spec = policy["spec"]
    assert policy["metadata"]["namespace"] == NS
    assert spec["podSelector"]["matchLabels"]["app.kubernetes.io/name"] == "realm-runtime"
    assert spec["policyTypes"] == ["Ingress", "Egress"]
    operator_rule, peers_in = spec["ingress"]
    (peer,) = operator_rule["from"]
    assert peer["namespaceSelector"] == {"matchLabels": {"kubernetes.io/metadata.name": NS}}
    assert peer["podSelector"]["matchLabels"]["app.kubernetes.io/component"] == "operator"
    assert [p["port"] for p in operator_rule["ports"]] == ["http", "metrics"]
    # The internal port: only between the namespace's runtime pods, both ways.
    dns, s3, peers_out, api = spec["egress"]
    for rule, side in ((peers_in, "from"), (peers_out, "to")):
        (runtime,) = rule[side]
        assert runtime == {"podSelector": spec["podSelector"]}
        assert rule["ports"] == [{"port": "internal", "protocol": "TCP"}]
    assert {(p["port"], p["protocol"]) for p in dns["ports"]} == {(53, "UDP"), (53, "TCP")}
    assert s3["to"] == [{"ipBlock": {"cidr": "0.0.0.0/0"}}]
    assert [p["port"] for p in s3["ports"]] == [443, 9000]
    assert [p["port"] for p in api["ports"]] == [443, 6443]


def test_runtime_network_policy_follows_the_gateway_and_the_values() -> None:
    policies = _network_policies(
        str(NONDEFAULT),
        "networkPolicy.egress.s3.cidrs[0]=10.20.0.0/16",
        "networkPolicy.egress.s3.ports[0]=9000",
        "networkPolicy.ingress.metrics.namespaceSelector.matchLabels.team=monitoring",
    )
    assert sorted(p["metadata"]["namespace"] for p in policies) == ["team-a", "team-b"]
    spec = policies[0]["spec"]
    gateway, _, metrics, _ = spec["ingress"]
    assert gateway["from"] == [
        {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "gateways"}}}
    ]
    assert [p["port"] for p in gateway["ports"]] == ["http"]
    assert metrics["from"] == [{"namespaceSelector": {"matchLabels": {"team": "monitoring"}}}]
    assert [p["port"] for p in metrics["ports"]] == ["metrics"]
    assert spec["egress"][1] == {
        "to": [{"ipBlock": {"cidr": "10.20.0.0/16"}}],
        "ports": [{"port": 9000, "protocol": "TCP"}],
    }


def test_runtime_network_policy_can_be_switched_off() -> None:
    assert _network_policies("networkPolicy.enabled=false") == []


def test_runtime_images_pinned_by_digest_reach_the_operator_and_its_pods() -> None:
    cpu, gpu = "sha256:" + "a" * 64, "sha256:" + "b" * 64
    c = container(render(f"runtime.image.digest={cpu}", f"runtime.gpuImage.digest={gpu}", "image.tag=9.9"))
    args = main.parse_args(c["args"])
    assert args.runtime_image == f"ghcr.io/realm-dev/realm-runtime-cpu@{cpu}"
    assert args.runtime_gpu_image == f"ghcr.io/realm-dev/realm-runtime-gpu@{gpu}"
    config = main.config_from(args)
    model = builders.ModelResource(
        "m",
        "ns",
        "uid",
        builders.ModelSpec.model_validate({"versions": [{"name": "v1", "source": "pypi:x"}]}),
    )
    dep = builders.deployment(model, "v1", [], options.build_options(config, gateway_api_served=False))
    assert dep["spec"]["template"]["spec"]["containers"][0]["image"] == args.runtime_image
