"""The boundaries that keep Realm easy to change, read from the imports of every source file.

Engines never know tenants or HTTP; the admission scheduler never knows HTTP; the sandbox knows only the
ABI and its own limits record; HTTP route modules do not import each other; the operator's builders are
pure (no API client); the operator's client sits below its planner.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from repo_paths import REPO

HTTP = ("fastapi", "starlette", "uvicorn", "sse_starlette")


def _package(path: Path) -> list[str]:
    """runtime/sandbox/runner.py -> ["realm", "runtime", "sandbox"] (realm/runtime links to runtime/)."""
    return ["realm", *path.relative_to(REPO).parts[:-1]]


def _imports(path: Path, package: list[str] | None = None) -> set[str]:
    """Absolute names of the modules (and names) `path` imports, relative imports resolved."""
    package = package or _package(path)
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                module = ".".join([*base, *([node.module] if node.module else [])])
            else:
                module = node.module or ""
            out.add(module)
            out.update(f"{module}.{a.name}" for a in node.names)
    return out


def _sources(folder: str) -> list[Path]:
    return sorted((REPO / folder).rglob("*.py"))


def _offending(folder: str, forbidden: tuple[str, ...]) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for path in _sources(folder):
        bad = sorted(m for m in _imports(path) if m.startswith(forbidden))
        if bad:
            found[str(path.relative_to(REPO))] = bad
    return found


def test_the_import_reader_sees_relative_and_absolute_imports(tmp_path: Path) -> None:
    # The reader itself can fail: a module of runtime/sandbox importing the HTTP layer both ways.
    probe = tmp_path / "probe.py"
    probe.write_text("from ..api import errors\nimport realm.runtime.api.app\n")
    found = _imports(probe, ["realm", "runtime", "sandbox"])
    assert {"realm.runtime.api", "realm.runtime.api.errors", "realm.runtime.api.app"} <= found


@pytest.mark.parametrize(
    ("folder", "forbidden"),
    [
        (
            "runtime/engines",
            (
                "realm.runtime.trt_engines",
                "realm.runtime.api",
                "realm.runtime.serving",
                "realm.runtime.sandbox",
                "realm.runtime.scheduler",
                "realm.runtime.spec.tenant",
                *HTTP,
            ),
        ),
        ("runtime/scheduler", ("realm.runtime.api", "realm.runtime.serving", *HTTP)),
        ("runtime/sandbox", ("realm.runtime.api", "realm.runtime.serving", "realm.runtime.spec", *HTTP)),
        ("runtime/serving", ("realm.runtime.api", *HTTP)),
        (
            "runtime/peers",
            (
                "realm.runtime.api",
                "realm.runtime.serving",
                "realm.runtime.sandbox",
                "realm.runtime.scheduler",
                "realm.runtime.engines",
                *HTTP,
            ),
        ),
        # A leaf: outbound calls know no tenant, spec, request or door (serving/egress.py wires them).
        (
            "runtime/egress",
            (
                "realm.runtime.api",
                "realm.runtime.serving",
                "realm.runtime.sandbox",
                "realm.runtime.scheduler",
                "realm.runtime.engines",
                "realm.runtime.spec",
                *HTTP,
            ),
        ),
        # A leaf: collections know no tenant name (only an owner key), spec, request or door.
        (
            "runtime/vectors",
            (
                "realm.runtime.api",
                "realm.runtime.serving",
                "realm.runtime.sandbox",
                "realm.runtime.scheduler",
                "realm.runtime.engines",
                "realm.runtime.conversations",
                "realm.runtime.spec",
                *HTTP,
            ),
        ),
        ("runtime/kvstore", ("realm.runtime.api", "realm.runtime.serving", *HTTP)),
        ("runtime/conversations", ("realm.runtime.api", "realm.runtime.serving", *HTTP)),
    ],
)
def test_layer_does_not_import_above_itself(folder: str, forbidden: tuple[str, ...]) -> None:
    assert _offending(folder, forbidden) == {}


def test_route_modules_do_not_import_each_other() -> None:
    routes = sorted((REPO / "runtime" / "api").glob("routes_*.py"))
    assert len(routes) >= 3  # the glob itself can go wrong
    found: dict[str, list[str]] = {}
    for path in routes:
        others = [f"realm.runtime.api.{r.stem}" for r in routes if r != path]
        bad = sorted(m for m in _imports(path) if any(m == o or m.startswith(o + ".") for o in others))
        if bad:
            found[path.name] = bad
    assert found == {}


def test_builders_are_pure() -> None:
    imports = _imports(REPO / "operator" / "builders.py")
    assert not {m for m in imports if m.startswith(("kubernetes", "kopf", "realm.operator.kube"))}


def test_operator_client_is_below_the_planner() -> None:
    client = _imports(REPO / "operator" / "kube.py")
    assert not {m for m in client if m.startswith(("realm.operator.reconcile", "realm.operator.builders"))}
    for planner in ("reconcile.py", "autoscale.py"):
        imports = _imports(REPO / "operator" / planner)
        # kubernetes.utils (quantity parsing) is pure; the client, config and watch modules are not.
        clients = ("kubernetes.client", "kubernetes.config", "kubernetes.watch", "kopf")
        clients += ("realm.operator.kube",)
        cluster = {m for m in imports if m == "kubernetes" or m.startswith(clients)}
        assert cluster == set(), planner
