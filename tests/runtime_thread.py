"""A real runtime (`realm serve`'s Runtime) serving in a thread on a free port, for tests."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from realm.runtime.config_store import load_config
from realm.runtime.server import Runtime


@contextmanager
def running(config_file: Path, **options: Any) -> Iterator[Runtime]:
    """The runtime for `config_file`, ready, until the block ends; then it must stop cleanly (exit 0).
    `options` go to Runtime (e.g. config_path= to follow reloads, reload_interval=); the ops listener
    takes a free port too unless `metrics_port` says otherwise."""
    ready = threading.Event()
    options.setdefault("metrics_port", 0)
    runtime = Runtime(
        load_config(config_file), port=0, log_level="warning", on_ready=lambda _: ready.set(), **options
    )
    result: list[int] = []
    thread = threading.Thread(
        target=lambda: result.append(asyncio.run(runtime.serve(install_signal_handlers=False))), daemon=True
    )
    thread.start()
    try:
        assert ready.wait(300), "the runtime did not become ready"
        yield runtime
    finally:
        runtime.request_stop()
        thread.join(60)
    assert result == [0]
