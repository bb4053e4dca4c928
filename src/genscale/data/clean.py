"""Cleaning a dataset version: exact duplicates, near-duplicates, quality filters. The result is a new version.

Rules, in this order, applied to train records only (test records are never removed, so metrics keep their
reference; duplicates within test are reported):
  1. exact duplicates: same content hash. The first train record is kept; a train record equal to a test record
     is removed (it would leak the test split into training).
  2. quality filters. Images: near-blank (pixel standard deviation < `blank_std` on the 0-255 scale) and
     structureless (mean correlation of horizontally and vertically neighbouring pixels < `min_neighbour_corr`:
     natural images are smooth, random noise is not). Text: `text_quality_problem` (length, letters, control
     characters).
  3. near-duplicates. Images: 64-bit perceptual hash (pHash, as the `imagehash` library computes it) within
     `phash_distance` bits, confirmed in pixel space: mean |(a - mean a) - (b - mean b)| <= `pixel_distance`.
     The pixel check is needed on small images: among the first 10,000 Fashion-MNIST images, 18 pairs share an
     identical pHash yet differ by >= 12 in pixels (benchmarks/data_pipeline.py ingest).
     Text: MinHash/LSH (datasketch) on character 5-grams, Jaccard >= threshold.
     A train record near a test record is removed; of a train pair, the later record is removed unless its partner
     was removed already.
A clean that would leave no train record is an error (with the removals counted by reason); nothing is stored.
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
import math
from collections import Counter
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import scipy.fft
import torch
from PIL import Image

from genscale.data.sources import reason_kind
from genscale.data.store import Version, load_images, load_texts, load_version, version_folder, write_version
from genscale.errors import GenscaleError
from genscale.paths import atomic_write_bytes
from genscale.ui import progress


@dataclass(frozen=True)
class CleanSettings:
    phash_distance: int = 6  # images: max Hamming distance of 64-bit pHashes for a near-duplicate candidate
    pixel_distance: float = 6.0  # images: max mean absolute difference of mean-centred pixels (0-255) to confirm
    blank_std: float = 4.0  # images: pixel standard deviation below this is near-blank
    min_neighbour_corr: float = 0.2  # images: neighbour-pixel correlation below this is structureless noise
    text_jaccard: float = 0.8  # text: MinHash Jaccard similarity of 5-gram shingles for a near-duplicate
    min_chars: int = 20  # text: fewer non-whitespace characters is too short
    min_letter_fraction: float = 0.5  # text: fewer letters among non-whitespace characters is not prose

    def key(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)


@dataclass(frozen=True)
class Removal:
    index: int
    reason: str  # "exact duplicate", "near duplicate", "near-blank", "structureless noise", text filter reasons
    partner: int | None = None  # the kept (or test) record it duplicates
    distance: float | None = None  # pHash bits, pixel distance or Jaccard similarity
    leak: bool = False  # the partner is a test record


_PIL_PRECISION_BITS = 22  # Pillow's fixed-point resampling: 32 - 8 - 2 bits (libImaging/Resample.c)
_PHASH_CHUNK_PIXELS = 1 << 21  # pixels per chunk of images: float64 intermediates of ~16 MB stay in cache


def _lanczos(x: float) -> float:
    """Pillow's Lanczos-3 kernel: sinc(x) sinc(x / 3) on [-3, 3), with the C library's sin (math.sin)."""
    if not -3.0 <= x < 3.0:
        return 0.0
    sinc = [1.0 if v == 0.0 else math.sin(v * math.pi) / (v * math.pi) for v in (x, x / 3)]
    return sinc[0] * sinc[1]


@functools.lru_cache(maxsize=16)
def pil_lanczos_matrix(in_size: int, out_size: int) -> np.ndarray:
    """(out_size, in_size) integer weights of Pillow's 8-bit Lanczos resize along one axis, as float64.

    Pillow's precompute_coeffs + normalize_coeffs_8bpc written out: each output pixel's normalised kernel weights,
    scaled by 2^22 and rounded half away from zero, so `pil_lanczos_resize` reproduces Image.resize bit for bit.
    """
    scale = in_size / out_size
    filterscale = max(scale, 1.0)
    support = 3.0 * filterscale
    out = np.zeros((out_size, in_size), dtype=np.float64)
    for xx in range(out_size):
        center = (xx + 0.5) * scale
        lo, hi = max(int(center - support + 0.5), 0), min(int(center + support + 0.5), in_size)
        w = [_lanczos((x - center + 0.5) / filterscale) for x in range(lo, hi)]
        total = sum(w)
        w = [v / total if total != 0.0 else v for v in w]
        one = 1 << _PIL_PRECISION_BITS
        out[xx, lo:hi] = [int(-0.5 + v * one) if v < 0 else int(0.5 + v * one) for v in w]  # int(): toward zero
    return out


def _pil_round(acc: np.ndarray) -> np.ndarray:
    """Pillow's clip8, in place: (sum + 2^21) >> 22, clipped to 0..255 (a floor, as the C shift of a signed sum)."""
    acc += 1 << (_PIL_PRECISION_BITS - 1)
    acc *= 1.0 / (1 << _PIL_PRECISION_BITS)  # a power of two: exact
    np.floor(acc, out=acc)
    return np.clip(acc, 0, 255, out=acc)


