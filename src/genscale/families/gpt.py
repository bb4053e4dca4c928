"""The GPT family: a GPT-2-style transformer (models/gpt.py) trained on tokenized text by train/gpt.py, with its
own tokenizer saved beside every run; fine-tuning from another gpt run (model.init_from)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from genscale.sections import Doc, EvalBase, Float, Int, ModelBase, TrainBase

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator, Sequence

    import torch

    from genscale.config import RunConfig
    from genscale.data.tokenizer import TextTokenizer
    from genscale.data.tokens import TextData
    from genscale.models.gpt import GPT
    from genscale.serve.models import TextJob
    from genscale.train.distributed import World
    from genscale.train.loop import Evaluation


def presets() -> dict[str, dict[str, dict[str, Any]]]:
    from genscale.models.gpt import PRESETS

    return {"gpt": PRESETS}


class GptModelConfig(ModelBase):
    presets = staticmethod(presets)

    family: Literal["gpt"] = Doc("gpt", "gpt: text, next-token prediction (models/gpt.py)")
    arch: Literal["gpt"] = Doc("gpt", "GPT-2-style decoder-only transformer (Radford et al. 2019)")
    size: str = Doc("small", "preset (models/gpt.py PRESETS): tiny, micro, mini, small, medium, gpt2")
    block_size: Int = Doc(256, "context length in tokens", ge=2)
    dropout: Float = Doc(0.0, "dropout on attention, residual and embedding outputs", ge=0, lt=1)
    bias: bool = Doc(False, "biases in Linear and LayerNorm layers; without is a little faster and as good")
    init_from: str | None = Doc(None, "a run (id, prefix or folder) whose final weights start this one "
                                "(fine-tuning); its tokenizer is reused, so data.tokenizer/vocab_size must match it")



class GptTrainConfig(TrainBase):
    family: Literal["gpt"] = Doc("gpt", "set from model.family", exclude=True)
    betas: tuple[Float, Float] = Doc((0.9, 0.95), "AdamW betas; (0.9, 0.95) as in GPT-3 (Brown et al. 2020)")
    lr: Float = Doc(1e-3, "peak AdamW learning rate (1e-3 suits small models; GPT-2 small used 6e-4)", gt=0)
    min_lr_ratio: Float = Doc(0.1, "the cosine schedule ends at lr * this (Hoffmann et al. 2022)", ge=0, le=1)
    warmup_steps: Int = Doc(100, "linear warm-up steps before the cosine decay", ge=0)
    weight_decay: Float = Doc(0.1, "AdamW decay, on matrices and embeddings only (not biases/norms)", ge=0)
    grad_accum: Int = Doc(1, "micro-batches per update; tokens per update = this * batch * block", ge=1)
    grad_clip: Float = Doc(1.0, "clip the global gradient norm to this; 0 disables", ge=0)
    compile: bool = Doc(False, "torch.compile the model (pays off on CUDA; compilation takes a minute)")


class GptEvalConfig(EvalBase):
    family: Literal["gpt"] = Doc("gpt", "set from model.family", exclude=True)
    val_tokens: Int = Doc(65536, "held-out tokens scored for val_loss and perplexities", ge=1)
    prompts: Int = Doc(32, "BLEU: prompts taken from held-out documents", ge=1)
    prompt_tokens: Int = Doc(64, "BLEU: tokens of each prompt", ge=1)
    continuation_tokens: Int = Doc(64, "BLEU: tokens generated per prompt, scored against the next this many "
                                   "held-out tokens", ge=1)
    diversity_samples: Int = Doc(16, "self-BLEU and distinct-n: unprompted samples of sample_tokens", ge=2)
    sample_tokens: Int = Doc(128, "tokens per unprompted sample", ge=1)
    temperature: Float = Doc(1.0, "evaluation sampling (0: greedy); 1 with no filter is the model itself", ge=0)
    top_k: Int | None = Doc(None, "evaluation sampling: keep the k most likely tokens", ge=1)
    top_p: Float | None = Doc(None, "evaluation sampling: nucleus mass", gt=0, le=1)
    bleu_tokenize: Literal["13a", "char", "zh", "ja-mecab", "intl", "none"] = Doc(
        "13a", "sacrebleu tokenizer of BLEU, self-BLEU and distinct-n; char (or zh) for text written without spaces")
    every_val_tokens: Int = Doc(8192, "during training: held-out tokens scored (val_loss)", ge=1)


@dataclass
class GptSampler:
    """A language model with its tokenizer; decoding options per call."""

    model: GPT
    tokenizer: TextTokenizer
    device: torch.device
    kind: Literal["text"] = "text"

    def texts(self, n: int, *, seed: int, prompt: str, max_new_tokens: int, temperature: float, top_k: int | None,
              top_p: float | None) -> list[str]:
        import torch

        start = self.start_ids(prompt).repeat(n, 1)  # (n, 1 + prompt tokens)
        gen = torch.Generator(self.device).manual_seed(seed)
        self.model.eval()
        out = self.model.generate(start, max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p,
                                  generator=gen)
        return [self.tokenizer.decode(row[start.shape[1]:].tolist()) for row in out]

    def start_ids(self, prompt: str) -> torch.Tensor:
        """(1, 1 + prompt tokens): the end-of-text token a document starts with, then the prompt's tokens."""
        import torch

        from genscale.data.tokenizer import UNK_ID
        from genscale.errors import GenscaleError

        tok = self.tokenizer
        ids = tok.encode(prompt) if prompt else []
        if tok.kind == "char" and UNK_ID in ids:  # byte-level BPE has no unknown token
            unknown = sorted({ch for ch in prompt if tok.encode(ch) == [UNK_ID]})
            raise GenscaleError(f"prompt: characters outside the run's vocabulary: {''.join(unknown)!r}")
        return torch.tensor([[tok.eot_id, *ids]], device=self.device)

    def texts_many(self, jobs: Sequence[TextJob]) -> list[list[str]]:
        """Several requests with one decoding setting (the HTTP service batches them so): requests whose prompts
        have one length share each forward; each request's rows are sampled from its own seeded generator, so a
        request gives what `texts` gives it alone. A streamed request (one job) hands each new piece of text to its
        `emit` as it comes; a job whose `stopped()` turns true ends early with what it has."""
        import torch

        from genscale.serve.models import stream_pieces

        starts = [self.start_ids(job.prompt) for job in jobs]  # checks every prompt first
        out: list[list[str]] = [[] for _ in jobs]
        by_length: dict[int, list[int]] = {}
        for i, start in enumerate(starts):
            by_length.setdefault(start.shape[1], []).append(i)
        self.model.eval()
        for group in by_length.values():
            idx = torch.cat([starts[i].repeat(jobs[i].n, 1) for i in group])  # (rows, T0)
            gens = [(jobs[i].n, torch.Generator(self.device).manual_seed(jobs[i].seed)) for i in group]
            new = max(jobs[i].max_tokens for i in group)
            j0 = jobs[group[0]]
            steps = self.model.stream(idx, new, temperature=j0.temperature, top_k=j0.top_k, top_p=j0.top_p,
                                      generator=gens)
            tokens: list[torch.Tensor] = []
            if j0.emit is not None:  # one streamed job
                pieces = stream_pieces(_kept(steps, tokens, j0.stopped), self.tokenizer.decode, j0.n)
                for row, piece in pieces:
                    j0.emit(row, piece)
            else:
                for _ in _kept(steps, tokens, lambda g=group: all(jobs[i].stopped() for i in g)):
                    pass
            generated = torch.cat(tokens, dim=1).tolist() if tokens else [[] for _ in range(len(idx))]
            row = 0
            for i in group:
                out[i] = [self.tokenizer.decode(ids[:jobs[i].max_tokens]) for ids in generated[row:row + jobs[i].n]]
                row += jobs[i].n
        return out


