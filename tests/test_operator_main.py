"""`python -m realm.operator.main` registers Realm's handlers: importing main must import them."""

from __future__ import annotations

import subprocess
import sys


def test_main_registers_every_handler() -> None:
    code = (
        "import kopf, realm.operator.main\n"
        "reg = kopf.get_default_registry()\n"
        "names = sorted({h.fn.__name__ for r in (reg._changing, reg._watching, reg._indexing, reg._spawning)"
        " for hs in r._handlers for h in ([hs] if not isinstance(hs, list) else hs)})\n"
        "print(' '.join(names))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.split()
    assert {
        "tenant_event",
        "model_changed",
        "pipeline_changed",
        "realm_tenants",
        "realm_secret_hashes",
    } <= set(out)
