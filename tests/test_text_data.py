import json

import numpy as np
import pytest

from conftest import tree_hashes
from genscale.data import text as text_module
from genscale.data.text import (
    Rejected,
    TextCut,
    TextRecord,
    contiguous_cut,
    near_duplicate_texts,
    read_text_source,
    shingles,
    text_quality_problem,
)
from genscale.errors import GenscaleError

ENGLISH = ("The committee met on Tuesday to review the budget for the coming year. After a long discussion, "
           "the members agreed to fund the new library wing and to postpone the road repairs until spring.")
CJK = ("吾輩は猫である。名前はまだ無い。どこで生れたかとんと見当がつかぬ。"
       "何でも薄暗いじめじめした所でニャーニャー泣いていた事だけは記憶している。")
HINDI = "हिन्दी विश्व की एक प्रमुख भाषा है और भारत की राजभाषा है। केन्द्रीय स्तर पर भारत में दूसरी आधिकारिक भाषा अंग्रेजी है।"


# ---------------------------------------------------------------- reading


def _write_corpus(root):
    root.mkdir()
    (root / "a_english.txt").write_bytes(b"The quick brown fox jumps over the lazy dog.\n")
    (root / "b_cjk.txt").write_bytes(b"\xef\xbb\xbf" + ("吾輩は猫である。名前はまだ無い。" * 3).encode())
    (root / "c_empty.txt").write_bytes(b"")
    (root / "d_bad.txt").write_bytes(b"abc\xff\xfe")
    (root / "e_blank.txt").write_bytes(b"  \n\t \r\n")
    lines = [json.dumps({"text": "A good JSON line.", "id": 1}), '{"text": "unterminated',
             json.dumps({"body": "no text field"}), json.dumps({"text": 42})]
    (root / "f_docs.jsonl").write_bytes(("\n".join(lines) + "\n").encode())
    (root / "image.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)))
    (root / "sub").mkdir()
    (root / "sub" / "g_nested.md").write_bytes(b"# Nested\n\nA note in a sub-folder.\n")


def test_read_folder_returns_good_documents_and_rejects_bad_ones(tmp_path):
    root = tmp_path / "corpus"
    _write_corpus(root)
    before = tree_hashes(root)
    records, rejected = read_text_source(root)
    assert tree_hashes(root) == before  # only read
    assert records == [
        TextRecord(str(root / "a_english.txt"), "The quick brown fox jumps over the lazy dog.\n"),
        TextRecord(str(root / "b_cjk.txt"), "吾輩は猫である。名前はまだ無い。" * 3),  # BOM removed
        TextRecord(f"{root / 'f_docs.jsonl'}:1", "A good JSON line."),
        TextRecord(str(root / "sub" / "g_nested.md"), "# Nested\n\nA note in a sub-folder.\n"),
    ]
    expected = [
        (str(root / "c_empty.txt"), "empty file (0 bytes)"),
        (str(root / "d_bad.txt"), "not UTF-8 (invalid byte 0xff at offset 3)"),
        (str(root / "e_blank.txt"), "whitespace only"),
        (f"{root / 'f_docs.jsonl'}:2", "invalid JSON"),
        (f"{root / 'f_docs.jsonl'}:3", "no string field 'text' (has 'body')"),
        (f"{root / 'f_docs.jsonl'}:4", "no string field 'text' (it is a JSON number)"),
    ]
    assert [r.source for r in rejected] == [source for source, _ in expected]
    for r, (_, reason) in zip(rejected, expected, strict=True):
        assert reason in r.reason
        assert "\n" not in r.reason


def test_field_selects_another_jsonl_field(tmp_path):
    path = tmp_path / "docs.jsonl"
    path.write_text('{"text": "short", "body": "the long body"}\n{"text": "only text"}\n', encoding="utf-8")
    records, rejected = read_text_source(path, field="body")
    assert records == [TextRecord(f"{path}:1", "the long body")]
    assert rejected == [Rejected(f"{path}:2", "no string field 'body' (has 'text')")]


def test_jsonl_line_numbers_and_encodings(tmp_path):
    path = tmp_path / "mixed.JSONL"  # the suffix is matched case-insensitively
    path.write_bytes(b"\xef\xbb\xbf" + b'{"text": "first"}\r\n' + b"\n" + b'{"text": "caf\xe9"}\n'
                     + b'["a", "list"]\n' + b'{"text": "\\ud800"}\n' + b'{"text": "   "}\n' + b'{"text": "last"}')
    records, rejected = read_text_source(path)
    assert records == [TextRecord(f"{path}:1", "first"), TextRecord(f"{path}:7", "last")]
    assert [r.source for r in rejected] == [f"{path}:{n}" for n in (3, 4, 5, 6)]
    assert rejected[0].reason == "not UTF-8 (invalid byte 0xe9 at offset 13 of the line)"
    assert rejected[1].reason == "not a JSON object (a JSON array)"
    assert "lone surrogate U+D800" in rejected[2].reason
    assert rejected[3].reason == "empty record (whitespace only)"


def test_single_files_and_errors(tmp_path):
    good = tmp_path / "one.text"
    good.write_text("One document.", encoding="utf-8")
    assert read_text_source(str(good)) == ([TextRecord(str(good), "One document.")], [])
    blank = tmp_path / "blank.jsonl"
    blank.write_bytes(b"\n \n")
    assert read_text_source(blank) == ([], [Rejected(str(blank), "empty file (whitespace only)")])

    missing = tmp_path / "nowhere"
    with pytest.raises(GenscaleError, match="nowhere: no such file or folder"):
        read_text_source(missing)
    empty = tmp_path / "empty_folder"
    empty.mkdir()
    (empty / "picture.png").write_bytes(b"\x89PNG")
    with pytest.raises(GenscaleError, match="empty_folder: no .*files found"):
        read_text_source(empty)
    with pytest.raises(GenscaleError, match="picture.png: not a text or JSONL file"):
        read_text_source(empty / "picture.png")


# ---------------------------------------------------------------- the contiguous cut of one document

TEN_CHARACTER_LINES = "".join(f"line {i:04d}\n" for i in range(100))  # 100 lines, 1000 characters: 950 starts line 96


def cut(text: str, fraction: float) -> TextCut:
    return contiguous_cut(text, held_fraction=fraction, source="book.txt", setting="data.val_fraction")


@pytest.mark.parametrize(("fraction", "at", "why"), [
    (0.05, 950, "the target is a line start"),
    (0.053, 950, "target 947: line starts 940 and 950, 950 is nearer"),
    (0.055, 940, "target 945: a tie, the earlier cut (more held out) wins"),
    (0.047, 950, "target 953: 950 is nearer than 960"),
])
def test_cut_moves_to_the_nearest_line_start(fraction, at, why):
    c = cut(TEN_CHARACTER_LINES, fraction)
    assert c == TextCut(at, 1000, at // 10 + 1, 100, "line"), why
    assert TEN_CHARACTER_LINES[at - 1] == "\n"
    assert c.sources("book.txt") == (f"book.txt:lines 1-{at // 10}", f"book.txt:lines {at // 10 + 1}-100")


def test_cut_states_its_rule_in_one_line():
    assert cut(TEN_CHARACTER_LINES, 0.053).describe() == \
        "one document: the last 50 of 1,000 characters (5.0%) held out, contiguous, from line 96 on"
    words = "abcd " * 200  # one line, 1000 characters
    assert cut(words, 0.053).describe() == ("one document: the last 55 of 1,000 characters (5.5%) held out, "
                                            "contiguous, from character 946 on (after whitespace in line 1: no "
                                            "line end near)")


def test_cut_without_a_line_end_near_goes_after_whitespace_else_to_the_character():
    words = "abcd " * 200  # target 947: cuts after a space at 945 and 950
    assert cut(words, 0.053) == TextCut(945, 1000, 1, 1, "whitespace")
    assert cut(words, 0.053).sources("book.txt") == ("book.txt:characters 1-945", "book.txt:characters 946-1000")
    # a newline 14 characters before the target is beyond the reach of 53 // 4 = 13: whitespace wins
    far = "x" * 932 + "\n" + "abcd " * 13 + "ab"  # line start 933; spaces put cuts at 938, 943, 948, ...
    assert len(far) == 1000 and cut(far, 0.053) == TextCut(948, 1000, 2, 2, "whitespace")
    near = "x" * 933 + "\n" + "abcd " * 13 + "a"  # line start 934, 13 characters before: the line start wins
    assert len(near) == 1000 and cut(near, 0.053) == TextCut(934, 1000, 2, 2, "line")
    assert cut("x" * 1000, 0.053) == TextCut(947, 1000, 1, 1, "character")
    assert cut("ab", 0.5) == TextCut(1, 2, 1, 1, "character")


def test_cut_keeps_windows_line_ends_with_their_line():
    text = "".join(f"row {i:02d}\r\n" for i in range(20))  # 8 characters a line
    c = cut(text, 0.1)  # target 144 = 18 * 8
    assert c == TextCut(144, 160, 19, 20, "line") and text[:c.at].endswith("\r\n") and text[c.at:] == \
        "row 18\r\nrow 19\r\n"


@pytest.mark.parametrize("text", ["", "a", "hello world\n", "   \n\n"])
def test_cut_of_a_text_too_short_is_an_error_naming_the_file_and_setting(text):
    with pytest.raises(GenscaleError) as e:
        cut(text, 0.05)
    assert str(e.value) == (f"book.txt: one document of {len(text)} characters is too short to hold out its last "
                            "data.val_fraction 0.05 as a contiguous stretch (one part would be empty or whitespace "
                            "only); give more text or a larger data.val_fraction")


# ---------------------------------------------------------------- quality


@pytest.mark.parametrize(("text", "options", "reason"), [
    ("Hello there", {}, "too short: 10 characters < 20"),
    ("a" * 101, {"max_chars": 100}, "too long: 101 characters > 100"),
    ("abcd1234567890123456", {}, "too few letters: 20% < 50%"),
    ("3.14159 2.71828 1.41421 1.73205 " * 20, {}, "too few letters: 0% < 50%"),
    ('<a href="#">x</a> <br/> <hr/> {{ }} [[ ]] ' * 5, {}, "too few letters:"),
    ("plain words in a sentence " * 5 + "\x00\x01\x02\x07", {}, "too many control characters: 4 (3%) > 1%"),
    ("text that was decoded badly " * 4 + "\ufffd" * 3, {}, "too many control characters: 3 (2.7%) > 1%"),
    ("words " * 10 + "\x0c", {"max_control_fraction": 0.0}, "too many control characters: 1"),
])
def test_each_quality_filter_triggers(text, options, reason):
    assert text_quality_problem(text, **options).startswith(reason)


@pytest.mark.parametrize("text", [ENGLISH, CJK, HINDI, "Line one.\r\n\tLine two,\n\n\tline three, tabbed.\n" * 20])
def test_normal_paragraphs_pass(text):
    assert text_quality_problem(text) is None


# ---------------------------------------------------------------- shingles


def test_shingles_normalise_case_and_whitespace():
    expected = {"hello", "ello ", "llo w", "lo wo", "o wor", " worl", "world"}
    assert shingles("Hello   World") == expected
    assert shingles("  HeLLo\t\n WORLD \n") == expected
    assert shingles("猫である", k=2) == {"猫で", "であ", "ある"}
    assert shingles("Abc", k=5) == {"abc"}
    assert shingles("", k=5) == {""}
    with pytest.raises(GenscaleError, match="k: must be at least 1"):
        shingles("abc", k=0)


# ---------------------------------------------------------------- near duplicates


def _jaccard(a: str, b: str) -> float:
    sa, sb = shingles(a), shingles(b)
    return len(sa & sb) / len(sa | sb)


def _near_duplicate_corpus() -> tuple[list[str], set[tuple[int, int]]]:
    """40 random English-like paragraphs, 2 random CJK ones, then planted copies; returns texts and planted pairs."""
    rng = np.random.default_rng(0)
    letters = list("abcdefghijklmnopqrstuvwxyz")
    vocab = sorted({"".join(rng.choice(letters, rng.integers(3, 10))) for _ in range(220)})[:200]
    texts = [" ".join(rng.choice(vocab, rng.integers(80, 121))).capitalize() + "." for _ in range(40)]
    ideographs = [chr(0x4E00 + i) for i in range(500)]
    texts += ["".join(rng.choice(ideographs, 400)) for _ in range(2)]

    def near_copy(text: str, n_changes: int, units: list[str]) -> str:
        tokens = text.split() if " " in text else list(text)
        for position in rng.choice(len(tokens), n_changes, replace=False):
            tokens[position] = next(u for u in rng.permutation(units) if u != tokens[position])
        return (" " if " " in text else "").join(tokens)

    planted = {}
    for source, n_changes in [(3, 2), (7, 3), (11, 4), (19, 3)]:
        planted[source] = near_copy(texts[source], n_changes, vocab)
    planted[25] = texts[25]  # exact copy
    planted[40] = near_copy(texts[40], 3, ideographs)  # CJK near-copy
    pairs = set()
    for source, copy in planted.items():
        pairs.add((source, len(texts)))
        texts.append(copy)
    return texts, pairs


def test_near_duplicates_finds_planted_pairs_only():
    texts, planted = _near_duplicate_corpus()
    pairs = near_duplicate_texts(texts)
    assert {(i, j) for i, j, _ in pairs} == planted
    assert pairs == sorted(pairs) and all(i < j for i, j, _ in pairs)
    for i, j, similarity in pairs:
        exact = _jaccard(texts[i], texts[j])
        assert 0.8 <= similarity <= 1.0
        assert abs(similarity - exact) < 0.15, (i, j, similarity, exact)
        assert exact > 0.85  # the planted copies are near, not trivially far
    similarity_of = {(i, j): s for i, j, s in pairs}
    assert similarity_of[(25, 46)] == 1.0  # the exact copy
    assert (40, 47) in similarity_of  # the CJK pair
    # the distinct paragraphs really are far apart, so "none reported" is not luck
    assert max(_jaccard(texts[i], texts[j]) for i in range(42) for j in range(i + 1, 42)) < 0.5
    assert near_duplicate_texts(texts) == pairs


def test_near_duplicates_progress_path_gives_same_result(monkeypatch):
    texts, _ = _near_duplicate_corpus()
    expected = near_duplicate_texts(texts, threshold=0.9, seed=3)
    monkeypatch.setattr(text_module, "_PROGRESS_MIN_TEXTS", 0)
    assert near_duplicate_texts(texts, threshold=0.9, seed=3) == expected


def test_near_duplicates_edge_cases():
    assert near_duplicate_texts([]) == []
    assert near_duplicate_texts(["only one text here"]) == []
    same = ["Same  Text", "same text", "other words entirely"]
    assert near_duplicate_texts(same) == [(0, 1, 1.0)]
    # thresholds and permutation counts for which datasketch's own band choice gives one band, which it refuses
    assert near_duplicate_texts(same, threshold=1.0) == [(0, 1, 1.0)]
    assert near_duplicate_texts(same, threshold=0.99, num_perm=8) == [(0, 1, 1.0)]
    assert text_module._recall_first_bands(0.99, 128) == (4, 32)  # 1 - (1 - 0.99^32)^4 = 0.994
    with pytest.raises(GenscaleError, match="threshold: must be in"):
        near_duplicate_texts(["a", "b"], threshold=0.0)
