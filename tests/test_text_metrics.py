"""Text metrics: sequence NLL against a token-by-token reference, BLEU family against sacrebleu, prompt windows."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import sacrebleu
import torch
import torch.nn.functional as F
from torch import nn

from genscale.errors import GenscaleError
from genscale.metrics.text import (
    KEY_DISTINCT,
    bleu,
    continuation_prompts,
    distinct_n,
    perplexity,
    self_bleu,
    sequence_nll,
)

CPU = torch.device("cpu")


class BigramStub(nn.Module):
    """logits = table[idx]: the next token depends on the current one only. Records every input and mode."""

    def __init__(self, vocab: int, *, block_size: int, seed: int = 0) -> None:
        super().__init__()
        self.config = SimpleNamespace(block_size=block_size)
        self.table = nn.Embedding(vocab, vocab)
        nn.init.normal_(self.table.weight, std=2.0, generator=torch.Generator().manual_seed(seed))
        self.calls: list[torch.Tensor] = []
        self.modes: list[bool] = []

    def forward(self, idx: torch.Tensor) -> tuple[torch.Tensor, None]:
        self.calls.append(idx.clone())
        self.modes.append(self.training)
        return self.table(idx), None  # (B, T, V)


class PrefixSumStub(BigramStub):
    """Causal with context: logits also depend on the sum of all tokens so far in the window."""

    def __init__(self, vocab: int, *, block_size: int, seed: int = 0) -> None:
        super().__init__(vocab, block_size=block_size, seed=seed)
        self.context = nn.Embedding(vocab, vocab)
        nn.init.normal_(self.context.weight, std=2.0, generator=torch.Generator().manual_seed(seed + 1))

    def forward(self, idx: torch.Tensor) -> tuple[torch.Tensor, None]:
        logits, _ = super().forward(idx)
        return logits + self.context(idx.cumsum(dim=1) % self.context.num_embeddings), None


class UniformStub(nn.Module):
    def __init__(self, vocab: int) -> None:
        super().__init__()
        self.vocab = vocab

    def forward(self, idx: torch.Tensor) -> tuple[torch.Tensor, None]:
        return torch.zeros(*idx.shape, self.vocab), None


def reference_nll(model: nn.Module, tokens: np.ndarray, *, block_size: int, n: int) -> float:
    """Token by token: feed each prefix of its window alone, take -log_softmax of the last position in float64."""
    total = 0.0
    for start in range(0, n, block_size):
        for t in range(start, min(start + block_size, n)):
            prefix = torch.tensor(tokens[start:t + 1], dtype=torch.long)[None]  # (1, t - start + 1)
            logits = model(prefix)[0][0, -1].double()
            total -= torch.log_softmax(logits, dim=-1)[int(tokens[t + 1])].item()
    return total


def random_tokens(length: int, vocab: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, vocab, size=length).astype(np.uint16)


# ----------------------------------------------------------------------------------------------------------------------
# sequence_nll and perplexity


@pytest.mark.parametrize("stub", [BigramStub, PrefixSumStub])
@pytest.mark.parametrize("length,block_size,max_tokens", [(50, 8, 10_000), (41, 5, 23), (9, 16, 100), (17, 4, 16)])
def test_sequence_nll_matches_token_by_token_reference(stub, length, block_size, max_tokens):
    vocab = 23
    model = stub(vocab, block_size=block_size, seed=length)
    tokens = random_tokens(length, vocab, seed=block_size)
    nll, n, predicted = sequence_nll(model, tokens, block_size=block_size, max_tokens=max_tokens, batch_size=3,
                                     device=CPU)
    assert n == min(length - 1, max_tokens)
    np.testing.assert_array_equal(predicted, tokens[1:n + 1])
    assert nll == pytest.approx(reference_nll(model, tokens, block_size=block_size, n=n), rel=1e-9)


@pytest.mark.parametrize("max_tokens,expected_n", [(10_000, 49), (20, 20), (8, 8), (0, 0)])
def test_sequence_nll_scores_every_predicted_token_once(max_tokens, expected_n):
    tokens = np.arange(50)  # unique ids: a fed token names its own position
    model = BigramStub(64, block_size=8)
    _, n, predicted = sequence_nll(model, tokens, block_size=8, max_tokens=max_tokens, batch_size=4, device=CPU)
    assert n == expected_n
    np.testing.assert_array_equal(predicted, np.arange(1, n + 1))
    rows = [row for batch in model.calls for row in batch.tolist()]
    assert all(np.all(np.diff(row) == 1) for row in rows)  # each window is a contiguous stretch of the stream
    # the inputs tile positions 0..n-1 exactly once, so each target 1..n is scored once
    assert sorted(t for row in rows for t in row) == list(range(n))
    assert all(len(row) == 8 for row in rows[:n // 8]) and all(len(batch) <= 4 for batch in model.calls)


def test_sequence_nll_does_not_depend_on_batch_size_and_restores_mode():
    tokens = random_tokens(200, 31, seed=3)
    results = []
    for batch_size in (1, 3, 100):
        model = PrefixSumStub(31, block_size=16, seed=7)
        model.train()
        results.append(sequence_nll(model, tokens, block_size=16, max_tokens=150, batch_size=batch_size,
                                    device=CPU))
        assert model.modes and not any(model.modes)  # scored in eval mode
        assert model.training  # and given back in train mode
    assert results[0][1] == results[1][1] == results[2][1] == 150
    assert results[1][0] == pytest.approx(results[0][0], rel=1e-12)
    assert results[2][0] == pytest.approx(results[0][0], rel=1e-12)
    eval_model = PrefixSumStub(31, block_size=16, seed=7).eval()
    sequence_nll(eval_model, tokens, block_size=16, max_tokens=10, batch_size=2, device=CPU)
    assert not eval_model.training


def test_perplexity_is_exp_of_cross_entropy():
    vocab, block_size = 29, 8
    model = BigramStub(vocab, block_size=block_size, seed=5)
    tokens = random_tokens(300, vocab, seed=11)
    nll, n, _ = sequence_nll(model, tokens, block_size=block_size, max_tokens=250, batch_size=5, device=CPU)
    # a bigram model ignores context, so one cross-entropy over the whole span is the same quantity
    with torch.no_grad():
        logits = model.table.weight[torch.from_numpy(tokens[:n].astype(np.int64))].double()  # (n, V)
        mean_nll = F.cross_entropy(logits, torch.from_numpy(tokens[1:n + 1].astype(np.int64))).item()
    assert perplexity(nll, n) == pytest.approx(math.exp(mean_nll), rel=1e-10)


def test_uniform_model_has_perplexity_equal_to_vocabulary_size():
    vocab = 37
    tokens = random_tokens(1000, vocab, seed=2)
    nll, n, _ = sequence_nll(UniformStub(vocab), tokens, block_size=32, max_tokens=10_000, batch_size=7, device=CPU)
    assert n == 999
    assert perplexity(nll, n) == pytest.approx(vocab, rel=1e-9)
    assert nll / n == pytest.approx(math.log(vocab), rel=1e-12)


def test_perplexity_needs_tokens_and_sequence_nll_checks_options():
    with pytest.raises(GenscaleError, match="count 0"):
        perplexity(3.0, 0)
    assert perplexity(2.0 * 1000, 1000) == pytest.approx(math.exp(2.0), rel=1e-15)
    with pytest.raises(GenscaleError, match="block_size"):
        sequence_nll(UniformStub(5), np.arange(5), block_size=0, max_tokens=4, batch_size=1, device=CPU)
    with pytest.raises(GenscaleError, match="batch_size"):
        sequence_nll(UniformStub(5), np.arange(5), block_size=2, max_tokens=4, batch_size=0, device=CPU)


# ----------------------------------------------------------------------------------------------------------------------
# BLEU, Self-BLEU, Distinct-n

SACREBLEU_HYPS = ["The dog bit the man.", "It wasn't surprising.", "The man had just bitten him."]
SACREBLEU_REFS = ["The dog bit the man.", "It was not unexpected.", "The man bit him first."]


def test_bleu_pins_sacrebleu_readme_example_with_one_reference_set():
    score = bleu(SACREBLEU_HYPS, SACREBLEU_REFS)
    assert score == sacrebleu.corpus_bleu(SACREBLEU_HYPS, [SACREBLEU_REFS]).score
    assert round(score, 2) == 45.07


@pytest.mark.parametrize("hyps,refs,tokenize", [
    (["a cat sat on the mat today", "the quick brown fox jumps"], ["the cat sat on the mat today", "a quick fox"],
     "13a"),
    (["xyz uvw", "qqq"], ["a b c d", "e f g"], "13a"),  # no n-gram in common
    (["hello world foo bar"], ["hello world foo bar"], "13a"),
    (["今天天气很好我们去公园"], ["今天天气不错我们去公园吧"], "char"),
    (["今天天气很好我们去公园"], ["今天天气不错我们去公园吧"], "zh"),
])
def test_bleu_equals_sacrebleu_corpus_bleu(hyps, refs, tokenize):
    assert bleu(hyps, refs, tokenize=tokenize) == sacrebleu.corpus_bleu(hyps, [refs], tokenize=tokenize).score


def test_bleu_rejects_bad_input():
    with pytest.raises(GenscaleError, match="2 hypotheses but 1 references"):
        bleu(["a", "b"], ["a"])  # sacrebleu itself would silently drop the extra hypothesis
    with pytest.raises(GenscaleError, match="no hypotheses"):
        bleu([], [])
    with pytest.raises(GenscaleError, match="unknown sacrebleu tokenizer 'bogus'"):
        bleu(["a"], ["a"], tokenize="bogus")


def test_self_bleu_extremes_and_direct_loop():
    assert self_bleu(["the cat sat on the mat"] * 4) == pytest.approx(100.0)
    assert self_bleu(["a b c d", "e f g h", "i j k l"]) == 0.0
    samples = ["the cat sat on the mat", "a cat sat on a mat", "the dog ran in the park", "dogs and cats, mostly."]
    expected = np.mean([sacrebleu.sentence_bleu(s, samples[:i] + samples[i + 1:]).score
                        for i, s in enumerate(samples)])
    assert 0.0 < self_bleu(samples) == pytest.approx(expected, rel=1e-12)
    cjk = ["今天天气很好", "今天天气不错", "明天下雨"]
    expected_cjk = np.mean([sacrebleu.sentence_bleu(s, cjk[:i] + cjk[i + 1:], tokenize="char").score
                            for i, s in enumerate(cjk)])
    assert self_bleu(cjk, tokenize="char") == pytest.approx(expected_cjk, rel=1e-12)
    with pytest.raises(GenscaleError, match="at least 2 samples"):
        self_bleu(["only one"])


def test_distinct_n_closed_form():
    samples = ["a b a b", "a b c"]
    assert distinct_n(samples, 1) == pytest.approx(3 / 7)  # a b c of a,b,a,b,a,b,c
    assert distinct_n(samples, 2) == pytest.approx(3 / 5)  # ab ba bc of ab,ba,ab | ab,bc (none across samples)
    assert distinct_n(samples, 3) == pytest.approx(1.0)  # aba bab | abc
    assert distinct_n(samples, 4) == pytest.approx(1.0)  # abab only
    assert distinct_n(samples, 5) == 0.0  # no 5-grams at all
    assert distinct_n([], 1) == 0.0
    assert distinct_n(["hi, hi."], 1) == pytest.approx(3 / 4)  # 13a splits punctuation: hi , hi .
    assert KEY_DISTINCT.format(n=2) == "distinct_2"
    with pytest.raises(GenscaleError, match="n must be at least 1"):
        distinct_n(samples, 0)


def test_distinct_n_splits_cjk_characters_with_char_tokenizer():
    assert distinct_n(["你好你"], 1, tokenize="char") == pytest.approx(2 / 3)  # 你 好 你
    assert distinct_n(["你好你"], 2, tokenize="char") == pytest.approx(1.0)  # 你好 好你
    assert distinct_n(["你好你", "你好"], 1) == pytest.approx(1.0)  # 13a: two whole-string tokens, both distinct


# ----------------------------------------------------------------------------------------------------------------------
# continuation_prompts

EOT = 0


def stream_of_documents(lengths: list[int]) -> np.ndarray:
    """Documents separated by EOT; every other token is unique (position + 1), so a window names its offset."""
    parts = []
    position = 0
    for length in lengths:
        parts.append(np.arange(position, position + length) + 1)
        position += length + 1
        parts.append(np.array([EOT]))
    return np.concatenate(parts)[:-1]


def test_continuation_prompts_windows_lie_inside_documents():
    rng = np.random.default_rng(0)
    lengths = rng.integers(1, 60, size=80).tolist()
    tokens = stream_of_documents(lengths)
    prompt_tokens, reference_tokens = 7, 5
    candidates = sum(length // 12 for length in lengths)
    pairs = continuation_prompts(tokens, n=candidates - 3, prompt_tokens=prompt_tokens,
                                 reference_tokens=reference_tokens, eot_id=EOT, seed=1)
    assert len(pairs) == candidates - 3
    used = set()
    for prompt, reference in pairs:
        assert len(prompt) == prompt_tokens and len(reference) == reference_tokens
        start = int(np.flatnonzero(tokens == prompt[0])[0])
        window = tokens[start:start + prompt_tokens + reference_tokens]
        np.testing.assert_array_equal(np.concatenate([prompt, reference]), window)  # contiguous, inside the stream
        assert EOT not in window
        assert used.isdisjoint(window.tolist())  # windows do not overlap
        used.update(window.tolist())
    everything = continuation_prompts(tokens, n=10 * candidates, prompt_tokens=prompt_tokens,
                                      reference_tokens=reference_tokens, eot_id=EOT, seed=1)
    assert len(everything) == candidates  # each document tiled from its start: all whole windows found


def test_continuation_prompts_are_seeded_and_shrink_on_short_streams():
    tokens = stream_of_documents([100] * 20)

    def starts(seed: int) -> list[int]:
        pairs = continuation_prompts(tokens, n=10, prompt_tokens=4, reference_tokens=6, eot_id=EOT, seed=seed)
        return [int(p[0]) for p, _ in pairs]

    assert starts(3) == starts(3)
    assert starts(3) != starts(4)
    short = stream_of_documents([9, 5, 9, 3])  # no document holds 10 tokens
    assert continuation_prompts(short, n=5, prompt_tokens=4, reference_tokens=6, eot_id=EOT, seed=0) == []
    few = stream_of_documents([9, 10, 25])  # 0 + 1 + 2 whole windows
    assert len(continuation_prompts(few, n=5, prompt_tokens=4, reference_tokens=6, eot_id=EOT, seed=0)) == 3
    no_eot = np.arange(1, 35)  # one document, the whole stream: 3 windows
    assert len(continuation_prompts(no_eot, n=5, prompt_tokens=4, reference_tokens=6, eot_id=EOT, seed=0)) == 3
