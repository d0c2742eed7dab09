"""`python -m realm.operator.main`: run the Realm operator (kopf) with Realm's settings.

    python -m realm.operator.main --namespace team-a --namespace team-b   # watch these namespaces
    python -m realm.operator.main --all-namespaces                        # cluster-wide

Peering is on by default and mandatory: replicas elect one active operator through a KopfPeering
(namespaced) or ClusterKopfPeering (cluster-wide) object named by `--peering`, and an operator that
cannot find that CRD refuses to act rather than risk two of them writing at once. `--standalone`
turns peering off (one replica, local runs).
"""

from __future__ import annotations

import argparse
import logging
import os
import secrets
from collections.abc import Sequence

import kopf

from realm.operator import builders, options
from realm.operator import handlers as _handlers  # noqa: F401  (importing it registers the kopf handlers)


def _gateway(value: str) -> builders.GatewayRef:
    """`[namespace/]name[#section]`."""
    ref, _, section = value.partition("#")
    namespace, _, name = ref.rpartition("/")
    if not name:
        raise argparse.ArgumentTypeError(f"bad gateway reference {value!r}")
    return builders.GatewayRef(name, namespace or None, section or None)


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
        default=os.environ.get("REALM_RUNTIME_IMAGE", options.CONFIG.runtime_image),
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
    p.add_argument("--modules-dir", default=None, help="tenant WebAssembly module folder in the pods")
    p.add_argument("--verbose", "-v", action="store_true")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    options.CONFIG.runtime_image = args.runtime_image
    options.CONFIG.gateway = args.gateway
    options.CONFIG.hostnames = tuple(args.hostname)
    options.CONFIG.service_account = args.service_account
    options.CONFIG.modules_dir = args.modules_dir

    namespaces: list[str] = list(args.namespace)
    if not namespaces and not args.all_namespaces and os.environ.get("REALM_NAMESPACE"):
        namespaces = [os.environ["REALM_NAMESPACE"]]
    clusterwide = args.all_namespaces or not namespaces

    settings = kopf.OperatorSettings()
    settings.peering.mandatory = not args.standalone
    settings.peering.clusterwide = clusterwide
    kopf.run(
        settings=settings,  # handlers.configure (on.startup) adds watching/persistence/posting settings
        standalone=args.standalone,
        peering_name=args.peering,
        priority=args.priority if args.priority is not None else secrets.randbelow(1_000_000) + 1,
        clusterwide=clusterwide,
        namespaces=namespaces,
        liveness_endpoint=args.liveness,
    )


if __name__ == "__main__":
    main()
