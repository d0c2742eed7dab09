"""The repository layout maps into one `realm` distribution without shadowing the standard library."""

import importlib
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_stdlib_operator_is_not_shadowed_from_the_repository_root() -> None:
    out = subprocess.run(
        [sys.executable, "-c", "import operator, collections; print(operator.__file__)"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    assert not out.stdout.strip().startswith(str(ROOT)), out.stdout


def test_top_level_folders_import_as_realm_subpackages() -> None:
    runtime = importlib.import_module("realm.runtime")
    operator_pkg = importlib.import_module("realm.operator")
    assert Path(runtime.__path__[0]).resolve() == ROOT / "runtime"
    assert any(Path(p).resolve() == ROOT / "operator" for p in operator_pkg.__path__)
