"""`genscale export`: a gpt run as a transformers GPT-2 folder, checked against transformers itself (logits, greedy
continuation, tokenizer); image networks as torch.export programs whose documented seed recipe gives the images of
`genscale sample`; a gpt run as a torch.export program; bad input as one error line.

One store for the module: the tiny runs are trained once (a char-level GPT without biases, a BPE GPT with biases, a
GAN) and each test exports into its own folder; the DDPM export is checked on an untrained UNet (a trained one costs
a run, and the recipe must hold for any weights)."""

import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file
from test_gpt_train import write_corpus
from typer.testing import CliRunner

from conftest import gpt_config, module_store, tiny_config, tree_hashes
from genscale.cli import app
from genscale.config import RunConfig
from genscale.export import export_run
from genscale.pipeline import run_sampler, sample_texts, train

transformers = pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("export")
    with module_store(root):
        corpus = write_corpus(root / "corpus")
        quick = {"train__steps": 20, "eval__on_train_end": False}
        gpt = train(gpt_config(corpus, **quick))
        gpt_bpe = train(gpt_config(corpus, **quick, model__bias=True,
                                   data__tokenizer="bpe", data__vocab_size=300))
        gan = train(tiny_config(train__steps=2))
    return SimpleNamespace(root=root, corpus=corpus, gpt=gpt, gpt_bpe=gpt_bpe, gan=gan)


@pytest.fixture(autouse=True)
def _module_store(runs, _isolated_runs, monkeypatch):
    monkeypatch.setenv("GENSCALE_RUNS", str(runs.root / "runs"))


def corpus_ids(runs, tokenizer, rows: int, length: int) -> torch.Tensor:
    """(rows, length) windows of the corpus's own token ids, each starting a document with <|endoftext|>."""
    docs = sorted(runs.corpus.glob("*.txt"))[:rows]
    return torch.tensor([[tokenizer.eot_id, *tokenizer.encode(d.read_text())][:length] for d in docs])


@pytest.mark.parametrize("which", ["gpt", "gpt_bpe"])
def test_a_gpt_exported_for_transformers_computes_what_genscale_computes(runs, tmp_path, which):
    from transformers import AutoModelForCausalLM, AutoTokenizer, GPT2LMHeadModel

    run = getattr(runs, which)
    folder = export_run(str(run), fmt="hf", out=tmp_path / "hf")
    model = AutoModelForCausalLM.from_pretrained(folder, local_files_only=True).eval()
    tok = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    cfg, sampler = run_sampler(str(run))
    assert isinstance(model, GPT2LMHeadModel) and model.config.n_positions == cfg.model.block_size
    assert model.lm_head.weight.data_ptr() == model.transformer.wte.weight.data_ptr()  # tied, as ours

    ids = corpus_ids(runs, sampler.tokenizer, rows=4, length=cfg.model.block_size)  # (4, block_size)
    with torch.no_grad():
        ours = sampler.model(ids)[0]
        theirs = model(ids).logits
    assert ours.shape == theirs.shape and torch.allclose(theirs, ours, atol=1e-4, rtol=0)

    prompt, new = "the king", 16
    start = torch.tensor([[tok.bos_token_id, *tok(prompt)["input_ids"]]])  # genscale starts a document with EOT
    assert start.tolist() == sampler.start_ids(prompt).tolist()
    out = model.generate(start, attention_mask=torch.ones_like(start), do_sample=False, max_new_tokens=new,
                         eos_token_id=None)
    greedy = sample_texts(str(run), prompt=prompt, n=1, max_new_tokens=new, temperature=0, top_k=None, top_p=None)
    assert tok.decode(out[0, start.shape[1]:], skip_special_tokens=True) == greedy[0]
    assert out[0].tolist() == sampler.model.generate(start, new, temperature=0)[0].tolist()

    text = (sorted(runs.corpus.glob("*.txt"))[0].read_text()[:200] + " Zebra; ünïcode")
    assert tok(text)["input_ids"] == sampler.tokenizer.encode(text)
    ids = [0, *sampler.tokenizer.encode(text), 0]
    assert tok.decode(ids, skip_special_tokens=True) == sampler.tokenizer.decode(ids)
    card = (folder / "README.md").read_text()
    assert run.name in card and "transformers' generate stops at <|endoftext|>" in card


