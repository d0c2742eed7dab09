"""scripts/build-llama.sh keys its cache by everything the build depends on, so a cache that moves to
another machine, compiler or flavour never hands back a wheel built for something else. (Only the key is
computed here: `--print-path` builds nothing.)"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from repo_paths import REPO

SCRIPT = REPO / "scripts" / "build-llama.sh"


def cache_dir(flavour: str, tmp: Path, path_prefix: Path | None = None) -> str:
    env = {**os.environ, "REALM_CACHE": str(tmp / "cache"), "PYTHON": sys.executable}
    if path_prefix is not None:
        env["PATH"] = f"{path_prefix}{os.pathsep}{env['PATH']}"
    out = subprocess.run(
        [str(SCRIPT), flavour, "--print-path"], capture_output=True, text=True, env=env, check=True
    )
    return out.stdout.strip()


def test_each_flavour_has_its_own_keyed_folder(tmp_path: Path) -> None:
    dirs = {f: cache_dir(f, tmp_path) for f in ("portable", "native", "cuda")}
    for flavour, d in dirs.items():
        assert re.fullmatch(rf"{tmp_path}/cache/llama-cpp-python/0\.3\.36-{flavour}-[0-9a-f]{{16}}", d), d
    assert len(set(dirs.values())) == 3


def test_another_compiler_means_another_build(tmp_path: Path) -> None:
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "cc").write_text("#!/bin/sh\necho 'cc (Other) 99.1'\n")
    (fake / "cc").chmod(0o755)
    for flavour in ("portable", "native"):
        assert cache_dir(flavour, tmp_path) != cache_dir(flavour, tmp_path, fake), flavour


def test_an_unknown_flavour_is_refused(tmp_path: Path) -> None:
    out = subprocess.run([str(SCRIPT), "avx512"], capture_output=True, text=True)
    assert out.returncode == 2
    assert "unknown argument avx512" in out.stderr
