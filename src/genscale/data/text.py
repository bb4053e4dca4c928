"""Readers, quality filters, near-duplicate detection, and the contiguous cut of a single document, for user text.

A source is a text file (one document), a JSONL file (one document per line, from a named string field) or a folder
of them. Bad files and lines come back as `Rejected` with a one-line reason instead of raising, so one broken file
does not cost the rest. Source files are only read.
"""

from __future__ import annotations

import json
import math
import re
import unicodedata
import zlib
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from genscale.errors import GenscaleError
from genscale.ui import progress

TEXT_SUFFIXES = (".txt", ".text", ".md")  # files read as one document each
JSONL_SUFFIXES = (".jsonl",)  # one document per line, taken from a named string field

_BOM = b"\xef\xbb\xbf"
_PROGRESS_MIN_TEXTS = 10_000  # below this near_duplicate_texts takes seconds: no bar
_KEPT_CONTROLS = frozenset("\n\r\t")
_REPLACEMENT_CHARACTER = "\ufffd"  # what a lossy decoder left where bytes were not valid text
_CUT_REACH = 4  # a cut may move from its target by at most 1/_CUT_REACH of the held-out length, to reach a boundary
_LINE_END, _LAST_LINE_END = re.compile(r"\n"), re.compile(r"\n(?=[^\n]*\Z)")  # first / last in a window
_SPACE, _LAST_SPACE = re.compile(r"\s"), re.compile(r"\s(?=\S*\Z)")


@dataclass(frozen=True)
class TextRecord:
    """One document and where it came from."""

    source: str  # the file path, or "path:LINE" (1-based) for a JSONL line
    text: str  # the document, decoded as UTF-8 (a leading BOM removed; otherwise unchanged)


@dataclass(frozen=True)
class Rejected:
    """A file or JSONL line that gave no document, and why."""

    source: str  # the file path, or "path:LINE" (1-based) for a JSONL line
    reason: str  # one line, e.g. "not UTF-8 (invalid byte 0xff at offset 12)"


@dataclass(frozen=True)
class TextCut:
    """Where one document is cut in two: text[:at] trains, text[at:] is the contiguous held-out stretch."""

    at: int  # offset of the first held-out character
    characters: int  # len(text)
    line: int  # 1-based line of text[at]
    lines: int  # lines in text (a final newline ends the last line, it does not start another)
    boundary: str  # what text[at - 1] is: "line" (a newline), "whitespace", or "character" (no boundary near)

    def sources(self, source: str) -> tuple[str, str]:
        """Record sources of the two parts: "path:lines 1-L" / "path:lines L+1-N" when the cut is at a line end,
        else 1-based character ranges "path:characters 1-C" / "path:characters C+1-N"."""
        if self.boundary == "line":
            return f"{source}:lines 1-{self.line - 1}", f"{source}:lines {self.line}-{self.lines}"
        return f"{source}:characters 1-{self.at}", f"{source}:characters {self.at + 1}-{self.characters}"

    def describe(self) -> str:
        """One line stating the rule and where it cut."""
        held = self.characters - self.at
        where = {"line": f"from line {self.line} on",
                 "whitespace": f"from character {self.at + 1} on (after whitespace in line {self.line}: no line end "
                               "near)",
                 "character": f"from character {self.at + 1} on (in line {self.line}: no line end or whitespace "
                              "near)"}[self.boundary]
        return (f"one document: the last {held:,} of {self.characters:,} characters ({held / self.characters:.1%}) "
                f"held out, contiguous, {where}")


