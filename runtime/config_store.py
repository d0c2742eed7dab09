"""Where the runtime's configuration comes from, and how it follows changes to its file.

Kubernetes mounts a ConfigMap as a symlink (`config.yaml -> ..data/config.yaml`, `..data ->
..2024_01_01_00_00_00.123`) and swaps the `..data` link atomically on update. Inotify on the
visible path misses that, so we poll: `stat` follows the links, and (mtime, size, inode) of the
real file changes on every swap; the content digest then tells a real change from a touch.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import secrets
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import yaml
from pydantic import ValidationError

from realm.runtime.spec.embedding import EMBEDDING_MODEL, EmbeddingModelConfig
from realm.runtime.spec.identity import DEFAULT_NAMESPACE, NAMESPACE_ENV, SECRET_ENV, NamespaceIdentity
from realm.runtime.spec.runtime_config import (
    RuntimeConfig,
    TenantEntry,
    default_models,
    hash_api_key,
)
from realm.runtime.spec.tenant import TenantSpec

log = logging.getLogger(__name__)
# libyaml parses a large tenant table several times faster than PyYAML; same safe subset.
_YAML_LOADER: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

DEFAULT_TENANT = "default"


class ConfigError(Exception):
    """A configuration file that cannot be read or does not validate."""


def realm_home() -> Path:
    return Path(os.environ.get("REALM_HOME") or Path.home() / ".local" / "share" / "realm")


def parse_config(text: bytes, *, source: str = "<config>") -> RuntimeConfig:
    """YAML or JSON (JSON is YAML, but its own parser gives better messages for JSON files)."""
    try:
        decoded = text.decode("utf-8")
        data = json.loads(decoded) if source.endswith(".json") else yaml.load(decoded, Loader=_YAML_LOADER)
    except (UnicodeDecodeError, json.JSONDecodeError, yaml.YAMLError) as e:
        raise ConfigError(f"{source}: not valid YAML/JSON: {e}") from e
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: the top level must be a mapping")
    try:
        return RuntimeConfig.model_validate(data)
    except ValidationError as e:
        raise ConfigError(f"{source}: {e}") from e


def load_config(path: Path) -> RuntimeConfig:
    try:
        text = path.read_bytes()
    except OSError as e:
        raise ConfigError(f"cannot read {path}: {e}") from e
    return parse_config(text, source=str(path))


def _private_value(path: Path, make: Callable[[], str]) -> str:
    """A value generated on first use into a 0600 file, then read back, so it survives restarts."""
    try:
        value = path.read_text().strip()
        if value:
            return value
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    value = make()
    # Written to a private temporary file, then renamed: never world-readable, never half-written.
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(value + "\n")
    try:
        os.link(tmp, path)  # fails if another process created it meanwhile: then theirs wins
    except FileExistsError:
        value = path.read_text().strip()
    finally:
        tmp.unlink()
    return value


def default_api_key(home: Path | None = None) -> str:
    """The default tenant's key: generated on first use, then read back, so it survives restarts."""
    return _private_value(
        (home or realm_home()) / "default-api-key", lambda: "realm-" + secrets.token_urlsafe(32)
    )


def runtime_identity(config: RuntimeConfig, home: Path | None = None) -> NamespaceIdentity:
    """The identity secret tenants' stored state is keyed under (runtime/spec/identity.py): in a cluster
    the operator's Secret for this namespace ($REALM_IDENTITY_SECRET); alone, an installation secret
    generated once in the data folder (0600), for the namespace of the config's tenants."""
    namespace = config.tenants[0].namespace if config.tenants else DEFAULT_NAMESPACE
    secret = os.environ.get(SECRET_ENV, "").strip()
    if secret:
        return NamespaceIdentity(os.environ.get(NAMESPACE_ENV) or namespace, secret)
    installation = _private_value(
        (home or realm_home()) / "installation-secret", lambda: secrets.token_hex(32)
    )
    return NamespaceIdentity.of(installation, namespace)


def default_config(api_key: str, home: Path | None = None) -> RuntimeConfig:
    models = default_models()
    embeddings = [EmbeddingModelConfig(name=EMBEDDING_MODEL)]
    tenant = TenantEntry(
        name=DEFAULT_TENANT,
        # Generated once, like the key: the embedded default tenant keeps its conversations across restarts.
        uid=_private_value((home or realm_home()) / "default-tenant-uid", lambda: str(uuid.uuid4())),
        api_key_sha256=[hash_api_key(api_key)],
        spec=TenantSpec(
            display_name="Default tenant",
            allowed_models=[m.name for m in models] + [e.name for e in embeddings],
        ),
    )
    return RuntimeConfig(models=models, embeddings=embeddings, tenants=[tenant])


@dataclass(frozen=True)
class _FileId:
    mtime_ns: int
    size: int
    inode: int


def _file_id(path: Path) -> _FileId | None:
    try:
        st = path.stat()  # follows symlinks: a ConfigMap swap changes the target's identity
    except OSError:
        return None
    return _FileId(st.st_mtime_ns, st.st_size, st.st_ino)


class ConfigWatcher:
    """Polls a config file and calls `on_change(new_config)` when its content changes and validates.

    A file that fails to parse is logged and ignored (the running config stays), once per distinct
    content; `on_outcome` hears "applied", "rejected" or "unchanged" for metrics.
    """

    def __init__(
        self,
        path: Path,
        current: RuntimeConfig,
        on_change: Callable[[RuntimeConfig], None],
        *,
        on_outcome: Callable[[str], None] = lambda _: None,
        interval: float = 1.0,
    ) -> None:
        self.path = path
        self.current = current
        self.running_models = current.models  # loaded at start; a reload cannot change them
        self.on_change = on_change
        self.on_outcome = on_outcome
        self.interval = interval
        self._file = _file_id(path)
        self._digest = self._read_digest()
        self._task: asyncio.Task[None] | None = None

    def _read_digest(self) -> str | None:
        try:
            return hashlib.sha256(self.path.read_bytes()).hexdigest()
        except OSError:
            return None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="realm-config-watcher")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                self.check()
            except Exception:
                log.exception("config watcher: unexpected error; will retry")

    def check(self) -> None:
        """One poll; public so tests and callers can force a check."""
        file = _file_id(self.path)
        if file is None or file == self._file:
            return  # unchanged, or missing for a moment in the middle of a swap
        try:
            text = self.path.read_bytes()
        except OSError:
            return
        self._file = file
        digest = hashlib.sha256(text).hexdigest()
        if digest == self._digest:
            return
        self._digest = digest
        try:
            new = parse_config(text, source=str(self.path))
        except ConfigError as e:
            log.error("config reload rejected, keeping the running config: %s", e)
            self.on_outcome("rejected")
            return
        if new.models != self.running_models:
            log.warning(
                "config reload: the models section changed; models are loaded at start, restart to apply it"
            )
        self.on_change(new)
        self.current = new
        log.info("config reloaded from %s (%d tenants)", self.path, len(new.tenants))
        self.on_outcome("applied")
