"""The dataset store end to end: ingest with a quarantine, the image conversion rules, content-addressed versions,
cleaning (against brute-force references and planted duplicates), corruption, the `dataset` source and the
`genscale data` commands. Every image is a real Fashion-MNIST garment or is crafted here, byte by byte."""

import hashlib
import io
import json
import shutil
import struct
import zlib

import imagehash
import numpy as np
import pytest
import torch
from PIL import Image, ImageFile
from typer.testing import CliRunner

from conftest import tree_hashes
from genscale.cli import app
from genscale.config import DataConfig
from genscale.data.builtin import load_fashion_mnist
from genscale.data.clean import (
    CleanSettings,
    centred_pixel_distance,
    clean_version,
    hamming_pairs,
    phash64,
    pixel_std,
)
from genscale.data.corrupt import corrupt_version, near_copy
from genscale.data.datasets import load_image_data
from genscale.data.ingest import IngestOptions, ingest
from genscale.data.sources import ImagePolicy, image_array, read_image_folder, reason_kind
from genscale.data.store import list_names, load_images, load_texts, load_version, set_name, version_folder
from genscale.data.tokens import load_text_data
from genscale.errors import GenscaleError
from genscale.paths import data_dir

CAP = 89_478_485  # ImagePolicy's default max_pixels (Pillow's MAX_IMAGE_PIXELS)
FAR = 12.0  # ground truth: "distinct" images are further apart than this (twice the cleaner's pixel_distance)


# ---------------------------------------------------------------- helpers


@pytest.fixture(scope="module")
def fmnist():
    return load_fashion_mnist()


