# %% [markdown]
# # genscale from Python
#
# The commands as functions: `train`, `evaluate`, `sample`, `load` (and `study`, see docs/api.md). Each returns a
# small typed object read back from the run folder, so what you see here is what `genscale runs` and a later
# `load` show. Run it as a script (`python examples/api.py`, a few seconds on a CPU) or cell by cell (`# %%`).
# Runs go to $GENSCALE_RUNS (default ./runs); the data comes from the cache `genscale data fetch` fills.

# %% A tiny GAN on 256 Fashion-MNIST images: trains, evaluates and gates, as `genscale train` does
from genscale import evaluate, load, sample, train

run = train({
    "name": "api-example",
    "data": {"source": "fashion-mnist", "size": 256},
    "model": {"arch": "gan-mlp", "size": "tiny"},
    "train": {"steps": 12, "batch_size": 32, "checkpoint_every": 6, "log_every": 6, "device": "cpu"},
    "eval": {"n_samples": 200, "kid_subsets": 5, "kid_subset_size": 100,
             "classifier": {"epochs": 1, "train_size": 2000}},
    "gate": {"fid_fmnist": {"max": 1.0e6}},
}, overrides=["train.lr_g=3e-4"])  # overrides as `--set` takes them
print(f"run {run.id} in {run.folder}: {run.config.train.steps} steps")
print(f"gate {run.gate.verdict}: {'; '.join(run.gate.reasons)}")

# %% Score it again with more samples (`genscale eval RUN --n 400`); the run comes back with the new metrics
run = evaluate(run, n=400)
print(f"fid_fmnist = {run.metrics['fid_fmnist']:.4f}")

# %% Samples: a float tensor (N, C, H, W) in [0, 1]; the same seed gives the same images
images = run.sample(16, seed=7)
print(f"images {tuple(images.shape)} in [{images.min():.2f}, {images.max():.2f}]")

# %% Any run by id, unique prefix, folder or "latest", as the CLI takes it
assert load(run.id[:8]).metrics == run.metrics

# %% A 2-layer GPT on 20,000 characters of the bundled Shakespeare corpus, and two continuations of a prompt
# (20 steps: it is still babbling)
gpt = train({
    "name": "api-example-gpt",
    "data": {"source": "shakespeare", "size": 20000, "tokenizer": "char"},
    "model": {"family": "gpt", "size": "tiny", "block_size": 32},
    "train": {"steps": 20, "batch_size": 8, "lr": 1e-2, "warmup_steps": 5, "checkpoint_every": 10, "log_every": 10,
              "device": "cpu"},
    "eval": {"val_tokens": 1000, "prompts": 4, "prompt_tokens": 16, "continuation_tokens": 16,
             "diversity_samples": 4, "sample_tokens": 24, "batch_size": 16},
})
print(f"gpt val_loss = {gpt.metrics['val_loss']:.3f}")
texts = sample(gpt, 2, prompt="ROMEO:", max_new_tokens=40, seed=0)
for text in texts:
    print(repr(text))
