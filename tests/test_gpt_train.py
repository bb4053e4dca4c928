"""The gpt family end to end: training (golden loss, resume, accumulation, schedule), fine-tuning, sampling."""

import json
import math
import random
import shutil

import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from conftest import gpt_config
from genscale.cli import app
from genscale.errors import GenscaleError
from genscale.families.gpt import init_run_dir
from genscale.metrics.text import TEXT_METRICS
from genscale.pipeline import load_data, train
from genscale.tracking import resolve_run_dir
from genscale.train import gpt as gpt_module
from genscale.train.checkpoint import latest_step
from genscale.train.gpt import GptRecipe, cosine_lr, gpt_flops_per_step
from genscale.train.machinery import autocast_for

SUBJECTS = ["the king", "a fool", "the queen", "my lord", "the ghost", "a soldier", "the duke", "fair maid"]
VERBS = ["speaks to", "follows", "loves", "betrays", "forgives", "mocks", "waits for", "remembers"]
OBJECTS = ["the crown", "his brother", "the night", "a letter", "the sea", "her father", "the court", "a sword"]


def write_corpus(folder, docs: int = 12, sentences: int = 60, seed: int = 0):
    """Documents of simple, learnable sentences (a fixed grammar, seeded): small enough to train on in seconds."""
    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for d in range(docs):
        lines = [f"{rng.choice(SUBJECTS)} {rng.choice(VERBS)} {rng.choice(OBJECTS)}." for _ in range(sentences)]
        (folder / f"doc{d:02d}.txt").write_text("\n".join(lines).capitalize() + "\n")
    return folder


def final_tensors(run_dir):
    step = latest_step(run_dir / "checkpoints")
    return load_file(run_dir / "checkpoints" / f"step_{step:07d}.safetensors")


@pytest.fixture
def corpus(tmp_path):
    return write_corpus(tmp_path / "corpus")


def test_tiny_gpt_learns_to_a_golden_loss(corpus):
    cfg = gpt_config(corpus)
    data = load_data(cfg)
    untrained = GptRecipe(cfg, data, torch.device("cpu")).model
    x = torch.from_numpy(data.val[:cfg.model.block_size + 1].astype("int64"))[None]
    _, loss_at_init = untrained(x[:, :-1], x[:, 1:])

    run_dir = train(cfg)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert set(metrics) == set(TEXT_METRICS)
    val_loss = metrics["val_loss"]["value"]
    assert loss_at_init.item() > math.log(data.tokenizer.vocab_size) - 0.2  # starts near uniform guessing
    assert val_loss < loss_at_init.item() - 1.0  # and learned the grammar's letters and words
    assert val_loss == pytest.approx(GOLDEN_VAL_LOSS, abs=2e-3)  # CPU, fixed seed: pinned
    assert metrics["perplexity"]["value"] == pytest.approx(math.exp(val_loss), rel=1e-12)
    # char tokenizer: one token per character, so both perplexities agree
    assert metrics["perplexity_char"]["value"] == pytest.approx(metrics["perplexity"]["value"], rel=1e-12)
    gate = json.loads((run_dir / "gate.json").read_text())
    assert gate["verdict"] == "PASS" and gate["reasons"][0].startswith(f"val_loss = {val_loss:.4g} meets <= 2.5")
    assert (run_dir / "tokenizer.json").exists() and (run_dir / "samples.txt").read_text().count("--- sample") == 4


GOLDEN_VAL_LOSS = 1.9156


def interrupt_at_step(monkeypatch, n: int):
    original = gpt_module.GptRecipe.step
    calls = {"n": 0}

    def flaky(self, step, autocast, *, eager=False):
        calls["n"] += 1
        if calls["n"] == n:
            raise KeyboardInterrupt("simulated kill")
        return original(self, step, autocast, eager=eager)

    monkeypatch.setattr(gpt_module.GptRecipe, "step", flaky)


