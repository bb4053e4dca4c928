"""Export a run's sampler to the formats the ecosystem loads, without genscale.

- `hf` (gpt runs): a transformers GPT-2 folder. GPT(config) is GPT-2's architecture (pre-LN, exact GELU, learned
  positions, tied output layer), so GPT2LMHeadModel computes the same logits from `gpt2_state_dict`'s weights;
  with the run's tokenizer.json and a tokenizer_config.json, `AutoModelForCausalLM.from_pretrained(folder)` and
  `AutoTokenizer.from_pretrained(folder)` load it offline. Written with safetensors and json: transformers is not a
  dependency of genscale.
- `torch` (every run): the sampler's network as a `torch.export` program (`<name>.pt2`, loaded with
  `torch.export.load`, no genscale class needed), its weights as safetensors, and export.json: the inputs, the
  output, and for images the Python that turns a seed into what `genscale sample --seed` gives.

Every export has a README.md model card: the run, its data version, metrics and gate. The folder is written beside
its destination and renamed into place, so a reader sees the whole export or none. A registered model version
carries its run's export (registry.py), not the training checkpoint with its optimizer state.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import torch

from genscale.config import RunConfig
from genscale.errors import GenscaleError
from genscale.families import family_of
from genscale.paths import read_json, write_json

FORMATS = ("hf", "torch")
DEFAULT_FORMAT = {"text": "hf", "image": "torch"}  # what a registered version carries, by the family's data kind
FORMAT_RULE = "hf (a transformers GPT-2 folder, gpt runs) or torch (a torch.export program, every run)"


def export_run(run: str, *, fmt: str, out: Path | None = None) -> Path:
    """Export run `run` (id, prefix, folder or 'latest') as `fmt` into `out` (default `<run folder>/export-<fmt>`),
    which must be new or an empty folder; returns the folder written."""
    from genscale.pipeline import load_run

    run_dir, cfg = load_run(run)
    out = Path(out) if out is not None else run_dir / f"export-{fmt}"
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise GenscaleError(f"{out}: {'is not empty' if out.is_dir() else 'is a file'}; the export is written to a "
                            "new or empty folder (give another with -o)")
    return write_export(run_dir, cfg, fmt, out)


def check_format(fmt: str) -> str:
    if fmt not in FORMATS:
        raise GenscaleError(f"--format {fmt!r}: choose {FORMAT_RULE}")
    return fmt


def write_export(run_dir: Path, cfg: RunConfig, fmt: str, out: Path, *, step: int | None = None) -> Path:
    """The export of the run's newest intact checkpoint (or of `step`) as `fmt`, written to a temporary sibling
    folder and renamed to `out` (which must not exist, or be empty)."""
    from genscale.pipeline import load_sampler, tracked_run_id

    check_format(fmt)
    family = family_of(cfg)
    if fmt == "hf" and family.data_kind != "text":
        raise GenscaleError(f"--format hf: a transformers folder is for gpt runs; a {family.name} run's network is "
                            "genscale's own class, which no transformers or diffusers class loads: use --format torch")
    sampler, step = load_sampler(run_dir, cfg, torch.device("cpu"), step=step)  # CPU: the export runs anywhere
    facts = run_facts(run_dir, cfg, step, tracked_run_id(run_dir))
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        if sampler.kind == "text":
            notes = write_gpt_hf(sampler, cfg, tmp) if fmt == "hf" else write_gpt_torch(sampler, tmp)
        else:
            if family.network_export is None:
                raise GenscaleError(f"--format torch: the {family.name} family has no exportable network")
            notes = write_network_torch(family.network_export(cfg, sampler), tmp, facts)
        write_model_card(tmp / "README.md", fmt, facts, notes)
        os.replace(tmp, out)  # a rename: atomic, and it replaces an empty folder
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def run_facts(run_dir: Path, cfg: RunConfig, step: int, run_id: str) -> dict[str, Any]:
    """What the model card says of the run: its data and data version, metrics (with their extractor), gate."""
    from genscale.registry import metric_records

    summary = read_json(run_dir / "summary.json", "run summary") if (run_dir / "summary.json").exists() else {}
    metrics = metric_records(run_dir) if (run_dir / "metrics.json").exists() else {}
    gate = read_json(run_dir / "gate.json", "gate verdict") if (run_dir / "gate.json").exists() else None
    return {"run_id": run_id, "run_name": cfg.name, "family": cfg.model.family, "arch": cfg.model.arch,
            "size": cfg.model.size, "step": step, "steps": cfg.train.steps, "dataset": summary.get("dataset"),
            "dataset_version": summary.get("dataset_version"), "params": summary.get("params"),
            "metrics": {k: {"value": r["value"], "extractor": r.get("extractor")} for k, r in metrics.items()},
            "gate": gate}


# --- gpt ------------------------------------------------------------------------------------------------------------

GENERATION_DEFAULTS = {"temperature": 0.8, "top_k": 0, "top_p": 1.0}  # genscale sample's; HF's top_k 0 = no filter


def write_gpt_hf(sampler: Any, cfg: RunConfig, folder: Path) -> list[str]:
    """config.json, model.safetensors, tokenizer.json, tokenizer_config.json, generation_config.json."""
    from safetensors.torch import save_file

    from genscale.data.tokenizer import EOT, UNK
    from genscale.models.gpt import gpt2_config, gpt2_state_dict

    model, tok = sampler.model, sampler.tokenizer
    c, eot = model.config, tok.eot_id
    config = {"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2", **gpt2_config(c),
              "resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0,  # inference: no dropout
              "bos_token_id": eot, "eos_token_id": eot,  # as GPT-2: <|endoftext|> starts and ends a document
              "dtype": "float32", "use_cache": True}
    write_json(folder / "config.json", config)
    state = gpt2_state_dict(model)
    del state["lm_head.weight"]  # tied to transformer.wte.weight (tie_word_embeddings), as transformers saves GPT-2
    save_file({k: v.contiguous() for k, v in state.items()}, str(folder / "model.safetensors"),
              metadata={"format": "pt"})
    tok.save(folder / "tokenizer.json")
    special = {"bos_token": EOT, "eos_token": EOT, **({"unk_token": UNK} if tok.kind == "char" else {})}
    write_json(folder / "tokenizer_config.json", {
        "tokenizer_class": "PreTrainedTokenizerFast", **special, "model_max_length": c.block_size,
        "clean_up_tokenization_spaces": False, "add_bos_token": False, "add_eos_token": False})
    write_json(folder / "special_tokens_map.json", special)
    write_json(folder / "generation_config.json", {
        "bos_token_id": eot, "eos_token_id": eot, "pad_token_id": eot, "do_sample": True,
        **GENERATION_DEFAULTS})
    return [f"the architecture is GPT-2's exactly: exact-erf GELU (activation_function gelu), LayerNorm eps 1e-5, "
            f"tied output layer{'' if c.bias else '; the run has no biases (model.bias false): they are zeros here'}",
            f"a prompt starts with <|endoftext|> (id {eot}), as genscale's does: input_ids = [{eot}] + "
            "tokenizer(prompt); the tokenizer adds no token itself",
            f"transformers' generate stops at <|endoftext|> (eos_token_id {eot}); genscale sample does not stop (pass "
            "eos_token_id=None for its behaviour). Decoding skips special tokens in genscale: "
            "decode(ids, skip_special_tokens=True)",
            f"the context is {c.block_size} tokens (n_positions): genscale slides its window past it, transformers "
            "cannot (prompt plus new tokens at most n_positions)",
            "genscale encodes the text '<|endoftext|>' inside a prompt as ordinary characters; a transformers "
            "tokenizer encodes it as the special token",
            f"generation_config.json: genscale sample's defaults (sampling, temperature "
            f"{GENERATION_DEFAULTS['temperature']}, no top-k/top-p filter)"]


class _Logits(torch.nn.Module):
    """GPT.forward without targets: tokens (B, T) -> logits (B, T, V) only, a tensor for torch.export."""

    def __init__(self, gpt: torch.nn.Module):
        super().__init__()
        self.gpt = gpt

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return self.gpt(idx)[0]


def write_gpt_torch(sampler: Any, folder: Path) -> list[str]:
    """model.pt2 (tokens -> logits, batch and length dynamic up to block_size), tokenizer.json, export.json."""
    from torch.export import Dim

    c, eot = sampler.model.config, sampler.tokenizer.eot_id
    dims = {"idx": {0: Dim("batch", min=1), 1: Dim("tokens", min=1, max=c.block_size)}}
    example = torch.zeros(2, min(2, c.block_size), dtype=torch.long)
    program = torch.export.export(_Logits(sampler.model.eval()), (example,), dynamic_shapes=dims)
    torch.export.save(program, str(folder / "model.pt2"))
    sampler.tokenizer.save(folder / "tokenizer.json")
    write_json(folder / "export.json", {
        "format": "torch.export", "torch_version": torch.__version__, "program": "model.pt2",
        "load": "torch.export.load('model.pt2').module()",
        "inputs": {"idx": f"int64 (batch, tokens), 1 <= tokens <= {c.block_size}: token ids in [0, {c.vocab_size})"},
        "output": f"float32 (batch, tokens, {c.vocab_size}): next-token logits at every position",
        "tokenizer": {"file": "tokenizer.json", "library": "tokenizers", "kind": sampler.tokenizer.kind,
                      "load": "tokenizers.Tokenizer.from_file('tokenizer.json')", "start_token_id": eot,
                      "note": f"a document starts with <|endoftext|> (id {eot}): ids = [{eot}] + encode(prompt).ids"},
        "config": {"vocab_size": c.vocab_size, "block_size": c.block_size, "n_layer": c.n_layer,
                   "n_head": c.n_head, "n_embd": c.n_embd, "bias": c.bias}})
    return [f"batch and sequence length are dynamic (1 to {c.block_size} tokens); no key/value cache: each call "
            "scores the whole context"]


# --- image networks -------------------------------------------------------------------------------------------------

def write_network_torch(net: Any, folder: Path, facts: dict[str, Any]) -> list[str]:
    """<name>.pt2 (batch dynamic), <name>.safetensors, export.json with the seed-to-images code; and the family's
    extra files (a scheduler config)."""
    from safetensors.torch import save_file
    from torch.export import Dim

    batch = Dim("batch", min=1)
    examples = tuple(example for example, _ in net.inputs.values())
    program = torch.export.export(net.module, examples, dynamic_shapes=tuple({0: batch} for _ in examples))
    torch.export.save(program, str(folder / f"{net.name}.pt2"))
    save_file({k: v.detach().contiguous() for k, v in net.module.state_dict().items()},
              str(folder / f"{net.name}.safetensors"), metadata={"format": "pt"})
    if net.write_extra is not None:
        net.write_extra(folder)
    write_json(folder / "export.json", {
        "format": "torch.export", "torch_version": torch.__version__, "family": facts["family"],
        "arch": facts["arch"], "run_id": facts["run_id"], "step": facts["step"], "program": f"{net.name}.pt2",
        "weights": f"{net.name}.safetensors", "load": f"torch.export.load('{net.name}.pt2').module()",
        "inputs": {name: meaning for name, (_, meaning) in net.inputs.items()}, "output": net.output,
        "sample": "exec(sample_code) defines sample(program, n, seed, folder) -> uint8 (n, C, H, W): the images "
                  "genscale sample --seed SEED gives on a CPU", "sample_code": net.sample_code,
        "notes": list(net.notes)})
    return [f"{net.name}.pt2 takes {', '.join(net.inputs)} with a dynamic batch; it returns {net.output}",
            *net.notes]


# --- model card -----------------------------------------------------------------------------------------------------

def write_model_card(path: Path, fmt: str, facts: dict[str, Any], notes: list[str]) -> None:
    """README.md: what the model is, where it came from, how good it is, how to load it, what differs."""
    from genscale.paths import atomic_write_bytes

    gate = facts["gate"]
    how = {"hf": "```python\nfrom transformers import AutoModelForCausalLM, AutoTokenizer\n"
                 "model = AutoModelForCausalLM.from_pretrained(folder, local_files_only=True)\n"
                 "tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)\n```",
           "torch": "```python\nimport json, torch\nprogram = torch.export.load(f'{folder}/' + "
                    "json.load(open(f'{folder}/export.json'))['program']).module()\n```\n\nexport.json says what "
                    "goes in and comes out" + (", and its `sample_code` turns a seed into the images of `genscale "
                                               "sample --seed`" if facts["family"] != "gpt" else "") + "."}
    lines = [f"# {facts['run_name']} ({facts['family']} {facts['arch']}, size {facts['size']})", "",
             f"Exported by genscale from run `{facts['run_id']}`, checkpoint step {facts['step']} of "
             f"{facts['steps']}" + (f", {facts['params']:,} parameters" if facts.get("params") else "") + ".", "",
             f"- data: {facts['dataset'] or '-'}, version `{facts['dataset_version'] or '-'}`",
             f"- gate: {gate['verdict'] if gate else 'not evaluated'}"]
    lines += [f"  - {reason}" for reason in (gate or {}).get("reasons", [])]
    lines += ["", "## Metrics", ""]
    lines += [f"- {k} = {m['value']:.6g}" + (f" ({m['extractor']})" if m["extractor"] else "")
              for k, m in facts["metrics"].items()] or ["(not evaluated)"]
    lines += ["", "## Load", "", how[fmt], "", "## Differences from genscale", ""] + [f"- {n}" for n in notes]
    atomic_write_bytes(path, ("\n".join(lines) + "\n").encode())


def registry_export(client: Any, run_id: str, run_dir: Path, cfg: RunConfig, step: int) -> str:
    """The MLflow source of a registered version: the run's export at `step` (hf for text, torch for images),
    logged once to the run's artifacts under export-<format>/step_<step>; `runs:/<run id>/<that path>`."""
    import tempfile

    fmt = DEFAULT_FORMAT[family_of(cfg).data_kind]
    artifact = f"export-{fmt}/step_{step:07d}"
    if not client.list_artifacts(run_id, artifact):  # a run registered again at one step is exported once
        with tempfile.TemporaryDirectory() as tmp:
            folder = write_export(run_dir, cfg, fmt, Path(tmp) / "export", step=step)
            client.log_artifacts(run_id, str(folder), artifact)
    return f"runs:/{run_id}/{artifact}"
