"""Which ggml backends this process computes on: the CPU variant for the CPU in hand, and GPU backends.

Realm's llama.cpp build is portable (scripts/build-llama.sh): every ggml CPU variant is a loadable
library (`libggml-cpu-<variant>.so`, from `x64` up to `sapphirerapids` or `armv9.2_2`) next to
`libggml.so.0`, and nothing is loaded until someone asks. Each variant scores the CPU it runs on
(0: it would not run here); like llama.cpp's own `ggml_backend_load_all`, Realm loads the best-scoring
one, with one exception: variants with llama.cpp's AMX kernels are used only when pinned. Those kernels
died with SIGILL (`tilezero` in `ggml_backend_amx_mul_mat`, on an OpenMP worker) in the first batched
decode of both shipped models on a Sapphire Rapids VM whose AMX tiles otherwise work, so a probe of the
tiles cannot vouch for them; the next variant down has the same AVX-512 set without AMX.
`REALM_GGML_CPU_VARIANT` pins a variant (tests use it to run the lowest one); pinning an AMX variant
still requires AMX tiles to run here (cpu_features.amx_usable). A native build
(`-march=native`, CPU backend linked in) has no variants: it is reported as `builtin`.

The registry that llama.cpp uses lives in `libggml.so.0`, the soname libllama links; the wheel also
holds `libggml.so`, a separate copy with a registry of its own, which must not be used.
"""

from __future__ import annotations

import ctypes
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from .cpu_features import CpuInfo, amx_usable

VARIANT_ENV = "REALM_GGML_CPU_VARIANT"
CPU_PREFIX = "libggml-cpu-"
# Variants that carry llama.cpp's AMX kernels (x86 variants named after Sapphire Rapids and later).
AMX_VARIANTS = frozenset({"sapphirerapids"})
AMX_OPT_IN = f"llama.cpp's AMX kernels are used only when pinned ({VARIANT_ENV}=sapphirerapids)"
# GPU backend libraries a GPU build of the wheel may hold, loaded whenever present.
GPU_BACKENDS = ("cuda", "hip", "vulkan", "musa", "sycl")
DEVICE_TYPES = {0: "CPU", 1: "GPU", 2: "IGPU", 3: "ACCEL", 4: "META"}


class BackendError(RuntimeError):
    pass


@dataclass(frozen=True)
class Variant:
    """One CPU variant library and its score on this CPU (0: it would not run here)."""

    name: str
    path: Path
    score: int


@dataclass(frozen=True)
class Device:
    name: str
    description: str
    type: str


@dataclass(frozen=True)
class BackendSelection:
    """What `load_backends` chose and loaded; `realm doctor` and `realm serve` print it."""

    cpu_variant: str  # a variant's name, or "builtin" for a build without loadable variants
    cpu_variant_path: Path | None
    reason: str
    skipped: tuple[str, ...] = ()  # "<variant or GPU backend>: why it was left out"
    variants: tuple[Variant, ...] = ()
    devices: tuple[Device, ...] = ()
    cpu_features: dict[str, str] = field(default_factory=dict)  # what the loaded CPU backend was built with
    ggml_version: str = "unknown"

    @property
    def gpu_devices(self) -> tuple[Device, ...]:
        return tuple(d for d in self.devices if d.type in ("GPU", "IGPU"))

    def summary(self) -> str:
        gpus = ", ".join(f"{d.name} ({d.description})" for d in self.gpu_devices) or "none"
        return f"ggml CPU variant {self.cpu_variant} ({self.reason}); GPU backends: {gpus}"


def lib_dir() -> Path:
    """llama_cpp/lib of the installed bindings, found without importing them (importing loads libllama)."""
    from importlib.util import find_spec

    spec = find_spec("llama_cpp")
    if spec is None or spec.origin is None:
        raise BackendError("llama-cpp-python is not installed (run scripts/bootstrap.sh)")
    return Path(spec.origin).parent / "lib"


