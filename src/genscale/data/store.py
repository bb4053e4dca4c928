"""Dataset versions: content-addressed shards plus a manifest, immutable, reachable by name.

Layout under `GENSCALE_DATA` (default ./datasets):
  objects/<sha256>.npy|.jsonl      shards, named by the sha256 of their bytes (images: uint8 (n, C, H, W) .npy;
                                   text: one JSON string per line); identical shards are stored once
  versions/<id>/version.json       kind, shape, classes, counts, shards, lineage (parent, operation, eval_basis)
  versions/<id>/manifest.jsonl     one line per record: source, sha256 of its content, bytes, label, split
  versions/<id>/quarantine.jsonl   what the latest ingest of this content refused, with reasons
  versions/<id>/clean-<tag>.json   reports of cleaning this version, one per settings, naming the cleaned version
  names/<name>                     the version id a name points at (re-pointed by a later ingest)

A version id is the first 16 hex digits of the sha256 of the kind, the record shape and every record's
(content hash, label, split) in order: the same content gives the same id, wherever it came from. Every
record carries its split ("train" or "test"), fixed at ingest, so cleaning and corrupting never change the
test split that metrics are computed against. `eval_basis` names the version whose train split trains the
domain feature extractor, so runs on a corrupted and on a cleaned version share one extractor.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from genscale.errors import GenscaleError
from genscale.paths import atomic_write_bytes, data_dir

SHARD_RECORDS = 16384  # records per shard
SPLITS = ("train", "test")
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


@dataclass(frozen=True)
class Record:
    """One manifest line."""

    source: str  # where it came from: a file path, "path:LINE", "fashion-mnist:train/17", "corrupt:..."
    sha256: str  # of the stored content (image pixels as uint8 C-order bytes; text as UTF-8)
    bytes: int  # size of the source file (or of the stored content when there is no file)
    label: int | None
    split: str  # "train" or "test"


@dataclass(frozen=True)
class Version:
    id: str
    meta: dict[str, Any]  # version.json
    records: list[Record]

    @property
    def kind(self) -> str:
        return self.meta["kind"]

    def split_mask(self, split: str) -> np.ndarray:
        return np.array([r.split == split for r in self.records], dtype=bool)

    def labels(self) -> np.ndarray | None:
        if not self.records or self.records[0].label is None:
            return None
        return np.array([r.label for r in self.records], dtype=np.int64)


def content_sha256(data: bytes | np.ndarray) -> str:
    return hashlib.sha256(data if isinstance(data, bytes) else np.ascontiguousarray(data).tobytes()).hexdigest()


def image_record_hashes(x: np.ndarray) -> list[str]:
    """sha256 of each image's pixels (N, C, H, W) uint8."""
    return [hashlib.sha256(a.tobytes()).hexdigest() for a in np.ascontiguousarray(x)]


def version_id(kind: str, shape: tuple[int, ...] | None, records: list[Record], tokens: str | None = None) -> str:
    """`tokens`: a digest of a token version's tokenizer and streams (absent from other versions' ids)."""
    head: dict[str, Any] = {"kind": kind, "shape": list(shape) if shape else None}
    if tokens is not None:
        head["tokens"] = tokens
    h = hashlib.sha256(json.dumps(head).encode())
    for r in records:
        h.update(f"{r.sha256}\t{r.label}\t{r.split}\n".encode())
    return h.hexdigest()[:16]


def _versions() -> Path:
    return data_dir() / "versions"


def _put_object(data: bytes, suffix: str) -> str:
    digest = hashlib.sha256(data).hexdigest()
    path = data_dir() / "objects" / f"{digest}{suffix}"
    if not path.exists():
        atomic_write_bytes(path, data)
    return path.name


def _npy_bytes(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(a), allow_pickle=False)
    return buf.getvalue()


def _check_records(records: list[Record], n: int) -> None:
    if len(records) != n:
        raise ValueError(f"{len(records)} records for {n} items")
    bad = next((r for r in records if r.split not in SPLITS), None)
    if bad:
        raise ValueError(f"record {bad.source}: split {bad.split!r} is not one of {SPLITS}")


