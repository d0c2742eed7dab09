"""`python -m realm.operator.main`: run the Realm operator (kopf) with Realm's settings.

    python -m realm.operator.main --namespace team-a --namespace team-b   # watch these namespaces
    python -m realm.operator.main --all-namespaces                        # cluster-wide

Peering is on by default and mandatory: replicas elect one active operator through a KopfPeering
(namespaced) or ClusterKopfPeering (cluster-wide) object named by `--peering`, and an operator that
cannot find that CRD refuses to act rather than risk two of them writing at once. `--standalone`
turns peering off (one replica, local runs). The operator creates its peering object when it is
missing (an operator whose peering object does not exist stays paused forever), so a chart or a
kustomize base only has to ship the peering CRDs, never a custom resource that would have to wait for
them to be established.

Runtime pod defaults (image, GPU resource name, node selector, tolerations, runtime class, image pull
secrets, S3 settings) are flags so the chart's values reach every Model's pods; see BuildOptions.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import secrets
import time
from collections.abc import Sequence
from typing import Any, cast

import kopf
import urllib3
from pydantic import TypeAdapter, ValidationError

from realm.operator import builders, fastpath, handlers  # importing handlers registers them with kopf
from realm.operator.identity import ensure_installation_secret
from realm.operator.kube import Kube, peering_kind
from realm.operator.options import OperatorConfig
from realm.operator.peering_gate import own_identity
from realm.operator.snapshots import DEFAULT_PREFIX, SnapshotLocations
from realm.operator.state import MEMO_KEY
from realm.runtime.spec.model import Toleration
from realm.runtime.spec.runtime_config import EgressConfig

log = logging.getLogger("realm.operator")
PEERING_GROUP, PEERING_VERSION = peering_kind(False).group, peering_kind(False).version


def _gateway(value: str) -> builders.GatewayRef:
    """`[namespace/]name[#section]`."""
    ref, _, section = value.partition("#")
    namespace, _, name = ref.rpartition("/")
    if not name:
        raise argparse.ArgumentTypeError(f"bad gateway reference {value!r}")
    return builders.GatewayRef(name, namespace or None, section or None)


def _node_selector(value: str) -> dict[str, str]:
    """A JSON object of label → value (what the chart renders with toJson)."""
    try:
        parsed = json.loads(value)
    except json.JSONDecodeError as e:
        raise argparse.ArgumentTypeError(f"node selector is not JSON: {e}") from e
    if not isinstance(parsed, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in parsed.items()
    ):
        raise argparse.ArgumentTypeError("node selector must be a JSON object of strings")
    return dict(parsed)


def _tolerations(value: str) -> list[dict[str, Any]]:
    """A JSON list of Kubernetes tolerations, checked by the same model as Model.spec.tolerations."""
    try:
        items = TypeAdapter(list[Toleration]).validate_json(value)
    except ValidationError as e:
        raise argparse.ArgumentTypeError(f"bad tolerations: {e}") from e
    return [t.model_dump(by_alias=True, exclude_none=True) for t in items]


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="realm-operator", description=__doc__.split("\n")[0])
    scope = p.add_mutually_exclusive_group()
    scope.add_argument(
        "--namespace",
        "-n",
        action="append",
        default=[],
        help="namespace to watch (repeatable; kopf glob patterns allowed). Default: $REALM_NAMESPACE.",
    )
    scope.add_argument("--all-namespaces", "-A", action="store_true", help="watch every namespace")
    peering = os.environ.get("REALM_PEERING", "realm-operator")
    p.add_argument("--peering", default=peering, help="peering (leader election) object name")
    p.add_argument("--standalone", action="store_true", help="no peering (a single replica only)")
    p.add_argument(
        "--priority",
        type=int,
        # kopf pauses every replica when two share a priority (nobody acts): by default each replica
        # draws its own, so a scaled-out Deployment elects one without per-pod configuration.
        default=None,
        help="peering priority of this replica (default: random, distinct per replica)",
    )
    p.add_argument("--liveness", default=None, help="liveness endpoint, e.g. http://0.0.0.0:8080/healthz")
    p.add_argument(
        "--runtime-image",
        default=OperatorConfig().runtime_image,  # $REALM_RUNTIME_IMAGE, else the release's image
        help="image of the runtime pods",
    )
    p.add_argument(
        "--gateway",
        type=_gateway,
        default=None,
        help="Gateway ([namespace/]name[#section]) for HTTPRoutes; used only if the Gateway API is served",
    )
    p.add_argument("--hostname", action="append", default=[], help="HTTPRoute hostname (repeatable)")
    p.add_argument("--service-account", default=None, help="service account of the runtime pods")
    p.add_argument(
        "--modules-dir",
        default=builders.DEFAULT_MODULES_DIR,
        help="tenant WebAssembly module folder in the pods (an emptyDir); empty: none, and Tenants that pin "
        "a module say so (ModuleReady=False, ModulesDisabled)",
    )
    rt = p.add_argument_group("runtime pod defaults")
    rt.add_argument(
        "--runtime-gpu-image",
        default=None,
        help="image of pods that request a GPU (trtllm, CUDA llama.cpp; default: --runtime-image)",
    )
    rt.add_argument(
        "--gpu-resource-name", default=builders.GPU_RESOURCE, help="extended resource a GPU is requested as"
    )
    rt.add_argument(
        "--runtime-node-selector",
        type=_node_selector,
        default={},
        help='JSON object, e.g. {"pool": "llm"}; a Model\'s own nodeSelector wins per key',
    )
    rt.add_argument(
        "--runtime-tolerations",
        type=_tolerations,
        default=[],
        help="JSON list of tolerations, added before a Model's own",
    )
    rt.add_argument("--runtime-class", default=None, help="RuntimeClass of pods that request a GPU")
    rt.add_argument(
        "--image-pull-secret",
        action="append",
        default=[],
        help="pull Secret of the runtime pods (repeatable)",
    )
    s3 = p.add_argument_group("S3 (conversations, KV snapshots), passed to the runtime pods")
    s3.add_argument("--s3-endpoint", default=None, help="S3 endpoint URL (default: AWS)")
    s3.add_argument("--s3-region", default=None)
    s3.add_argument("--s3-bucket", default=None)
    s3.add_argument(
        "--s3-credentials-secret",
        default=None,
        help="Secret (in each Model's namespace) with the access key id and secret access key",
    )
    eg = p.add_argument_group("egress (what tenants' modules may reach), passed to the runtime pods")
    eg.add_argument(
        "--egress-allow-wildcard",
        action="store_true",
        help="let Tenants list a `*` host in spec.egress.allowedOutboundHosts (refused otherwise)",
    )
    eg.add_argument(
        "--egress-allowed-cidr",
        action="append",
        default=[],
        help="a range outbound calls may reach although private, loopback or the cluster's (repeatable)",
    )
    eg.add_argument(
        "--egress-cluster-cidr",
        action="append",
        default=[],
        help="a pod or Service range outbound calls may not reach unless allowed (repeatable)",
    )
    s3.add_argument(
        "--kv-allowed-bucket",
        action="append",
        default=[],
        help="a bucket Tenants may name in kvSnapshots.bucket besides --s3-bucket (repeatable)",
    )
    s3.add_argument(
        "--kv-allowed-prefix",
        action="append",
        default=[],
        help=f"a prefix Tenants' kvSnapshots.prefix must lie under (repeatable; default {DEFAULT_PREFIX})",
    )
    s3.add_argument("--s3-access-key-id-key", default="AWS_ACCESS_KEY_ID", help="its key for the key id")
    s3.add_argument(
        "--s3-secret-access-key-key", default="AWS_SECRET_ACCESS_KEY", help="its key for the secret key"
    )
    p.add_argument(
        "--no-light-watches",
        dest="light_watches",
        action="store_false",
        help="leave new Tenants and Models to kopf's watches alone (see fastpath.py; slower in a burst)",
    )
    p.add_argument(
        "--finalizer-timeout",
        type=float,
        default=OperatorConfig().finalizer_timeout_s,
        help="seconds a deleted Tenant's finalizer retries deleting its KV snapshots before it gives up "
        "with a warning event (annotation realm.dev/force-release=true: at once)",
    )
    ident = p.add_argument_group("identity (the root of every tenant's storage keys)")
    ident.add_argument(
        "--installation-secret",
        default=os.environ.get("REALM_INSTALLATION_SECRET_NAME") or "realm-installation",
        help="Secret holding the installation secret, generated there if missing",
    )
    ident.add_argument(
        "--installation-namespace",
        default=os.environ.get("REALM_OPERATOR_NAMESPACE") or None,
        help="its namespace (default: $REALM_OPERATOR_NAMESPACE, else the first watched namespace)",
    )
    p.add_argument("--verbose", "-v", action="store_true", help="everything at DEBUG")
    p.add_argument(
        "--object-log-level",
        choices=("DEBUG", "INFO", "WARNING", "ERROR"),
        default=os.environ.get("REALM_OBJECT_LOG_LEVEL") or "WARNING",
        help="kopf's per-object lines ('Handler ... succeeded', once per watch event: a thousand Tenants "
        "make thousands); the operator's own lines and Kubernetes events say what it did. "
        "Default: $REALM_OBJECT_LOG_LEVEL or WARNING.",
    )
    return p.parse_args(argv)


def config_from(args: argparse.Namespace) -> OperatorConfig:
    """Flags → the operator-wide options every pass builds from."""
    s3 = builders.S3Options(
        endpoint=args.s3_endpoint,
        region=args.s3_region,
        bucket=args.s3_bucket,
        credentials_secret=args.s3_credentials_secret,
        access_key_id_key=args.s3_access_key_id_key,
        secret_access_key_key=args.s3_secret_access_key_key,
    )
    return OperatorConfig(
        runtime_image=args.runtime_image,
        gateway=args.gateway,
        hostnames=tuple(args.hostname),
        service_account=args.service_account,
        modules_dir=args.modules_dir or None,
        runtime_gpu_image=args.runtime_gpu_image,
        gpu_resource=args.gpu_resource_name,
        node_selector=dict(args.runtime_node_selector),
        tolerations=list(args.runtime_tolerations),
        runtime_class=args.runtime_class,
        image_pull_secrets=tuple(args.image_pull_secret),
        finalizer_timeout_s=args.finalizer_timeout,
        s3=s3 if (s3.endpoint or s3.region or s3.bucket or s3.credentials_secret) else None,
        egress=EgressConfig(
            allow_wildcard=args.egress_allow_wildcard,
            allowed_cidrs=args.egress_allowed_cidr,
            cluster_cidrs=args.egress_cluster_cidr,
        ),
        snapshot_locations=SnapshotLocations(
            buckets=tuple(args.kv_allowed_bucket), prefixes=tuple(args.kv_allowed_prefix or [DEFAULT_PREFIX])
        ),
    )


def ensure_peering(name: str, namespaces: Sequence[str], clusterwide: bool, timeout: float = 60.0) -> None:
    """Create the peering object(s) kopf will use, if missing (409 is fine: someone was first).

    Right after `helm install` the peering CRD may not be established yet (404): retry for a while,
    then leave it to kopf, which waits paused. Glob patterns name no single namespace and are skipped.
    """
    from kubernetes import client, config
    from kubernetes.client.exceptions import ApiException

    try:
        config.load_incluster_config()
    except config.ConfigException:
        config.load_kube_config()
    api = client.CustomObjectsApi()
    body: dict[str, Any] = {"apiVersion": f"{PEERING_GROUP}/{PEERING_VERSION}", "metadata": {"name": name}}
    targets: list[str | None] = (
        [None] if clusterwide else [n for n in namespaces if not any(ch in n for ch in "*?[!")]
    )
    for ns in targets:
        deadline = time.monotonic() + timeout
        while True:
            try:
                if ns is None:
                    kind = {**body, "kind": "ClusterKopfPeering"}
                    api.create_cluster_custom_object(
                        PEERING_GROUP, PEERING_VERSION, peering_kind(True).plural, kind
                    )
                else:
                    kind = {**body, "kind": "KopfPeering"}
                    api.create_namespaced_custom_object(
                        PEERING_GROUP, PEERING_VERSION, ns, peering_kind(False).plural, kind
                    )
                log.info("created peering %s %s", name, f"in {ns}" if ns else "cluster-wide")
                break
            except ApiException as e:
                if e.status == 409:
                    break
                if e.status == 404 and time.monotonic() < deadline:
                    time.sleep(2)  # the CRD is not established yet
                    continue
                log.warning("cannot create peering %s (%s %s); kopf waits for it", name, e.status, e.reason)
                break
            except (OSError, urllib3.exceptions.HTTPError) as e:  # the apiserver is not reachable (yet)
                if time.monotonic() < deadline:
                    time.sleep(2)
                    continue
                log.warning("cannot create peering %s (%s); kopf waits for it", name, e)
                break


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if not args.verbose:
        logging.getLogger("kopf.objects").setLevel(args.object_log_level)
        logging.getLogger("realm.operator.objects").setLevel(args.object_log_level)
    op = handlers.new_operator(Kube.from_environment(), config_from(args))

    namespaces: list[str] = list(args.namespace)
    if not namespaces and not args.all_namespaces and os.environ.get("REALM_NAMESPACE"):
        namespaces = [os.environ["REALM_NAMESPACE"]]
    clusterwide = args.all_namespaces or not namespaces
    plain = [n for n in namespaces if not any(ch in n for ch in "*?[!")]
    home = args.installation_namespace or (plain[0] if plain else "default")
    op.config.installation_secret = ensure_installation_secret(op.kube, home, args.installation_secret)

    if not args.standalone:
        ensure_peering(args.peering, namespaces, clusterwide)
        peerings = peering_kind(clusterwide)
        kopf.on.event(
            peerings.group, peerings.version, peerings.plural, field="metadata.name", value=args.peering
        )(handlers.peering_seen)
    settings = kopf.OperatorSettings()
    settings.peering.mandatory = not args.standalone
    settings.peering.clusterwide = clusterwide
    priority = args.priority if args.priority is not None else secrets.randbelow(1_000_000) + 1
    identity = own_identity()
    if args.light_watches:
        peering = None if args.standalone else args.peering
        fastpath.start(op, namespaces, clusterwide, peering, identity, priority)
    kopf.run(
        settings=settings,  # handlers.startup adds watching/persistence/posting settings (kopf_settings.py)
        standalone=args.standalone,
        # kopf makes peering mandatory whenever a name is given, and a standalone run watches no peering
        # objects: with a name it paused every watch for good ("peering CRD is missing").
        peering_name=None if args.standalone else args.peering,
        identity=cast(Any, identity),  # kopf's Identity is a NewType of str, not exported
        priority=priority,
        clusterwide=clusterwide,
        namespaces=namespaces,
        liveness_endpoint=args.liveness,
        # Every handler finds the operator's state here (kopf hands each object a shallow copy of this
        # memo: the same Operator).
        memo=kopf.Memo({MEMO_KEY: op}),
    )


if __name__ == "__main__":
    main()
