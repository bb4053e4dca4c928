"""The library face of the CLI: train, evaluate, gate and sample a run, for every family."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from rich.console import Console

from genscale.config import RunConfig, config_from_dict, config_with, load_config, read_yaml_mapping
from genscale.data.datasets import DataSplits, load_image_data
from genscale.data.tokenizer import UNK_ID, TextTokenizer
from genscale.data.tokens import TextData
from genscale.errors import GenscaleError
from genscale.gate import GateResult, apply_gate
from genscale.metrics.evaluate import evaluate_images, generate_images, make_extractor
from genscale.models.gan import build_gan
from genscale.models.gpt import GPT
from genscale.paths import atomic_write_bytes, check_output_file, read_json, runs_dir
from genscale.tracking import NullTracker, Tracker, resolve_run_dir, run_lock, tracking_uri
from genscale.train.checkpoint import checkpoint_steps, load_checkpoint, load_state, unprefixed
from genscale.train.gan import GanRecipe
from genscale.train.gpt import GptRecipe, build_model, weights_from_checkpoint
from genscale.train.loop import Evaluation, fit, write_config
from genscale.train.machinery import select_device
from genscale.ui import console

results = Console(soft_wrap=True)  # stdout: metrics and the gate verdict

SAMPLE_SEED = 1234  # fixed noise for sample grids, so grids of different runs are comparable
GRID_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")  # what `sample -o` may write an image grid as


def save_grid(images: torch.Tensor, path: Path, nrow: int | None = None, pad: int = 2) -> Path:
    """uint8 (N, C, H, W) -> one PNG grid."""
    n, c, h, w = images.shape
    nrow = nrow or int(np.ceil(np.sqrt(n)))
    rows = int(np.ceil(n / nrow))
    grid = np.full((rows * (h + pad) + pad, nrow * (w + pad) + pad, c), 255, dtype=np.uint8)
    for i, img in enumerate(images.numpy()):
        r, col = divmod(i, nrow)
        grid[pad + r * (h + pad):pad + r * (h + pad) + h, pad + col * (w + pad):pad + col * (w + pad) + w] = \
            img.transpose(1, 2, 0)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(grid[..., 0] if c == 1 else grid).save(path)
    return path


def tracked_run_id(run_dir: Path) -> str:
    """The MLflow run id of a run folder: recorded in tracking.json, else the folder's name."""
    path = run_dir / "tracking.json"
    record = read_json(path, "tracking record") if path.exists() else {}
    if not isinstance(record, dict) or not isinstance(record.get("run_id", ""), str):
        raise GenscaleError(f"{path}: tracking record is not {{\"run_id\": \"...\"}}")
    return record.get("run_id") or run_dir.name


def load_run(run: str) -> tuple[Path, RunConfig]:
    """(folder, config) of a run given by folder, id, unique id prefix or 'latest'."""
    run_dir = resolve_run_dir(run)
    path = run_dir / "config.yaml"
    return run_dir, config_from_dict(read_yaml_mapping(path, "run config"), str(path))


def run_tracker(run_dir: Path, *, reopen: bool) -> Tracker | NullTracker:
    """The tracked run of an existing run folder in the user's store; a NullTracker (and a note) if the store does
    not hold it, e.g. a folder copied from another machine. `reopen`: mark it RUNNING (resume), not for eval."""
    run_id = tracked_run_id(run_dir)
    tracker = Tracker.existing(run_id, reopen=reopen)
    if tracker is None:
        console.print(f"note: run {run_id} is not in the tracking store {tracking_uri()}; results are written to "
                      f"{run_dir} only (set MLFLOW_TRACKING_URI to the store that holds it)", highlight=False)
        return NullTracker(run_id)
    return tracker


def init_run_dir(cfg: RunConfig) -> Path | None:
    """The folder of `model.init_from`, checked: a finished gpt run whose tokenizer settings match this config."""
    if not cfg.model.init_from:
        return None
    try:
        init_dir, theirs = load_run(cfg.model.init_from)
    except GenscaleError as e:
        raise GenscaleError(f"model.init_from: {e}") from None
    where = f"model.init_from {cfg.model.init_from}"
    if theirs.model.family != "gpt" or not (init_dir / "tokenizer.json").exists():
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


