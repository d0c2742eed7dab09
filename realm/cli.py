"""`realm` command line. `realm serve` with no arguments serves the embedded default models."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import shlex
import sys
from pathlib import Path
from typing import Literal

from realm.runtime.spec.runtime_config import DEFAULT_MODEL, RuntimeConfig


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="realm", description="Multi-tenant LLM runtime.")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="Serve the OpenAI-compatible API.")
    serve.add_argument(
        "--config", type=Path, help="Runtime config (YAML/JSON); the embedded default when absent."
    )
    serve.add_argument("--host", default="127.0.0.1", help="Address to listen on (default: %(default)s).")
    serve.add_argument("--port", type=int, default=8000, help="Port to listen on; 0 picks a free one.")
    serve.add_argument(
        "--metrics-port",
        type=int,
        default=None,
        help="Port of the ops listener (/metrics, /openapi.json); the config's server.metricsPort "
        "(9090) when absent; 0 picks a free one; -1: none.",
    )
    serve.add_argument(
        "--log-level",
        default="info",
        choices=["critical", "error", "warning", "info", "debug"],
        type=str.lower,
    )
    serve.add_argument(
        "--drain-timeout",
        type=float,
        default=30.0,
        help="Seconds in-flight requests get to finish after SIGTERM/SIGINT (default: %(default)s).",
    )
    doctor = sub.add_parser(
        "doctor",
        help="Print the CPU, llama.cpp build and backend, models, caches and e2e binaries; "
        "exit non-zero when something is missing.",
    )
    doctor.add_argument(
        "--config", type=Path, help="Check this runtime config's models instead of the defaults."
    )
    doctor.add_argument("--json", action="store_true", help="Print the report as JSON.")
    doctor.add_argument(
        "--no-decode", action="store_true", help="Skip the greedy decode of a few tokens in a child process."
    )
    tenant = sub.add_parser("tenant", help="Tenant WebAssembly modules.")
    tenant_sub = tenant.add_subparsers(dest="tenant_command", required=True)
    build = tenant_sub.add_parser(
        "build", help="Build a tenant from source: a Python component (componentize-py) or a Go core module."
    )
    build.add_argument("source", type=Path, help="The tenant's folder (app.py for Python, go.mod for Go).")
    build.add_argument("-o", "--out", type=Path, required=True, help="Where to write the .wasm file.")
    build.add_argument("--language", choices=["python", "go"], help="Detected from the folder when absent.")
    return parser


def tenant_build(args: argparse.Namespace) -> int:
    from realm.tenant_build import TenantBuildError, build_tenant

    try:
        out = build_tenant(args.source, args.out, language=args.language)
    except TenantBuildError as e:
        print(f"realm tenant build: {e}", file=sys.stderr)
        return 1
    print(f"built {out} ({out.stat().st_size} bytes)")
    return 0


def _curl_line(base_url: str, model: str, api_key: str | None) -> str:
    # Capped: chat's default is "as long as the context allows", which makes a slow first impression.
    body = json.dumps(
        {"model": model, "messages": [{"role": "user", "content": "Say hello."}], "max_tokens": 64}
    )
    key = (
        shlex.quote(f"Authorization: Bearer {api_key}")
        if api_key
        else '"Authorization: Bearer $REALM_API_KEY"'
    )
    return (
        f"curl -s {base_url}/v1/chat/completions -H 'Content-Type: application/json' -H {key} "
        f"-d {shlex.quote(body)}"
    )


def _metrics_port(flag: int | None) -> int | Literal["config"] | None:
    if flag is None:
        return "config"
    return None if flag < 0 else flag


def serve(args: argparse.Namespace) -> int:
    from realm.runtime.config_store import ConfigError, default_api_key, default_config, load_config
    from realm.runtime.conversations import ConversationError
    from realm.runtime.server import Runtime

    api_key: str | None = None
    config: RuntimeConfig
    if args.config is not None:
        try:
            config = load_config(args.config)
        except ConfigError as e:
            print(f"realm: {e}", file=sys.stderr)
            return 2
    else:
        api_key = default_api_key()
        config = default_config(api_key)  # holds only the key's hash
    if not config.models and not config.embeddings:
        print("realm: the config lists no models", file=sys.stderr)
        return 2

    def announce(runtime: Runtime) -> None:
        served = [*runtime.state.engines, *runtime.state.embedders]
        print(f"\nRealm is serving {', '.join(served)} on {runtime.base_url}.", flush=True)
        if runtime.state.engines:
            engines = runtime.state.engines
            model = DEFAULT_MODEL if DEFAULT_MODEL in engines else next(iter(engines))
            print("Try:\n\n  " + _curl_line(runtime.base_url, model, api_key) + "\n", flush=True)
        if runtime.metrics_url is not None:
            print(f"Metrics and the OpenAPI document: {runtime.metrics_url}\n", flush=True)

    try:
        runtime = Runtime(
            config,
            config_path=args.config,
            host=args.host,
            port=args.port,
            metrics_port=_metrics_port(args.metrics_port),
            drain_timeout=args.drain_timeout,
            log_level=args.log_level,
            on_ready=announce,
        )
    except ConversationError as e:  # e.g. an S3 server that ignores conditional writes
        print(f"realm: {e.message}", file=sys.stderr)
        return 2
    code: int = asyncio.run(runtime.serve())
    if runtime.abandoned_runs:
        # Everything is flushed and closed; only threads stuck in a guest's host code are left,
        # and a normal exit would wait for them (a component's WASI sleep may last hours).
        log = logging.getLogger("realm")
        log.warning("exiting with %d WebAssembly runs abandoned", runtime.abandoned_runs)
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code


def main(argv: list[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=getattr(logging, args.log_level.upper(), logging.INFO)
        if hasattr(args, "log_level")
        else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if args.command == "serve":
        sys.exit(serve(args))
    if args.command == "doctor":
        from realm.doctor import main as doctor_main

        sys.exit(doctor_main(args.config, as_json=args.json, decode=not args.no_decode))
    if args.command == "tenant" and args.tenant_command == "build":
        sys.exit(tenant_build(args))


if __name__ == "__main__":
    main()