def test_a_gpt_exported_as_a_torch_program_takes_any_length_up_to_its_context(runs, tmp_path):
    folder = export_run(str(runs.gpt), fmt="torch", out=tmp_path / "pt")
    program = torch.export.load(str(folder / json.loads((folder / "export.json").read_text())["program"])).module()
    cfg, sampler = run_sampler(str(runs.gpt))
    for rows, length in ((1, 1), (3, cfg.model.block_size)):
        ids = corpus_ids(runs, sampler.tokenizer, rows=rows, length=length)
        with torch.no_grad():
            assert torch.equal(program(ids), sampler.model(ids)[0])
    assert (folder / "tokenizer.json").read_text() == (runs.gpt / "tokenizer.json").read_text()


def test_an_exported_generator_with_its_recipe_gives_the_images_of_genscale_sample(runs):
    folder = export_run(str(runs.gan), fmt="torch")
    assert folder == runs.gan / "export-torch"  # the default folder
    info = json.loads((folder / "export.json").read_text())
    program = torch.export.load(str(folder / info["program"])).module()
    n = 600  # two chunks of latents
    with torch.no_grad():
        exported = recipe_sample(info, program, n, seed=7, folder=folder)
    _, sampler = run_sampler(str(runs.gan))  # what `genscale sample --seed 7` draws from
    expected = sampler.images(n, seed=7)
    assert exported.dtype == torch.uint8 and exported.shape == expected.shape and torch.equal(exported, expected)
    weights = load_file(folder / info["weights"])
    assert weights.keys() == program.state_dict().keys()
    assert all(torch.equal(weights[k], v) for k, v in program.state_dict().items())


def recipe_sample(info: dict, program, n: int, *, seed: int, folder: Path) -> torch.Tensor:
    """The images of export.json's sample_code, run as written, with plain torch (and diffusers)."""
    namespace: dict = {}
    exec(info["sample_code"], namespace)
    return namespace["sample"](program, n, seed, folder)


def test_an_exported_vae_decoder_with_its_recipe_gives_the_sampler_s_images(tmp_path):
    """From an untrained conv VAE with the logistic likelihood: the recipe must hold whatever the weights."""
    from genscale.export import write_network_torch
    from genscale.families.vae import FAMILY
    from genscale.train.vae import VaeSampler, build_model

    cfg = RunConfig.model_validate({"model": {"family": "vae", "size": "tiny", "latent_dim": 4}})
    torch.manual_seed(0)
    sampler = VaeSampler(build_model(cfg, (1, 28, 28)).eval(), torch.device("cpu"))
    write_network_torch(FAMILY.network_export(cfg, sampler), tmp_path, {"family": "vae", "arch": "vae-conv",
                                                                        "run_id": "-", "step": 0})
    info = json.loads((tmp_path / "export.json").read_text())
    program = torch.export.load(str(tmp_path / info["program"])).module()
    with torch.no_grad():
        assert torch.equal(recipe_sample(info, program, 9, seed=3, folder=tmp_path), sampler.images(9, seed=3))


def test_a_ddpm_unet_export_carries_its_diffusers_scheduler_and_sampling_loop(tmp_path):
    """Ancestral DDPM sampling (noise at every step) with classifier-free guidance, from an untrained UNet: the
    recipe and scheduler/ must reproduce DdpmSampler exactly, whatever the weights."""
    from diffusers import DDPMScheduler

    from genscale.export import write_network_torch
    from genscale.families.ddpm import FAMILY
    from genscale.train.ddpm import DdpmSampler, build_model

    cfg = RunConfig.model_validate({"model": {"family": "ddpm", "size": "tiny", "timesteps": 20},
                                    "eval": {"sampler": "ddpm", "sampling_steps": 4, "guidance": 2.0}})
    torch.manual_seed(0)
    sampler = DdpmSampler(build_model(cfg, (1, 28, 28), 10).eval(), (1, 28, 28), cfg, torch.device("cpu"))
    write_network_torch(FAMILY.network_export(cfg, sampler), tmp_path, {"family": "ddpm", "arch": "unet",
                                                                        "run_id": "-", "step": 0})
    info = json.loads((tmp_path / "export.json").read_text())
    assert "not a diffusers UNet2DModel" in " ".join(info["notes"])
    loaded = DDPMScheduler.from_pretrained(tmp_path, subfolder="scheduler")
    ours = sampler.scheduler(None)
    public = [{k: v for k, v in c.items() if not k.startswith("_")} for c in (loaded.config, ours.config)]
    assert torch.equal(loaded.alphas_cumprod, ours.alphas_cumprod) and public[0] == public[1]
    program = torch.export.load(str(tmp_path / info["program"])).module()
    with torch.no_grad():
        assert torch.equal(recipe_sample(info, program, 3, seed=5, folder=tmp_path), sampler.images(3, seed=5))