def load_data(cfg: RunConfig, run_dir: Path | None = None) -> DataSplits | TextData:
    """The run's data: image splits (gan), or tokenized text (gpt) with the tokenizer the run uses: the one saved
    in its folder, else its init_from run's, else one trained on the training documents."""
    if cfg.model.family == "gan":
        return load_image_data(cfg.data)
    from genscale.data.tokenizer import TextTokenizer
    from genscale.data.tokens import load_text_data

    saved = run_dir / "tokenizer.json" if run_dir else None
    if saved is not None and saved.exists():  # a resumed run needs only its own folder, not its parent's
        return load_text_data(cfg.data, tokenizer=TextTokenizer.load(saved))
    init_dir = init_run_dir(cfg)
    if init_dir is not None:
        return load_text_data(cfg.data, tokenizer=TextTokenizer.load(init_dir / "tokenizer.json"))
    return load_text_data(cfg.data)


def make_recipe(cfg: RunConfig, data: DataSplits | TextData, device: torch.device, *, resume: bool
                ) -> GanRecipe | GptRecipe:
    """The family's recipe; a new fine-tuning run starts from its init_from run's weights (a resumed one from its
    own checkpoint)."""
    if cfg.model.family == "gan":
        return GanRecipe(cfg, data, device)  # type: ignore[arg-type]
    return GptRecipe(cfg, data, device, init_dir=None if resume else init_run_dir(cfg))  # type: ignore[arg-type]


def load_generator(run_dir: Path, cfg: RunConfig, device: torch.device, *, folder: str = "checkpoints",
                   step: int | None = None) -> tuple[torch.nn.Module, int]:
    """The EMA generator of the run's newest intact checkpoint (or of `step`, in `folder`: best/ holds the best
    checkpoint), and that checkpoint's step."""
    ckpt = load_checkpoint(run_dir / folder, step)
    g, _ = build_gan(cfg.model.arch, cfg.model.size, z_dim=cfg.model.z_dim,
                     image_shape=tuple(ckpt.sidecar["image_shape"]), loss=cfg.model.loss)
    load_state(g, unprefixed(unprefixed(ckpt.tensors, "ema"), "module"), f"{run_dir} step {ckpt.step}")
    return g.to(device).eval(), ckpt.step


def load_language_model(run_dir: Path, cfg: RunConfig, device: torch.device, *, folder: str = "checkpoints",
                        step: int | None = None) -> tuple[GPT, TextTokenizer, int]:
    """The GPT weights of the run's newest intact checkpoint (or of `step`, in `folder`), its tokenizer, and that
    checkpoint's step."""
    from genscale.data.tokenizer import TextTokenizer

    tokenizer = TextTokenizer.load(run_dir / "tokenizer.json")
    model = build_model(cfg, tokenizer.vocab_size)
    ckpt = load_checkpoint(run_dir / folder, step)
    load_state(model, weights_from_checkpoint(ckpt.tensors), f"{run_dir} step {ckpt.step}")
    return model.to(device).eval(), tokenizer, ckpt.step


def _flat_metrics(records: dict[str, dict]) -> dict[str, float]:
    return {k: v["value"] for k, v in records.items()}


def score_model(cfg: RunConfig, data: DataSplits | TextData, model: torch.nn.Module, device: torch.device
                ) -> tuple[dict[str, dict], dict[str, dict]]:
    """(the full evaluation's metric records of a model (gan: an EMA generator) on held-out data (gan: the test
    split), facts stored beside them: the domain extractor's own test accuracy)."""
    if cfg.model.family == "gpt":
        from genscale.metrics.text import evaluate_text

        return evaluate_text(model, data, cfg.eval, device=device, seed=cfg.train.seed + 1), {}  # type: ignore
    extractor = make_extractor(data, cfg.eval, device)  # type: ignore[arg-type]
    images = generate_images(model, cfg.eval.n_samples, z_dim=cfg.model.z_dim, seed=cfg.train.seed + 1,
                             device=device)
    records = evaluate_images(images, data, extractor, cfg.eval)  # type: ignore[arg-type]
    facts = {"extractor_test_accuracy": {"value": extractor.test_accuracy, "extractor": extractor.id}} \
        if hasattr(extractor, "test_accuracy") else {}
    return records, facts