def write_version(*, kind: str, records: list[Record], images: np.ndarray | None = None,
                  texts: list[str] | None = None, classes: tuple[str, ...] = (), parent: str | None = None,
                  operation: dict[str, Any], eval_basis: str | None = None,
                  tokens: tuple[Any, dict[str, np.ndarray]] | None = None) -> Version:
    """Store a version (shards, manifest) and return it; an existing id is reused, not rewritten.

    `tokens` (text only): (TextTokenizer, {"train": ids, "test": ids}), token streams stored as they are, beside the
    decoded documents, so training uses those ids instead of tokenizing the documents again (nanoGPT's .bin)."""
    if kind == "image":
        assert images is not None and images.dtype == np.uint8 and images.ndim == 4
        _check_records(records, len(images))
        shape: tuple[int, ...] | None = tuple(images.shape[1:])
    else:
        assert texts is not None
        _check_records(records, len(texts))
        shape = None
    token_digest = None
    if tokens is not None:
        tokenizer, streams = tokens
        token_digest = hashlib.sha256(
            tokenizer.sha256.encode() + b"".join(content_sha256(streams[s]).encode() for s in SPLITS)).hexdigest()
    vid = version_id(kind, shape, records, token_digest)
    folder = _versions() / vid
    if (folder / "version.json").exists():
        return load_version(vid)
    shards = []
    for start in range(0, len(records), SHARD_RECORDS):
        if kind == "image":
            shards.append(_put_object(_npy_bytes(images[start:start + SHARD_RECORDS]), ".npy"))
        else:
            lines = "".join(json.dumps(t, ensure_ascii=False) + "\n" for t in texts[start:start + SHARD_RECORDS])
            shards.append(_put_object(lines.encode(), ".jsonl"))
    labels = [r.label for r in records if r.label is not None]
    token_meta = None
    if tokens is not None:
        token_meta = {"tokenizer": _put_object(tokenizer.to_json().encode("utf-8"), ".json"),
                      "dtype": streams["train"].dtype.str,
                      **{s: _put_object(_npy_bytes(streams[s]), ".npy") for s in SPLITS},
                      **{f"{s}_tokens": len(streams[s]) for s in SPLITS}}
    meta = {"id": vid, "kind": kind, "shape": list(shape) if shape else None, "records": len(records),
            "splits": {s: sum(r.split == s for r in records) for s in SPLITS},
            "classes": list(classes) or ([str(c) for c in range(max(labels) + 1)] if labels else []),
            "shards": shards, "parent": parent, "eval_basis": eval_basis or vid, "operation": operation,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **({"tokens": token_meta} if token_meta else {})}
    manifest = "".join(json.dumps(asdict(r), ensure_ascii=False) + "\n" for r in records)
    atomic_write_bytes(folder / "manifest.jsonl", manifest.encode())
    atomic_write_bytes(folder / "version.json", json.dumps(meta, indent=1).encode())  # last: marks it complete
    return Version(vid, meta, records)


def check_name(name: str) -> None:
    if not NAME_RE.match(name):
        raise GenscaleError(f"dataset name {name!r}: use letters, digits, '.', '_' and '-' (at most 64, the first "
                            "a letter or digit)")


def set_name(name: str, vid: str) -> None:
    check_name(name)
    atomic_write_bytes(data_dir() / "names" / name, vid.encode())


def list_names() -> dict[str, str]:
    folder = data_dir() / "names"
    return {p.name: p.read_text().strip() for p in sorted(folder.iterdir())} if folder.is_dir() else {}


def resolve(name_or_id: str) -> str:
    """A dataset name, a version id, or a unique prefix of one (at least 4 digits) -> the version id."""
    names = list_names()
    if name_or_id in names:
        return names[name_or_id]
    folder = _versions()
    if len(name_or_id) >= 4 and folder.is_dir():
        hits = [p.name for p in folder.iterdir() if p.name.startswith(name_or_id) and (p / "version.json").exists()]
        if len(hits) == 1:
            return hits[0]
        if len(hits) > 1:
            raise GenscaleError(f"dataset '{name_or_id}': ambiguous version prefix ({', '.join(sorted(hits))})")
    known = ", ".join(names) or "none yet; make one with `genscale data ingest`"
    raise GenscaleError(f"dataset '{name_or_id}': no such dataset name or version in {data_dir()} "
                        f"(names: {known})")


def load_version(name_or_id: str) -> Version:
    vid = resolve(name_or_id)
    folder = _versions() / vid
    try:
        meta = json.loads((folder / "version.json").read_text())
        records = [Record(**json.loads(line)) for line in (folder / "manifest.jsonl").read_text().splitlines()]
    except (OSError, ValueError, TypeError) as e:
        raise GenscaleError(f"{folder}: damaged dataset version ({e})") from None
    return Version(vid, meta, records)


def _shard_path(name: str) -> Path:
    path = data_dir() / "objects" / name
    if not path.exists():
        raise GenscaleError(f"{path}: shard missing from the dataset store")
    return path


def image_shards(version: Version) -> list[np.ndarray]:
    """A version's image shards, memory-mapped (uint8 (n, C, H, W) each; nothing read yet)."""
    if version.kind != "image":
        raise GenscaleError(f"dataset {version.id}: holds {version.kind}, not images")
    parts = [np.load(_shard_path(s), mmap_mode="r", allow_pickle=False) for s in version.meta["shards"]]
    return parts or [np.zeros((0, *version.meta["shape"]), dtype=np.uint8)]


def load_images(version: Version) -> np.ndarray:
    """All images of a version, (N, C, H, W) uint8 (shards are memory-mapped, then gathered)."""
    return np.concatenate(image_shards(version))


def load_texts(version: Version) -> list[str]:
    if version.kind != "text":
        raise GenscaleError(f"dataset {version.id}: holds {version.kind}, not text")
    return [json.loads(line) for s in version.meta["shards"]
            for line in _shard_path(s).read_text(encoding="utf-8").splitlines()]


def load_tokens(version: Version) -> tuple[Any, np.ndarray, np.ndarray] | None:
    """(TextTokenizer, train ids, test ids) of a version stored with token streams, else None."""
    meta = version.meta.get("tokens")
    if meta is None:
        return None
    from genscale.data.tokenizer import TextTokenizer

    tokenizer = TextTokenizer.load(_shard_path(meta["tokenizer"]))
    train, test = (np.load(_shard_path(meta[s]), mmap_mode="r", allow_pickle=False) for s in SPLITS)
    return tokenizer, train, test


def version_folder(vid: str) -> Path:
    return _versions() / vid
