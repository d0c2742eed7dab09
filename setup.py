"""Package discovery only; everything else is in pyproject.toml.

The repository's top-level folders are the map (DEVELOPERS.md). They are mapped into one
distribution, `realm`, so that nothing is ever imported as the standard library's `operator`.
"""

from setuptools import find_packages, setup

ROOTS = {"realm": "realm", "realm.runtime": "runtime", "realm.operator": "operator"}

packages: list[str] = []
package_dir: dict[str, str] = {}
for package, folder in ROOTS.items():
    packages.append(package)
    package_dir[package] = folder
    packages += [f"{package}.{sub}" for sub in find_packages(folder)]

setup(
    packages=packages,
    package_dir=package_dir,
    package_data={"realm.runtime": ["py.typed"], "realm.runtime.sandbox": ["wit/*.wit"]},
)