def _kept(steps: Iterator[torch.Tensor], tokens: list[torch.Tensor], stopped: Callable[[], bool]
          ) -> Iterator[list[int]]:
    """Each step's (B, 1) tokens appended to `tokens` and handed on as a list; ends early once `stopped()`."""
    for step in steps:
        tokens.append(step)
        yield step[:, 0].tolist()
        if stopped():
            return


def init_run_dir(cfg: RunConfig) -> Path | None:
    """The folder of `model.init_from`, checked: a finished gpt run whose tokenizer settings match this config."""
    from genscale.errors import GenscaleError
    from genscale.pipeline import load_run
    from genscale.train.checkpoint import checkpoint_steps

    if not cfg.model.init_from:
        return None
    try:
        init_dir, theirs = load_run(cfg.model.init_from)
    except GenscaleError as e:
        raise GenscaleError(f"model.init_from: {e}") from None
    where = f"model.init_from {cfg.model.init_from}"
    if theirs.model.family != FAMILY.name or not (init_dir / "tokenizer.json").exists():
        raise GenscaleError(f"{where}: not a gpt run with a tokenizer (family {theirs.model.family})")
    if not checkpoint_steps(init_dir / "checkpoints"):
        raise GenscaleError(f"{where}: the run has no checkpoint yet")
    mine, parent = cfg.data, theirs.data
    if (mine.tokenizer, mine.vocab_size) != (parent.tokenizer, parent.vocab_size):
        raise GenscaleError(f"{where}: that run's tokenizer is {parent.tokenizer} with vocab_size {parent.vocab_size}, "
                            f"this run asks for {mine.tokenizer} with {mine.vocab_size}; fine-tuning reuses the "
                            f"pretrained tokenizer, so set data.tokenizer={parent.tokenizer} "
                            f"data.vocab_size={parent.vocab_size}")
    return init_dir


