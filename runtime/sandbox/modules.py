"""Tenant modules: kind detection, compile-once caching on disk, and ABI validation at load.

Compiling costs from milliseconds (small core modules) to seconds (Python components);
deserializing a cached artifact with `deserialize_file` maps it in ~80 µs-1.5 ms. Artifacts are
keyed by sha256(module bytes), the wasmtime version and a digest of the engine config, because
an artifact only loads into an engine configured exactly like the one that compiled it.

The cache directory must be trusted: deserializing runs native code. A sidecar digest catches
truncated or corrupted files (they are recompiled), not a hostile writer.

Tenants control what gets compiled, so the cache is bounded: compiles run one at a time (a burst of
deploys takes one core, not one each), and the artifacts are kept within a byte budget, the least
recently used evicted from memory and disk together.
"""

from __future__ import annotations

import asyncio
import hashlib
import importlib.metadata
import logging
import os
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import wasmtime
from wasmtime import component as wc

from realm.runtime.atomic_file import write_atomically

from .abi import (
    ABI_MAJOR,
    ABI_MINOR,
    CORE_IMPORT_MODULE,
    CORE_RUN_EXPORT,
    CORE_SAMPLER_EXPORT,
    CORE_VERSION_EXPORT,
)
from .abi import InvocationErrorCode as Code
from .core_binding import SAMPLER_STEP_SIGNATURE, SIGNATURES, WASI_MODULE

log = logging.getLogger(__name__)

CORE_HEADER = b"\0asm\x01\0\0\0"
COMPONENT_HEADER = b"\0asm\x0d\0\x01\0"
WASMTIME_VERSION = importlib.metadata.version("wasmtime")

# Room for a few dozen Python components (each compiles to tens of MiB) and thousands of small modules.
DEFAULT_CACHE_BYTES = 2 << 30
ARTIFACT_SUFFIX = ".cwasm"

Kind = Literal["core", "component"]
Artifact = wasmtime.Module | wc.Component


