"""`realm tenant build`: turn a tenant's source folder into the WebAssembly the runtime runs.

- Python: a component of the WIT world `realm:tenant/tenant` (runtime/sandbox/wit/tenant.wit),
  built by componentize-py from the folder's `app.py` (its `WitWorld` class) and the Python SDK
  (sdk/python/realm_tenant); of the world `tenant-sampler` when `app.py` also defines a `Sampler`
  (the exported sampler of ABI 1.2).
- Go: a wasip1 reactor core module (the Go SDK, sdk/go, speaks the core ABI), built by
  `GOOS=wasip1 GOARCH=wasm go build -buildmode=c-shared`.

Nothing is written next to the sources: componentize-py runs CPython at build time and that
leaves __pycache__ folders in every folder on its path, so the Python build works on a copy.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Literal

Language = Literal["python", "go"]

WIT_WORLD = "tenant"
WIT_SAMPLER_WORLD = "tenant-sampler"
# componentize-py takes an exported interface from the app module's class of that name.
_DEFINES_SAMPLER = re.compile(r"^(class\s+Sampler\b|Sampler\s*[:=])", re.MULTILINE)
PYTHON_APP_MODULE = "app"
COMPONENTIZE_PY_VERSION = "0.25.1"  # the version the SDK and the runtime are tested with
BUILD_TIMEOUT_S = 900
_IGNORED = shutil.ignore_patterns("__pycache__", "*.pyc", ".git", ".venv", "*.wasm", "*.cwasm")


class TenantBuildError(Exception):
    """The build could not run or failed; the message says what to do."""


def wit_dir() -> Path:
    """The WIT package the runtime serves (the ABI's source of truth)."""
    from realm.runtime.sandbox import abi

    path = Path(abi.__file__).resolve().parent / "wit"
    if not (path / "tenant.wit").is_file():
        raise TenantBuildError(f"the host ABI's WIT files are missing from this installation ({path})")
    return path


def python_sdk_dir() -> Path:
    """The folder holding the `realm_tenant` package: the checkout's sdk/python, else an
    installed realm_tenant."""
    checkout = Path(__file__).resolve().parent.parent / "sdk" / "python"
    if (checkout / "realm_tenant" / "__init__.py").is_file():
        return checkout
    import importlib.util

    spec = importlib.util.find_spec("realm_tenant")
    if spec is not None and spec.origin is not None:
        return Path(spec.origin).resolve().parent.parent
    raise TenantBuildError(
        "the Python tenant SDK (realm_tenant) was not found: build from a Realm checkout "
        "(it lives in sdk/python) or put sdk/python on PYTHONPATH"
    )


def detect_language(source: Path) -> Language:
    if source.is_file():
        if source.suffix == ".py":
            return "python"
        if source.suffix == ".go":
            return "go"
    elif (source / f"{PYTHON_APP_MODULE}.py").is_file():
        return "python"
    elif (source / "go.mod").is_file() or any(source.glob("*.go")):
        return "go"
    raise TenantBuildError(
        f"cannot tell the language of {source}: expected {PYTHON_APP_MODULE}.py (Python) or "
        "go.mod / *.go (Go); pass the language explicitly"
    )


def build_tenant(source: Path, out: Path, *, language: Language | None = None) -> Path:
    """Build the tenant in `source` (a folder; for Python also a single .py file) into `out`.

    Returns `out` (absolute). The file appears whole or not at all.
    """
    source = Path(source).resolve()
    out = Path(out).resolve()
    if not source.exists():
        raise TenantBuildError(f"{source} does not exist")
    lang = language or detect_language(source)
    out.parent.mkdir(parents=True, exist_ok=True)
    # Build next to the destination and rename: a reader never sees half a component.
    fd, tmp_name = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        if lang == "python":
            _build_python(source, tmp)
        elif lang == "go":
            _build_go(source if source.is_dir() else source.parent, tmp)
        else:
            raise TenantBuildError(f"unsupported language {lang!r} (python or go)")
        if tmp.stat().st_size == 0:
            raise TenantBuildError("the build wrote nothing")
        tmp.chmod(0o644)  # mkstemp makes it private; a build output is an ordinary file
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return out


# ---- Python ------------------------------------------------------------------------------------


def _componentize_py() -> list[str]:
    # The venv's script first (next to this interpreter), then PATH, then the module itself.
    local = Path(sys.executable).parent / "componentize-py"
    if local.is_file():
        return [str(local)]
    found = shutil.which("componentize-py")
    if found:
        return [found]
    import importlib.util

    if importlib.util.find_spec("componentize_py") is not None:
        return [sys.executable, "-c", "import sys, componentize_py; sys.exit(componentize_py.script())"]
    raise TenantBuildError(
        "componentize-py is not installed; install it with "
        f"`pip install componentize-py=={COMPONENTIZE_PY_VERSION}` (or `pip install 'realm[test]'`)"
    )


def python_world(app: Path) -> str:
    """The WIT world of the app module `app`: `tenant-sampler` when it defines a top-level
    `Sampler` (a class, or a name bound to one), else `tenant`."""
    return WIT_SAMPLER_WORLD if _DEFINES_SAMPLER.search(app.read_text(errors="replace")) else WIT_WORLD


def _build_python(source: Path, out: Path) -> None:
    cmd = _componentize_py()
    wit = wit_dir()
    sdk = python_sdk_dir()
    with tempfile.TemporaryDirectory(prefix="realm-tenant-build-") as tmp:
        app_dir = Path(tmp) / "app"
        if source.is_file():
            app_dir.mkdir()
            shutil.copy2(source, app_dir / f"{PYTHON_APP_MODULE}.py")
        else:
            if not (source / f"{PYTHON_APP_MODULE}.py").is_file():
                raise TenantBuildError(f"{source} has no {PYTHON_APP_MODULE}.py")
            shutil.copytree(source, app_dir, ignore=_IGNORED)
        sdk_dir = Path(tmp) / "sdk"
        shutil.copytree(sdk / "realm_tenant", sdk_dir / "realm_tenant", ignore=_IGNORED)
        args = [
            *cmd,
            "-q",
            "-d",
            str(wit),
            "-w",
            python_world(app_dir / f"{PYTHON_APP_MODULE}.py"),
            "componentize",
            PYTHON_APP_MODULE,
            "-p",
            str(app_dir),  # first: the tenant's own modules win over the SDK's
            "-p",
            str(sdk_dir),
            "-o",
            str(out),
        ]
        env = dict(os.environ)
        # componentize-py adds $VIRTUAL_ENV's site-packages to the guest's path: the runtime's
        # own venv is no tenant dependency. Tenants vendor their pure-Python packages into the
        # source folder instead.
        env.pop("VIRTUAL_ENV", None)
        _run(args, cwd=Path(tmp), env=env, what="componentize-py")


# ---- Go ----------------------------------------------------------------------------------------


def _go() -> str:
    found = shutil.which("go") or ("/usr/local/go/bin/go" if Path("/usr/local/go/bin/go").is_file() else None)
    if found is None:
        raise TenantBuildError("the Go toolchain (go 1.24 or newer, for GOOS=wasip1) is not on PATH")
    return found


def _build_go(source: Path, out: Path) -> None:
    env = dict(os.environ, GOOS="wasip1", GOARCH="wasm")
    _run([_go(), "build", "-buildmode=c-shared", "-o", str(out), "."], cwd=source, env=env, what="go build")


# ---- running a toolchain -----------------------------------------------------------------------


def _run(args: list[str], *, cwd: Path, env: dict[str, str], what: str) -> None:
    try:
        proc = subprocess.run(
            args, cwd=cwd, env=env, capture_output=True, text=True, timeout=BUILD_TIMEOUT_S, check=False
        )
    except FileNotFoundError as e:
        raise TenantBuildError(f"{what} could not start: {e}") from e
    except subprocess.TimeoutExpired as e:
        raise TenantBuildError(f"{what} took longer than {BUILD_TIMEOUT_S} s") from e
    if proc.returncode != 0:
        output = (proc.stderr or proc.stdout or "").strip()
        # componentize-py appends a Rust backtrace of itself: noise for a tenant author.
        output = output.split("\nStack backtrace:", 1)[0].strip()
        raise TenantBuildError(f"{what} failed (exit {proc.returncode}):\n{output[-6000:]}")
