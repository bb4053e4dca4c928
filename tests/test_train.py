import json

import pytest
import torch
from safetensors.torch import load_file

from conftest import tiny_config
from genscale.errors import GenscaleError
from genscale.pipeline import train
from genscale.tracking import resolve_run_dir
from genscale.train import gan as gan_module
from genscale.train.checkpoint import latest_step
from genscale.train.loop import NonFiniteLossError
from genscale.train.machinery import BatchStream, count_flops, ema_decay_at, make_ema


def final_tensors(run_dir):
    step = latest_step(run_dir / "checkpoints")
    return load_file(run_dir / "checkpoints" / f"step_{step:07d}.safetensors")


def interrupt_at_call(monkeypatch, n: int, exc: type[BaseException] = KeyboardInterrupt):
    original = gan_module.GanStep.__call__
    calls = {"n": 0}

    def flaky(self, reals, autocast):
        calls["n"] += 1
        if calls["n"] == n:
            raise exc("simulated kill")
        return original(self, reals, autocast)

    monkeypatch.setattr(gan_module.GanStep, "__call__", flaky)


@pytest.mark.parametrize("arch,loss,augment", [("gan-mlp", "ns", "none"), ("dcgan", "wgan-gp", "none"),
                                               ("dcgan", "ns", "hflip,rotate,translate,jitter,diffaugment")])
def test_interrupted_run_resumes_to_identical_weights(monkeypatch, arch, loss, augment):
    cfg = tiny_config(model__arch=arch, model__loss=loss, eval__on_train_end=False, data__augment=augment)
    reference = final_tensors(train(cfg))
    if augment != "none":  # augmentation changes training: the same run without it ends elsewhere
        plain = final_tensors(train(tiny_config(model__arch=arch, model__loss=loss, eval__on_train_end=False)))
        assert any(not torch.equal(plain[k], reference[k]) for k in reference if k.startswith("g."))

    with monkeypatch.context() as m, pytest.raises(KeyboardInterrupt):
        interrupt_at_call(m, 7)  # after the step-4 checkpoint, before the step-8 one
        train(cfg)
    run_dir = resolve_run_dir("latest")
    assert latest_step(run_dir / "checkpoints") == 4
    resumed = final_tensors(train(resume=run_dir.name))

    assert resumed.keys() == reference.keys()
    for key in reference:
        assert torch.equal(resumed[key], reference[key]), key


def test_checkpoint_holds_everything_to_resume(tmp_path):
    run_dir = train(tiny_config(eval__on_train_end=False))
    ckpt = run_dir / "checkpoints"
    assert sorted(p.name for p in ckpt.iterdir()) == ["latest.json", "step_0000008.json",
                                                      "step_0000008.safetensors", "step_0000012.json",
                                                      "step_0000012.safetensors"]
    tensors = load_file(ckpt / "step_0000012.safetensors")
    prefixes = {k.split(".")[0] for k in tensors}
    assert prefixes == {"g", "d", "ema", "opt_g", "opt_d", "rng"}
    sidecar = json.loads((ckpt / "step_0000012.json").read_text())
    assert sidecar["step"] == 12 and sidecar["config"]["train"]["steps"] == 12
    assert sidecar["counters"]["flops_per_step"] > 0
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["flops"] == sidecar["counters"]["flops_per_step"] * 12
    assert summary["data_size"] == 256 and summary["epochs"] == pytest.approx(12 * 32 / 256)


def test_non_finite_loss_stops_with_the_step(monkeypatch):
    original = gan_module.GanStep.__call__
    calls = {"n": 0}

    def poisoned(self, reals, autocast):
        calls["n"] += 1
        out = original(self, reals, autocast)
        return out * float("nan") if calls["n"] == 5 else out

    monkeypatch.setattr(gan_module.GanStep, "__call__", poisoned)
    with pytest.raises(NonFiniteLossError, match=r"diverged at step 5: loss_d is nan; last good checkpoint: step 4"):
        train(tiny_config(eval__on_train_end=False))


def test_flop_counter_matches_closed_form():
    layer = torch.nn.Linear(30, 20, bias=False)
    x = torch.randn(8, 30, requires_grad=True)  # as for a hidden layer: its input needs a gradient
    _, flops = count_flops(lambda: layer(x).sum().backward())
    assert flops == 3 * 2 * 8 * 30 * 20  # forward, grad of input, grad of weight


def test_batch_stream_is_a_function_of_the_index():
    data = torch.arange(100)
    a, b = BatchStream(data, 16, seed=1), BatchStream(data, 16, seed=1)
    seen = [a.batch(i) for i in range(12)]
    assert torch.equal(b.batch(9), seen[9])  # b jumps straight to batch 9, as a resumed run does
    epoch0 = torch.cat(seen[:6])
    assert len(set(epoch0.tolist())) == 96  # no repeats within an epoch (last partial batch dropped)
    with pytest.raises(GenscaleError, match="train.batch_size: 101 exceeds the 100 training examples"):
        BatchStream(data, 101, seed=0)



def test_ema_warms_up_as_tensorflow_and_timm_do():
    """The EMA's k-th average (k >= 2) uses decay min(decay, k / (9 + k)): the warm-up (1 + n) / (10 + n) of
    TensorFlow's ExponentialMovingAverage(num_updates=n) and timm. Before, a constant 0.999 left 55% of the initial
    weights in the EMA after 600 updates."""
    layer = torch.nn.Linear(3, 1, bias=False)
    ema = make_ema(layer, 0.999)
    expected = None
    for k in range(1, 2001):
        with torch.no_grad():
            layer.weight.copy_(torch.full((1, 3), float(k)))  # the model's weight at update k is k
        ema.update_parameters(layer)
        decay = min(0.999, (1 + (k - 1)) / (10 + (k - 1)))
        expected = float(k) if expected is None else decay * expected + (1 - decay) * k
        if k in (2, 600, 2000):
            assert ema.module.weight[0, 0].item() == pytest.approx(expected, rel=1e-5), k
    assert ema_decay_at(0.999, 1) == pytest.approx(2 / 11) and ema_decay_at(0.999, 8990) == 0.999
    assert ema_decay_at(0.999, 80) == pytest.approx(0.9)


def test_ema_averages_float_buffers_and_copies_integer_ones():
    bn = torch.nn.BatchNorm1d(2)
    ema = make_ema(bn, 0.999)
    expected = None
    for k in range(1, 4):
        bn(torch.randn(8, 2))
        ema.update_parameters(bn)
        decay = (1 + (k - 1)) / (10 + (k - 1))
        expected = bn.running_mean.clone() if expected is None else decay * expected + (1 - decay) * bn.running_mean
    assert ema.module.num_batches_tracked.item() == 3
    assert torch.allclose(ema.module.running_mean, expected, rtol=1e-6, atol=1e-7)
