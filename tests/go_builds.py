"""Build the Go SDK's examples (sdk/go/examples/<name>) to WebAssembly, once.

Builds are cached under ~/.cache/realm/test-builds/go-<key>/<name>.wasm, where the key is the
SHA-256 of every file of the Go module (sources, go.mod) plus `go version` and the build
flags, so reruns reuse them and any change to the SDK rebuilds.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
from functools import cache
from pathlib import Path

GO_MODULE = Path(__file__).resolve().parent.parent / "sdk" / "go"
CACHE_ROOT = Path.home() / ".cache" / "realm" / "test-builds"
BUILD_ENV = {"GOOS": "wasip1", "GOARCH": "wasm", "CGO_ENABLED": "0", "GOTOOLCHAIN": "local"}
BUILD_FLAGS = ("-buildmode=c-shared", "-trimpath")


class GoUnavailable(RuntimeError):
    """No usable `go` command on this machine."""


def go_binary() -> str:
    go = shutil.which("go")
    if go is None:
        raise GoUnavailable("the go command is not on PATH")
    return go


@cache
def go_version() -> str:
    out = subprocess.run(
        [go_binary(), "version"],
        check=True,
        capture_output=True,
        text=True,
        env={**os.environ, "GOTOOLCHAIN": "local"},
    )
    return out.stdout.strip()


def source_key() -> str:
    """SHA-256 of the Go module's files, the toolchain version and the build flags."""
    h = hashlib.sha256()
    h.update(go_version().encode())
    h.update(repr((sorted(BUILD_ENV.items()), BUILD_FLAGS)).encode())
    for path in sorted(GO_MODULE.rglob("*")):
        if path.is_file() and path.suffix in {".go", ".mod", ".sum"}:
            h.update(str(path.relative_to(GO_MODULE)).encode() + b"\0")
            h.update(path.read_bytes() + b"\0")
    return h.hexdigest()


def example_names() -> list[str]:
    return sorted(p.parent.name for p in (GO_MODULE / "examples").glob("*/main.go"))


def build_go_example(name: str) -> Path:
    """The example's .wasm (a wasip1 reactor), built now unless the cache has it."""
    src = GO_MODULE / "examples" / name
    if not (src / "main.go").is_file():
        raise FileNotFoundError(f"no Go example {name!r} in {src.parent}")
    out_dir = CACHE_ROOT / f"go-{source_key()}"
    out = out_dir / f"{name}.wasm"
    if out.is_file():
        return out
    out_dir.mkdir(parents=True, exist_ok=True)
    # Build to a temporary name and rename, so that concurrent test runs never see half a file.
    fd, tmp = tempfile.mkstemp(prefix=f".{name}-", suffix=".wasm", dir=out_dir)
    os.close(fd)
    try:
        subprocess.run(
            [go_binary(), "build", *BUILD_FLAGS, "-o", tmp, f"./examples/{name}"],
            cwd=GO_MODULE,
            check=True,
            capture_output=True,
            text=True,
            env={**os.environ, **BUILD_ENV},
        )
        os.replace(tmp, out)
    except subprocess.CalledProcessError as e:
        raise RuntimeError(f"go build of example {name!r} failed:\n{e.stderr}") from e
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return out
