"""Built tenant components for tests, cached across runs.

A componentize-py build takes seconds of CPU, and compiling its 19 MB component takes more,
so both are cached under ~/.cache/realm/test-builds (or $REALM_TEST_BUILD_CACHE), keyed by
everything that goes into them: the sources, the SDK, the WIT, the toolchain versions.

    from sandbox_builds import build_example, compile_component  # tests/ is on sys.path
    wasm = build_example("chat")             # sdk/python/examples/chat -> .../chat-<key>.wasm
    component = compile_component(engine, wasm)
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from importlib import metadata
from pathlib import Path

from wasmtime import Engine, WasmtimeError
from wasmtime.component import Component

from realm.tenant_build import build_tenant, python_sdk_dir, wit_dir

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "sdk" / "python" / "examples"
PYTHON_EXAMPLES = ("echo", "chat", "chain", "stream")

# A test-only tenant that reaches every host function and reports what it saw, so the binding's
# value conversions are checked from inside a real guest. Input: one command per invocation.
PROBE_APP = """
import json
import realm_tenant as rt


class WitWorld(rt.Tenant):
    def main(self) -> None:
        cmd, _, arg = rt.input_text().partition(":")
        if cmd == "model-info":
            try:
                info = rt.load_model(arg)
                rt.emit_json({"ok": [info.name, info.version, info.engine, info.context_length,
                                     info.vocab_size, info.has_chat_template]})
            except rt.RealmError as e:
                rt.emit_json({"err": [e.code, e.message]})
        elif cmd == "version":
            try:
                rt.emit_json({"ok": rt.model_version(arg)})
            except rt.RealmError as e:
                rt.emit_json({"err": [e.code, e.message]})
        elif cmd in ("generate", "generate-stream"):
            fn = rt.generate_stream if cmd == "generate-stream" else rt.generate
            try:
                g = fn(arg, model="m", max_tokens=7, temperature=0.7, top_p=0.9, top_k=40,
                       stop=["</s>"], seed=2**63)
                rt.emit_json({"ok": [g.text, g.finish_reason, g.prompt_tokens, g.completion_tokens]})
            except rt.RealmError as e:
                rt.emit_json({"err": [e.code, e.message]})
        elif cmd == "generate-invalid":
            try:
                rt.generate(arg, model="m", max_tokens=0)
            except rt.RealmError as e:
                rt.emit_json({"err": [e.code, e.message]})
        elif cmd == "tokens":
            try:
                ids = rt.encode("m", arg)
                rt.emit_json({"ok": [ids, rt.decode("m", ids)]})
            except rt.RealmError as e:
                rt.emit_json({"err": [e.code, e.message]})
        elif cmd == "log":
            rt.log(arg, "warn")
        elif cmd == "fail":
            raise ValueError(arg)
        elif cmd == "unhandled-host-error":
            rt.load_model(arg)  # a RealmError left to Tenant.run: err("<code>: <message>")
        elif cmd == "spin":
            while True:
                pass
        else:
            rt.emit(json.dumps({"unknown": cmd}))
"""


# Emits "z", then sleeps in WASI 0.2 (wasmtime's native poll, which the host cannot interrupt) for
# the seconds its input gives, an hour when its input is not a number.
NAPPER_APP = """
import time
import realm_tenant as rt


class WitWorld(rt.Tenant):
    def main(self) -> None:
        rt.emit("z")
        given = rt.input_text().strip()
        time.sleep(float(given) if given.replace(".", "", 1).isdigit() else 3600)
"""


def cache_dir() -> Path:
    path = Path(os.environ.get("REALM_TEST_BUILD_CACHE", Path.home() / ".cache" / "realm" / "test-builds"))
    path.mkdir(parents=True, exist_ok=True)
    return path


def _hash_tree(h: hashlib._Hash, root: Path) -> None:
    for path in sorted(root.rglob("*")):
        if path.is_file() and "__pycache__" not in path.parts and path.suffix not in (".pyc", ".wasm"):
            h.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes() + b"\0")


def _key(source: Path) -> str:
    h = hashlib.sha256()
    h.update(f"componentize-py {metadata.version('componentize-py')}\0".encode())
    for tree in (source, python_sdk_dir() / "realm_tenant", wit_dir()):
        _hash_tree(h, tree)
    return h.hexdigest()[:20]


def build_source(name: str, source: Path) -> Path:
    """Build the Python tenant in `source`, or return the cached build of the same inputs."""
    out = cache_dir() / f"{name}-{_key(source)}.wasm"
    if not out.is_file():
        build_tenant(source, out, language="python")  # atomic: a concurrent run sees all or none
    return out


def build_example(name: str) -> Path:
    """sdk/python/examples/<name> built into a component (cached); returns the .wasm path."""
    return build_source(name, EXAMPLES / name)


def build_probe() -> Path:
    with tempfile.TemporaryDirectory(prefix="realm-probe-") as tmp:
        (Path(tmp) / "app.py").write_text(PROBE_APP)
        return build_source("probe", Path(tmp))


def build_napper() -> Path:
    with tempfile.TemporaryDirectory(prefix="realm-napper-") as tmp:
        (Path(tmp) / "app.py").write_text(NAPPER_APP)
        return build_source("napper", Path(tmp))


def artifact_cache() -> Path:
    """A Sandbox's compiled-module cache kept across test runs (keyed by module sha256, wasmtime
    version and engine config, like any Sandbox's), so a component compiles once per machine."""
    return cache_dir() / "sandbox-artifacts"


def compile_component(engine: Engine, wasm: Path, *, config_tag: str = "epoch+fuel") -> Component:
    """Component.from_file, with the compiled artifact cached next to the build.

    A serialized component only loads into an engine of the same wasmtime version and
    configuration: `config_tag` names the configuration (the runner's is epoch+fuel), and a
    load that fails anyway falls back to compiling.
    """
    cwasm = wasm.with_name(f"{wasm.stem}.{metadata.version('wasmtime')}.{config_tag}.cwasm")
    if cwasm.is_file():
        try:
            return Component.deserialize_file(engine, str(cwasm))
        except WasmtimeError:
            pass
    component = Component.from_file(engine, wasm)
    fd, tmp = tempfile.mkstemp(dir=cwasm.parent, suffix=".tmp")
    with os.fdopen(fd, "wb") as f:
        f.write(component.serialize())
    os.replace(tmp, cwasm)
    return component