def variant_files(directory: Path) -> list[tuple[str, Path]]:
    return sorted(
        (p.name[len(CPU_PREFIX) : -len(".so")], p) for p in directory.glob(f"{CPU_PREFIX}*.so") if p.is_file()
    )


def score_variant(path: Path) -> int:
    """The variant's own verdict on this CPU, as ggml's loader asks it; the library is unloaded again."""
    lib = ctypes.CDLL(str(path), mode=os.RTLD_LOCAL)
    try:
        fn = lib.ggml_backend_score
    except AttributeError:
        return 0
    fn.restype = ctypes.c_int
    fn.argtypes = []
    score = int(fn())
    import _ctypes

    _ctypes.dlclose(lib._handle)
    return score


def choose_variant(
    variants: Sequence[Variant], *, amx_ok: bool, amx_reason: str, pinned: str | None
) -> tuple[Variant, str, tuple[str, ...]]:
    """The variant to load, why, and the variants left out with their reasons."""
    by_name = {v.name: v for v in variants}
    if pinned:
        chosen = by_name.get(pinned)
        if chosen is None:
            raise BackendError(
                f"{VARIANT_ENV}={pinned}: no such ggml CPU variant (built: {', '.join(sorted(by_name))})"
            )
        if chosen.score <= 0:
            raise BackendError(f"{VARIANT_ENV}={pinned}: this CPU lacks instructions that variant needs")
        if chosen.name in AMX_VARIANTS and not amx_ok:
            raise BackendError(f"{VARIANT_ENV}={pinned}: {amx_reason}")
        return chosen, f"pinned by {VARIANT_ENV}", ()
    skipped: list[str] = []
    usable: list[Variant] = []
    for v in variants:
        if v.score <= 0:
            continue
        if v.name in AMX_VARIANTS:
            skipped.append(f"{v.name}: {AMX_OPT_IN}")
            continue
        usable.append(v)
    if not usable:
        raise BackendError("no ggml CPU variant runs on this CPU (built: " + ", ".join(sorted(by_name)) + ")")
    best = max(usable, key=lambda v: v.score)
    return best, "the best-scoring variant for this CPU", tuple(skipped)


