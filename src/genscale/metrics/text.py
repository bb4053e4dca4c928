"""Text-generation metrics: held-out loss and perplexity, BLEU on continuations, Self-BLEU and Distinct-n on samples.

Stages as for images: model -> per-token negative log-likelihoods (float64) -> numbers. The n-gram metrics take
strings and use sacrebleu's tokenizers, so a number here matches what sacrebleu would report for the same text.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import sacrebleu
import torch
import torch.nn.functional as F
from sacrebleu.metrics.bleu import BLEU

from genscale.data.tokens import TextData
from genscale.errors import GenscaleError
from genscale.families.gpt import GptEvalConfig as EvalConfig
from genscale.ui import console

KEY_VAL_LOSS = "val_loss"  # mean NLL per predicted token, nats
KEY_PPL = "perplexity"  # per token: exp(val_loss)
KEY_PPL_CHAR = "perplexity_char"  # per character: exp(total NLL / characters the predicted tokens stand for)
KEY_VAL_LOSS_CHAR = "val_loss_char"  # nats per character: comparable across tokenizers (log of perplexity_char)
KEY_BLEU = "bleu"  # corpus BLEU of continuations against the held-out text, 0-100
KEY_SELF_BLEU = "self_bleu"  # 0-100, higher = samples more alike
KEY_DISTINCT = "distinct_{n}"  # .format(n=1) -> "distinct_1"
DISTINCT_NS = (1, 2)
# every metric evaluate_text records, with its direction (self-BLEU: lower is more diverse, not better quality)
TEXT_METRICS = {KEY_VAL_LOSS: "lower", KEY_PPL: "lower", KEY_VAL_LOSS_CHAR: "lower", KEY_PPL_CHAR: "lower",
                KEY_BLEU: "higher", KEY_SELF_BLEU: "neither",
                **{KEY_DISTINCT.format(n=n): "higher" for n in DISTINCT_NS}}

_LOGSOFTMAX_CHUNK_ELEMENTS = 2**24  # float64 log-softmax in row chunks of at most this many logits (128 MiB)


# ----------------------------------------------------------------------------------------------------------------------
# Likelihood


@torch.no_grad()
def sequence_nll(model: torch.nn.Module, tokens: np.ndarray, *, block_size: int, max_tokens: int, batch_size: int,
                 device: torch.device) -> tuple[float, int, np.ndarray]:
    """Total NLL (nats, float64 accumulation) of predicting tokens[1:n+1] from their left context.

    n = min(len(tokens) - 1, max_tokens); returns (nll_sum, n, the predicted token ids tokens[1:n+1]). The span is cut
    into consecutive non-overlapping windows: window i feeds x = span[i*T:(i+1)*T] and scores
    y = span[i*T+1:(i+1)*T+1] with T = block_size (the last window may be shorter), so every predicted token is scored
    exactly once, with the context available inside its window. Windows of equal length are batched (batch_size
    windows per forward). `model(idx (B, T)) -> (logits (B, T, V), loss or None)` must see all positions' logits;
    block_size must not exceed the model's. Deterministic; the model runs in eval mode and gets its mode back after.
    """
    if block_size < 1:
        raise GenscaleError(f"block_size: must be at least 1, got {block_size}")
    if batch_size < 1:
        raise GenscaleError(f"batch_size: must be at least 1, got {batch_size}")
    if max_tokens < 0:
        raise GenscaleError(f"max_tokens: must be at least 0, got {max_tokens}")
    tokens = np.asarray(tokens)
    n = max(0, min(len(tokens) - 1, max_tokens))
    span = torch.from_numpy(np.asarray(tokens[:n + 1], dtype=np.int64))  # (n + 1,)
    n_full = n // block_size  # windows of exactly block_size predictions; one shorter window may follow
    was_training = model.training
    model.eval()
    try:
        nll_sum = 0.0
        for first in range(0, n_full, batch_size):
            windows = range(first, min(first + batch_size, n_full))
            x = torch.stack([span[i * block_size:(i + 1) * block_size] for i in windows])  # (B, T)
            y = torch.stack([span[i * block_size + 1:(i + 1) * block_size + 1] for i in windows])  # (B, T)
            nll_sum += _window_nll_sum(model, x, y, device=device)
        start = n_full * block_size
        if start < n:  # the shorter last window
            nll_sum += _window_nll_sum(model, span[None, start:n], span[None, start + 1:n + 1], device=device)
    finally:
        model.train(was_training)
    return nll_sum, n, span[1:].numpy().copy()


def _window_nll_sum(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, *, device: torch.device) -> float:
    """Sum over all positions of -log p(y | x up to that position) for one batch of windows x, y (B, T)."""
    logits, _ = model(x.to(device))  # (B, T, V)
    if logits.shape[:2] != x.shape:
        raise ValueError(f"model returned logits of shape {tuple(logits.shape)} for input {tuple(x.shape)}; "
                         "sequence_nll needs the logits of every position")
    vocab = logits.shape[-1]
    flat_logits, flat_y = logits.reshape(-1, vocab), y.to(logits.device).reshape(-1)  # (B*T, V), (B*T,)
    # float64 so that a sum over millions of tokens (and exp of its mean) stays exact to ~1e-12; chunked because a
    # float64 copy of all B*T*V logits of a large vocabulary would not fit
    rows = max(1, _LOGSOFTMAX_CHUNK_ELEMENTS // vocab)
    total = 0.0
    for i in range(0, len(flat_y), rows):
        chunk = flat_logits[i:i + rows].double()
        total += F.cross_entropy(chunk, flat_y[i:i + rows], reduction="sum").item()
    return total


def perplexity(nll_sum: float, count: int) -> float:
    """exp(nll_sum / count): per token with count = predicted tokens, per character with count = their characters."""
    if count <= 0:
        raise GenscaleError(f"perplexity: nothing was scored (count {count}); the held-out text is too short")
    mean = nll_sum / count
    return math.exp(mean) if mean < 700.0 else math.inf  # math.exp overflows near 709.8


# ----------------------------------------------------------------------------------------------------------------------
# N-gram metrics on strings


def bleu(hypotheses: list[str], references: list[str], *, tokenize: str = "13a") -> float:
    """Corpus BLEU (Papineni et al. 2002), 0-100, with one reference per hypothesis.

    Equals sacrebleu.corpus_bleu(hypotheses, [references], tokenize=tokenize).score.
    """
    if len(hypotheses) != len(references):
        raise GenscaleError(f"bleu: {len(hypotheses)} hypotheses but {len(references)} references; "
                            "they must pair one to one")
    if not hypotheses:
        raise GenscaleError("bleu: no hypotheses to score")
    _sacrebleu_tokenizer(tokenize)  # an unknown name as a GenscaleError, not sacrebleu's KeyError
    return float(sacrebleu.corpus_bleu(hypotheses, [references], tokenize=tokenize).score)


def self_bleu(samples: list[str], *, tokenize: str = "13a") -> float:
    """Self-BLEU (Zhu et al. 2018, Texygen), 0-100: higher = less diverse.

    The mean over samples of the sentence BLEU (sacrebleu.sentence_bleu, its defaults) of each sample against all the
    other samples as references. Costs O(N^2) n-gram extractions for N samples.
    """
    if len(samples) < 2:
        raise GenscaleError(f"self_bleu: needs at least 2 samples, got {len(samples)}")
    _sacrebleu_tokenizer(tokenize)
    metric = BLEU(tokenize=tokenize, effective_order=True)  # what sacrebleu.sentence_bleu builds, made once
    scores = [metric.sentence_score(s, samples[:i] + samples[i + 1:]).score for i, s in enumerate(samples)]
    return float(np.mean(scores))


def distinct_n(samples: list[str], n: int, *, tokenize: str = "13a") -> float:
    """Distinct-n (Li et al. 2016): distinct n-grams / total n-grams over all samples; 0.0 when there are none.

    N-grams do not cross samples. Tokens are sacrebleu's tokenizer output for `tokenize` split on whitespace, so
    'char' or 'zh' count CJK characters as tokens.
    """
    if n < 1:
        raise GenscaleError(f"distinct_n: n must be at least 1, got {n}")
    tokenizer = _sacrebleu_tokenizer(tokenize)
    seen: set[tuple[str, ...]] = set()
    total = 0
    for sample in samples:
        words = tokenizer(sample).split()
        grams = [tuple(words[i:i + n]) for i in range(len(words) - n + 1)]
        seen.update(grams)
        total += len(grams)
    return len(seen) / total if total else 0.0


def _sacrebleu_tokenizer(tokenize: str) -> Callable[[str], str]:
    """sacrebleu's tokenizer called `tokenize` (a callable str -> str), or GenscaleError naming the valid ones."""
    try:
        return BLEU(tokenize=tokenize).tokenizer
    except KeyError:
        raise GenscaleError(f"tokenize: unknown sacrebleu tokenizer {tokenize!r} "
                            f"(one of {', '.join(BLEU.TOKENIZERS)})") from None