def test_killed_run_resumes_to_identical_weights(monkeypatch, corpus):
    # dropout and accumulation: the resumed run must restore the dropout RNG and the batch generator too
    cfg = gpt_config(corpus, model__dropout=0.1, train__grad_accum=2, train__steps=24, eval__on_train_end=False)
    reference = final_tensors(train(cfg))
    with monkeypatch.context() as m, pytest.raises(KeyboardInterrupt):
        interrupt_at_step(m, 15)  # after the step-10 checkpoint
        train(cfg)
    run_dir = resolve_run_dir("latest")
    assert latest_step(run_dir / "checkpoints") == 10
    resumed = final_tensors(train(resume=run_dir.name))
    assert resumed.keys() == reference.keys()
    for key in reference:
        assert torch.equal(resumed[key], reference[key]), key


class FixedBatches:
    """Stands in for TokenBatches: the step's micro-batches are these windows, in order (a draw is its number)."""

    def __init__(self, windows: list[torch.Tensor]):
        self.windows, self.drawn = windows, 0

    def starts(self) -> torch.Tensor:
        self.drawn += 1
        return torch.full((len(self.windows[self.drawn - 1]),), self.drawn - 1)

    def __call__(self, starts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        w = self.windows[int(starts[0])]
        return w[:, :-1], w[:, 1:]


def test_accumulated_micro_batches_equal_one_big_batch(corpus):
    """grad_accum 2 x batch 4 makes the same update as batch 8 with the same 8 windows."""
    big = gpt_config(corpus, train__batch_size=8, train__grad_accum=1)
    small = gpt_config(corpus, train__batch_size=4, train__grad_accum=2)
    data = load_data(big)
    windows = torch.from_numpy(data.train[:8 * 33].astype("int64")).view(8, 33)
    updated = []
    for cfg, batches in ((big, [windows]), (small, [windows[:4], windows[4:]])):
        recipe = GptRecipe(cfg, data, torch.device("cpu"))
        recipe.batches = FixedBatches(batches)
        recipe.step(0, autocast_for(torch.device("cpu"), "fp32"))
        updated.append(recipe.model.state_dict())
    for key in updated[0]:
        torch.testing.assert_close(updated[0][key], updated[1][key], rtol=1e-5, atol=1e-6, msg=key)


def test_cosine_schedule_closed_form():
    kw = {"lr": 1.0, "min_lr": 0.1, "warmup_steps": 10, "total_steps": 110}
    assert cosine_lr(0, **kw) == pytest.approx(0.1)  # first warm-up step: lr / warmup
    assert cosine_lr(9, **kw) == pytest.approx(1.0)
    assert cosine_lr(10, **kw) == pytest.approx(1.0)  # decay starts at the peak
    assert cosine_lr(60, **kw) == pytest.approx(0.55)  # half way: the mean of peak and floor
    assert cosine_lr(110, **kw) == pytest.approx(0.1) and cosine_lr(500, **kw) == pytest.approx(0.1)


def test_counted_flops_are_the_loops_and_scale_with_accumulation(corpus):
    cfg = gpt_config(corpus, train__steps=3, eval__on_train_end=False)
    run_dir = train(cfg)
    sidecar = json.loads((run_dir / "checkpoints" / "step_0000003.json").read_text())
    vocab = load_data(cfg).tokenizer.vocab_size
    per_step = gpt_flops_per_step(cfg, vocab)
    assert sidecar["counters"]["flops_per_step"] == per_step
    assert gpt_flops_per_step(gpt_config(corpus, train__grad_accum=2), vocab) == 2 * per_step
    n_linear = sum(p.numel() for n, p in GptRecipe(cfg, load_data(cfg), torch.device("cpu")).model.named_parameters()
                   if p.dim() == 2 and "wpe" not in n)  # every matrix multiplies (wte is the tied output head)
    tokens = cfg.train.batch_size * cfg.model.block_size
    assert per_step > 6 * n_linear * tokens  # 6 N T for the matmuls, plus attention


def test_fine_tuning_starts_from_the_pretrained_weights_and_tokenizer(tmp_path, corpus):
    other = write_corpus(tmp_path / "other", docs=4, seed=1)
    pretrained = train(gpt_config(corpus, train__steps=10, eval__on_train_end=False))
    cfg = gpt_config(other, model__init_from=str(pretrained), train__steps=4, eval__on_train_end=False)
    assert init_run_dir(cfg) == pretrained
    data = load_data(cfg)
    assert data.tokenizer.sha256 == load_data(gpt_config(corpus)).tokenizer.sha256  # the parent's, not retrained
    start = GptRecipe(cfg, data, torch.device("cpu"), init_dir=pretrained).model.state_dict()
    parent = final_tensors(pretrained)
    for key, value in start.items():
        assert torch.equal(value, parent[f"model.{key.replace('lm_head', 'wte')}"]), key  # the head is tied
    tuned = train(cfg)
    assert (tuned / "tokenizer.json").read_text() == (pretrained / "tokenizer.json").read_text()
    shutil.rmtree(pretrained)  # a resumed fine-tuning run needs only its own folder
    assert train(resume=str(tuned)) == tuned


def test_fine_tuning_refuses_another_tokenizer_or_network(corpus):
    pretrained = train(gpt_config(corpus, train__steps=2, eval__on_train_end=False))
    with pytest.raises(GenscaleError, match=r"tokenizer is char with vocab_size 4096, this run asks for bpe"):
        load_data(gpt_config(corpus, model__init_from=str(pretrained), data__tokenizer="bpe"))
    cfg = gpt_config(corpus, model__init_from=str(pretrained), model__size="micro")
    with pytest.raises(GenscaleError, match=r"its network does not fit this one \(size tiny"):
        GptRecipe(cfg, load_data(cfg), torch.device("cpu"), init_dir=init_run_dir(cfg))


def test_sample_command_prompts_and_writes(tmp_path, corpus):
    run_dir = train(gpt_config(corpus, train__steps=10, eval__on_train_end=False))
    runner = CliRunner()
    args = ["sample", str(run_dir), "--prompt", "The king ", "-n", "3", "--max-new-tokens", "12",
            "--temperature", "0.8", "--top-k", "5", "--top-p", "0.9"]
    shown = runner.invoke(app, args)
    assert shown.exit_code == 0, shown.output
    assert shown.output.count("sample ") == 3 and shown.output.count("The king ") == 3
    out = tmp_path / "samples.jsonl"
    written = runner.invoke(app, [*args, "-o", str(out)])
    assert written.exit_code == 0, written.output
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 3 and all(r["prompt"] == "The king " and 0 < len(r["text"]) <= 12 for r in rows)
    again = runner.invoke(app, [*args, "-o", str(tmp_path / "again.jsonl")])  # same seed, same samples
    assert again.exit_code == 0 and (tmp_path / "again.jsonl").read_text() == out.read_text()
    bad = runner.invoke(app, ["sample", str(run_dir), "--prompt", "Жук"])
    assert bad.exit_code == 1 and "characters outside the run's vocabulary: 'Жку'" in bad.output.replace("\n", "")


def test_cjk_text_trains_and_samples_at_character_level(tmp_path):
    folder = tmp_path / "ja"
    folder.mkdir()
    sentences = ["吾輩は猫である。", "名前はまだ無い。", "どこで生れたかとんと見当がつかぬ。", "春はあけぼの。",
                 "祇園精舎の鐘の声。"]
    rng = random.Random(0)
    for d in range(6):
        (folder / f"{d}.txt").write_text("".join(rng.choice(sentences) for _ in range(40)))
    cfg = gpt_config(folder, train__steps=30, eval__bleu_tokenize="char")
    run_dir = train(cfg)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["val_loss"]["value"] < math.log(load_data(cfg).tokenizer.vocab_size)
    out = CliRunner().invoke(app, ["sample", str(run_dir), "--prompt", "吾輩は", "--max-new-tokens", "8"])
    assert out.exit_code == 0
    text = out.output.split("吾輩は", 1)[1]
    assert sum("\u3040" <= ch <= "\u9fff" for ch in text) >= 4  # kana and kanji, not bytes or replacement chars


def test_eval_n_sets_the_generated_text_samples(corpus):
    """`eval --n` means generated samples for every family: for text, the BLEU continuations and the self-BLEU /
    distinct-n samples (before: an error for a gpt run)."""
    run_dir = train(gpt_config(corpus, train__steps=4, eval__on_train_end=False))
    result = CliRunner().invoke(app, ["eval", str(run_dir), "--n", "3"])
    assert result.exit_code == 0, result.output
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["bleu"]["n_gen"] == 3 and metrics["self_bleu"]["n_gen"] == 3
    result = CliRunner().invoke(app, ["eval", str(run_dir), "--extractor", "inception"])
    assert result.exit_code == 1 and "--extractor applies to image runs" in result.output
