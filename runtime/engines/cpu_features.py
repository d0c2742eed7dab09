"""What the CPU in hand is and can do: its model and flags, and whether AMX tiles really work here.

AMX needs more than the CPU flag: the kernel must grant the process the tile state
(arch_prctl ARCH_REQ_XCOMP_PERM), and some hypervisors advertise AMX in CPUID while the first tile
instruction still faults. llama.cpp's AMX kernels then die with SIGILL in the first batched decode. The
only reliable test is to run the instructions, in a child process that may die in our stead.
"""

from __future__ import annotations

import platform
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

AMX_FLAGS = frozenset({"amx_tile", "amx_int8"})
PROBE_TIMEOUT_S = 20.0

# ldtilecfg [rdi]; tilezero tmm0..2; tdpbssd tmm0, tmm1, tmm2; tilerelease; xor eax, eax; ret
_AMX_CODE = bytes.fromhex("c4e2784907c4e27b49c0c4e27b49c8c4e27b49d0c4e26b5ec1c4e27849c031c0c3")


@dataclass(frozen=True)
class CpuInfo:
    arch: str
    model: str
    flags: frozenset[str] = field(default_factory=frozenset)

    @property
    def has_amx(self) -> bool:
        return self.flags >= AMX_FLAGS


def parse_cpuinfo(text: str, arch: str) -> CpuInfo:
    """The first processor's model and flags from /proc/cpuinfo (x86 `flags`, arm64 `Features`)."""
    fields: dict[str, str] = {}
    for line in text.splitlines():
        if not line.strip():
            if fields:
                break
            continue
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())
    model = fields.get("model name") or fields.get("Model") or fields.get("CPU part") or "unknown"
    flags = fields.get("flags") or fields.get("Features") or ""
    return CpuInfo(arch=arch, model=model, flags=frozenset(flags.split()))


def cpu_info(cpuinfo: Path = Path("/proc/cpuinfo")) -> CpuInfo:
    try:
        text = cpuinfo.read_text(errors="replace")
    except OSError:
        text = ""
    return parse_cpuinfo(text, platform.machine())


def amx_probe() -> None:
    """Run in a child process: ask for the tile state, then execute tile instructions.

    Exits 0 when they ran, 3 when the kernel refused the tile state, 4 when no executable page could be
    had; dies by SIGILL (or SIGSEGV) when the CPU or the hypervisor refuses them."""
    import ctypes
    import mmap

    libc = ctypes.CDLL(None, use_errno=True)
    sys_arch_prctl, arch_req_xcomp_perm, xfeature_xtiledata = 158, 0x1023, 18
    if libc.syscall(sys_arch_prctl, arch_req_xcomp_perm, xfeature_xtiledata) != 0:
        sys.exit(3)
    try:
        page = mmap.mmap(-1, mmap.PAGESIZE, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
    except OSError:
        sys.exit(4)
    page.write(_AMX_CODE)
    config = (ctypes.c_uint8 * 64)()
    config[0] = 1  # palette 1
    for tile in range(3):  # 16 rows of 64 bytes each
        config[16 + 2 * tile] = 64
        config[48 + tile] = 16
    address = ctypes.addressof(ctypes.c_char.from_buffer(page))
    run = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p)(address)
    sys.exit(run(ctypes.addressof(config)))


def amx_usable(info: CpuInfo) -> tuple[bool, str]:
    """Whether AMX tiles work in this process's environment, and why not when they do not."""
    if info.arch not in ("x86_64", "AMD64") or not info.has_amx:
        return False, "the CPU has no AMX"
    code = "from realm.runtime.engines.cpu_features import amx_probe; amx_probe()"
    try:
        done = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, timeout=PROBE_TIMEOUT_S, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        return False, f"the AMX probe did not run ({e})"
    if done.returncode == 0:
        return True, "AMX tiles run"
    if done.returncode == 3:
        return False, "the kernel does not grant the AMX tile state (arch_prctl)"
    if done.returncode < 0:
        return (
            False,
            f"AMX tile instructions are refused here (the probe died with signal {-done.returncode})",
        )
    return False, f"the AMX probe failed (exit {done.returncode})"