# ----------------------------------------------------------------------------------------------------------------------
# Prompts for continuation BLEU


def continuation_prompts(tokens: np.ndarray, *, n: int, prompt_tokens: int, reference_tokens: int, eot_id: int,
                         seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Up to n (prompt ids, reference ids) pairs from a held-out token stream, at seeded random offsets.

    Each window of prompt_tokens + reference_tokens tokens lies inside one document (holds no eot_id); the reference
    is the text right after the prompt. Candidate windows tile each document from its first token, so no two overlap;
    n of them are drawn without replacement (in the drawn order). Fewer candidates than n -> all of them, which may be
    none: the caller reports that.
    """
    if n < 0:
        raise GenscaleError(f"n: must be at least 0, got {n}")
    if prompt_tokens < 1 or reference_tokens < 1:
        raise GenscaleError(f"prompt_tokens, reference_tokens: must be at least 1, got {prompt_tokens}, "
                            f"{reference_tokens}")
    tokens = np.asarray(tokens)
    length = prompt_tokens + reference_tokens
    eots = np.flatnonzero(tokens == eot_id)
    doc_starts = np.concatenate([[0], eots + 1])  # a document runs from one EOT (exclusive) to the next
    doc_ends = np.concatenate([eots, [len(tokens)]])
    per_doc = (doc_ends - doc_starts) // length  # whole windows that fit in each document
    index_in_doc = np.arange(per_doc.sum()) - np.repeat(np.cumsum(per_doc) - per_doc, per_doc)
    starts = np.repeat(doc_starts, per_doc) + index_in_doc * length  # (candidates,)
    rng = np.random.default_rng(seed)
    chosen = rng.choice(starts, size=min(n, len(starts)), replace=False)
    return [(np.asarray(tokens[s:s + prompt_tokens], dtype=np.int64),
             np.asarray(tokens[s + prompt_tokens:s + length], dtype=np.int64)) for s in chosen]


# ----------------------------------------------------------------------------------------------------------------------
# A language model, evaluated


def _generate(model: torch.nn.Module, start: torch.Tensor, new_tokens: int, cfg: EvalConfig,
              generator: torch.Generator) -> list[list[int]]:
    """The new tokens of each row of `start` (B, T0), sampled with the evaluation's settings."""
    out = model.generate(start, new_tokens, temperature=cfg.temperature, top_k=cfg.top_k, top_p=cfg.top_p,
                         generator=generator)
    return out[:, start.shape[1]:].tolist()


def evaluate_text(model: torch.nn.Module, data: TextData, cfg: EvalConfig, *, device: torch.device, seed: int
                  ) -> dict[str, dict]:
    """Every metric of TEXT_METRICS for a trained language model, on the held-out documents.

    - val_loss / perplexity per token, and per character (val_loss_char, perplexity_char: the same total NLL over the
      characters the scored tokens stand for, so runs with different tokenizers compare), over the first
      cfg.val_tokens held-out tokens;
    - BLEU of continuations: cfg.prompts prompts of cfg.prompt_tokens held-out tokens, each continued by
      cfg.continuation_tokens sampled tokens and scored against the held-out tokens that really follow;
    - Self-BLEU and distinct-1/2 of cfg.diversity_samples unprompted samples of cfg.sample_tokens tokens.
    Sampling uses cfg.temperature/top_k/top_p and a generator seeded with `seed`. Each record names the tokenizer
    ("extractor": what the numbers depend on) and its counts.
    """
    tok = data.tokenizer
    basis = f"{tok.kind}-tokenizer:{tok.sha256[:12]}"
    with console.status("evaluating: held-out loss"):
        nll, n, predicted = sequence_nll(model, data.val, block_size=model.config.block_size,
                                         max_tokens=cfg.val_tokens, batch_size=cfg.batch_size, device=device)
    if n == 0:
        raise GenscaleError(f"dataset {data.name}: the held-out split has no tokens to score")
    chars = tok.count_characters(predicted.tolist())
    scored = {"extractor": basis, "n_gen": 0, "n_ref": n, "ref": "held-out tokens"}
    per_char = {**scored, "n_ref": chars, "ref": "held-out characters"}
    out = {KEY_VAL_LOSS: {"value": nll / n, **scored}, KEY_PPL: {"value": perplexity(nll, n), **scored},
           KEY_VAL_LOSS_CHAR: {"value": nll / chars, **per_char},
           KEY_PPL_CHAR: {"value": perplexity(nll, chars), **per_char}}

    generator = torch.Generator(device).manual_seed(seed)
    was_training = model.training
    model.eval()
    try:
        pairs = continuation_prompts(data.val, n=cfg.prompts, prompt_tokens=cfg.prompt_tokens,
                                     reference_tokens=cfg.continuation_tokens, eot_id=tok.eot_id, seed=seed)
        if not pairs:
            raise GenscaleError(f"dataset {data.name}: no held-out document holds eval.prompt_tokens + "
                                f"eval.continuation_tokens = {cfg.prompt_tokens + cfg.continuation_tokens} tokens; "
                                "lower them for BLEU")
        with console.status(f"evaluating: {len(pairs)} continuations for BLEU"):
            prompts = torch.from_numpy(np.stack([p for p, _ in pairs])).to(device)  # (prompts, prompt_tokens)
            hypotheses = [tok.decode(ids) for ids in _generate(model, prompts, cfg.continuation_tokens, cfg,
                                                               generator)]
        references = [tok.decode(ref.tolist()) for _, ref in pairs]
        out[KEY_BLEU] = {"value": bleu(hypotheses, references, tokenize=cfg.bleu_tokenize), "extractor": basis,
                         "n_gen": len(pairs), "n_ref": len(pairs), "ref": "held-out continuations"}
        with console.status(f"evaluating: {cfg.diversity_samples} samples for self-BLEU and distinct-n"):
            start = torch.full((cfg.diversity_samples, 1), tok.eot_id, dtype=torch.long, device=device)
            samples = [tok.decode(ids) for ids in _generate(model, start, cfg.sample_tokens, cfg, generator)]
    finally:
        model.train(was_training)
    diverse = {"extractor": basis, "n_gen": len(samples), "n_ref": len(samples), "ref": "own samples"}
    out[KEY_SELF_BLEU] = {"value": self_bleu(samples, tokenize=cfg.bleu_tokenize), **diverse}
    for k in DISTINCT_NS:
        out[KEY_DISTINCT.format(n=k)] = {"value": distinct_n(samples, k, tokenize=cfg.bleu_tokenize), **diverse}
    return out