class GptFamily:
    name = "gpt"
    data_kind: Literal["text"] = "text"
    model_config, train_config, eval_config = GptModelConfig, GptTrainConfig, GptEvalConfig
    labels = {"D": "unique training tokens", "N": "parameters N (transformer)", "unit": "tokens"}
    tune_space = {"train.lr": {"type": "float", "low": 1e-4, "high": 3e-2, "log": True},
                  "train.weight_decay": {"type": "float", "low": 0.0, "high": 0.2}}

    def presets(self) -> dict[str, dict[str, dict[str, Any]]]:
        return presets()

    def load_data(self, cfg: RunConfig, run_dir: Path | None) -> TextData:
        """Tokenized text with the tokenizer the run uses: the one saved in its folder, else its init_from run's,
        else one trained on the training documents."""
        from genscale.data.tokenizer import TextTokenizer
        from genscale.data.tokens import load_text_data

        saved = run_dir / "tokenizer.json" if run_dir else None
        if saved is not None and saved.exists():  # a resumed run needs only its own folder, not its parent's
            return load_text_data(cfg.data, tokenizer=TextTokenizer.load(saved))
        init_dir = init_run_dir(cfg)
        if init_dir is not None:
            return load_text_data(cfg.data, tokenizer=TextTokenizer.load(init_dir / "tokenizer.json"))
        return load_text_data(cfg.data)

    def check_data(self, cfg: RunConfig, data: TextData) -> None:
        return None

    def full_size(self, data: TextData) -> int:
        return len(data.train_full)

    def recipe(self, cfg: RunConfig, data: TextData, device: torch.device, *, resume: bool, world: World):
        """A new fine-tuning run starts from its init_from run's weights (a resumed one from its own checkpoint)."""
        from genscale.train.gpt import GptRecipe

        return GptRecipe(cfg, data, device, init_dir=None if resume else init_run_dir(cfg), world=world)

    def new_run_files(self, data: TextData, run_dir: Path) -> list[Path]:
        """The tokenizer: sampling and fine-tuning use exactly this one."""
        data.tokenizer.save(run_dir / "tokenizer.json")
        return [run_dir / "tokenizer.json"]

    def load_sampler(self, run_dir: Path, cfg: RunConfig, device: torch.device, *, folder: str = "checkpoints",
                     step: int | None = None) -> tuple[GptSampler, int]:
        from genscale.data.tokenizer import TextTokenizer
        from genscale.train.checkpoint import load_checkpoint, load_state
        from genscale.train.gpt import build_model, weights_from_checkpoint

        tokenizer = TextTokenizer.load(run_dir / "tokenizer.json")
        model = build_model(cfg, tokenizer.vocab_size)
        ckpt = load_checkpoint(run_dir / folder, step)
        load_state(model, weights_from_checkpoint(ckpt.tensors), f"{run_dir} step {ckpt.step}")
        return GptSampler(model.to(device).eval(), tokenizer, device), ckpt.step

    def produced_metrics(self, cfg: RunConfig) -> dict[str, str]:
        from genscale.metrics.text import TEXT_METRICS

        return TEXT_METRICS

    def evaluate(self, cfg: RunConfig, data: TextData, sampler: GptSampler, device: torch.device
                 ) -> tuple[dict[str, dict], dict[str, dict]]:
        from genscale.metrics.text import evaluate_text

        return evaluate_text(sampler.model, data, cfg.eval, device=device, seed=cfg.train.seed + 1), {}

    def periodic_evaluation(self, cfg: RunConfig, data: TextData, recipe: Any, device: torch.device
                            ) -> Evaluation | None:
        """val_loss of the first eval.every_val_tokens held-out tokens (the held-out set the final val_loss uses)."""
        from genscale.metrics.text import KEY_VAL_LOSS, sequence_nll
        from genscale.train.loop import Evaluation

        e = cfg.eval
        if e.every is None:
            return None

        def score_text() -> float:
            nll, count, _ = sequence_nll(recipe.model, data.val, block_size=recipe.model.config.block_size,
                                         max_tokens=e.every_val_tokens, batch_size=e.batch_size, device=device)
            return nll / count

        tokens = min(e.every_val_tokens, len(data.val) - 1)
        return Evaluation(KEY_VAL_LOSS, f"{tokens} held-out tokens", e.every, score_text)

    def write_samples(self, cfg: RunConfig, data: TextData, sampler: GptSampler, run_dir: Path) -> list[Path]:
        """4 unprompted samples (samples.txt), fixed seed."""
        from genscale.families.image import SAMPLE_SEED
        from genscale.paths import atomic_write_bytes

        e = cfg.eval
        texts = sampler.texts(4, seed=SAMPLE_SEED, prompt="", max_new_tokens=e.sample_tokens,
                              temperature=e.temperature, top_k=e.top_k, top_p=e.top_p)
        path = run_dir / "samples.txt"
        atomic_write_bytes(path, "".join(f"--- sample {i + 1}\n{t}\n" for i, t in enumerate(texts)).encode())
        return [path]

    def flops_per_step(self, cfg: RunConfig, data: TextData) -> int:
        from genscale.train.gpt import gpt_flops_per_step

        return gpt_flops_per_step(cfg, data.tokenizer.vocab_size)

    def examples_per_step(self, cfg: RunConfig) -> int:
        """Tokens per update."""
        return cfg.train.grad_accum * cfg.train.batch_size * cfg.model.block_size

    def count_settings(self, n: int) -> dict[str, Any]:
        """BLEU continuations and diversity samples."""
        return {"eval.prompts": n, "eval.diversity_samples": max(2, n)}

    def floor(self, cfg: RunConfig, data: TextData, metric: str) -> dict[str, Any]:
        return {"metric": metric, "value": 0.0, "how": "0: a loss has no higher floor that genscale measures"}


FAMILY = GptFamily()