def centred_l1(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Reference: mean |(a - mean a) - (b - mean b)| of each pair of rows, in float64."""
    a = a.reshape(len(a), -1).astype(np.float64)
    b = b.reshape(len(b), -1).astype(np.float64)
    return np.abs((a - a.mean(1, keepdims=True)) - (b - b.mean(1, keepdims=True))).mean(1)


def far_apart(x: np.ndarray, bound: float) -> np.ndarray:
    """Indices of x (N, 28, 28), kept greedily in order, whose centred pixel distance to every earlier kept image is
    > bound, checked over all pairs. A pair is skipped unread only when the mean |difference| of its 4x4 block means
    (a lower bound of the pixel one, since |mean v| <= mean |v| per block) already exceeds the bound."""
    f = torch.from_numpy(x.reshape(len(x), -1).astype(np.float64))
    f -= f.mean(1, keepdim=True)
    blocks = f.view(-1, 7, 4, 7, 4).mean((2, 4)).flatten(1)
    close = torch.nonzero(torch.triu(torch.cdist(blocks, blocks, p=1) / 49 <= bound, diagonal=1))
    exact = (f[close[:, 0]] - f[close[:, 1]]).abs().mean(1)
    keep = np.ones(len(x), dtype=bool)
    for (i, j), d in zip(close.tolist(), exact.tolist(), strict=True):
        if d <= bound and keep[i]:
            keep[j] = False
    return np.flatnonzero(keep)


@pytest.fixture(scope="module")
def pool(fmnist):
    """2,000 train and 200 test Fashion-MNIST images, every pair of the 2,200 further apart than FAR."""
    x, y = fmnist["x_train"][:2600], fmnist["y_train"][:2600].astype(np.int64)
    kept = far_apart(x, FAR)
    assert len(kept) >= 2200
    tr, te = kept[:2000], kept[2000:2200]
    return {"x_train": x[tr], "y_train": y[tr], "x_test": x[te], "y_test": y[te]}


def png_bytes(img: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, "PNG")
    return buf.getvalue()


def png_header_only(width: int, height: int) -> bytes:
    """A valid PNG signature, IHDR (8-bit grayscale) and IEND, no pixel data: claims width x height pixels."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)) + \
        chunk(b"IEND", b"")


def write_classes(root, x: np.ndarray, y: np.ndarray, names=("shirt", "shoe")) -> list:
    """PNG files root/<class name>/NN.png; returns their paths in sorted order."""
    paths = []
    for i, (img, label) in enumerate(zip(x, y, strict=True)):
        path = root / names[label] / f"{i:02d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(png_bytes(img))
        paths.append(path)
    return sorted(paths)


def save_npz(path, x: np.ndarray, y: np.ndarray) -> str:
    np.savez(path, x=x, y=y)
    return str(path)


def quarantine(vid: str) -> list[tuple[str, str]]:
    lines = (version_folder(vid) / "quarantine.jsonl").read_text().splitlines()
    return [(r["source"], r["reason"]) for r in map(json.loads, lines)]


def removals(report: dict) -> dict[int, tuple[str, bool]]:
    return {r["index"]: (r["reason"], r["leak"]) for r in report["removals"]}


def small_version(tmp_path, pool):
    """"small": 300 distinct train images, then 50 distinct test images, from .npz files."""
    train = save_npz(tmp_path / "small-train.npz", pool["x_train"][:300], pool["y_train"][:300])
    test = save_npz(tmp_path / "small-test.npz", pool["x_test"][:50], pool["y_test"][:50])
    version, rejected = ingest(train, "small", IngestOptions(test=test))
    assert rejected == [] and version.meta["splits"] == {"train": 300, "test": 50}
    return version


# ---------------------------------------------------------------- 1. quarantine


def test_each_bad_file_is_quarantined_with_its_reason_and_the_good_ones_ingested(tmp_path, pool, monkeypatch):
    root = tmp_path / "imgs"
    x, y = pool["x_train"][:20], np.repeat([0, 1], 10)
    good = write_classes(root, x, y)
    whole = png_bytes(pool["x_train"][20])
    bad = {
        root / "shirt" / "empty.png": b"",
        root / "shirt" / "truncated.png": whole[:len(whole) // 2],
        root / "shoe" / "bomb.png": png_header_only(12000, 12000),
        root / "shoe" / "noise.jpg": np.random.default_rng(0).integers(0, 256, 600, dtype=np.uint8).tobytes(),
        root / "shoe" / "wide.png": png_bytes(np.full((30, 40), 90, dtype=np.uint8)),
    }
    for path, data in bad.items():
        path.write_bytes(data)
    before = tree_hashes(root)
    decoded = []  # sizes of the images Pillow decoded
    original_load = ImageFile.ImageFile.load

    def recording_load(im):
        decoded.append(im.size)
        return original_load(im)

    monkeypatch.setattr(ImageFile.ImageFile, "load", recording_load)

    version, rejected = ingest(str(root), "fm", IngestOptions())

    expected = [
        (str(root / "shirt" / "empty.png"), "empty file (0 bytes)"),
        (str(root / "shirt" / "truncated.png"), "cannot decode image (image file is truncated)"),
        (str(root / "shoe" / "bomb.png"), f"decompression bomb: 12000x12000 = 144,000,000 pixels exceeds "
                                          f"max_pixels {CAP:,}"),
        (str(root / "shoe" / "noise.jpg"), f"cannot decode image (cannot identify image file "
                                           f"'{root / 'shoe' / 'noise.jpg'}')"),
        (str(root / "shoe" / "wide.png"), "wrong size: 40x30, not the target 28x28 (size policy reject; set "
                                          "image_size or use the resize policy)"),
    ]
    assert [(r.source, r.reason) for r in rejected] == expected
    assert quarantine(version.id) == expected
    assert (12000, 12000) not in decoded and max(w * h for w, h in decoded) == 40 * 30  # the bomb was never decoded
    ingest_op = version.meta["operation"]["ingest"]
    counts = ingest_op["quarantined_by_reason"]  # the bomb's key: see test_reason_kind_keeps_the_whole_reason_name
    assert ingest_op["quarantined"] == sum(counts.values()) == 5
    assert (counts["empty file"], counts["cannot decode image"], counts["wrong size"]) == (1, 2, 1)
    assert [r.source for r in version.records] == [str(p) for p in good]
    assert [r.label for r in version.records] == y.tolist() and version.meta["classes"] == ["shirt", "shoe"]
    np.testing.assert_array_equal(load_images(version)[:, 0], x)
    assert version.meta["splits"] == {"train": 18, "test": 2}
    assert tree_hashes(root) == before  # the source folder is only read


def test_one_bad_file_in_a_hundred_costs_one_record(tmp_path, pool):
    root = tmp_path / "flat"
    root.mkdir()
    for i, img in enumerate(pool["x_train"][:100]):
        (root / f"{i:03d}.png").write_bytes(png_bytes(img))
    victim = root / "042.png"
    victim.write_bytes(victim.read_bytes()[:30])
    version, rejected = ingest(str(root), "one-percent")
    assert [(r.source, reason_kind(r.reason)) for r in rejected] == [(str(victim), "cannot decode image")]
    assert len(version.records) == 99 and version.meta["splits"] == {"train": 89, "test": 10}
    assert str(victim) not in {r.source for r in version.records}
    assert version.labels() is None  # no class sub-folders


def test_a_bomb_beyond_pillows_own_limit_is_refused_by_our_cap(tmp_path, pool):
    """The cap decides, with its own reason, for any size, also above Pillow's own hard limit (2 x
    Image.MAX_IMAGE_PIXELS = 178,956,970 pixels), which Image.open would otherwise raise before the size is read."""
    root = tmp_path / "imgs"
    root.mkdir()
    (root / "a.png").write_bytes(png_bytes(pool["x_train"][0]))
    (root / "bomb.png").write_bytes(png_header_only(40000, 40000))
    folder = read_image_folder(root, ImagePolicy())
    assert len(folder.x) == 1 and [r.source for r in folder.rejected] == [str(root / "bomb.png")]
    reason = folder.rejected[0].reason
    assert "decompression bomb" in reason
    assert reason == f"decompression bomb: 40000x40000 = 1,600,000,000 pixels exceeds max_pixels {CAP:,}", reason


@pytest.mark.parametrize("reason,kind", [
    ("empty file (0 bytes)", "empty file"),
    ("cannot decode image (image file is truncated)", "cannot decode image"),
    ("wrong size: 40x30, not the target 28x28 (size policy reject; set image_size or use the resize policy)",
     "wrong size"),
    ("invalid JSON (Expecting value at column 1)", "invalid JSON"),
    (f"decompression bomb: 12000x12000 = 144,000,000 pixels exceeds max_pixels {CAP:,}", "decompression bomb"),
    ("not UTF-8 (invalid byte 0xff at offset 10)", "not UTF-8"),
])
def test_reason_kind_keeps_the_whole_reason_name(reason, kind):
    assert reason_kind(reason) == kind


# ---------------------------------------------------------------- 2. conversion rules


def test_transparency_is_composited_onto_black_then_luma(tmp_path):
    rng = np.random.default_rng(1)
    rgba = rng.integers(0, 256, (28, 28, 4), dtype=np.uint8)
    rgba[0, 0] = (200, 100, 50, 128)
    root = tmp_path / "alpha"
    root.mkdir()
    (root / "a.png").write_bytes(png_bytes(rgba))
    assert Image.open(root / "a.png").mode == "RGBA"
    # round(c * alpha / 255): never a tie, since 255 is odd
    composited = np.floor(rgba[..., :3] * (rgba[..., 3:] / 255) + 0.5).astype(np.uint8)
    assert composited[0, 0].tolist() == [100, 50, 25]
    luma = np.asarray(Image.fromarray(composited, "RGB").convert("L"))
    assert luma[0, 0] == 62  # (100 * 299 + 50 * 587 + 25 * 114) / 1000 = 62.1
    gray = read_image_folder(root, ImagePolicy(channels=1))
    rgb = read_image_folder(root, ImagePolicy(channels=3))
    np.testing.assert_array_equal(gray.x[0, 0], luma)
    np.testing.assert_array_equal(rgb.x[0].transpose(1, 2, 0), composited)
    la = Image.fromarray(np.stack([rgba[..., 0], rgba[..., 3]], -1), "LA")
    np.testing.assert_array_equal(image_array(la, 1), composited[..., 0])  # gray * alpha, the same rounding


def test_sixteen_bit_grayscale_is_scaled_to_eight_bits(tmp_path):
    k = np.arange(256, dtype=np.uint32).reshape(16, 16)
    deep = (257 * k).astype(np.uint16)  # 257 * k -> k exactly
    deep[0, 1], deep[0, 2] = 1000, 65535
    root = tmp_path / "deep"
    root.mkdir()
    (root / "d.png").write_bytes(png_bytes(deep))
    assert Image.open(root / "d.png").mode == "I;16"
    got = read_image_folder(root).x[0, 0]
    expected = k.astype(np.uint8)
    expected[0, 1], expected[0, 2] = round(1000 * 255 / 65535), 255  # 3.89 -> 4
    np.testing.assert_array_equal(got, expected)


def test_palette_bmp_and_webp_files_are_read(tmp_path, pool):
    root = tmp_path / "formats"
    root.mkdir()
    img = pool["x_train"][3]
    palette = Image.new("P", (28, 28))
    colours = np.random.default_rng(2).integers(0, 256, (256, 3), dtype=np.uint8)
    palette.putpalette(colours.ravel().tolist())
    palette.putdata(img.ravel().tolist())
    palette.save(root / "a_palette.png")
    Image.fromarray(img).save(root / "b_image.bmp")
    Image.fromarray(img).save(root / "c_image.webp", lossless=True)
    folder = read_image_folder(root)
    assert folder.rejected == [] and [p.rsplit("/", 1)[1] for p in folder.sources] == \
        ["a_palette.png", "b_image.bmp", "c_image.webp"]
    via_rgb = np.asarray(Image.fromarray(colours[img], "RGB").convert("L"))  # each pixel's palette colour, luma
    np.testing.assert_array_equal(folder.x[0, 0], via_rgb)
    np.testing.assert_array_equal(folder.x[1, 0], img)
    np.testing.assert_array_equal(folder.x[2, 0], img)


def test_resize_policy_centre_crops_then_resizes(tmp_path, pool):
    root = tmp_path / "mixed"
    root.mkdir()
    for i in range(3):
        (root / f"{i}.png").write_bytes(png_bytes(pool["x_train"][i]))
    wide = np.random.default_rng(3).integers(0, 256, (30, 40), dtype=np.uint8)  # 40 wide, 30 high
    (root / "wide.png").write_bytes(png_bytes(wide))
    rejecting = read_image_folder(root)
    assert [r.source for r in rejecting.rejected] == [str(root / "wide.png")] and len(rejecting.x) == 3
    resized = read_image_folder(root, ImagePolicy(image_size=28, size_policy="resize"))
    assert resized.rejected == [] and resized.x.shape == (4, 1, 28, 28)
    expected = np.asarray(Image.fromarray(wide[:, 5:35]).resize((28, 28), Image.Resampling.LANCZOS))
    np.testing.assert_array_equal(resized.x[3, 0], expected)
    np.testing.assert_array_equal(resized.x[:3, 0], pool["x_train"][:3])  # already the target: untouched


# ---------------------------------------------------------------- 3. versions, manifest, shards


def test_same_content_same_id_and_the_manifest_matches_the_stored_pixels(tmp_path, pool):
    root = tmp_path / "imgs"
    x, y = pool["x_train"][:24], np.array([0, 1] * 12)
    files = write_classes(root, x, y)
    a, _ = ingest(str(root), "a")
    b, _ = ingest(str(root), "b")
    copy = tmp_path / "elsewhere" / "imgs"
    shutil.copytree(root, copy)
    c, _ = ingest(str(copy), "c")
    assert a.id == b.id == c.id and list_names() == {"a": a.id, "b": a.id, "c": a.id}
    changed = copy / "shoe" / "01.png"
    pixels = np.asarray(Image.open(changed)).copy()
    pixels[14, 14] ^= 1
    changed.write_bytes(png_bytes(pixels))
    d, _ = ingest(str(copy), "d")
    assert d.id != a.id and list_names()["d"] == d.id
    e, _ = ingest(str(root), "e", IngestOptions(test_fraction=0.25))  # same records, another test split
    assert e.id not in (a.id, d.id) and e.meta["splits"] == {"train": 18, "test": 6}

    lines = [json.loads(line) for line in (version_folder(a.id) / "manifest.jsonl").read_text().splitlines()]
    stored = np.asarray(load_images(a))
    assert len(lines) == len(files) == len(stored) == 24
    for line, path, img in zip(lines, files, stored, strict=True):
        assert set(line) == {"source", "sha256", "bytes", "label", "split"}
        assert line["source"] == str(path) and line["bytes"] == path.stat().st_size
        assert line["sha256"] == hashlib.sha256(img.tobytes()).hexdigest()
        assert line["label"] == ["shirt", "shoe"].index(path.parent.name)
    np.testing.assert_array_equal(stored[:, 0], x[[int(p.stem) for p in files]])  # sorted path order
    assert [line["split"] for line in lines].count("test") == round(24 * 0.1) == a.meta["splits"]["test"]

    shards = sorted((data_dir() / "objects").iterdir())
    assert {p.name for p in shards} >= set(a.meta["shards"]) | set(d.meta["shards"])
    for shard in shards:
        assert shard.name == hashlib.sha256(shard.read_bytes()).hexdigest() + shard.suffix
    assert len(shards) == 2  # a, b, c and e store the same pixels: one shard; d has its own


def test_quarantine_report_belongs_to_the_ingest_that_made_it(tmp_path, pool):
    """The CLI points at <version>/quarantine.jsonl as the list of what this ingest refused: a second ingest of the
    same good content (same version id) with other bad files rewrites it."""
    first = tmp_path / "first"
    write_classes(first, pool["x_train"][:6], np.array([0, 1] * 3))
    (first / "shirt" / "bad_first.png").write_bytes(b"")
    second = tmp_path / "second"
    shutil.copytree(first, second)
    (second / "shirt" / "bad_first.png").unlink()
    (second / "shoe" / "bad_second.jpg").write_bytes(b"not a jpeg")
    v1, rejected1 = ingest(str(first), "first")
    v2, rejected2 = ingest(str(second), "second")
    assert v1.id == v2.id
    assert [r.source for r in rejected2] == [str(second / "shoe" / "bad_second.jpg")]
    assert quarantine(v2.id) == [(r.source, r.reason) for r in rejected2], \
        f"quarantine.jsonl still lists the first ingest's files: {quarantine(v2.id)}"


# ---------------------------------------------------------------- 4. hashing and distances against references


def test_phash64_is_bit_identical_to_imagehash(pool):
    gray = pool["x_train"][:50]
    expected = np.stack([imagehash.phash(Image.fromarray(img)).hash.ravel() for img in gray])
    np.testing.assert_array_equal(phash64(gray[:, None]), expected)
    rgb = np.stack([pool["x_train"][50:60], pool["x_train"][60:70], pool["x_train"][70:80]], 1)  # (10, 3, 28, 28)
    expected_rgb = np.stack([imagehash.phash(Image.fromarray(img.transpose(1, 2, 0))).hash.ravel() for img in rgb])
    np.testing.assert_array_equal(phash64(rgb), expected_rgb)


@pytest.mark.parametrize("shape", [(28, 28), (32, 32), (17, 90), (120, 64)])
def test_phash64_matches_imagehash_at_other_sizes_and_on_flat_images(pool, shape):
    """The batched Lanczos resize is Pillow's integer arithmetic: up- and down-scaling, non-square, and the
    already-32x32 case (no resize) hash as imagehash does; flat and striped images (median ties) too."""
    h, w = shape
    real = np.stack([np.asarray(Image.fromarray(img).resize((w, h), Image.Resampling.BILINEAR))
                     for img in pool["x_train"][:12]])
    flat = np.stack([np.full((h, w), v, np.uint8) for v in (0, 7, 255)]
                    + [np.tile((np.arange(w) * 9 % 256).astype(np.uint8), (h, 1))])
    gray = np.concatenate([real, flat])
    expected = np.stack([imagehash.phash(Image.fromarray(img)).hash.ravel() for img in gray])
    np.testing.assert_array_equal(phash64(gray[:, None]), expected)


@pytest.mark.parametrize("max_distance", [0, 6, 24])
@pytest.mark.parametrize("block", [2048, 37])
def test_hamming_pairs_equal_brute_force(max_distance, block):
    rng = np.random.default_rng(4)
    bits = rng.random((300, 64)) < 0.5
    for k, i in enumerate(range(200, 300)):  # planted near codes: a copy of code i - 200 with k % 9 bits flipped
        bits[i] = bits[i - 200]
        bits[i, rng.choice(64, k % 9, replace=False)] ^= True
    distance = (bits[:, None, :] != bits[None, :, :]).sum(-1)
    i, j = np.nonzero(np.triu(distance <= max_distance, k=1))
    expected = np.stack([i, j, distance[i, j]], 1)
    got = hamming_pairs(bits, max_distance, block=block)
    got = got[np.lexsort((got[:, 1], got[:, 0]))]
    assert len(expected) >= {0: 12, 6: 70, 24: 200}[max_distance]
    np.testing.assert_array_equal(got, expected)


def test_centred_pixel_distance_exact_within_the_bound_and_a_lower_bound_beyond(pool):
    rng = np.random.default_rng(5)
    base = pool["x_train"][:60, None]
    near = np.stack([near_copy(img, rng) for img in base[:20]])
    brighter = np.clip(base[:5].astype(np.int16) + 10, 0, 255).astype(np.uint8)
    images = np.concatenate([base, near, brighter])  # (85, 1, 28, 28)
    i, j = np.triu_indices(len(images), k=1)
    pairs = np.stack([i, j], 1)
    reference = centred_l1(images[i], images[j])
    np.testing.assert_allclose(centred_pixel_distance(images, pairs, chunk=999), reference, rtol=1e-5, atol=1e-4)
    bound = 6.0
    got = centred_pixel_distance(images, pairs, max_distance=bound, chunk=999)
    within = reference <= bound
    assert 20 <= within.sum() < len(pairs) // 10
    np.testing.assert_allclose(got[within], reference[within], rtol=1e-5, atol=1e-4)
    assert np.all(got[~within] > bound) and np.all(got[~within] <= reference[~within] + 1e-4)
    assert np.any(got[~within] < reference[~within] - 1)  # the screen answered some pairs with its bound
    odd = np.ascontiguousarray(np.pad(images, ((0, 0), (0, 0), (1, 1), (1, 1))))  # 30x30: no screen, all exact
    np.testing.assert_allclose(centred_pixel_distance(odd, pairs, max_distance=bound), centred_l1(odd[i], odd[j]),
                               rtol=1e-5, atol=1e-4)


# ---------------------------------------------------------------- 5. cleaning finds exactly what was planted


def test_clean_removes_exactly_the_planted_records_and_the_leaked_ones(tmp_path, pool):
    rng = np.random.default_rng(6)
    x, y = pool["x_train"], pool["y_train"]
    picks = rng.choice(len(x), 105, replace=False)
    exact_src, near_src, leak_src = picks[:50], picks[50:100], picks[100:]
    near = np.stack([near_copy(x[i][None], rng)[0] for i in near_src])
    blank = np.stack([np.full((28, 28), 20 * k, np.uint8) + rng.integers(0, 3, (28, 28), dtype=np.uint8)
                      for k in range(10)])
    noise = rng.integers(0, 256, (10, 28, 28), dtype=np.uint8)
    train_x = np.concatenate([x, x[exact_src], near, blank, noise])  # 2,000 + 50 + 50 + 10 + 10
    train_y = np.concatenate([y, y[exact_src], y[near_src], np.arange(10), np.arange(10)])
    test_x = np.concatenate([pool["x_test"], x[leak_src]])  # 200 + 5 copies of train images
    test_y = np.concatenate([pool["y_test"], y[leak_src]])
    train = save_npz(tmp_path / "train.npz", train_x, train_y)
    test = save_npz(tmp_path / "test.npz", test_x, test_y)
    version, rejected = ingest(train, "planted", IngestOptions(test=test))
    assert rejected == [] and version.meta["splits"] == {"train": 2120, "test": 205}

    cleaned, report = clean_version(version)

    expected = {**{2000 + k: ("exact duplicate", False) for k in range(50)},
                **{2050 + k: ("near duplicate", False) for k in range(50)},
                **{2100 + k: ("near-blank", False) for k in range(10)},
                **{2110 + k: ("structureless noise", False) for k in range(10)},
                **{int(i): ("exact duplicate", True) for i in leak_src}}
    assert removals(report) == expected
    partner = {r["index"]: r["duplicate_of"] for r in report["removals"]}
    sources = [r.source for r in version.records]
    assert [partner[2000 + k] for k in range(50)] == [sources[i] for i in exact_src]
    assert [partner[2050 + k] for k in range(50)] == [sources[i] for i in near_src]
    assert [partner[int(i)] for i in leak_src] == [sources[2320 + k] for k in range(5)]
    assert report["removed_by_reason"] == {"exact duplicate": 50, "near duplicate": 50, "near-blank": 10,
                                           "structureless noise": 10,
                                           "exact duplicate (train near test: leakage)": 5}
    assert report["records_in"] == 2325 and report["records_out"] == 2200 and report["near_pairs_within_test"] == 0

    keep = [i for i in range(2325) if i not in expected]
    assert cleaned.records == [version.records[i] for i in keep]
    assert cleaned.meta["splits"] == {"train": 2000 - 5, "test": 205}  # test records are never removed
    np.testing.assert_array_equal(load_images(cleaned), load_images(version)[keep])
    assert cleaned.meta["eval_basis"] == version.meta["eval_basis"] == version.id
    assert cleaned.meta["parent"] == version.id
    again, report_again = clean_version(version)  # cached by settings
    assert again.id == cleaned.id and report_again == report


def test_stricter_settings_are_cached_separately(tmp_path, pool):
    x = pool["x_train"][:40]
    train = save_npz(tmp_path / "t.npz", np.concatenate([x, x[:3]]), np.zeros(43, np.int64))
    test = save_npz(tmp_path / "s.npz", pool["x_test"][:5], np.zeros(5, np.int64))
    version, _ = ingest(train, "dups", IngestOptions(test=test))
    default, report = clean_version(version)
    assert report["removed"] == 3 and default.meta["splits"]["train"] == 40
    stds = np.sort(pixel_std(x))
    stricter, report = clean_version(version, CleanSettings(blank_std=float(stds[10] + stds[11]) / 2))
    assert report["removed_by_reason"] == {"exact duplicate": 3, "near-blank": 11}  # the 11 flattest images
    assert stricter.meta["splits"] == {"train": 29, "test": 5}
    with pytest.raises(GenscaleError) as e:  # every train image is "blank": nothing to train on, nothing stored
        clean_version(version, CleanSettings(blank_std=1000.0))
    assert str(e.value) == (f"dataset {version.id}: cleaning leaves 0 of its 43 train records (removed: near-blank "
                            "40, exact duplicate 3); nothing stored. Loosen the settings (--blank-std, "
                            "--min-neighbour-corr, --phash-distance, --pixel-distance) or check the data")
    assert clean_version(version)[0].id == default.id


# ---------------------------------------------------------------- 6. corruption


def test_corrupt_adds_what_it_says_and_keeps_the_test_split(tmp_path, pool):
    version = small_version(tmp_path, pool)
    dirty = corrupt_version(version, duplicates=0.2, noise=0.1, label_noise=0.1, seed=3)
    op = dirty.meta["operation"]["corrupt"]
    assert (op["added_duplicates"], op["added_noise"]) == (round(0.2 * 300), round(0.1 * 300)) == (60, 30)
    assert dirty.meta["splits"] == {"train": 390, "test": 50}
    assert dirty.meta["eval_basis"] == version.id and dirty.meta["parent"] == version.id
    test = [r for r in version.records if r.split == "test"]
    assert [r for r in dirty.records if r.split == "test"] == test  # same sha256, labels and order
    before, after = version.records[:300], dirty.records[:300]
    assert [(r.source, r.sha256) for r in after] == [(r.source, r.sha256) for r in before]
    moved = [b.label for a, b in zip(before, after, strict=True) if a.label != b.label]
    assert len(moved) == round(0.1 * 300) and all(0 <= new < 10 for new in moved)  # 30 picked, 30 moved
    extra = dirty.records[350:]
    assert [r.source.split(":")[1] for r in extra] == ["exact-copy-of", "near-copy-of"] * 30 + \
        [f"noise/{j}" for j in range(30)]
    by_source = {r.source: r for r in version.records}
    for r in extra[:60:2]:  # exact copies carry their original's content hash
        assert r.sha256 == by_source[r.source.split(":", 2)[2]].sha256 and r.split == "train"
    np.testing.assert_array_equal(load_images(dirty)[:350], load_images(version))
    with pytest.raises(GenscaleError, match="--noise -1: must be a fraction"):
        corrupt_version(version, noise=-1)


def test_corrupt_then_clean_recovers_the_original_train_set(tmp_path, pool):
    version = small_version(tmp_path, pool)
    train_hashes = [r.sha256 for r in version.records if r.split == "train"]
    for label_noise in (0.0, 0.1):
        dirty = corrupt_version(version, duplicates=0.2, noise=0.1, label_noise=label_noise, seed=3)
        cleaned, report = clean_version(dirty)
        seen, exact = {r.sha256 for r in version.records}, 0
        for r in dirty.records[350:410]:  # the copies: a near copy can repeat an earlier one byte for byte
            exact += r.sha256 in seen
            seen.add(r.sha256)
        assert exact >= 30
        assert report["removed_by_reason"] == {"exact duplicate": exact, "near duplicate": 60 - exact,
                                               "structureless noise": 30}
        assert [r.sha256 for r in cleaned.records if r.split == "train"] == train_hashes
        assert [r for r in cleaned.records if r.split == "test"] == [r for r in version.records if r.split == "test"]
        assert (cleaned.id == version.id) == (label_noise == 0)  # labels moved by label noise stay moved


# ---------------------------------------------------------------- 7. the `dataset` source


def test_dataset_source_splits_and_the_shared_extractor_basis(tmp_path, pool):
    version = small_version(tmp_path, pool)
    dirty = corrupt_version(version, duplicates=0.2, noise=0.1, label_noise=0.1, seed=3)
    set_name("small-corrupt", dirty.id)

    def splits(name, clean=False):
        return load_image_data(DataConfig(source="dataset", dataset=name, clean=clean, val_fraction=0.1))

    def sizes(s):
        return len(s.full_train), len(s.train), len(s.val), len(s.test)

    base = splits("small")
    assert sizes(base) == (300 - 30, 270, round(300 * 0.1), 50)
    assert base.version == version.id and base.extractor_basis[0] == version.id and base.num_classes == 10
    np.testing.assert_array_equal(base.test.x.numpy(), load_images(version)[300:])
    assert sorted(base.full_train.y.tolist() + base.val.y.tolist()) == sorted(pool["y_train"][:300].tolist())

    corrupted = splits("small-corrupt")
    assert sizes(corrupted) == (390 - 39, 351, 39, 50) and corrupted.version == dirty.id
    basis, basis_train = corrupted.extractor_basis
    assert basis == version.id
    np.testing.assert_array_equal(basis_train.x.numpy(), base.full_train.x.numpy())

    cleaned = splits("small-corrupt", clean=True)
    cleaned_version, report = clean_version(dirty)  # the cached result load_image_data used
    assert cleaned.version == cleaned_version.id not in (dirty.id, version.id)
    assert report["removed"] == 90 and sizes(cleaned) == (300 - 30, 270, 30, 50)
    assert cleaned.extractor_basis[0] == version.id
    np.testing.assert_array_equal(cleaned.extractor_basis[1].x.numpy(), base.full_train.x.numpy())
    np.testing.assert_array_equal(cleaned.test.x.numpy(), base.test.x.numpy())
    assert splits("small", clean=True).version == version.id  # nothing to remove: the same version


# ---------------------------------------------------------------- 8. text


def prose(seed: int, n_words: int = 60) -> str:
    """A paragraph of random words: no two seeds share more than a few 5-gram shingles."""
    rng = np.random.default_rng(seed)
    letters = np.array(list("abcdefghijklmnopqrstuvwxyz"))
    return " ".join("".join(rng.choice(letters, rng.integers(3, 9))) for _ in range(n_words)).capitalize() + "."


def test_text_ingest_quarantines_bad_files_and_clean_removes_duplicates_and_short_docs(tmp_path):
    sources = tmp_path / "sources"
    docs, held = sources / "docs", sources / "held"
    docs.mkdir(parents=True)
    held.mkdir()
    first = prose(1)
    words = first.split()
    edited = " ".join(words[:30] + ["zzzzzz"] + words[31:])
    files = {
        "a_first.txt": first.encode(),
        "b_notes.jsonl": "".join(json.dumps({"text": prose(s)}) + "\n" for s in (2, 3, 4)).encode(),
        "c_bad.txt": prose(5).encode()[:10] + b"\xff" + prose(5).encode()[10:],
        "d_empty.txt": b"",
        "e_copy.txt": first.encode(),
        "f_edit.txt": edited.encode(),
        "g_short.txt": b"Too short.",
        "h_more.md": prose(6).encode(),
    }
    for name, data in files.items():
        (docs / name).write_bytes(data)
    (held / "t1.txt").write_text(prose(7))
    (held / "t2.txt").write_text(prose(8))
    before = tree_hashes(sources)

    version, rejected = ingest(str(docs), "notes", IngestOptions(test=str(held)))
    expected = [(str(docs / "c_bad.txt"), "not UTF-8 (invalid byte 0xff at offset 10)"),
                (str(docs / "d_empty.txt"), "empty file (0 bytes)")]
    assert [(r.source, r.reason) for r in rejected] == expected and quarantine(version.id) == expected
    assert version.kind == "text" and version.meta["splits"] == {"train": 8, "test": 2}
    notes = str(docs / "b_notes.jsonl")
    assert [r.source for r in version.records] == [str(docs / "a_first.txt"), f"{notes}:1", f"{notes}:2",
                                                   f"{notes}:3", str(docs / "e_copy.txt"), str(docs / "f_edit.txt"),
                                                   str(docs / "g_short.txt"), str(docs / "h_more.md"),
                                                   str(held / "t1.txt"), str(held / "t2.txt")]
    assert all(r.sha256 == hashlib.sha256(t.encode()).hexdigest()
               for r, t in zip(version.records, load_texts(version), strict=True))

    cleaned, report = clean_version(version)
    assert removals(report) == {4: ("exact duplicate", False), 5: ("near duplicate", False),
                                6: ("too short: 9 characters < 20", False)}
    assert load_texts(cleaned) == [first, prose(2), prose(3), prose(4), prose(6), prose(7), prose(8)]
    assert cleaned.meta["splits"] == {"train": 5, "test": 2}
    assert tree_hashes(sources) == before


# ---------------------------------------------------------------- 9. the `data` commands


runner = CliRunner()


def invoke(*args):
    result = runner.invoke(app, [str(a) for a in args], catch_exceptions=False)
    return result.exit_code, result.stdout, result.stderr


def test_data_commands_end_to_end(tmp_path, pool):
    sources = tmp_path / "sources"
    imgs, held = sources / "imgs", sources / "held"
    write_classes(imgs, pool["x_train"][:20], np.array([0, 1] * 10))
    shutil.copy(imgs / "shirt" / "00.png", imgs / "shirt" / "copy.png")
    (imgs / "shoe" / "broken.png").write_bytes((imgs / "shoe" / "01.png").read_bytes()[:100])
    write_classes(held, pool["x_test"][:4], np.array([0, 1] * 2))
    before = tree_hashes(sources)

    code, stdout, _ = invoke("data", "ingest", imgs, "--name", "x", "--test", held)
    vid = list_names()["x"]
    assert code == 0, stdout
    assert f"x -> version {vid}: 25 image records (train 21, test 4), shape (1, 28, 28)" in stdout
    assert f"quarantined 1: cannot decode image 1; list: {version_folder(vid) / 'quarantine.jsonl'}" in stdout
    assert f"  {imgs / 'shoe' / 'broken.png'}: cannot decode image" in stdout

    code, stdout, _ = invoke("data", "clean", "x")
    cid = list_names()["x-clean"]
    assert code == 0, stdout
    assert f"x-clean -> version {cid}: kept 24 of 25 records (train 20, test 4)" in stdout
    assert "removed: exact duplicate 1\n" in stdout
    assert load_version("x-clean").meta["parent"] == vid

    code, stdout, _ = invoke("data", "corrupt", "x", "--duplicates", "0.5")
    did = list_names()["x-corrupt"]
    assert code == 0, stdout
    assert f"x-corrupt -> version {did}: train 31 (+10 copies, +0 noise images), test 4 unchanged" in stdout
    assert round(0.5 * 21) == 10

    code, stdout, _ = invoke("data", "list")
    rows = [[cell for cell in line.split() if cell.isascii()] for line in stdout.splitlines()]  # drop box lines
    assert code == 0 and list_names() == {"x": vid, "x-clean": cid, "x-corrupt": did}
    for row in (["x", vid, "image", "21", "4", "ingest"], ["x-clean", cid, "image", "20", "4", "clean"],
                ["x-corrupt", did, "image", "31", "4", "corrupt"]):
        assert row in rows, stdout

    code, stdout, _ = invoke("data", "info", "x-corrupt")
    info = json.loads(stdout)
    assert code == 0 and info["id"] == did and info["parent"] == vid and info["eval_basis"] == vid

    names = list_names()
    for args, message in [
        (("data", "ingest", tmp_path / "missing", "--name", "y"),
         f"error: {tmp_path / 'missing'}: no such file or folder (built-in sources: fashion-mnist)"),
        (("data", "clean", "nope"), "error: dataset 'nope': no such dataset name or version in"),
        (("data", "corrupt", "x", "--noise", "-1"),
         "error: --noise -1.0: must be a fraction of the train split between 0 and 10"),
    ]:
        code, stdout, stderr = invoke(*args)
        lines = stderr.strip().splitlines()
        assert code == 1 and stdout == "", (args, stdout, stderr)
        assert len(lines) == 1 and lines[0].startswith(message), (args, stderr)
    assert list_names() == names
    assert tree_hashes(sources) == before


def test_cleaning_reports_its_own_input_after_a_corrupted_copy_cleaned_to_the_same_content(tmp_path, pool):
    """Cleaning the corrupted copy gives back the original's content, so the cleaned version *is* the original
    version; the report of cleaning the original must still be its own (reports live with the input)."""
    version = small_version(tmp_path, pool)
    dirty = corrupt_version(version, duplicates=0.2, noise=0.1, seed=3)
    assert clean_version(dirty)[0].id == version.id
    _, fresh = clean_version(version)
    assert fresh["input"] == version.id and fresh["removed"] == 0
    _, cached = clean_version(version)
    assert (cached["input"], cached["removed"]) == (version.id, 0), \
        f"cached report is of {cached['input']} with {cached['removed']} removals"


# ---------------------------------------------------------------- 10. single files, nothing valid, nothing left


def test_one_text_file_is_cut_into_a_train_record_and_a_contiguous_test_record(tmp_path):
    book = tmp_path / "sources" / "book.txt"
    book.parent.mkdir()
    text = "".join(f"{prose(i, 8)}\n" for i in range(200))
    book.write_text(text, encoding="utf-8")
    before = tree_hashes(book.parent)
    code, stdout, _ = invoke("data", "ingest", book, "--name", "book", "--test-fraction", "0.2")
    version = load_version("book")
    train, test = load_texts(version)
    assert code == 0, stdout
    assert train + test == text and text[len(train) - 1] == "\n"  # cut at a line start, nothing lost
    assert abs(len(test) - 0.2 * len(text)) <= 0.2 * len(text) / 4  # the cut moves by at most a quarter
    line = train.count("\n") + 1
    assert [(r.source, r.split, r.bytes) for r in version.records] == [
        (f"{book}:lines 1-{line - 1}", "train", len(train.encode())), (f"{book}:lines {line}-200", "test",
                                                                        len(test.encode()))]
    split = (f"one document: the last {len(test):,} of {len(text):,} characters ({len(test) / len(text):.1%}) held "
             f"out, contiguous, from line {line} on")
    assert f"book -> version {version.id}: 2 text records (train 1, test 1)\nsplit: {split}\n" in stdout
    assert version.meta["operation"]["ingest"]["split"] == split
    assert tree_hashes(book.parent) == before  # the source is only read

    few = tmp_path / "few"
    few.mkdir()
    for i in range(3):  # 3 documents at --test-fraction 0.1: one whole document is held out, as the loader does
        (few / f"{i}.txt").write_text(prose(10 + i))
    version, _ = ingest(str(few), "few", IngestOptions())
    assert version.meta["splits"] == {"train": 2, "test": 1}
    assert version.meta["operation"]["ingest"]["split"] == "by record: 1 of 3 held out as test (split_seed 0)"


def test_a_source_with_no_valid_record_says_why(tmp_path):
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"\xff\xfe bad")
    code, stdout, stderr = invoke("data", "ingest", bad, "--name", "x")
    assert (code, stdout) == (1, "")
    assert stderr.splitlines() == [f"error: {bad}: no valid records (1 rejected; nothing stored): {bad}: not UTF-8 "
                                   "(invalid byte 0xff at offset 0)"]
    pictures = tmp_path / "pictures"
    pictures.mkdir()
    for name in ("a.png", "c.png", "d.png"):
        (pictures / name).write_bytes(b"")
    (pictures / "b.png").write_bytes(b"not a png")
    with pytest.raises(GenscaleError) as e:
        ingest(str(pictures), "y")
    assert str(e.value) == (f"{pictures}: no valid records (4 rejected; nothing stored): {pictures / 'a.png'}: empty "
                            f"file (0 bytes); {pictures / 'b.png'}: cannot decode image (cannot identify image file "
                            f"'{pictures / 'b.png'}'); {pictures / 'c.png'}: empty file (0 bytes); and 1 more "
                            "(empty file 1)")
    good = tmp_path / "good"
    good.mkdir()
    (good / "a.txt").write_text(prose(1))
    (good / "b.txt").write_text(prose(2))
    with pytest.raises(GenscaleError, match=rf"^--test {bad}: no valid records \(1 rejected; nothing stored\): "
                                            rf"{bad}: not UTF-8"):
        ingest(str(good), "z", IngestOptions(test=str(bad)))
    assert list_names() == {} and not (data_dir() / "versions").exists()


def test_a_clean_that_leaves_no_train_record_is_an_error_and_stores_nothing(tmp_path):
    docs, held = tmp_path / "docs", tmp_path / "held"
    docs.mkdir()
    held.mkdir()
    (docs / "a.txt").write_text("Too short.")
    (docs / "b.txt").write_text("Tiny doc.")
    (held / "t.txt").write_text(prose(1))
    version, _ = ingest(str(docs), "notes", IngestOptions(test=str(held)))
    versions = sorted(p.name for p in (data_dir() / "versions").iterdir())
    code, stdout, stderr = invoke("data", "clean", "notes")
    assert (code, stdout) == (1, "")
    assert stderr.splitlines() == [f"error: dataset {version.id}: cleaning leaves 0 of its 2 train records (removed: "
                                   "too short 2); nothing stored. Loosen the settings (--min-chars, "
                                   "--min-letter-fraction, --text-jaccard) or check the data"]
    assert list_names() == {"notes": version.id}
    assert sorted(p.name for p in (data_dir() / "versions").iterdir()) == versions
    assert not list(version_folder(version.id).glob("clean-*"))
    with pytest.raises(GenscaleError, match="cleaning leaves 0 of its 2 train records"):
        load_text_data(DataConfig(source="dataset", dataset="notes", clean=True))
