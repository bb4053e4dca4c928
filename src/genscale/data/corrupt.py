"""`genscale data corrupt`: a deliberately dirty copy of a version, for measuring what cleaning is worth.

Only train records change; the test split is kept as it is, and the dirty version keeps its parent's
`eval_basis`, so metrics of runs on the dirty and on the cleaned data use one feature extractor and one test set.
  duplicates p: adds round(p * train) copies of randomly chosen train images: half exact copies, half near copies
                (re-encoded as JPEG at quality 90 and shifted in brightness by up to +-8 levels)
  noise q:      adds round(q * train) junk images of uniform random pixels, with random labels
  label_noise r: moves round(r * train) train labels to another class, chosen uniformly
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from genscale.data.store import Record, Version, image_record_hashes, load_images, write_version
from genscale.errors import GenscaleError


def near_copy(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """(C, H, W) uint8 -> the same picture re-encoded as JPEG (quality 90), brightness shifted by -8..8."""
    c = image.shape[0]
    im = Image.fromarray(image[0] if c == 1 else image.transpose(1, 2, 0))
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=90)
    out = np.asarray(Image.open(buf), dtype=np.int16)
    out = out[None] if c == 1 else out.transpose(2, 0, 1)
    return np.clip(out + int(rng.integers(-8, 9)), 0, 255).astype(np.uint8)


def corrupt_version(version: Version, *, duplicates: float = 0.0, noise: float = 0.0, label_noise: float = 0.0,
                    seed: int = 0) -> Version:
    """Store and return the dirty version (see the module docstring)."""
    if version.kind != "image":
        raise GenscaleError(f"dataset {version.id}: corrupt works on image datasets; this one holds {version.kind}")
    for flag, value in (("--duplicates", duplicates), ("--noise", noise), ("--label-noise", label_noise)):
        if not 0 <= value <= 10:
            raise GenscaleError(f"{flag} {value}: must be a fraction of the train split between 0 and 10")
    labels = version.labels()
    if label_noise and (labels is None or len(version.meta["classes"]) < 2):
        raise GenscaleError(f"--label-noise: dataset {version.id} has no labels (or one class)")
    rng = np.random.default_rng(seed)
    images = np.asarray(load_images(version))
    records = list(version.records)
    train = np.flatnonzero(version.split_mask("train"))
    k = len(version.meta["classes"])
    if label_noise:
        for i in rng.choice(train, round(label_noise * len(train)), replace=False):
            r = records[i]
            new = (r.label + int(rng.integers(1, k))) % k  # uniform over the other classes
            records[i] = Record(r.source, r.sha256, r.bytes, new, r.split)
    extra, extra_records = [], []
    n_dup = round(duplicates * len(train))
    for j, i in enumerate(rng.choice(train, n_dup, replace=True)):
        exact = j % 2 == 0
        img = images[i] if exact else near_copy(images[i], rng)
        extra.append(img)
        extra_records.append((f"corrupt:{'exact' if exact else 'near'}-copy-of:{records[i].source}", records[i].label))
    for j in range(round(noise * len(train))):
        extra.append(rng.integers(0, 256, images.shape[1:], dtype=np.uint8))
        extra_records.append((f"corrupt:noise/{j}", int(rng.integers(0, k)) if labels is not None else None))
    if extra:
        stacked = np.stack(extra)
        hashes = image_record_hashes(stacked)
        per = int(np.prod(images.shape[1:]))
        records += [Record(src, h, per, lab, "train") for (src, lab), h in zip(extra_records, hashes, strict=True)]
        images = np.concatenate([images, stacked])
    operation = {"corrupt": {"duplicates": duplicates, "noise": noise, "label_noise": label_noise, "seed": seed,
                             "added_duplicates": n_dup, "added_noise": len(extra) - n_dup}}
    return write_version(kind="image", records=records, images=images, classes=tuple(version.meta["classes"]),
                         parent=version.id, operation=operation, eval_basis=version.meta["eval_basis"])
