"""Where genscale keeps its cache (datasets, weights, extractors) and its runs."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import platformdirs

from genscale.errors import GenscaleError


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


def write_json(path: Path, obj: Any) -> None:
    """`obj` as indented JSON, written atomically (values JSON cannot hold are written as their str)."""
    atomic_write_bytes(path, json.dumps(obj, indent=1, default=str).encode())


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


def read_json(path: Path, what: str = "file") -> Any:
    """The JSON value in `path`; a missing, unreadable or malformed file is a GenscaleError naming it."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise GenscaleError(f"{path}: {what} is missing") from None
    except OSError as e:
        raise GenscaleError(f"{path}: cannot read {what} ({e.strerror})") from None
    except json.JSONDecodeError as e:
        raise GenscaleError(f"{path}: {what} is not valid JSON ({e.msg} at line {e.lineno})") from None
    except UnicodeDecodeError:
        raise GenscaleError(f"{path}: {what} is not UTF-8 text") from None


def check_output_file(path: Path, suffixes: tuple[str, ...], what: str) -> Path:
    """`path` as a file to write `what` to: not a folder, and named with one of `suffixes` (case-insensitive)."""
    if path.is_dir():
        example = path / f"out{suffixes[0]}"
        raise GenscaleError(f"{path}: is a folder; give a file name for the {what}, e.g. {example}")
    if path.suffix.lower() not in suffixes:
        raise GenscaleError(f"{path}: the {what} needs a file name ending in {', '.join(suffixes)}")
    return path