def test_bad_input_is_one_error_line_and_writes_nothing(runs, tmp_path):
    no_checkpoint = tmp_path / "no-checkpoint"
    shutil.copytree(runs.gan, no_checkpoint, ignore=shutil.ignore_patterns("checkpoints", "export-*"))
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "mine.txt").write_text("the user's")
    before = tree_hashes(tmp_path)
    cases = [([str(runs.gan), "--format", "onnx"], "--format 'onnx': choose hf"),
             ([str(runs.gan), "--format", "hf", "-o", str(tmp_path / "new")], "--format hf: a transformers folder is "
                                                                             "for gpt runs"),
             ([str(no_checkpoint), "--format", "torch", "-o", str(tmp_path / "new")], "no checkpoint found"),
             ([str(runs.gpt), "--format", "hf", "-o", str(taken)], f"{taken}: is not empty"),
             ([str(runs.gpt), "--format", "hf", "-o", str(taken / "mine.txt")], "is a file")]
    for args, message in cases:
        result = CliRunner().invoke(app, ["export", *args])
        lines = [line for line in result.output.strip().splitlines() if line.strip()]
        assert result.exit_code == 1 and len(lines) == 1 and lines[0].startswith("error: "), result.output
        assert message in lines[0] and "Traceback" not in result.output, result.output
    assert tree_hashes(tmp_path) == before and sorted(p.name for p in tmp_path.iterdir()) == ["no-checkpoint",
                                                                                              "taken"]
    (tmp_path / "empty").mkdir()  # an empty folder is taken (renamed over)
    done = CliRunner().invoke(app, ["export", str(runs.gpt), "--format", "hf", "-o", str(tmp_path / "empty")])
    assert done.exit_code == 0 and f"wrote {tmp_path / 'empty'}" in done.output, done.output


def test_a_registered_gpt_version_is_its_transformers_export(runs, tmp_path):
    """The registry carries the export (what a user deploys), not the training checkpoint: the version's MLflow source
    downloads to a folder that transformers loads, holding no optimizer state."""
    from mlflow.artifacts import download_artifacts
    from transformers import AutoModelForCausalLM

    from genscale.pipeline import evaluate_run
    from genscale.registry import register
    from genscale.tracking import tracking_uri

    _, gate = evaluate_run(str(runs.gpt), n=2)
    assert gate.passed, gate.reasons
    version = register(str(runs.gpt), "tiny-gpt")
    step = version.source.rsplit("_", 1)[1]
    assert version.source == f"runs:/{version.run_id}/export-hf/step_{step}"
    folder = Path(download_artifacts(version.source, dst_path=str(tmp_path), tracking_uri=tracking_uri()))
    assert {"config.json", "model.safetensors", "tokenizer.json", "README.md"} <= {p.name for p in folder.iterdir()}
    assert not any("optim" in key or key.startswith(("opt.", "rng")) for key in load_file(folder / "model.safetensors"))
    hf = AutoModelForCausalLM.from_pretrained(folder, local_files_only=True).eval()
    _, sampler = run_sampler(str(runs.gpt))
    ids = corpus_ids(runs, sampler.tokenizer, rows=2, length=16)
    with torch.no_grad():
        torch.testing.assert_close(hf(ids).logits, sampler.model.eval()(ids)[0], atol=1e-4, rtol=0)
