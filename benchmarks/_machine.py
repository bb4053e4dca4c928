"""What machine a benchmark ran on, recorded beside every result."""

from __future__ import annotations

import json
import os
import platform
import sys
from datetime import datetime, timezone
from pathlib import Path

import torch


def machine() -> dict:
    cpu = platform.processor()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__, "python": sys.version.split()[0],
            "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
            "date": datetime.now(timezone.utc).isoformat(timespec="seconds")}


def command() -> str:
    return " ".join(["python", *sys.argv])


def write_result(out: str | Path, result: dict) -> None:
    """The benchmark's result as indented JSON at `out` (its folder made)."""
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text(json.dumps(result, indent=1) + "\n")