def periodic_evaluation(cfg: RunConfig, data: DataSplits | TextData, recipe: GanRecipe | GptRecipe,
                        device: torch.device) -> Evaluation | None:
    """The cheap metric of `eval.every` (None when it is off): gan, FID of eval.every_n_samples EMA samples against
    as many validation images (the test split stays unseen until the final evaluation); gpt, val_loss of the first
    eval.every_val_tokens held-out tokens (the held-out set the final val_loss uses)."""
    e = cfg.eval
    if e.every is None:
        return None
    if isinstance(recipe, GptRecipe):
        from genscale.metrics.text import KEY_VAL_LOSS, sequence_nll

        def score_text() -> float:
            nll, count, _ = sequence_nll(recipe.model, data.val, block_size=recipe.model.config.block_size,
                                         max_tokens=e.every_val_tokens, batch_size=e.batch_size, device=device)
            return nll / count

        tokens = min(e.every_val_tokens, len(data.val) - 1)  # type: ignore[union-attr]
        return Evaluation(KEY_VAL_LOSS, f"{tokens} held-out tokens", e.every, score_text)
    from genscale.metrics.evaluate import extract, reference_features
    from genscale.metrics.image import KEY_FID, feature_moments, fid_from_moments

    n = min(e.every_n_samples, len(data.val))  # type: ignore[union-attr]
    extractor = make_extractor(data, e, device)  # type: ignore[arg-type]
    reference = feature_moments(reference_features(extractor, data, n, e.batch_size, split="val"))  # type: ignore

    def score_images() -> float:
        images = generate_images(recipe.run.ema.module, n, z_dim=cfg.model.z_dim, seed=cfg.train.seed + 2,
                                 device=device)
        return fid_from_moments(*feature_moments(extract(extractor, images, e.batch_size, "generated")[0]),
                                *reference)

    return Evaluation(KEY_FID + extractor.metric_suffix, f"{n} generated vs {n} validation images ({extractor.id})",
                      e.every, score_images)


def evaluate_best(cfg: RunConfig, run_dir: Path, data: DataSplits | TextData, device: torch.device,
                  final: dict[str, dict], tracker: Tracker | NullTracker) -> dict | None:
    """The best checkpoint of the metric curve scored with the final evaluation's full budget (the final records
    when the best is the last step), stored in best.json as "metrics" and logged as best.<metric>."""
    path = run_dir / "best.json"
    if not path.exists():
        return None
    best = read_json(path, "best checkpoint record")
    if best["step"] == cfg.train.steps:
        records = final
    else:
        model = load_language_model(run_dir, cfg, device, folder="best", step=best["step"])[0] \
            if cfg.model.family == "gpt" else load_generator(run_dir, cfg, device, folder="best", step=best["step"])[0]
        records, _ = score_model(cfg, data, model, device)
    best["metrics"] = _flat_metrics(records)
    atomic_write_bytes(path, json.dumps(best, indent=1).encode())
    tracker.log_metrics({f"best.{k}": v for k, v in best["metrics"].items()}, best["step"])
    tracker.set_tags({"best.step": best["step"]})
    results.print(f"best checkpoint: step {best['step']} of {cfg.train.steps} ({best['metric']} {best['value']:.4g} "
                  f"on {best['budget']}); at the final evaluation's budget: " +
                  ", ".join(f"{k} = {v:.4f}" for k, v in best["metrics"].items() if k in final))
    return best


def evaluate_and_gate(cfg: RunConfig, run_dir: Path, data: DataSplits | TextData, model: torch.nn.Module,
                      device: torch.device, tracker: Tracker | NullTracker, step: int) -> tuple[dict, GateResult]:
    """Metrics of the trained model (gan: its EMA generator) on held-out data, stored in metrics.json, then the
    gate, stored in gate.json; both logged to the tracker."""
    path = run_dir / "metrics.json"
    stored = read_json(path, "metrics file") if path.exists() else {}
    if not isinstance(stored, dict):
        raise GenscaleError(f"{path}: metrics file is not a JSON object; move it away to evaluate again")
    records, facts = score_model(cfg, data, model, device)
    stored.update({**facts, **records})
    atomic_write_bytes(path, json.dumps(stored, indent=1).encode())
    gate = apply_gate(cfg.gate, _flat_metrics(stored))
    atomic_write_bytes(run_dir / "gate.json", json.dumps({"verdict": gate.verdict,
                                                          "reasons": gate.reasons}, indent=1).encode())
    tracker.log_metrics(_flat_metrics(records), step)
    tracker.set_tags({**{f"{k}.extractor": v["extractor"] for k, v in records.items()},
                      **{f"{k}.n_gen": v["n_gen"] for k, v in records.items()},
                      "gate": gate.verdict, "gate.reasons": "; ".join(gate.reasons)})
    return records, gate


def print_results(records: dict[str, dict], gate: GateResult) -> None:
    for name, r in records.items():
        results.print(f"{name} = {r['value']:.4f}  ({r['extractor']}, {r['n_gen']} generated vs {r['n_ref']} "
                      f"{r.get('ref', 'test')})")
    colour = "green" if gate.passed else "red"
    results.print(f"gate: [bold {colour}]{gate.verdict}[/]")
    for reason in gate.reasons:
        results.print(f"  - {reason}")


