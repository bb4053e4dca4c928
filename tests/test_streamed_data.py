"""A train split larger than data.memory_mb is read batch by batch from the store's memory-mapped shards: the same
batches, the same training, without the whole split in memory."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest
import torch

from genscale.config import RunConfig
from genscale.data.datasets import ShardedImages, load_image_data
from genscale.data.ingest import IngestOptions, ingest
from genscale.data.store import SHARD_RECORDS
from genscale.train.gan import GanRecipe
from genscale.train.machinery import BatchStream, autocast_for


@pytest.fixture
def stored(tmp_path):
    """'big': 2 x 16,384 + 1,000 random 3 x 16 x 16 train images (three shards, 25 MiB) and 200 test images."""
    rng = np.random.default_rng(0)
    n = 2 * SHARD_RECORDS + 1000
    x = rng.integers(0, 256, (n, 3, 16, 16), dtype=np.uint8)
    y = rng.integers(0, 10, n)
    np.savez(tmp_path / "train.npz", x=x, y=y)
    np.savez(tmp_path / "test.npz", x=x[:200] // 2, y=y[:200])
    version, rejected = ingest(str(tmp_path / "train.npz"), "big", IngestOptions(test=str(tmp_path / "test.npz")))
    assert rejected == [] and len(version.meta["shards"]) >= 3
    return x


def config(memory_mb: float) -> RunConfig:
    return RunConfig.model_validate({
        "data": {"source": "dataset", "dataset": "big", "memory_mb": memory_mb, "val_fraction": 0.01},
        "model": {"arch": "gan-mlp", "size": "tiny"},
        "train": {"steps": 4, "batch_size": 64, "device": "cpu", "checkpoint_every": 4}})


def test_a_split_over_the_cap_streams_exactly_the_batches_of_the_loaded_one(stored):
    streamed, loaded = load_image_data(config(1).data), load_image_data(config(4096).data)
    assert isinstance(streamed.train.x, ShardedImages) and isinstance(loaded.train.x, torch.Tensor)
    assert torch.equal(streamed.test.x, loaded.test.x) and torch.equal(streamed.val.x, loaded.val.x)
    a, b = BatchStream(streamed.train.x, 64, seed=3), BatchStream(loaded.train.x, 64, seed=3)
    # batches inside the first epoch and past it, spanning every shard
    for i in (0, 1, 250, 255, 515, 516, 1500):
        assert torch.equal(a.batch(i), b.batch(i)), i
    # and the rows are the stored images themselves (the fixture's array, in the split's order)
    assert torch.equal(streamed.train.x[:5], loaded.train.x[:5])
    assert any(torch.equal(streamed.train.x[[0]][0], torch.from_numpy(img)) for img in stored[:300])


def test_streaming_holds_a_batch_not_the_split_and_trains_the_same_weights(stored):
    peaks = {}
    tracemalloc.start()
    for memory_mb in (4096, 1):  # loaded whole, then streamed
        tracemalloc.reset_peak()
        splits = load_image_data(config(memory_mb).data)
        peaks[memory_mb] = tracemalloc.get_traced_memory()[1]
    stream = BatchStream(splits.train.x, 64, seed=0)
    tracemalloc.reset_peak()
    for i in range(50):
        stream.batch(i)
    streaming_peak = tracemalloc.get_traced_memory()[1] - tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    split_bytes = splits.train.x.nbytes
    assert split_bytes > 20 * 2**20
    # loading never gathers the split (what both loads share is the manifest and the held-out splits) ...
    assert peaks[1] < peaks[4096] - 0.9 * split_bytes, (peaks, split_bytes)
    # ... and a step holds its batch and the epoch's permutation, not the split
    batch_bytes = 64 * 3 * 16 * 16
    assert streaming_peak < 4 * batch_bytes + 16 * len(splits.train), streaming_peak

    device = torch.device("cpu")
    weights = []
    for memory_mb in (1, 4096):
        recipe = GanRecipe(config(memory_mb), load_image_data(config(memory_mb).data), device)
        for step in range(3):
            recipe.step(step, autocast_for(device, "fp32"))
        weights.append(recipe.tensors()[0])
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0] if not k.startswith("rng."))