def contiguous_cut(text: str, *, held_fraction: float, source: str, setting: str) -> TextCut:
    """Cut one document into a train part and a held-out part: the last `held_fraction` of its characters.

    The target cut leaves round(len * held_fraction) characters (at least 1) held out. It then moves to the
    nearest line start (just after a newline), so no line is split; if no newline lies within a quarter of the
    held-out length of the target, to the nearest position just after whitespace within that reach; else it
    stays at the target character. Ties go to the earlier cut (more held out). Both parts must hold a
    non-whitespace character, else GenscaleError naming `source` and `setting` (the option that set the share).
    """
    n = len(text)
    held = min(n - 1, max(1, round(n * held_fraction)))
    target = n - held
    reach = held // _CUT_REACH
    lo, hi = max(1, target - reach), min(n - 1, target + reach)  # cuts considered, both parts non-empty
    at, boundary = target, "character"
    for first, last, name in ((_LINE_END, _LAST_LINE_END, "line"), (_SPACE, _LAST_SPACE, "whitespace")):
        before = last.search(text, lo - 1, target)  # a boundary char at p puts the cut at p + 1 in [lo, target]
        after = first.search(text, target, hi)  # cuts in [target + 1, hi]
        cuts = [m.end() for m in (before, after) if m is not None]
        if cuts:
            at, boundary = min(cuts, key=lambda c: (abs(c - target), c)), name
            break
    if n < 2 or not text[:at].strip() or not text[at:].strip():
        raise GenscaleError(f"{source}: one document of {n} characters is too short to hold out its last "
                            f"{setting} {held_fraction:g} as a contiguous stretch (one part would be empty or "
                            f"whitespace only); give more text or a larger {setting}")
    lines = text.count("\n") + (0 if text.endswith("\n") else 1)
    return TextCut(at, n, text.count("\n", 0, at) + 1, lines, boundary)


def read_text_source(path: str | Path, *, field: str = "text") -> tuple[list[TextRecord], list[Rejected]]:
    """Read a text file, a JSONL file, or a folder of them (searched recursively, in sorted path order).

    In a folder, files whose suffix (case-insensitive) is in neither TEXT_SUFFIXES nor JSONL_SUFFIXES are skipped.
    Blank JSONL lines are skipped. Bad files and lines are returned as Rejected, never raised. A path that does not
    exist, a folder with no text or JSONL file at all, or a file with another suffix raises GenscaleError.
    """
    path = Path(path)
    suffixes = TEXT_SUFFIXES + JSONL_SUFFIXES
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in suffixes)
        if not files:
            raise GenscaleError(f"{path}: no {'/'.join(suffixes)} files found")
    elif path.is_file():
        if path.suffix.lower() not in suffixes:
            raise GenscaleError(f"{path}: not a text or JSONL file (the name must end in {'/'.join(suffixes)})")
        files = [path]
    else:
        raise GenscaleError(f"{path}: no such file or folder")
    records: list[TextRecord] = []
    rejected: list[Rejected] = []
    for f in files:
        try:
            with open(f, "rb") as fh:
                data = fh.read()
        except OSError as e:
            rejected.append(Rejected(str(f), f"cannot read ({e.strerror or e})"))
            continue
        if not data:
            rejected.append(Rejected(str(f), "empty file (0 bytes)"))
        elif f.suffix.lower() in JSONL_SUFFIXES:
            _read_jsonl(f, data, field, records, rejected)
        else:
            text, problem = _decode_utf8(data)
            if problem is None and not text.strip():
                problem = "empty file (whitespace only)"
            if problem is None:
                records.append(TextRecord(str(f), text))
            else:
                rejected.append(Rejected(str(f), problem))
    return records, rejected


def _decode_utf8(data: bytes, where: str = "") -> tuple[str, str | None]:
    """The text without a leading BOM, or ("", reason). Offsets count from the start of `data`."""
    start = len(_BOM) if data.startswith(_BOM) else 0
    try:
        return data[start:].decode("utf-8"), None
    except UnicodeDecodeError as e:
        offset = start + e.start
        return "", f"not UTF-8 (invalid byte 0x{data[offset]:02x} at offset {offset}{where})"