def pil_lanczos_resize(gray: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Batched `Image.resize(size, LANCZOS)` of "L" images (N, H, W) uint8 -> (N, h, w) float64 holding uint8 values.

    Pillow's two passes, each skipped when that side keeps its size, in Pillow's order: horizontal first, except that
    Pillow 13 (ImagingResampleInner, python-pillow/Pillow#9549) starts with the vertical pass when the height shrinks
    by more than twice as many pixels as the width. Every product and sum is an integer below 2^53, so the float64
    matrix products are exact."""
    h, w = size
    n, in_h, in_w = gray.shape
    x = gray.astype(np.float64)

    def horizontal(x: np.ndarray) -> np.ndarray:  # (N * H, W) @ (W, w): one matrix product for the whole batch
        rows = x.shape[1]
        return _pil_round(x.reshape(n * rows, in_w) @ pil_lanczos_matrix(in_w, w).T).reshape(n, rows, w)

    def vertical(x: np.ndarray) -> np.ndarray:  # (h, H) @ (N, H, W'), broadcast over the batch
        return _pil_round(pil_lanczos_matrix(in_h, h) @ x)

    horizontal_first = not (_pil_height_first() and in_h - h > 0 and in_h - h > (in_w - w) * 2)
    for axis in ("wh" if horizontal_first else "hw"):
        if axis == "w" and w != in_w:
            x = horizontal(x)
        elif axis == "h" and h != in_h:
            x = vertical(x)
    return x


@functools.cache
def _pil_height_first() -> bool:
    """Whether the installed Pillow resizes a much-shrunk height first: asked of it once, on a 20x80 image."""
    probe = np.random.default_rng(0).integers(0, 256, (1, 80, 20), dtype=np.uint8)
    expected = np.asarray(Image.fromarray(probe[0]).resize((16, 16), Image.Resampling.LANCZOS))
    x = _pil_round(pil_lanczos_matrix(80, 16) @ probe.astype(np.float64))
    return bool((_pil_round(x @ pil_lanczos_matrix(20, 16).T)[0] == expected).all())


def pil_luma(rgb: np.ndarray) -> np.ndarray:
    """Pillow's RGB -> "L" conversion of (N, 3, H, W) uint8: (R 19595 + G 38470 + B 7471 + 2^15) >> 16
    (ITU-R 601-2 luma in 16-bit fixed point, libImaging/Convert.c)."""
    r, g, b = (rgb[:, i].astype(np.int64) for i in range(3))
    return ((r * 19595 + g * 38470 + b * 7471 + 0x8000) >> 16).astype(np.uint8)


def phash64(images: np.ndarray) -> np.ndarray:
    """pHash (Zauner 2010) of uint8 images (N, C, H, W) -> bool (N, 64), bit-identical to imagehash.phash.

    Each image is converted to grayscale ("L"), Lanczos-resized to 32x32, transformed by a 2-D DCT-II; the 8x8
    lowest frequencies are compared with their median. Batched with no per-image Pillow call: the luma conversion
    and the resize are Pillow's integer arithmetic done as matrix products over a chunk of images, then one DCT.
    """
    n = len(images)
    out = np.empty((n, 64), dtype=bool)
    chunk = max(1, _PHASH_CHUNK_PIXELS // max(1, int(np.prod(images.shape[2:]))))
    with progress(transient=True) as bar:
        task = bar.add_task("perceptual hashes", total=n)
        for start in range(0, n, chunk):
            a = np.asarray(images[start:start + chunk])
            gray = a[:, 0] if a.shape[1] == 1 else pil_luma(a)
            small = pil_lanczos_resize(gray, (32, 32))
            # the second transform only on the 8 rows kept: each row's DCT is computed alone, so the values (and the
            # ties at the median of degenerate images) are those of imagehash's full 32x32 transform
            dct = scipy.fft.dct(scipy.fft.dct(small, axis=1)[:, :8], axis=2)[:, :, :8].reshape(len(a), 64)
            out[start:start + chunk] = dct > np.median(dct, axis=1, keepdims=True)
            bar.update(task, advance=len(a))
    return out


def hamming_pairs(bits: np.ndarray, max_distance: int, block: int = 2048) -> np.ndarray:
    """All pairs (i, j, distance), i < j, of bit codes (N, B) within `max_distance` bits.

    With codes as +-1 vectors, Hamming distance = (B - s_i . s_j) / 2, so one matrix product per block of rows
    compares a block with every later code: exact, O(N^2 B) FLOPs (70,000 codes: ~15 s on 2 CPU cores).
    """
    s = torch.from_numpy(bits.astype(np.float32) * 2 - 1)
    n, width = s.shape
    out = []
    with progress(transient=True) as bar:
        task = bar.add_task("near-duplicate search", total=n)
        for i in range(0, n, block):
            sim = s[i:i + block] @ s[i:].T  # (block, n - i)
            rows, cols = torch.nonzero(sim >= width - 2 * max_distance, as_tuple=True)
            upper = cols > rows  # j > i within the strip
            rows, cols = rows[upper], cols[upper]
            dist = (width - sim[rows, cols]) / 2
            out.append(torch.stack([rows + i, cols + i, dist.round().long()], 1))
            bar.update(task, advance=min(block, n - i))
    return torch.cat(out).numpy() if out else np.zeros((0, 3), dtype=np.int64)


def centred_pixel_distance(images: np.ndarray, pairs: np.ndarray, *, max_distance: float | None = None,
                           chunk: int = 65536) -> np.ndarray:
    """Mean |(a - mean a) - (b - mean b)| over pixels for each pair (0-255 scale): blind to a brightness shift.

    With `max_distance`, pairs are first screened on 4x4 block means: the mean absolute difference of block means is
    a lower bound of the pixel one (triangle inequality), so a pair whose bound exceeds `max_distance` gets the bound
    (already too far) and only the rest are compared pixel by pixel. Exact for every pair within `max_distance`.
    """
    if len(pairs) == 0:
        return np.zeros(0)
    used = np.unique(pairs)
    full = torch.from_numpy(np.ascontiguousarray(images[used])).float()  # (U, C, H, W)
    full -= full.mean((1, 2, 3), keepdim=True)
    local = torch.from_numpy(np.searchsorted(used, pairs))  # pair indices into `used`

    def distance(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        x = x.flatten(1)
        return torch.cat([(x[idx[k:k + chunk, 0]] - x[idx[k:k + chunk, 1]]).abs().mean(1)
                          for k in range(0, len(idx), chunk)])

    h, w = full.shape[2:]
    if max_distance is None or h % 4 or w % 4:
        return distance(full, local).double().numpy()
    out = distance(torch.nn.functional.avg_pool2d(full, 4), local)  # lower bounds
    close = torch.nonzero(out <= max_distance).flatten()
    if len(close):
        out[close] = distance(full, local[close])
    return out.double().numpy()


def pixel_std(images: np.ndarray) -> np.ndarray:
    return images.reshape(len(images), -1).astype(np.float32).std(1)


def neighbour_correlation(images: np.ndarray, chunk: int = 8192) -> np.ndarray:
    """Mean Pearson correlation of horizontally and vertically adjacent pixels, per image (channels pooled)."""
    out = np.empty(len(images), dtype=np.float64)

    def corr(p: np.ndarray, q: np.ndarray) -> np.ndarray:
        p = p.reshape(len(p), -1) - p.reshape(len(p), -1).mean(1, keepdims=True)
        q = q.reshape(len(q), -1) - q.reshape(len(q), -1).mean(1, keepdims=True)
        return (p * q).sum(1) / np.sqrt((p * p).sum(1) * (q * q).sum(1) + 1e-12)

    for k in range(0, len(images), chunk):
        a = images[k:k + chunk].astype(np.float32)
        out[k:k + chunk] = (corr(a[..., :, 1:], a[..., :, :-1]) + corr(a[..., 1:, :], a[..., :-1, :])) / 2
    return out


def _exact(hashes: list[str], is_test: np.ndarray) -> list[Removal]:
    first: dict[str, int] = {}
    test_of: dict[str, int] = {}
    for i, h in enumerate(hashes):
        if is_test[i]:
            test_of.setdefault(h, i)
    removals = []
    for i, h in enumerate(hashes):
        if is_test[i]:
            continue
        if h in test_of:
            removals.append(Removal(i, "exact duplicate", test_of[h], 0.0, leak=True))
        elif h in first:
            removals.append(Removal(i, "exact duplicate", first[h], 0.0))
        else:
            first[h] = i
    return removals


def _resolve_near(pairs: list[tuple[int, int, float]], is_test: np.ndarray, removed: set[int]) -> list[Removal]:
    """Greedy keep-first over confirmed pairs (i < j): a train record near a test record, or near an earlier kept
    train record, is removed."""
    out = []
    for i, j, dist in sorted(pairs, key=lambda p: (p[1], p[0])):
        for keep, drop in ((i, j), (j, i)):
            if is_test[drop] or drop in removed:
                continue
            if is_test[keep] or (keep < drop and keep not in removed):
                removed.add(drop)
                out.append(Removal(drop, "near duplicate", keep, dist, leak=bool(is_test[keep])))
                break
    return out


def clean_image_records(images: np.ndarray, hashes: list[str], is_test: np.ndarray, settings: CleanSettings
                        ) -> tuple[list[Removal], dict[str, Any]]:
    """Removals (train records only) and statistics; see the module docstring for the rules."""
    removals = _exact(hashes, is_test)
    removed = {r.index for r in removals}
    live = np.array([i for i in range(len(images)) if i not in removed], dtype=np.int64)
    live_train = live[~is_test[live]]
    std, corr = pixel_std(images[live_train]), neighbour_correlation(images[live_train])
    for i, s, c in zip(live_train.tolist(), std.tolist(), corr.tolist(), strict=True):
        if s < settings.blank_std:
            removals.append(Removal(i, "near-blank", distance=s))
            removed.add(i)
        elif c < settings.min_neighbour_corr:
            removals.append(Removal(i, "structureless noise", distance=c))
            removed.add(i)
    live = np.array([i for i in range(len(images)) if i not in removed], dtype=np.int64)
    bits = phash64(images[live])
    cand = hamming_pairs(bits, settings.phash_distance)
    cand_global = np.stack([live[cand[:, 0]], live[cand[:, 1]]], 1) if len(cand) else np.zeros((0, 2), np.int64)
    pix = centred_pixel_distance(images, cand_global, max_distance=settings.pixel_distance)
    confirmed = [(int(i), int(j), float(d)) for (i, j), d in zip(cand_global, pix, strict=True)
                 if d <= settings.pixel_distance]
    within_test = sum(bool(is_test[i] and is_test[j]) for i, j, _ in confirmed)
    removals += _resolve_near(confirmed, is_test, removed)
    stats = {"phash_candidates": len(cand), "near_pairs_confirmed": len(confirmed),
             "near_pairs_within_test": within_test}
    return removals, stats


def clean_text_records(texts: list[str], hashes: list[str], is_test: np.ndarray, settings: CleanSettings
                       ) -> tuple[list[Removal], dict[str, Any]]:
    from genscale.data.text import near_duplicate_texts, text_quality_problem

    removals = _exact(hashes, is_test)
    removed = {r.index for r in removals}
    for i, t in enumerate(texts):
        if i in removed or is_test[i]:
            continue
        problem = text_quality_problem(t, min_chars=settings.min_chars,
                                       min_letter_fraction=settings.min_letter_fraction)
        if problem:
            removals.append(Removal(i, problem))
            removed.add(i)
    live = [i for i in range(len(texts)) if i not in removed]
    pairs = near_duplicate_texts([texts[i] for i in live], threshold=settings.text_jaccard)
    confirmed = [(live[a], live[b], s) for a, b, s in pairs]
    removals += _resolve_near(confirmed, is_test, removed)
    return removals, {"near_pairs_confirmed": len(confirmed),
                      "near_pairs_within_test": sum(bool(is_test[i] and is_test[j]) for i, j, _ in confirmed)}


def _pairs_grid(images: np.ndarray, removals: list[Removal], k: int = 12) -> bytes:
    """PNG: one row per example pair, the removed image on the left, the one it duplicates on the right."""
    pairs = [r for r in removals if r.partner is not None][:k]
    if not pairs:
        return b""
    c, h, w = images.shape[1:]
    grid = np.full((len(pairs) * (h + 2) + 2, 2 * w + 6, c), 255, dtype=np.uint8)
    for row, r in enumerate(pairs):
        top = 2 + row * (h + 2)
        grid[top:top + h, 2:2 + w] = images[r.index].transpose(1, 2, 0)
        grid[top:top + h, 4 + w:4 + 2 * w] = images[r.partner].transpose(1, 2, 0)
    buf = io.BytesIO()
    Image.fromarray(grid[..., 0] if c == 1 else grid).resize((grid.shape[1] * 3, grid.shape[0] * 3),
                                                            Image.Resampling.NEAREST).save(buf, "PNG")
    return buf.getvalue()


def clean_version(version: Version, settings: CleanSettings = CleanSettings()) -> tuple[Version, dict[str, Any]]:
    """Apply the cleaning rules to a version; returns the cleaned version (stored) and the report."""
    # reports live with the input (a cleaned version's content, hence its id, can come from several inputs)
    tag = hashlib.sha256(settings.key().encode()).hexdigest()[:8]
    report_path = version_folder(version.id) / f"clean-{tag}.json"
    if report_path.exists():  # cleaned before with these settings: the report names the output
        report = json.loads(report_path.read_text())
        return load_version(report["output"]), report
    is_test = version.split_mask("test")
    hashes = [r.sha256 for r in version.records]
    images = texts = None
    if version.kind == "image":
        images = np.asarray(load_images(version))
        removals, stats = clean_image_records(images, hashes, is_test, settings)
    else:
        texts = load_texts(version)
        removals, stats = clean_text_records(texts, hashes, is_test, settings)
    removals.sort(key=lambda r: r.index)
    drop = {r.index for r in removals}
    keep = [i for i in range(len(version.records)) if i not in drop]
    counts = dict(Counter(reason_kind(r.reason) + (" (train near test: leakage)" if r.leak else "") for r in removals))
    if all(is_test[i] for i in keep):  # checked before anything is stored: no empty version, no report
        options = ("--min-chars, --min-letter-fraction, --text-jaccard" if version.kind == "text" else
                   "--blank-std, --min-neighbour-corr, --phash-distance, --pixel-distance")
        raise GenscaleError(f"dataset {version.id}: cleaning leaves 0 of its {int((~is_test).sum())} train records "
                            f"(removed: {', '.join(f'{k} {v}' for k, v in counts.items()) or 'nothing'}); nothing "
                            f"stored. Loosen the settings ({options}) or check the data")
    src = version.records
    report = {
        "input": version.id, "settings": asdict(settings), "records_in": len(src), "records_out": len(keep),
        "removed": len(removals), "removed_by_reason": counts, **stats,
        "examples": [{"removed": src[r.index].source, "reason": r.reason, "distance": r.distance,
                      "duplicate_of": None if r.partner is None else src[r.partner].source}
                     for r in _examples(removals)],
        "removals": [{"index": r.index, "source": src[r.index].source, "reason": r.reason, "distance": r.distance,
                      "duplicate_of": None if r.partner is None else src[r.partner].source, "leak": r.leak}
                     for r in removals]}
    cleaned = write_version(
        kind=version.kind, records=[src[i] for i in keep],
        images=None if images is None else np.ascontiguousarray(images[keep]),
        texts=None if texts is None else [texts[i] for i in keep], classes=tuple(version.meta["classes"]),
        parent=version.id, operation={"clean": asdict(settings)}, eval_basis=version.meta["eval_basis"])
    report = {"output": cleaned.id, "report": str(report_path), **report}
    if images is not None and (grid := _pairs_grid(images, _examples(removals))):
        atomic_write_bytes(report_path.with_suffix(".png"), grid)
        report["example_pairs"] = str(report_path.with_suffix(".png"))
    atomic_write_bytes(report_path, json.dumps(report, indent=1, ensure_ascii=False).encode())  # last: the cache
    return cleaned, report


def _examples(removals: list[Removal], per_reason: int = 4) -> list[Removal]:
    """A few removals of each reason, pairs first, for the report."""
    seen: dict[str, int] = {}
    out = []
    for r in sorted(removals, key=lambda r: r.partner is None):
        key = reason_kind(r.reason) + str(r.leak)
        if seen.get(key, 0) < per_reason:
            seen[key] = seen.get(key, 0) + 1
            out.append(r)
    return out
