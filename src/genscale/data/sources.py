"""Readers for user image data: image folders and .npz files.

All readers return uint8 images shaped (N, C, H, W) and optional int64 labels. Source files are only read.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
from PIL import Image

from genscale.errors import GenscaleError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


def _decode(path: Path, mode: str, size: int | None) -> np.ndarray:
    if path.stat().st_size == 0:
        raise GenscaleError(f"{path}: empty file (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                im.load()  # decode now: a truncated file fails here, not later in training
                im = im.convert(mode)
                if size is not None and im.size != (size, size):
                    im = im.resize((size, size), Image.Resampling.BILINEAR)
                return np.asarray(im, dtype=np.uint8)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise GenscaleError(f"{path}: cannot decode image ({e})") from None


def load_imagefolder(root: str | Path, *, channels: int = 1, image_size: int | None = None
                     ) -> tuple[np.ndarray, np.ndarray | None, tuple[str, ...]]:
    """Read PNG/JPEG files under `root`. Sub-folders of `root` that hold images are class labels.

    Images are converted to grayscale (channels=1, Pillow's "L", ITU-R 601-2 luma) or RGB (channels=3);
    with `image_size` they are resized (bilinear) to a square, otherwise all must share one size.
    """
    root = Path(root)
    if not root.is_dir():
        raise GenscaleError(f"{root}: not a folder")
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise GenscaleError(f"{root}: no {'/'.join(IMAGE_SUFFIXES)} images found")
    if channels not in (1, 3):
        raise GenscaleError(f"data.channels: must be 1 or 3, got {channels}")
    mode = "L" if channels == 1 else "RGB"
    images = []
    for f in files:
        img = _decode(f, mode, image_size)
        if images and img.shape != images[0].shape:
            raise GenscaleError(f"{f}: size {img.shape[1]}x{img.shape[0]} differs from {files[0]} "
                                f"({images[0].shape[1]}x{images[0].shape[0]}); set data.image_size to resize")
        images.append(img)
    x = np.stack(images)
    x = x[:, None] if channels == 1 else x.transpose(0, 3, 1, 2)
    class_names = tuple(sorted({f.relative_to(root).parts[0] for f in files if f.parent != root}))
    if not class_names:
        return np.ascontiguousarray(x), None, ()
    if any(f.parent == root for f in files):
        raise GenscaleError(f"{root}: mixes images at the top level with class sub-folders")
    index = {c: i for i, c in enumerate(class_names)}
    y = np.array([index[f.relative_to(root).parts[0]] for f in files], dtype=np.int64)
    return np.ascontiguousarray(x), y, class_names


def load_npz(path: str | Path, *, images_key: str = "x", labels_key: str = "y"
             ) -> tuple[np.ndarray, np.ndarray | None]:
    """Read uint8 images (N, H, W), (N, H, W, C) or (N, C, H, W) and optional labels from a .npz file."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as z:
            if images_key not in z:
                raise GenscaleError(f"{path}: no array named '{images_key}' (has {', '.join(z.files) or 'none'})")
            x = z[images_key]
            y = z[labels_key] if labels_key in z else None
    except (OSError, ValueError) as e:
        raise GenscaleError(f"{path}: cannot read .npz ({e})") from None
    if x.dtype != np.uint8:
        raise GenscaleError(f"{path}: '{images_key}' must be uint8, got {x.dtype}")
    if x.ndim == 3:
        x = x[:, None]
    elif x.ndim == 4 and x.shape[-1] in (1, 3) and x.shape[1] not in (1, 3):
        x = x.transpose(0, 3, 1, 2)
    elif x.ndim != 4:
        raise GenscaleError(f"{path}: '{images_key}' must have 3 or 4 dimensions, got shape {x.shape}")
    if len(x) == 0:
        raise GenscaleError(f"{path}: '{images_key}' holds no images")
    if y is not None:
        if y.shape != (len(x),) or not np.issubdtype(y.dtype, np.integer):
            raise GenscaleError(f"{path}: '{labels_key}' must be {len(x)} integers, got {y.dtype} {y.shape}")
        y = y.astype(np.int64)
    return np.ascontiguousarray(x), y