def _read_jsonl(path: Path, data: bytes, field: str, records: list[TextRecord], rejected: list[Rejected]) -> None:
    if data.startswith(_BOM):
        data = data[len(_BOM):]
    n_lines = 0
    for number, line in enumerate(data.split(b"\n"), start=1):
        if not line.strip():
            continue  # blank lines, and the empty piece after a final newline
        n_lines += 1
        source = f"{path}:{number}"
        text, problem = _decode_utf8(line, where=" of the line")
        if problem is None:
            text, problem = _jsonl_text(text, field)
        if problem is None:
            records.append(TextRecord(source, text))
        else:
            rejected.append(Rejected(source, problem))
    if n_lines == 0:
        rejected.append(Rejected(str(path), "empty file (whitespace only)"))


def _jsonl_text(line: str, field: str) -> tuple[str, str | None]:
    """The string in `field` of one JSON object line, or ("", reason)."""
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as e:
        return "", f"invalid JSON ({e.msg} at column {e.colno})"
    except RecursionError:
        return "", "invalid JSON (nested too deeply)"
    if not isinstance(obj, dict):
        return "", f"not a JSON object (a JSON {_json_type(obj)})"
    if field not in obj:
        names = ", ".join(f"'{k}'" for k in list(obj)[:8]) + (", ..." if len(obj) > 8 else "")
        return "", f"no string field '{field}' (has {names or 'no fields'})"
    text = obj[field]
    if not isinstance(text, str):
        return "", f"no string field '{field}' (it is a JSON {_json_type(text)})"
    if not text.strip():
        return "", "empty record (whitespace only)"
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:  # a "\ud800" escape: valid JSON, but no UTF-8 text
        return "", f"not UTF-8 (lone surrogate U+{ord(text[e.start]):04X} in '{field}')"
    return text, None


