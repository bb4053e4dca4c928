"""Where genscale keeps its cache (datasets, weights, extractors) and its runs."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import platformdirs


def cache_dir() -> Path:
    """`GENSCALE_CACHE`, else the user's cache directory (e.g. ~/.cache/genscale)."""
    path = Path(os.environ.get("GENSCALE_CACHE") or platformdirs.user_cache_dir("genscale"))
    path.mkdir(parents=True, exist_ok=True)
    return path


def runs_dir() -> Path:
    """`GENSCALE_RUNS`, else ./runs: run folders and the MLflow SQLite store live here."""
    return Path(os.environ.get("GENSCALE_RUNS") or "runs").absolute()


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write `data` to `path` so a reader sees the old file or the new one, never half of it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def data_dir() -> Path:
    """`GENSCALE_DATA`, else ./datasets: dataset versions made by `genscale data ingest|clean|corrupt`."""
    return Path(os.environ.get("GENSCALE_DATA") or "datasets").absolute()


def file_sha256(path: Path) -> str:
    """sha256 of a file's bytes, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