def _write_samples(cfg: RunConfig, recipe: GanRecipe | GptRecipe, run_dir: Path, device: torch.device) -> Path:
    """gan: a grid of 64 EMA samples (samples.png); gpt: 4 unprompted samples (samples.txt). Fixed seed."""
    if isinstance(recipe, GanRecipe):
        return save_grid(generate_images(recipe.run.ema.module, 64, z_dim=cfg.model.z_dim, seed=SAMPLE_SEED,
                                         device=device), run_dir / "samples.png")
    texts = generate_texts(recipe.model, recipe.data.tokenizer, prompt="", n=4, max_new_tokens=cfg.eval.sample_tokens,
                           temperature=cfg.eval.temperature, top_k=cfg.eval.top_k, top_p=cfg.eval.top_p,
                           seed=SAMPLE_SEED, device=device)
    path = run_dir / "samples.txt"
    atomic_write_bytes(path, "".join(f"--- sample {i + 1}\n{t}\n" for i, t in enumerate(texts)).encode())
    return path


def train(cfg: RunConfig | None = None, *, resume: str | None = None, run_dir: Path | None = None,
          tags: dict[str, str] | None = None) -> Path:
    """Train a new run from `cfg`, or continue run `resume` from its latest checkpoint; returns the run folder.

    A new run's folder is `<runs>/<MLflow run id>` unless `run_dir` is given (a study puts its trials in its own
    folder); `tags` are added to the MLflow run. The data and device are checked before a run is recorded, so
    bad input leaves no half-made run behind.
    """
    if resume:
        run_dir, cfg = load_run(resume)
    assert cfg is not None
    device = select_device(cfg.train.device)
    data = load_data(cfg, run_dir if resume else None)
    if cfg.eval.every and isinstance(data, DataSplits) and len(data.val) < 2:
        raise GenscaleError(f"eval.every: dataset {data.name} has {len(data.val)} validation images; scoring during "
                            "training needs a validation split (data.val_size or data.val_fraction)")
    if resume:
        lock = run_lock(run_dir)  # before the tracker: a second process on this run must not touch its status
        tracker = run_tracker(run_dir, reopen=True)
    else:
        tracker = Tracker(cfg.tracking.uri, cfg.tracking.experiment, run_name=cfg.name,
                          tags={"family": cfg.model.family, "arch": cfg.model.arch, **(tags or {})})
        run_dir = run_dir or runs_dir() / tracker.run_id
        run_dir.mkdir(parents=True, exist_ok=True)
        lock = run_lock(run_dir)
        atomic_write_bytes(run_dir / "tracking.json", json.dumps({"run_id": tracker.run_id}).encode())
        write_config(cfg, run_dir)
        if isinstance(data, TextData):  # saved with the run: sampling and fine-tuning use exactly this one
            data.tokenizer.save(run_dir / "tokenizer.json")
            tracker.log_artifact(run_dir / "tokenizer.json")
        tracker.log_params(cfg.model_dump(mode="json"))
        tracker.log_artifact(run_dir / "config.yaml")
    console.print(f"run {tracker.run_id}  ({run_dir})")
    try:
        recipe = make_recipe(cfg, data, device, resume=bool(resume))
        counters = fit(cfg, run_dir, recipe, tracker, device, periodic_evaluation(cfg, data, recipe, device))
        summary = {"family": cfg.model.family, "arch": cfg.model.arch, **recipe.summary(), "steps": cfg.train.steps,
                   "flops": counters["flops"], "epochs": counters["epochs"],
                   "train_seconds": counters["train_seconds"], "device": str(device)}
        atomic_write_bytes(run_dir / "summary.json", json.dumps(summary, indent=1).encode())
        tracker.set_tags({k: v for k, v in summary.items() if k in ("dataset", "dataset_version", "device")})
        tracker.log_metrics({k: summary[k] for k in ("flops", "epochs", "train_seconds", "data_size", "params")},
                            cfg.train.steps)
        tracker.log_artifact(_write_samples(cfg, recipe, run_dir, device))
        if cfg.eval.on_train_end:
            model = recipe.run.ema.module if isinstance(recipe, GanRecipe) else recipe.model
            records, gate = evaluate_and_gate(cfg, run_dir, data, model, device, tracker, cfg.train.steps)
            print_results(records, gate)
            evaluate_best(cfg, run_dir, data, device, records, tracker)
        ckpt = run_dir / "checkpoints"
        tracker.log_artifact(ckpt / f"step_{cfg.train.steps:07d}.safetensors", "checkpoint")
        tracker.log_artifact(ckpt / f"step_{cfg.train.steps:07d}.json", "checkpoint")
    except KeyboardInterrupt:
        tracker.finish("KILLED")
        raise
    except BaseException:
        tracker.finish("FAILED")
        raise
    finally:
        lock.release()
    tracker.finish()
    return run_dir


