"""One pod of bench_quotas.py: `realm serve`'s Runtime, its peers read from a file.

A fake at the discovery seam (runtime/peers StaticDiscovery): the bench's pods are processes on
loopback with no kube-apiserver to list their EndpointSlices, so each reads the table of every pod's
internal listener that the bench wrote (e2e/test_remote_e2e.py is discovery through a real apiserver).
Everything else is the runtime `realm serve` runs.

    python bench/quota_pod.py --config pod.json --port 8000 --peers peers.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path

from realm.runtime.config_store import load_config
from realm.runtime.peers import Endpoint, StaticDiscovery
from realm.runtime.server import Runtime


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", type=Path, required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--peers", type=Path, required=True, help='{"service": [[address, port, pod], ...]}')
    args = parser.parse_args()
    table = {
        service: [Endpoint(address, int(port), pod) for address, port, pod in rows]
        for service, rows in json.loads(args.peers.read_text()).items()
    }
    runtime = Runtime(
        load_config(args.config),
        port=args.port,
        metrics_port=0,
        log_level="warning",
        discovery=StaticDiscovery(table),
    )
    return asyncio.run(runtime.serve())


if __name__ == "__main__":
    sys.exit(main())
