"""The repository layout maps into one `realm` distribution without shadowing the standard library."""

import importlib
import re
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


def test_realm_subpackages_are_plain_links_to_the_top_level_folders() -> None:
    # What lets mypy, pyright and a reader follow realm.runtime.x to runtime/x.py with no import hook.
    for name in ("runtime", "operator"):
        link = ROOT / "realm" / name
        assert link.is_symlink() and link.resolve() == ROOT / name


def test_the_editable_install_is_a_path_entry_not_an_import_hook() -> None:
    import realm

    assert Path(realm.__file__).resolve().parent == ROOT / "realm"
    site = Path(importlib.import_module("pydantic").__file__ or "").resolve().parent.parent
    pths = list(site.glob("__editable__.realm-*.pth"))
    assert [p.read_text().strip() for p in pths] == [str(ROOT)]
    assert not list(site.glob("__editable__*realm*finder*.py"))


def test_the_architecture_page_names_only_files_that_exist() -> None:
    # docs/architecture.md is what a newcomer reads first: a renamed or removed file must not linger there.
    text = (ROOT / "docs" / "architecture.md").read_text()
    names = set(re.findall(r"`([\w./-]+\.(?:py|md|wit)|[\w./-]+/)`", text))
    assert len(names) > 50  # the pattern itself can go wrong
    bases = [ROOT, ROOT / "runtime", ROOT / "operator", ROOT / "runtime" / "sandbox"]
    every_file = {p.name for top in ("runtime", "operator", "realm") for p in (ROOT / top).rglob("*.py")}
    missing = sorted(
        n
        for n in names
        if not any((base / n).exists() for base in bases) and not ("/" not in n and n in every_file)
    )
    assert missing == []
