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


def test_startup_settings_bound_watches_retries_and_per_object_work() -> None:
    """The settings kopf starts with (issue #4: watch timeouts and backoff tuned; handlers.startup applies
    them). Run in a subprocess: `configure` also sets the interpreter's GIL switch interval."""
    code = (
        "import sys, kopf\n"
        "from realm.operator import kopf_settings\n"
        "s = kopf.OperatorSettings()\n"
        "kopf_settings.configure(s)\n"
        "w, n, b = s.watching, s.networking, s.batching\n"
        "print(w.server_timeout, w.client_timeout, w.connect_timeout, n.request_timeout,\n"
        "      list(n.error_backoffs), b.worker_limit, b.idle_timeout, b.batch_window,\n"
        "      s.persistence.finalizer, type(s.persistence.progress_storage).__name__,\n"
        "      sys.getswitchinterval())\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    server, client, connect, request = out.split()[:4]
    # The server ends a watch before the client gives up on it: a quiet stream is renewed, never
    # mistaken for a dead connection; a dead one is noticed within the client timeout.
    assert 0 < float(server) < float(client) <= 120 and 0 < float(connect) <= float(request)
    assert "[1, 2, 4, 8, 15, 30, 60]" in out  # fast first retries, then at most a minute apart
    per_object = ["400", "0.5", "0.02", "realm.dev/operator", "AnnotationsProgressStorage", "0.001"]
    assert out.split()[-6:] == per_object