class _Ggml:
    """ctypes view of the libggml.so.0 that libllama links (the registry llama.cpp uses)."""

    def __init__(self, directory: Path) -> None:
        path = directory / "libggml.so.0"
        if not path.exists():
            raise BackendError(
                f"no {path}: not a llama-cpp-python build Realm knows (run scripts/bootstrap.sh)"
            )
        self.lib = ctypes.CDLL(str(path), mode=os.RTLD_GLOBAL)
        vp, sz, cp = ctypes.c_void_p, ctypes.c_size_t, ctypes.c_char_p
        self._sig("ggml_backend_load", vp, [cp])
        self._sig("ggml_backend_reg_count", sz, [])
        self._sig("ggml_backend_reg_get", vp, [sz])
        self._sig("ggml_backend_reg_name", cp, [vp])
        self._sig("ggml_backend_reg_get_proc_address", vp, [vp, cp])
        self._sig("ggml_backend_dev_count", sz, [])
        self._sig("ggml_backend_dev_get", vp, [sz])
        self._sig("ggml_backend_dev_name", cp, [vp])
        self._sig("ggml_backend_dev_description", cp, [vp])
        self._sig("ggml_backend_dev_type", ctypes.c_int, [vp])

    def _sig(self, name: str, restype: object, argtypes: list[object]) -> None:
        fn = getattr(self.lib, name)
        fn.restype = restype
        fn.argtypes = argtypes

    def version(self) -> str:
        """ggml's version and commit, e.g. `0.25.3 0c1e570`."""
        out = []
        for name in ("ggml_version", "ggml_commit"):
            fn = getattr(self.lib, name, None)
            if fn is not None:
                fn.restype = ctypes.c_char_p
                out.append((fn() or b"?").decode())
        return " ".join(out) or "unknown"

    def registries(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for i in range(self.lib.ggml_backend_reg_count()):
            reg = self.lib.ggml_backend_reg_get(i)
            out[self.lib.ggml_backend_reg_name(reg).decode()] = reg
        return out

    def load(self, path: Path) -> None:
        if not self.lib.ggml_backend_load(str(path).encode()):
            raise BackendError(f"ggml could not load the backend {path}")

    def devices(self) -> tuple[Device, ...]:
        out = []
        for i in range(self.lib.ggml_backend_dev_count()):
            dev = self.lib.ggml_backend_dev_get(i)
            out.append(
                Device(
                    name=(self.lib.ggml_backend_dev_name(dev) or b"").decode(errors="replace"),
                    description=(self.lib.ggml_backend_dev_description(dev) or b"").decode(errors="replace"),
                    type=DEVICE_TYPES.get(self.lib.ggml_backend_dev_type(dev), "?"),
                )
            )
        return tuple(out)

    def cpu_features(self) -> dict[str, str]:
        reg = self.registries().get("CPU")
        if not reg:
            return {}
        addr = self.lib.ggml_backend_reg_get_proc_address(reg, b"ggml_backend_get_features")
        if not addr:
            return {}

        class Feature(ctypes.Structure):
            _fields_ = [("name", ctypes.c_char_p), ("value", ctypes.c_char_p)]

        get = ctypes.CFUNCTYPE(ctypes.POINTER(Feature), ctypes.c_void_p)(addr)
        features = get(reg)
        out: dict[str, str] = {}
        i = 0
        while features[i].name:
            out[features[i].name.decode()] = (features[i].value or b"").decode()
            i += 1
        return out


def load_backends(
    cpu: CpuInfo,
    *,
    directory: Path | None = None,
    pinned: str | None = None,
    probe_amx: Callable[[CpuInfo], tuple[bool, str]] = amx_usable,
) -> BackendSelection:
    """Load the CPU variant for this CPU (and any GPU backend) into llama.cpp's registry.

    Call once per process, before the first model load: the registry is process-wide."""
    directory = directory or lib_dir()
    ggml = _Ggml(directory)
    files = variant_files(directory)
    if not files:
        if "CPU" not in ggml.registries():
            raise BackendError(
                f"no ggml CPU backend: neither linked in nor a {CPU_PREFIX}*.so in {directory}"
            )
        return BackendSelection(
            cpu_variant="builtin",
            cpu_variant_path=None,
            reason="a build with its CPU backend linked in (no loadable variants)",
            devices=ggml.devices(),
            cpu_features=ggml.cpu_features(),
            ggml_version=ggml.version(),
        )
    variants = tuple(Variant(name, path, score_variant(path)) for name, path in files)
    amx_ok, amx_reason = (False, "")
    if pinned in AMX_VARIANTS:
        amx_ok, amx_reason = probe_amx(cpu)
    chosen, reason, skipped = choose_variant(variants, amx_ok=amx_ok, amx_reason=amx_reason, pinned=pinned)
    if "CPU" not in ggml.registries():
        ggml.load(chosen.path)
    skipped_gpus: list[str] = []
    for name in GPU_BACKENDS:
        path = directory / f"libggml-{name}.so"
        if path.exists() and name.upper() not in ggml.registries():
            # A GPU image on a node without the GPU's driver still serves, on the CPU.
            try:
                ggml.load(path)
            except BackendError as e:
                skipped_gpus.append(f"{name}: {e} (no driver or device here?)")
    return BackendSelection(
        cpu_variant=chosen.name,
        cpu_variant_path=chosen.path,
        reason=reason,
        skipped=skipped + tuple(skipped_gpus),
        variants=variants,
        devices=ggml.devices(),
        cpu_features=ggml.cpu_features(),
        ggml_version=ggml.version(),
    )
