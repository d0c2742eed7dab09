"""`realm doctor` as a user runs it (the installed console script, a child process): what it reports on
this machine, and a non-zero exit with one clear line for each thing missing."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

REALM = str(Path(sys.executable).parent / "realm")


def doctor(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [REALM, "doctor", *args],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=300,
    )


def report(*args: str, env: dict[str, str] | None = None) -> tuple[int, dict[str, Any]]:
    out = doctor("--json", *args, env=env)
    parsed: dict[str, Any] = json.loads(out.stdout)
    return out.returncode, parsed


def test_a_complete_machine_reports_everything_and_exits_zero() -> None:
    code, rep = report()
    assert rep["missing"] == [] and code == 0, rep["missing"]
    s = rep["sections"]
    assert s["cpu"]["model"] and s["cpu"]["arch"]
    llama = s["llama.cpp"]
    assert llama["llama-cpp-python"] == "0.3.36"
    assert "GGML_BACKEND_DL=ON" in llama["build"] and "GGML_CPU_ALL_VARIANTS=ON" in llama["build"]
    assert llama["cpu variant"].split()[0] in llama["variants"]
    assert llama["greedy decode"].startswith("ok on ")
    assert llama["gpu backends"] == "none"
    models = s["models"]
    assert set(models) == {"smollm2-135m-instruct", "gemma-3-270m"}
    assert "sha256 " in models["smollm2-135m-instruct"] and "MB" in models["smollm2-135m-instruct"]
    assert s["caches"]["e2e binaries"].endswith("all built")


def test_text_report_says_nothing_is_missing() -> None:
    out = doctor("--no-decode")
    assert out.returncode == 0, out.stdout
    assert out.stdout.splitlines()[-1] == "nothing missing"
    assert "  cpu variant" in out.stdout


def test_a_missing_model_file_is_named_and_exits_non_zero(tmp_path: Path) -> None:
    cfg = tmp_path / "realm.yaml"
    cfg.write_text(yaml.safe_dump({"models": [{"name": "ghost", "source": str(tmp_path / "ghost.gguf")}]}))
    code, rep = report("--config", str(cfg), "--no-decode")
    assert code == 1
    assert rep["missing"] == [f"model ghost: model file {tmp_path / 'ghost.gguf'} does not exist"]


def test_a_variant_that_cannot_be_had_is_reported_not_crashed_on() -> None:
    code, rep = report("--no-decode", env={"REALM_GGML_CPU_VARIANT": "pentium"})
    assert code == 1
    assert any(
        m.startswith("no usable ggml CPU backend: REALM_GGML_CPU_VARIANT=pentium") for m in rep["missing"]
    )


def test_e2e_binaries_not_built_are_named_with_the_command_that_builds_them(tmp_path: Path) -> None:
    code, rep = report("--no-decode", env={"REALM_E2E_CACHE": str(tmp_path)})
    assert code == 1
    (line,) = [m for m in rep["missing"] if m.startswith("e2e binaries")]
    assert "etcd" in line and "minio" in line and line.endswith("run e2e/cluster/build.sh (make test does)")
