"""Guests run below the priority of the engines and the event loop, so that a tenant's spinning
guests cannot slow other tenants' decoding and requests (real wasmtime, Linux thread priorities)."""

from __future__ import annotations

import asyncio
import os
import sys
import threading
from pathlib import Path
from typing import cast

import pytest
import wasmtime
from repo_paths import WAT

from realm.runtime.sandbox import Sandbox, SandboxLimits
from realm.runtime.sandbox.context import HostServices, InvocationContext
from realm.runtime.sandbox.runner import GUEST_NICE


class NoServices:
    """A fake at the HostServices seam: the echo guest makes no host call that reaches it."""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="per-thread nice values are Linux's")
async def test_guests_run_on_threads_of_lower_priority(tmp_path: Path) -> None:
    seen: list[int] = []
    own = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())

    def on_output(_chunk: str) -> None:  # called on the guest's worker thread
        seen.append(os.getpriority(os.PRIO_PROCESS, threading.get_native_id()))

    sandbox = Sandbox(tmp_path, max_workers=2)
    try:
        module = sandbox.load("a", bytes(wasmtime.wat2wasm((WAT / "echo.wat").read_text())))
        ctx = InvocationContext(
            tenant="a",
            input_data="hi",
            services=cast(HostServices, NoServices()),
            loop=asyncio.get_running_loop(),
            on_output=on_output,
        )
        await sandbox.invoke(module, ctx, SandboxLimits())
    finally:
        sandbox.close()
    assert seen == [min(19, own + GUEST_NICE)]
    assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) == own  # the caller's is untouched
