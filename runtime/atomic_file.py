"""Write-then-rename, so a reader (or the next process) never sees half a file, even after a crash."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def write_atomically(path: Path, data: bytes, *, tmp_dir: Path | None = None) -> None:
    """Replace `path` with `data`. The temporary file lives in `tmp_dir` (default: path's folder), which
    must be on the same filesystem for the rename to be atomic; nothing is left behind on failure."""
    fd, tmp = tempfile.mkstemp(dir=tmp_dir or path.parent, prefix=".tmp-")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