class InvocationFailed(Exception):
    """A module could not be loaded or an invocation failed, and why (`code`, docs/abi.md)."""

    def __init__(self, code: Code, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


class InvocationAbandoned(InvocationFailed):
    """The caller was answered at the deadline, but the run's thread is still held by code the host
    cannot interrupt (a component asleep in WASI 0.2's native poll). `thread_done` completes when
    the thread comes back: whatever stands for a busy thread (the tenant's invocation slot) is held
    until then."""

    def __init__(self, code: Code, message: str, thread_done: asyncio.Future[Any]) -> None:
        super().__init__(code, message)
        self.thread_done = thread_done


@dataclass(frozen=True)
class TenantModule:
    """A validated module, ready to instantiate. Immutable: an invocation keeps the one it
    started with whatever is deployed meanwhile."""

    tenant: str
    sha256: str
    kind: Kind
    abi_version: tuple[int, int]
    artifact: Artifact = field(repr=False, compare=False)
    # Core modules that import no WASI skip setting it up per invocation (a measurable part of a
    # ~0.1 ms cold invoke); components always need it.
    needs_wasi: bool = True
    # Linear memories its instances define (a core module: one at most; a component: the sum over
    # its core modules): the store's memory budget is shared out between them.
    memories: int = 1


def detect_kind(wasm: bytes) -> Kind:
    if wasm[:8] == CORE_HEADER:
        return "core"
    if wasm[:8] == COMPONENT_HEADER:
        return "component"
    if wasm[:4] == b"\0asm":
        raise InvocationFailed(
            Code.INVALID_MODULE, f"unsupported WebAssembly version/layer {wasm[4:8].hex()}"
        )
    raise InvocationFailed(Code.INVALID_MODULE, "not a WebAssembly module (bad magic number)")


def _type_names(types: list[wasmtime.ValType]) -> tuple[str, ...]:
    return tuple(str(t) for t in types)


class ModuleCache:
    """Compiles each distinct module once (per engine config) and keeps it in memory and on disk,
    within `max_bytes` (an artifact counts its serialized size once, for its file and its loaded
    copy alike; deployed modules keep their own reference, so eviction never breaks one).

    `compiles` counts real compilations in this process (tests assert the disk cache works).
    """

    def __init__(
        self,
        engine: wasmtime.Engine,
        cache_dir: Path,
        config_digest: str,
        *,
        max_bytes: int = DEFAULT_CACHE_BYTES,
    ) -> None:
        self.engine = engine
        self.dir = Path(cache_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.max_bytes = max_bytes
        self._suffix = f"wasmtime-{WASMTIME_VERSION}-{config_digest[:16]}"
        self._loaded: dict[str, Artifact] = {}
        self._abi: dict[str, tuple[int, int]] = {}
        self._locks: dict[str, threading.Lock] = {}
        self._lock = threading.Lock()
        # One compile at a time, whatever the module: compiling takes a core for up to seconds.
        self.compiling = threading.Lock()
        # Artifact file name -> its size, least recently used first; files of other wasmtime versions
        # or engine configs are included so that they age out too.
        self._lru: OrderedDict[str, int] = OrderedDict()
        self._bytes = 0
        self._scan()
        self.compiles = 0

    @property
    def size_bytes(self) -> int:
        """Bytes of the artifacts the cache holds (on disk, and loaded)."""
        return self._bytes

    def artifact(self, sha: str, kind: Kind, wasm: bytes) -> Artifact:
        name = self._path(sha, kind).name
        with self._lock:
            found = self._loaded.get(sha)
            if found is not None:
                if name in self._lru:
                    self._lru.move_to_end(name)
                return found
            key_lock = self._locks.setdefault(sha, threading.Lock())
        # One compile per module even when several tenants deploy the same bytes at once.
        with key_lock:
            found = self._loaded.get(sha)
            if found is None:
                try:
                    found = self._from_disk(sha, kind) or self._compile(sha, kind, wasm)
                except BaseException:
                    with self._lock:  # rejected bytes leave nothing behind, however many are tried
                        self._locks.pop(sha, None)
                    raise
                with self._lock:
                    self._loaded[sha] = found
                    self._admit(name)
            return found

    def _scan(self) -> None:
        found: list[tuple[float, str, int]] = []
        for path in self.dir.glob(f"*{ARTIFACT_SUFFIX}"):
            try:
                stat = path.stat()
            except OSError:
                continue
            found.append((stat.st_mtime, path.name, stat.st_size))
        for _mtime, name, size in sorted(found):
            self._lru[name] = size
            self._bytes += size
        with self._lock:
            self._evict(keep=None)

    def _admit(self, name: str) -> None:
        """Count the artifact `name` (called with _lock held), then evict down to the budget."""
        if name not in self._lru:
            try:
                size = (self.dir / name).stat().st_size
            except OSError:  # not on disk (unwritable folder): its loaded copy still counts
                size = 0
            self._lru[name] = size
            self._bytes += size
        self._lru.move_to_end(name)
        self._evict(keep=name)

    def _evict(self, keep: str | None) -> None:
        # The artifact just admitted stays even alone over budget: it is about to be used.
        while self._bytes > self.max_bytes and self._lru:
            name, size = next(iter(self._lru.items()))
            if name == keep:
                break
            del self._lru[name]
            self._bytes -= size
            sha = name.split("-", 1)[0]
            self._loaded.pop(sha, None)
            self._abi.pop(sha, None)
            self._locks.pop(sha, None)
            path = self.dir / name
            for target in (path, path.with_suffix(".sha256")):
                try:
                    os.unlink(target)
                except FileNotFoundError:
                    pass
                except OSError as e:
                    log.warning("cannot evict cached artifact %s: %s", target.name, e)
            log.info("evicted compiled module %s (%d bytes) from the cache", sha[:12], size)

    def known_abi(self, sha: str) -> tuple[int, int] | None:
        return self._abi.get(sha)

    def remember_abi(self, sha: str, version: tuple[int, int]) -> None:
        self._abi[sha] = version

    def _path(self, sha: str, kind: Kind) -> Path:
        return self.dir / f"{sha}-{kind}-{self._suffix}{ARTIFACT_SUFFIX}"

    def _from_disk(self, sha: str, kind: Kind) -> Artifact | None:
        path = self._path(sha, kind)
        digest_path = path.with_suffix(".sha256")
        try:
            expected = digest_path.read_text().strip()
        except OSError:
            return None
        try:
            if _file_sha256(path) != expected:
                raise ValueError("digest mismatch")
            art: Artifact = (
                wasmtime.Module.deserialize_file(self.engine, str(path))
                if kind == "core"
                else wc.Component.deserialize_file(self.engine, str(path))
            )
            os.utime(path)  # its recency survives a restart (the LRU order is rebuilt from mtimes)
            return art
        except (OSError, ValueError, wasmtime.WasmtimeError) as e:
            log.warning("cached artifact %s unusable (%s); recompiling", path.name, e)
            return None

    def _compile(self, sha: str, kind: Kind, wasm: bytes) -> Artifact:
        try:
            with self.compiling:
                art: Artifact = (
                    wasmtime.Module(self.engine, wasm) if kind == "core" else wc.Component(self.engine, wasm)
                )
        except wasmtime.WasmtimeError as e:
            raise InvocationFailed(Code.INVALID_MODULE, _first_line(str(e))) from None
        self.compiles += 1
        try:
            self._store(self._path(sha, kind), bytes(art.serialize()))
        except OSError as e:  # a read-only or full disk costs speed, not correctness
            log.warning("cannot cache compiled module %s: %s", sha[:12], e)
        return art

    def _store(self, path: Path, data: bytes) -> None:
        # Write-then-rename so a concurrent process never maps a half-written file.
        digest = hashlib.sha256(data).hexdigest()
        for target, payload in ((path, data), (path.with_suffix(".sha256"), digest.encode())):
            write_atomically(target, payload, tmp_dir=self.dir)


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _first_line(text: str) -> str:
    return text.strip().splitlines()[0][:500] if text.strip() else "unknown error"


def check_core_interface(module: wasmtime.Module) -> None:
    """Imports only the `realm` functions (with their exact types) and WASI preview 1; exports
    `memory`, `realm_run` and `realm_abi_version`."""
    unknown: list[str] = []
    for imp in module.imports:
        full = f"{imp.module}.{imp.name}"
        if imp.module == CORE_IMPORT_MODULE:
            sig = SIGNATURES.get(imp.name or "")
            ty: object = imp.type
            if sig is None or not isinstance(ty, wasmtime.FuncType):
                unknown.append(full)
            elif (_type_names(ty.params), _type_names(ty.results)) != sig:
                want = f"({', '.join(sig[0])}) -> ({', '.join(sig[1])})"
                unknown.append(f"{full} (wrong type: expected {want})")
        elif imp.module != WASI_MODULE:
            unknown.append(full)
    if unknown:
        raise InvocationFailed(
            Code.UNKNOWN_IMPORT, f"the module imports what this host does not provide: {', '.join(unknown)}"
        )
    exports = {e.name: e.type for e in module.exports}
    missing = []
    if not isinstance(exports.get("memory"), wasmtime.MemoryType):
        missing.append("memory (a memory)")
    for name in (CORE_RUN_EXPORT, CORE_VERSION_EXPORT):
        ty = exports.get(name)
        if not isinstance(ty, wasmtime.FuncType) or ty.params or _type_names(ty.results) != ("i32",):
            missing.append(f"{name} (func () -> i32)")
    sampler = exports.get(CORE_SAMPLER_EXPORT)
    if sampler is not None and (
        not isinstance(sampler, wasmtime.FuncType)
        or (_type_names(sampler.params), _type_names(sampler.results)) != SAMPLER_STEP_SIGNATURE
    ):
        missing.append(f"{CORE_SAMPLER_EXPORT} (func (i32) -> i32), when it is exported at all")
    if missing:
        raise InvocationFailed(Code.MISSING_EXPORT, f"the module must export {', '.join(missing)}")


def check_one_memory(wasm: bytes) -> None:
    """A core module defines at most one linear memory: the store's memory budget is that
    memory's (runner.SandboxLimits). Imported memories need no count: nothing a core module may
    import is a memory. Reads section headers only; a module that does not parse is left to the
    compiler to reject."""
    pos = len(CORE_HEADER)
    try:
        while pos < len(wasm):
            section = wasm[pos]
            size, pos = _leb128(wasm, pos + 1)
            if section == _MEMORY_SECTION:
                memories = _leb128(wasm, pos)[0]
                if memories > 1:
                    raise InvocationFailed(
                        Code.INVALID_MODULE,
                        f"the module defines {memories} linear memories; a core module may have one",
                    )
            pos += size
    except IndexError:
        return


def count_component_memories(wasm: bytes) -> int:
    """The linear memories a component's core modules define, nested components included: each
    gets an equal share of the store's budget, and the store may hold no more memories than this
    (runner.py), so their sum stays within the budget even if a module is instantiated twice (its
    second memory is refused). Reads section headers only; a component that does not parse is left
    to the compiler to reject."""
    return _component_memories(wasm, len(COMPONENT_HEADER))


def _component_memories(wasm: bytes, pos: int, end: int | None = None) -> int:
    end = len(wasm) if end is None else end
    total = 0
    try:
        while pos < end:
            section = wasm[pos]
            size, pos = _leb128(wasm, pos + 1)
            if section == _COMPONENT_CORE_MODULE_SECTION:
                total += _core_memories(wasm, pos + len(CORE_HEADER), pos + size)
            elif section == _COMPONENT_COMPONENT_SECTION:
                total += _component_memories(wasm, pos + len(COMPONENT_HEADER), pos + size)
            pos += size
    except IndexError:
        pass
    return total


def _core_memories(wasm: bytes, pos: int, end: int) -> int:
    total = 0
    while pos < end:
        section = wasm[pos]
        size, pos = _leb128(wasm, pos + 1)
        if section == _MEMORY_SECTION:
            total += _leb128(wasm, pos)[0]
        pos += size
    return total


_MEMORY_SECTION = 5
_COMPONENT_CORE_MODULE_SECTION = 1
_COMPONENT_COMPONENT_SECTION = 4


def _leb128(data: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return value, pos


def parse_abi_version(raw: int) -> tuple[int, int]:
    raw &= 0xFFFFFFFF
    version = (raw >> 16, raw & 0xFFFF)
    if version[0] != ABI_MAJOR or version[1] > ABI_MINOR:
        raise InvocationFailed(
            Code.ABI_UNSUPPORTED,
            f"the module speaks realm ABI {version[0]}.{version[1]}; this host speaks "
            f"{ABI_MAJOR}.0 to {ABI_MAJOR}.{ABI_MINOR}",
        )
    return version
