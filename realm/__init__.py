"""Realm: one shared LLM engine, many tenants, each with its own WebAssembly orchestration."""

from pathlib import Path

__version__ = "0.1.0"

# The operator's code lives in the repository's top-level operator/ folder, which has no
# __init__.py on purpose: a regular package named `operator` would shadow the standard library's
# whenever Python runs from the repository root. An installed wheel has realm/operator/ (setup.py
# maps it); an editable checkout needs the repository root on this package's path to find it.
_checkout = Path(__file__).resolve().parent.parent
if (_checkout / "operator" / "README.md").is_file() and (_checkout / "setup.py").is_file():
    __path__.append(str(_checkout))
