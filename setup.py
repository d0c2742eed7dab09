"""Package discovery only; everything else is in pyproject.toml.

The repository's top-level folders are the map (docs/architecture.md). They are one distribution,
`realm`, through two symbolic links, realm/runtime -> ../runtime and realm/operator -> ../operator: plain
directories to Python, mypy, pyright and a reader, so an editable install is a plain path entry (no import
hook) and nothing is ever imported as the standard library's `operator`. operator/ has no __init__.py on
purpose (a regular package of that name would shadow the standard library's from the repository root), so
realm.operator is a namespace package, listed by hand.
"""

from setuptools import find_packages, setup

packages = ["realm", "realm.operator", *(f"realm.{sub}" for sub in find_packages("realm"))]

setup(
    packages=packages,
    # {"": "."} is what lets setuptools install an editable checkout as a plain path entry.
    package_dir={"": "."},
    package_data={"realm.runtime": ["py.typed"], "realm.runtime.sandbox": ["wit/*.wit"]},
)
