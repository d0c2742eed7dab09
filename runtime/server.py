"""The runtime process: load engines, serve the API with uvicorn, follow the config, drain on signals.

Uvicorn's own signal handling stops accepting connections at once and then waits; we want the
opposite order: keep serving (readyz says 503 so the load balancer moves away, new requests get a
503 that clients can retry elsewhere), let in-flight requests finish, and only then stop uvicorn
and unload the engines.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import itertools
import logging
import signal
import socket
import time
from collections.abc import Callable, Generator
from pathlib import Path
from typing import Literal

import uvicorn
from fastapi import FastAPI

from realm.runtime.api import AppState, create_app, create_ops_app
from realm.runtime.api.internal import create_internal_app
from realm.runtime.config_store import ConfigWatcher
from realm.runtime.engines.base import Engine
from realm.runtime.engines.embeddings import OnnxEmbedder
from realm.runtime.engines.model_files import realm_cache
from realm.runtime.metrics import Metrics
from realm.runtime.peers import Discovery, EndpointSliceDiscovery, kube
from realm.runtime.sandbox.runner import Sandbox
from realm.runtime.scheduler import AdmissionScheduler
from realm.runtime.scheduler.shares import QuotaShares
from realm.runtime.serving.modules import deploy_configured_modules
from realm.runtime.serving.quota_exchange import QuotaExchange
from realm.runtime.serving.remote import RemoteGenerations
from realm.runtime.spec.runtime_config import ModelConfig, RuntimeConfig

log = logging.getLogger(__name__)

EngineFactory = Callable[[ModelConfig], Engine]


class _Uvicorn(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield  # Runtime owns SIGTERM/SIGINT


def _default_engine_factory(cfg: ModelConfig) -> Engine:
    from realm.runtime.engine_factory import create_engine

    return create_engine(cfg)


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP, not the default 0: asyncio sets TCP_NODELAY only on connections whose socket says
    # TCP, and without it a response's body waits behind its headers for the client's delayed ACK
    # (about 40 ms on every non-streamed answer).
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.setblocking(False)
    return sock


def _log_failure(task: asyncio.Future[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("module deployment failed: %s", task.exception())


# A pinned module that could not be had (S3 down, ConfigMap not projected yet) is tried again on this
# schedule until it deploys or the config changes: the config may not change for days.
MODULE_RETRY_SECONDS = (2.0, 5.0, 15.0, 30.0, 60.0)


class Runtime:
    def __init__(
        self,
        config: RuntimeConfig,
        *,
        config_path: Path | None = None,
        host: str = "127.0.0.1",
        port: int = 8000,
        metrics_port: int | Literal["config"] | None = "config",
        drain_timeout: float = 30.0,
        log_level: str = "info",
        reload_interval: float = 1.0,
        on_ready: Callable[[Runtime], None] | None = None,
        engine_factory: EngineFactory = _default_engine_factory,
        discovery: Discovery | None = None,
    ) -> None:
        self.config = config
        self.config_path = config_path
        self.host = host
        self.port = port
        # The ops listener (/metrics, /openapi.json): the config's server.metricsPort unless given here.
        self.metrics_port = config.server.metrics_port if metrics_port == "config" else metrics_port
        self.drain_timeout = drain_timeout
        self.log_level = log_level
        self.reload_interval = reload_interval
        self.on_ready = on_ready
        self.engine_factory = engine_factory
        self.metrics = Metrics()
        self.state = AppState.from_config(config, self.metrics)
        self.app = create_app(self.state)
        self.ops_app = create_ops_app(self.state, self.app)
        # In a cluster, the internal listener (pod-to-pod generations) and the peers it calls; the
        # discovery is the Kubernetes API's EndpointSlices unless a test puts a fake at this seam.
        self.internal_port: int | None = config.cluster.internal_port if config.cluster else None
        self.internal_app = create_internal_app(self.state) if config.cluster else None
        self._discovery = discovery
        self._quota_task: asyncio.Task[None] | None = None
        self._stop = asyncio.Event()
        self._module_retries: asyncio.Task[None] | None = None
        self._force = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._signals = 0
        # WebAssembly runs the sandbox could not end when it closed (see Sandbox.close): their
        # threads would keep the process alive, so `realm serve` exits without waiting for them.
        self.abandoned_runs = 0

    @property
    def base_url(self) -> str:
        return self._url(self.port)

    @property
    def metrics_url(self) -> str | None:
        """The ops listener's base URL (None without one)."""
        return None if self.metrics_port is None else self._url(self.metrics_port)

    def _url(self, port: int) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{port}"

    def request_stop(self) -> None:
        """Begin draining; safe to call from any thread."""
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)

    def _on_signal(self, server: uvicorn.Server, signum: int) -> None:
        self._signals += 1
        if self._signals == 1:
            log.info("received %s: draining (up to %.0fs)", signal.Signals(signum).name, self.drain_timeout)
            self._stop.set()
        else:
            log.warning("second signal: stopping without waiting for in-flight requests")
            server.force_exit = True
            server.should_exit = True
            self._stop.set()
            self._force.set()

    async def serve(self, *, install_signal_handlers: bool = True) -> int:
        """Run until a signal (or `request_stop`) and a drain; returns the process exit code."""
        self._loop = asyncio.get_running_loop()
        sock = _bind(self.host, self.port)
        self.port = sock.getsockname()[1]
        ops_sock: socket.socket | None = None
        if self.metrics_port is not None:
            ops_sock = _bind(self.host, self.metrics_port)
            self.metrics_port = ops_sock.getsockname()[1]
        internal_sock: socket.socket | None = None
        if self.internal_port is not None:
            internal_sock = _bind(self.host, self.internal_port)
        server = self._uvicorn(self.app)
        if install_signal_handlers:
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._loop.add_signal_handler(sig, self._on_signal, server, sig)
        server_task = asyncio.create_task(server.serve(sockets=[sock]), name="uvicorn")
        # The ops listener lives as long as the public one: metrics keep answering while draining.
        ops_server = self._uvicorn(self.ops_app) if ops_sock is not None else None
        ops_task = (
            asyncio.create_task(ops_server.serve(sockets=[ops_sock]), name="uvicorn-ops")
            if ops_server is not None and ops_sock is not None
            else None
        )
        # Like the ops listener, the internal one outlives the drain: calls in flight from other pods
        # finish, new ones are refused (503) and go to another pod.
        internal_server = self._uvicorn(self.internal_app) if self.internal_app is not None else None
        internal_task = (
            asyncio.create_task(internal_server.serve(sockets=[internal_sock]), name="uvicorn-internal")
            if internal_server is not None and internal_sock is not None
            else None
        )
        watcher: ConfigWatcher | None = None
        code = 0
        try:
            await self._start_remote()
            loading = asyncio.create_task(self._load_engines())
            stop_wait = asyncio.create_task(self._stop.wait())
            done, _ = await asyncio.wait(
                {loading, stop_wait, server_task}, return_when=asyncio.FIRST_COMPLETED
            )
            if loading in done and loading.exception() is None:
                # What start-up made (modules, engines, the config) lives as long as the process:
                # frozen, it no longer counts towards when a full collection runs, so garbage in
                # reference cycles (a trapped invocation's Store, its memory included) is collected
                # at the pace of the requests' own churn, not once the heap grew by a quarter.
                gc.freeze()
                self.state.ready = True
                watcher = self._watch_config()
                log.info("ready: %s serving %s", self.base_url, ", ".join(self.state.engines))
                if self.on_ready is not None:
                    self.on_ready(self)
                await asyncio.wait({stop_wait, server_task}, return_when=asyncio.FIRST_COMPLETED)
            elif loading in done:
                log.error("loading models failed: %s", loading.exception())
                code = 1
            else:
                loading.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await loading
            stop_wait.cancel()
            if server_task.done():
                code = code or 1  # uvicorn stopped by itself (e.g. the port was taken)
            await self._drain()
        finally:
            server.should_exit = True
            with contextlib.suppress(Exception):
                await server_task
            for extra_server, extra_task in ((ops_server, ops_task), (internal_server, internal_task)):
                if extra_server is not None and extra_task is not None:
                    extra_server.should_exit = True
                    with contextlib.suppress(Exception):
                        await extra_task
            await self._stop_remote()
            if watcher is not None:
                await watcher.stop()
            if self._module_retries is not None:
                self._module_retries.cancel()
            await self._shutdown_engines()
            if install_signal_handlers:
                for sig in (signal.SIGTERM, signal.SIGINT):
                    self._loop.remove_signal_handler(sig)
        log.info("stopped")
        return code

    async def _start_remote(self) -> None:
        """Follow the pods of the cluster's models (serving/remote.py calls them)."""
        cluster = self.config.cluster
        if cluster is None:
            return
        if self._discovery is None:
            self._discovery = EndpointSliceDiscovery(
                lambda: kube.access(cluster.kubeconfig),
                cluster.namespace,
                {m.service for m in cluster.models},
                default_port=cluster.internal_port,
            )
        await self._discovery.start()
        self.state.remote = RemoteGenerations(cluster, self._discovery, self.state.identity)
        self._start_quota_exchange(self.state.remote)

    def _start_quota_exchange(self, remote: RemoteGenerations) -> None:
        """Share each tenant's rate quotas with the namespace's other pods (serving/quota_exchange.py)."""
        shares = QuotaShares(time.monotonic)
        self.state.quota_shares = shares
        if self.state.scheduler is not None:
            self.state.scheduler.set_quota_shares(shares)
        exchange = QuotaExchange(self.state, remote, shares)
        self.state.quota_exchange = exchange
        self._quota_task = asyncio.create_task(exchange.run(), name="quota-exchange")

    async def _stop_remote(self) -> None:
        if self._quota_task is not None:
            self._quota_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._quota_task
            self._quota_task = None
        if self.state.quota_exchange is not None:
            await self.state.quota_exchange.close()
        if self.state.remote is not None:
            await self.state.remote.close()
        if self._discovery is not None:
            await self._discovery.stop()

    def _uvicorn(self, app: FastAPI) -> _Uvicorn:
        return _Uvicorn(
            uvicorn.Config(
                app,
                lifespan="off",  # this class is the lifespan: engines load while /readyz says 503
                log_level=self.log_level,
                timeout_graceful_shutdown=5,
                access_log=self.log_level == "debug",
            )
        )

    async def _load_engines(self) -> None:
        for cfg in self.config.models:
            log.info("loading model %s from %s", cfg.key, cfg.source)
            engine = self.engine_factory(cfg)
            await engine.start()
            self.state.engines[cfg.key] = engine
        for ecfg in self.config.embeddings:
            log.info("loading embedding model %s from %s", ecfg.name, ecfg.source)
            embedder = OnnxEmbedder(ecfg)
            await embedder.start()
            self.state.embedders[ecfg.name] = embedder
        capacity = {name: e.info.max_batch for name, e in self.state.engines.items()}
        capacity.update({name: e.cfg.max_concurrent for name, e in self.state.embedders.items()})
        self.state.attach_scheduler(AdmissionScheduler(capacity))
        # Sized to the invocation cap: admission (state.invocations) does all the waiting, fairly.
        self.state.sandbox = Sandbox(
            realm_cache() / "wasm",
            max_workers=self.config.invocations.max_in_flight,
            guest_nice=self.config.invocations.guest_nice,
        )
        modules_dir = self._modules_dir(self.config)
        if await asyncio.to_thread(deploy_configured_modules, self.state, modules_dir):
            self._retry_modules(modules_dir)

    @staticmethod
    def _modules_dir(config: RuntimeConfig) -> Path | None:
        return Path(config.modules_dir) if config.modules_dir else None

    def _apply_config(self, new: RuntimeConfig) -> None:
        self.state.apply_tenants(new.tenants)
        self.state.apply_pipelines(new.pipelines)
        self.state.cluster = new.cluster  # the weights a bare model name picks by
        remote = self.state.remote
        if remote is not None and new.cluster is not None:
            # The placement changes as Models come and go; the listener's port is fixed at start.
            remote.cluster = new.cluster
            remote.discovery.set_services({m.service for m in new.cluster.models})
        self._retry_modules(self._modules_dir(new), first_delay=0.0)

    def _retry_modules(self, modules_dir: Path | None, first_delay: float | None = None) -> None:
        """(Re)start deploying the pinned modules in the background, with backoff while any is missing;
        a newer config replaces the attempts for the older one."""
        if self._module_retries is not None:
            self._module_retries.cancel()
        delays = MODULE_RETRY_SECONDS if first_delay is None else (first_delay, *MODULE_RETRY_SECONDS)
        self._module_retries = asyncio.get_running_loop().create_task(
            self._deploy_modules(modules_dir, delays)
        )
        self._module_retries.add_done_callback(_log_failure)

    async def _deploy_modules(self, modules_dir: Path | None, delays: tuple[float, ...]) -> None:
        for i in itertools.count():
            await asyncio.sleep(delays[min(i, len(delays) - 1)])
            # Compiling a new module takes seconds: never on the event loop.
            if not await asyncio.to_thread(deploy_configured_modules, self.state, modules_dir):
                return

    def _watch_config(self) -> ConfigWatcher | None:
        if self.config_path is None:
            return None
        watcher = ConfigWatcher(
            self.config_path,
            self.config,
            self._apply_config,
            on_outcome=lambda outcome: self.metrics.config_reloads.labels(outcome).inc(),
            interval=self.reload_interval,
        )
        watcher.start()
        return watcher

    async def _drain(self) -> None:
        self.state.draining = True
        if self.state.scheduler is not None:
            self.state.scheduler.close()
        if self.state.invocations is not None:
            self.state.invocations.close()
        force = asyncio.create_task(self._force.wait())
        began = time.monotonic()
        idle = asyncio.create_task(self.state.wait_idle(self.drain_timeout))
        await asyncio.wait({force, idle}, return_when=asyncio.FIRST_COMPLETED)
        if not idle.done():
            idle.cancel()
        elif not idle.result():
            log.warning("drain timeout: %d requests still in flight are cut off", self.state.in_flight)
        await self._end_background_runs(force, self.drain_timeout - (time.monotonic() - began))
        force.cancel()

    async def _end_background_runs(self, force: asyncio.Task[bool], limit_s: float) -> None:
        """Pipeline runs whose callers were answered at once (`background`) are no request in flight: they
        get what is left of the drain, then are cancelled, so each record ends Cancelled rather than
        failing mid-step when the engines go."""
        tasks = self.state.pipeline_runs.tasks()
        if not tasks:
            return
        if not force.done() and limit_s > 0:
            ended = asyncio.create_task(asyncio.wait(tasks))  # cancelling this leaves the runs be
            await asyncio.wait({ended, force}, timeout=limit_s, return_when=asyncio.FIRST_COMPLETED)
            ended.cancel()
        left = [t for t in tasks if not t.done()]
        if left:
            log.warning("drain: %d background pipeline runs cancelled", len(left))
        for task in left:
            task.cancel()
        await asyncio.gather(*left, return_exceptions=True)

    async def _shutdown_engines(self) -> None:
        if self.state.sandbox is not None:
            # First, so that no module generates into what is flushed below. Its runs in flight
            # are interrupted (sleeps and host-call waits included) and given a bounded grace;
            # off the loop, because the host calls they are leaving wait on it.
            self.abandoned_runs = await asyncio.to_thread(self.state.sandbox.close)
        if self.state.samplers is not None:
            self.state.samplers.close()  # their steps ended with the sandbox; their threads go now
        await self.state.mcp.close()
        if self.state.conversations is not None:
            try:
                await self.state.conversations.close()
            except Exception:
                log.exception("closing the conversation store failed")
        if self.state.kv is not None:
            # Waits (bounded) for queued snapshot uploads: a restart should not lose the last turns.
            await asyncio.to_thread(self.state.kv.close)
        for name, engine in list(self.state.engines.items()):
            try:
                await engine.shutdown()
            except Exception:
                log.exception("shutting down %s failed", name)
        for embedder in list(self.state.embedders.values()):
            await embedder.shutdown()
