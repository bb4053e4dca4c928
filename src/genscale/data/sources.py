"""Readers for user image data: image folders and .npz files.

All readers return uint8 images shaped (N, C, H, W) and optional int64 labels. Source files are only read.

Image folders are read in one pass that never stops at a bad file: each file either decodes to an image of the
target shape or is returned as `Rejected` with its reason (`genscale data ingest` lists those in a quarantine
report; `load_imagefolder`, used when a run reads a folder directly, stops at the first one instead).

Conversion rule (`image_array`), applied in this order:
  1. 16-bit and 32-bit integer grayscale (PNG "I;16", "I") is scaled to 8 bits: round(v * 255 / 65535), clipped.
  2. Transparency (RGBA, LA, PA, palette with a transparent colour) is composited onto black:
     round(c * alpha / 255) — black is the background of Fashion-MNIST-like data.
  3. Palette, CMYK, YCbCr and 1-bit images are converted by Pillow.
  4. channels=1: Pillow's "L" (ITU-R 601-2 luma, L = R 299/1000 + G 587/1000 + B 114/1000);
     channels=3: "RGB" (grayscale replicated). Float images ("F") are rejected.
Size policy: the target is `image_size` x `image_size` when given, else the most common size among the decoded
files. `reject` quarantines images of another size; `resize` centre-crops them to the target's aspect ratio and
resizes with Pillow's Lanczos filter.
"""

from __future__ import annotations

import contextlib
import io
import re
import warnings
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image

from genscale.errors import GenscaleError
from genscale.ui import progress

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
DEFAULT_MAX_PIXELS = 89_478_485  # Pillow's own decompression-bomb limit (MAX_IMAGE_PIXELS)


@dataclass(frozen=True)
class Rejected:
    """A record that was not ingested, with its reason (one line)."""

    source: str
    reason: str


def reason_kind(reason: str) -> str:
    """The name of a reason, for counting: the text before its first ': ' or ' (' ('decompression bomb: ...' ->
    'decompression bomb', 'not UTF-8 (invalid byte ...)' -> 'not UTF-8')."""
    return re.split(r": | \(", reason, maxsplit=1)[0]


def count_reasons(reasons: list[str]) -> dict[str, int]:
    """How many reasons of each kind, in order of first appearance."""
    return dict(Counter(reason_kind(r) for r in reasons))


@dataclass(frozen=True)
class ImagePolicy:
    channels: Literal[1, 3] = 1  # 1: grayscale by Pillow's "L" rule; 3: RGB
    image_size: int | None = None  # square side of every image; None: the most common size among the files
    size_policy: Literal["reject", "resize"] = "reject"  # what happens to images of another size
    max_pixels: int = DEFAULT_MAX_PIXELS  # larger images are refused unread (decompression bombs)


@dataclass(frozen=True)
class FolderImages:
    x: np.ndarray  # (N, C, H, W) uint8
    y: np.ndarray | None  # (N,) int64 class index, None without class sub-folders
    class_names: tuple[str, ...]
    sources: list[str]  # path of each image
    file_bytes: list[int]  # size of each source file
    rejected: list[Rejected]


class _Reject(Exception):
    pass