def evaluate_run(run: str, *, extractor: str | None = None, n: int | None = None) -> tuple[dict, GateResult]:
    """Metrics and gate of a run's newest intact checkpoint, logged to its tracked run (its status unchanged)."""
    run_dir, cfg = load_run(run)
    text = cfg.model.family == "gpt"
    if text and extractor:
        raise GenscaleError("eval: --extractor applies to image (gan) runs; a gpt run's metrics need no extractor")
    if extractor:
        cfg = config_with(cfg, {"eval.extractor": extractor}, f"--extractor {extractor}")
    if n is not None:  # generated samples: images for FID/KID/IS; text: BLEU continuations and diversity samples
        cfg = config_with(cfg, {"eval.prompts": n, "eval.diversity_samples": n} if text else {"eval.n_samples": n},
                          f"--n {n}")
    device = select_device(cfg.train.device)
    data = load_data(cfg, run_dir)
    if cfg.model.family == "gpt":
        model, _, step = load_language_model(run_dir, cfg, device)
    else:
        model, step = load_generator(run_dir, cfg, device)
    if step != cfg.train.steps:
        console.print(f"note: evaluating checkpoint step {step} of the run's {cfg.train.steps} steps", highlight=False)
    return evaluate_and_gate(cfg, run_dir, data, model, device, run_tracker(run_dir, reopen=False), step)


def sample_run(run: str, *, n: int, out: Path, seed: int = SAMPLE_SEED) -> Path:
    """A PNG (or JPEG/WebP/BMP, by `out`'s suffix) grid of n samples from an image run's EMA generator."""
    run_dir, cfg = load_run(run)
    if cfg.model.family != "gan":
        raise GenscaleError(f"run {run}: a {cfg.model.family} run samples text; use sample_texts")
    check_output_file(out, GRID_SUFFIXES, "image grid")
    device = select_device(cfg.train.device)
    g, _ = load_generator(run_dir, cfg, device)
    return save_grid(generate_images(g, n, z_dim=cfg.model.z_dim, seed=seed, device=device), out)


def generate_texts(model: GPT, tokenizer: TextTokenizer, *, prompt: str, n: int, max_new_tokens: int,
                   temperature: float, top_k: int | None, top_p: float | None, seed: int,
                   device: torch.device) -> list[str]:
    """n continuations of `prompt` (empty: start of a document); the prompt is not repeated in the output."""
    ids = tokenizer.encode(prompt) if prompt else []
    if tokenizer.kind == "char" and UNK_ID in ids:  # byte-level BPE has no unknown token
        unknown = sorted({ch for ch in prompt if tokenizer.encode(ch) == [UNK_ID]})
        raise GenscaleError(f"--prompt: characters outside the run's vocabulary: {''.join(unknown)!r}")
    start = torch.tensor([tokenizer.eot_id, *ids], device=device).repeat(n, 1)  # (n, 1 + prompt tokens)
    gen = torch.Generator(device).manual_seed(seed)
    out = model.generate(start, max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p, generator=gen)
    return [tokenizer.decode(row[start.shape[1]:].tolist()) for row in out]


def sample_texts(run: str, *, prompt: str, n: int, max_new_tokens: int, temperature: float, top_k: int | None,
                 top_p: float | None, seed: int = SAMPLE_SEED) -> list[str]:
    """n continuations of `prompt` from a text (gpt) run."""
    run_dir, cfg = load_run(run)
    if cfg.model.family != "gpt":
        raise GenscaleError(f"run {run}: a {cfg.model.family} run samples images; --prompt and the text options "
                            "apply to gpt runs")
    device = select_device(cfg.train.device)
    model, tokenizer, _ = load_language_model(run_dir, cfg, device)
    return generate_texts(model, tokenizer, prompt=prompt, n=n, max_new_tokens=max_new_tokens,
                          temperature=temperature, top_k=top_k, top_p=top_p, seed=seed, device=device)


def config_for_train(path: str | None, overrides: list[str]) -> RunConfig:
    if path is None:
        raise GenscaleError("train: give a CONFIG file, or --resume RUN")
    return load_config(path, overrides)