def _json_type(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    return {str: "string", list: "array", dict: "object"}.get(type(value), type(value).__name__)


def text_quality_problem(text: str, *, min_chars: int = 20, max_chars: int = 10_000_000,
                         min_letter_fraction: float = 0.5, max_control_fraction: float = 0.01) -> str | None:
    """None if the document passes the quality filters, else a one-line reason.

    - fewer than `min_chars` non-whitespace characters;
    - more than `max_chars` characters;
    - letters are less than `min_letter_fraction` of the non-whitespace characters (catches numeric dumps, markup
      and symbol noise). A letter is str.isalpha() (CJK ideographs and kana included) or a combining mark
      (Unicode category M): Devanagari, Tamil or Thai vowel signs are part of the word, and without them
      ordinary Hindi prose sits near 55%;
    - control characters (category Cc other than \\n \\r \\t) plus U+FFFD replacement characters are more than
      `max_control_fraction` of all characters.
    """
    if len(text) > max_chars:
        return f"too long: {len(text)} characters > {max_chars}"
    counts = Counter(text)  # classify each distinct character once, not each of up to max_chars
    n_visible = n_letters = n_control = 0
    for ch, n in counts.items():
        category = unicodedata.category(ch)
        # before the whitespace test: form feed, \x1c-\x1f and \x85 are both control and whitespace
        if (category == "Cc" and ch not in _KEPT_CONTROLS) or ch == _REPLACEMENT_CHARACTER:
            n_control += n
        if ch.isspace():
            continue
        n_visible += n
        if ch.isalpha() or category[0] == "M":
            n_letters += n
    if n_visible < min_chars:
        return f"too short: {n_visible} characters < {min_chars}"
    letter_fraction = n_letters / n_visible
    if letter_fraction < min_letter_fraction:
        # rounded down, so the shown value never reaches the bound it failed
        return f"too few letters: {math.floor(letter_fraction * 100)}% < {min_letter_fraction * 100:g}%"
    control_fraction = n_control / len(text)
    if control_fraction > max_control_fraction:
        shown = math.ceil(control_fraction * 1000) / 10  # rounded up to 0.1%, for the same reason
        return (f"too many control characters: {n_control} ({shown:g}%) > {max_control_fraction * 100:g}% "
                f"of {len(text)} characters")
    return None


def shingles(text: str, k: int = 5) -> set[str]:
    """Character k-grams of the text lower-cased, with whitespace runs collapsed to one space and ends stripped.

    Characters rather than words, so that text written without spaces (Chinese, Japanese) gets shingles too.
    A text shorter than k characters (after normalisation) gives one shingle: itself.
    """
    if k < 1:
        raise GenscaleError(f"shingle size k: must be at least 1, got {k}")
    norm = " ".join(text.lower().split())
    if len(norm) <= k:
        return {norm}
    return {norm[i:i + k] for i in range(len(norm) - k + 1)}


def near_duplicate_texts(texts: list[str], *, threshold: float = 0.8, num_perm: int = 128, k: int = 5,
                         seed: int = 1) -> list[tuple[int, int, float]]:
    """Pairs (i, j, similarity), i < j, sorted, whose estimated Jaccard similarity of shingle sets is >= threshold.

    Each text gets a MinHash of its `shingles` (Broder 1997, "On the resemblance and containment of documents");
    MinHashLSH banding (Leskovec, Rajaraman & Ullman, Mining of Massive Datasets, ch. 3) proposes candidate pairs,
    and each candidate is kept only if its MinHash estimate is >= threshold. The standard error of the estimate is
    sqrt(J (1 - J) / num_perm): about 0.035 at J = 0.8 with 128 permutations. Deterministic for a fixed seed.
    """
    # datasketch imports scipy.integrate (about a second): load it only when deduplication runs
    from datasketch import MinHash, MinHashLSH

    if not 0.0 < threshold <= 1.0:
        raise GenscaleError(f"near-duplicate threshold: must be in (0, 1], got {threshold}")
    if num_perm < 2:
        raise GenscaleError(f"near-duplicate num_perm: must be at least 2, got {num_perm}")
    if k < 1:
        raise GenscaleError(f"shingle size k: must be at least 1, got {k}")
    # "surrogatepass": a str may hold a lone surrogate (JSON "\ud800"); hash it rather than crash
    shingle_bytes = ([s.encode("utf-8", "surrogatepass") for s in shingles(t, k)] for t in texts)
    # CRC-32 instead of datasketch's default SHA-1: 3x faster in all, and as good here, because MinHash's
    # "affine32" scheme mixes every input hash with the MurmurHash3 finalizer before permuting it
    sketches = MinHash.generator(shingle_bytes, num_perm=num_perm, seed=seed, hashfunc=zlib.crc32)
    if len(texts) > _PROGRESS_MIN_TEXTS:
        with progress(transient=True) as bar:
            task = bar.add_task("MinHash", total=len(texts))
            minhashes = []
            for m in sketches:
                minhashes.append(m)
                bar.update(task, advance=1)
    else:
        minhashes = list(sketches)

    try:
        lsh = MinHashLSH(threshold=threshold, num_perm=num_perm)
    except ValueError:  # its optimiser picked one band (high threshold, few permutations), which it then refuses
        lsh = MinHashLSH(num_perm=num_perm, params=_recall_first_bands(threshold, num_perm))
    with lsh.insertion_session() as session:
        for i, m in enumerate(minhashes):
            session.insert(i, m, check_duplication=False)  # keys are 0..n-1, unique by construction
    pairs = []
    for i, m in enumerate(minhashes):
        for j in lsh.query(m):
            if j > i:
                similarity = m.jaccard(minhashes[j])
                if similarity >= threshold:
                    pairs.append((i, j, similarity))
    pairs.sort()
    return pairs


def _recall_first_bands(threshold: float, num_perm: int) -> tuple[int, int]:
    """(bands, rows) whose bands are longest (fewest false candidates) while a pair of similarity `threshold`
    still becomes a candidate with probability 1 - (1 - s^rows)^bands >= 0.99 (Mining of Massive Datasets, 3.4)."""
    for rows in range(num_perm // 2, 1, -1):
        bands = num_perm // rows
        if 1 - (1 - threshold**rows) ** bands >= 0.99:
            return bands, rows
    return num_perm, 1