def image_array(im: Image.Image, channels: int) -> np.ndarray:
    """uint8 (H, W) or (H, W, 3) by the module's conversion rule."""
    if im.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N"):
        gray = np.clip(np.rint(np.asarray(im, dtype=np.float64) * 255 / 65535), 0, 255).astype(np.uint8)
        return gray if channels == 1 else np.repeat(gray[..., None], 3, axis=2)
    if im.mode == "F":
        raise _Reject("unsupported image mode F (floating point)")
    if im.mode in ("RGBA", "LA", "PA", "La", "RGBa") or (im.mode == "P" and "transparency" in im.info):
        rgba = np.asarray(im.convert("RGBA"), dtype=np.uint16)
        rgb = ((rgba[..., :3] * rgba[..., 3:] + 127) // 255).astype(np.uint8)  # onto black, rounded
        im = Image.fromarray(rgb, "RGB")
    return np.asarray(im.convert("L" if channels == 1 else "RGB"), dtype=np.uint8)


@contextlib.contextmanager
def _own_pixel_cap() -> Iterator[None]:
    """Pillow refuses images above 2x its MAX_IMAGE_PIXELS inside Image.open; the caller's `max_pixels`, checked on
    the header before anything is decoded, decides instead."""
    warnings.simplefilter("ignore", Image.DecompressionBombWarning)
    saved, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
    try:
        yield
    finally:
        Image.MAX_IMAGE_PIXELS = saved


def _decode(src: Path | bytes, channels: int, max_pixels: int) -> np.ndarray:
    """One image from a file or from its encoded bytes (a Parquet / Arrow cell); _Reject with the reason if bad."""
    if (src.stat().st_size if isinstance(src, Path) else len(src)) == 0:
        raise _Reject("empty file (0 bytes)" if isinstance(src, Path) else "empty image (0 bytes)")
    try:
        with warnings.catch_warnings(), _own_pixel_cap():
            with Image.open(src if isinstance(src, Path) else io.BytesIO(src)) as im:
                w, h = im.size  # header only: nothing is decoded yet
                if w * h > max_pixels:
                    raise _Reject(f"decompression bomb: {w}x{h} = {w * h:,} pixels exceeds max_pixels {max_pixels:,}")
                im.load()  # decode now: a truncated file fails here, not later in training
                return image_array(im, channels)
    except _Reject:
        raise
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise _Reject(f"cannot decode image ({e})") from None


def _fit_size(img: np.ndarray, target: tuple[int, int]) -> np.ndarray:
    """Centre-crop to the target's aspect ratio, then Lanczos-resize to target (h, w)."""
    th, tw = target
    h, w = img.shape[:2]
    if h * tw > w * th:  # too tall
        ch = round(w * th / tw)
        img = img[(h - ch) // 2:(h - ch) // 2 + ch]
    elif h * tw < w * th:  # too wide
        cw = round(h * tw / th)
        img = img[:, (w - cw) // 2:(w - cw) // 2 + cw]
    return np.asarray(Image.fromarray(img).resize((tw, th), Image.Resampling.LANCZOS))


def image_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def read_image_folder(root: str | Path, policy: ImagePolicy = ImagePolicy()) -> FolderImages:
    """Decode every image under `root` (recursively); top-level sub-folders holding images are class labels.

    Bad files are returned in `rejected`, never raised; a folder that does not exist, holds no image file, or mixes
    top-level images with class sub-folders is a GenscaleError.
    """
    root = Path(root)
    if not root.is_dir():
        raise GenscaleError(f"{root}: not a folder")
    if policy.channels not in (1, 3):
        raise GenscaleError(f"data.channels: must be 1 or 3, got {policy.channels}")
    files = image_files(root)
    if not files:
        raise GenscaleError(f"{root}: no {'/'.join(IMAGE_SUFFIXES)} images found")
    class_names = tuple(sorted({f.relative_to(root).parts[0] for f in files if f.parent != root}))
    if class_names and any(f.parent == root for f in files):
        raise GenscaleError(f"{root}: mixes images at the top level with class sub-folders")
    x, kept, rejected = decode_images([(str(f), f) for f in files], policy, description=f"reading {root.name}")
    if not kept:
        return FolderImages(x, None, class_names, [], [], rejected)
    index = {c: i for i, c in enumerate(class_names)}
    y = (np.array([index[files[i].relative_to(root).parts[0]] for i in kept], dtype=np.int64)
         if class_names else None)
    return FolderImages(x, y, class_names, [str(files[i]) for i in kept], [files[i].stat().st_size for i in kept],
                        rejected)


def decode_images(items: list[tuple[str, Path | bytes]], policy: ImagePolicy, *, description: str
                  ) -> tuple[np.ndarray, list[int], list[Rejected]]:
    """Decode (source, file or encoded bytes) items and apply the size policy, never stopping at a bad one.

    Returns the kept images (N, C, H, W) uint8, the index in `items` of each, and the rejected items with their
    reasons (sorted by source). The target size is policy.image_size, else the most common decoded size.
    """
    decoded: list[tuple[int, np.ndarray]] = []
    rejected: list[Rejected] = []
    with progress(transient=True) as bar:
        task = bar.add_task(description, total=len(items))
        for i, (source, src) in enumerate(items):
            try:
                decoded.append((i, _decode(src, policy.channels, policy.max_pixels)))
            except _Reject as e:
                rejected.append(Rejected(source, str(e)))
            bar.update(task, advance=1)
    if policy.image_size is not None:
        target = (policy.image_size, policy.image_size)
    else:
        target = Counter(img.shape[:2] for _, img in decoded).most_common(1)[0][0] if decoded else (0, 0)
    kept: list[tuple[int, np.ndarray]] = []
    for i, img in decoded:
        if img.shape[:2] == target:
            kept.append((i, img))
        elif policy.size_policy == "resize":
            kept.append((i, _fit_size(img, target)))
        else:
            rejected.append(Rejected(items[i][0], f"wrong size: {img.shape[1]}x{img.shape[0]}, not the target "
                                                  f"{target[1]}x{target[0]} (size policy reject; set image_size or "
                                                  "use the resize policy)"))
    rejected.sort(key=lambda r: r.source)
    if not kept:
        return np.zeros((0, policy.channels, *target), np.uint8), [], rejected
    x = np.stack([img for _, img in kept])
    x = x[:, None] if policy.channels == 1 else x.transpose(0, 3, 1, 2)
    return np.ascontiguousarray(x), [i for i, _ in kept], rejected


def load_imagefolder(root: str | Path, *, channels: int = 1, image_size: int | None = None
                     ) -> tuple[np.ndarray, np.ndarray | None, tuple[str, ...]]:
    """A folder read directly by a run: the first bad file is an error (`data ingest` quarantines instead).

    With `image_size` images are resized to that square (the resize policy), otherwise all must share one size.
    """
    policy = ImagePolicy(channels=channels, image_size=image_size,  # type: ignore[arg-type]
                         size_policy="resize" if image_size else "reject")
    images = read_image_folder(root, policy)
    if images.rejected:
        bad = images.rejected[0]
        raise GenscaleError(f"{bad.source}: {bad.reason}"
                            + (f" ({len(images.rejected) - 1} more bad files; `genscale data ingest` quarantines "
                               "them and keeps the rest)" if len(images.rejected) > 1 else ""))
    return images.x, images.y, images.class_names


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
