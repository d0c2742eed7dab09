"""The compile cache under hostile deploys: compiles one at a time, artifacts within a byte budget
(least recently used evicted, from memory and disk). Real wasmtime, real files."""

from __future__ import annotations

import hashlib
import threading
from pathlib import Path

import wasmtime
from repo_paths import WAT

from realm.runtime.sandbox.modules import ModuleCache, detect_kind
from realm.runtime.sandbox.runner import make_engine


def variant(n: int) -> tuple[str, bytes]:
    """A distinct module per `n`, all of about the same compiled size."""
    text = (WAT / "loop.wat").read_text().replace("(i32.const 0)))", f"(i32.const {n})))")
    data = bytes(wasmtime.wat2wasm(text))
    return hashlib.sha256(data).hexdigest(), data


def cache(folder: Path, max_bytes: int = 1 << 30) -> ModuleCache:
    engine, digest = make_engine()
    return ModuleCache(engine, folder, digest, max_bytes=max_bytes)


def load(c: ModuleCache, n: int) -> None:
    sha, data = variant(n)
    c.artifact(sha, detect_kind(data), data)


def artifact_size(tmp_path: Path) -> int:
    probe = cache(tmp_path / "probe")
    load(probe, 0)
    return probe.size_bytes


def load_then(c: ModuleCache, n: int, done: threading.Event) -> threading.Thread:
    """A thread that loads variant `n` into `c`, then sets `done`."""

    def work() -> None:
        load(c, n)
        done.set()

    return threading.Thread(target=work)


def on_disk(folder: Path, n: int) -> bool:
    sha, _ = variant(n)
    return any(folder.glob(f"{sha}-*.cwasm"))


def test_a_compile_waits_for_the_one_in_progress(tmp_path: Path) -> None:
    c = cache(tmp_path)
    done = threading.Event()
    worker = load_then(c, 1, done)
    with c.compiling:  # another compile is in progress
        worker.start()
        assert not done.wait(0.5)
    assert done.wait(30)
    worker.join()
    assert c.compiles == 1


def test_a_cached_module_does_not_wait_for_a_compile(tmp_path: Path) -> None:
    c = cache(tmp_path)
    load(c, 1)
    done = threading.Event()
    with c.compiling:
        worker = load_then(c, 1, done)
        worker.start()
        assert done.wait(30)
    worker.join()


def test_the_cache_stays_within_its_byte_budget(tmp_path: Path) -> None:
    size = artifact_size(tmp_path)
    c = cache(tmp_path / "c", max_bytes=int(size * 2.5))
    for n in range(1, 6):
        load(c, n)
    assert c.size_bytes <= int(size * 2.5)
    assert sum(f.stat().st_size for f in (tmp_path / "c").glob("*.cwasm")) <= int(size * 2.5)


def test_the_least_recently_used_artifact_is_evicted_from_disk_and_memory(tmp_path: Path) -> None:
    size = artifact_size(tmp_path)
    folder = tmp_path / "c"
    c = cache(folder, max_bytes=int(size * 2.5))
    load(c, 1)
    load(c, 2)
    load(c, 1)  # used again: 2 is now the least recently used
    load(c, 3)
    assert (on_disk(folder, 1), on_disk(folder, 2), on_disk(folder, 3)) == (True, False, True)
    compiles = c.compiles
    load(c, 2)  # gone from memory too: compiled again
    assert c.compiles == compiles + 1


def test_files_left_by_an_earlier_process_count_against_the_budget(tmp_path: Path) -> None:
    size = artifact_size(tmp_path)
    folder = tmp_path / "c"
    roomy = cache(folder)
    for n in (1, 2, 3):
        load(roomy, n)
    cache(folder, max_bytes=int(size * 2.5))
    assert sorted(on_disk(folder, n) for n in (1, 2, 3)) == [False, True, True]
