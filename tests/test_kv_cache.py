"""The GPT's key/value cache against a reference written here: generation equals the uncached loop (crop to
block_size, full forward, last logits) token for token, also past block_size; cached logits equal the full forward's;
`stream` yields what `generate` returns. And the GPT-2 conversion (gpt2_config, gpt2_state_dict) against a GPT-2
forward written out in GPT-2's own weight layout (transformers itself is not a dependency)."""

import math

import pytest
import torch
import torch.nn.functional as F

from genscale.errors import GenscaleError
from genscale.models.gpt import GPT, GPTConfig, KVCache, filter_logits, gpt2_config, gpt2_state_dict

VOCAB, BLOCK = 50, 16


def tiny(*, bias: bool = False, dropout: float = 0.0, seed: int = 0) -> GPT:
    """A random tiny GPT in eval mode, weights away from the init so that logits are far from uniform (distinct
    argmaxes: a wrong cache changes the tokens, not only the logits' last digits)."""
    torch.manual_seed(seed)
    model = GPT(GPTConfig(vocab_size=VOCAB, block_size=BLOCK, n_layer=2, n_head=2, n_embd=32, bias=bias,
                          dropout=dropout)).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn_like(p) * 0.3)
    return model


MODELS = {"no-bias": {}, "bias+dropout": {"bias": True, "dropout": 0.2}}


@pytest.fixture(params=list(MODELS), scope="module")
def model(request) -> GPT:
    return tiny(**MODELS[request.param])


def prompts(batch: int, length: int, *, seed: int = 1) -> torch.Tensor:
    return torch.randint(VOCAB, (batch, length), generator=torch.Generator().manual_seed(seed))


@torch.no_grad()
def reference_generate(model: GPT, idx: torch.Tensor, max_new_tokens: int, *, temperature: float,
                       top_k: int | None = None, top_p: float | None = None,
                       generator: torch.Generator | None = None) -> torch.Tensor:
    """The uncached algorithm: every step crops the context to block_size and runs the full forward."""
    for _ in range(max_new_tokens):
        logits = model(idx[:, -model.config.block_size:])[0][:, -1]  # (B, V)
        if temperature == 0:
            next_id = logits.argmax(dim=-1, keepdim=True)
        else:
            probs = F.softmax(filter_logits(logits / temperature, top_k=top_k, top_p=top_p), dim=-1)
            next_id = torch.multinomial(probs, 1, generator=generator)
        idx = torch.cat([idx, next_id], dim=1)
    return idx


@pytest.mark.parametrize("prompt_len, new", [(5, 8), (5, 11), (5, 30), (16, 4), (20, 6), (1, 1)])
def test_greedy_generation_equals_the_uncached_loop(model, prompt_len, new):
    """Inside the cache (5 + 8 < 16), filling it exactly (5 + 11 = 16), sliding past it (5 + 30), a prompt of
    exactly block_size and one longer than it (cropped at the start)."""
    idx = prompts(3, prompt_len)
    out = model.generate(idx, new, temperature=0)
    assert out.shape == (3, prompt_len + new)
    assert torch.equal(out, reference_generate(model, idx, new, temperature=0))


@pytest.mark.parametrize("options", [{"temperature": 1.0}, {"temperature": 0.8, "top_k": 10},
                                     {"temperature": 0.8, "top_p": 0.9}, {"temperature": 0.8, "top_k": 10,
                                                                          "top_p": 0.9}])
def test_sampled_generation_equals_the_uncached_loop_with_the_same_generator(model, options):
    idx = prompts(4, 5)
    out = model.generate(idx, 30, generator=torch.Generator().manual_seed(7), **options)
    expected = reference_generate(model, idx, 30, generator=torch.Generator().manual_seed(7), **options)
    assert torch.equal(out, expected)


def test_cached_logits_equal_the_full_forward_at_every_step(model):
    """Prefill, then one token at a time up to block_size: each step's logits are the full forward's last ones."""
    seq = prompts(2, BLOCK)
    cache = KVCache.empty(model.config, 2, device=seq.device, dtype=torch.float32)
    with torch.no_grad():
        full = model(seq)[0]  # (B, T, V)
        prefill = model.lm_head(model._hidden(seq[:, :4], cache))
        assert torch.equal(prefill, model(seq[:, :4])[0])  # the empty-cache prefill is the training forward exactly
        for t in range(4, BLOCK):
            step = model.lm_head(model._hidden(seq[:, t:t + 1], cache))[:, -1]  # position t only
            assert cache.length == t + 1
            torch.testing.assert_close(step, full[:, t], atol=1e-5, rtol=0)


def test_several_new_tokens_after_a_filled_cache_attend_causally(model):
    """The general case, T_past > 0 and T_new > 1 (an explicit mask): chunks of 3, 5, 1 and 7 tokens."""
    seq = prompts(2, BLOCK, seed=3)
    cache = KVCache.empty(model.config, 2, device=seq.device, dtype=torch.float32)
    with torch.no_grad():
        full = model(seq)[0]
        start = 0
        for size in (3, 5, 1, 7):
            chunk = model.lm_head(model._hidden(seq[:, start:start + size], cache))  # (B, size, V)
            torch.testing.assert_close(chunk, full[:, start:start + size], atol=1e-5, rtol=0)
            start += size
        with pytest.raises(GenscaleError, match="model.block_size"):  # the cache is full
            model._hidden(seq[:, :1], cache)


def test_stream_yields_what_generate_returns(model):
    idx = prompts(3, 5)
    for options in ({"temperature": 0}, {"temperature": 0.8, "top_k": 10, "top_p": 0.9}):
        pieces = list(model.stream(idx, 30, generator=torch.Generator().manual_seed(2), **options))
        assert len(pieces) == 30 and all(p.shape == (3, 1) for p in pieces)
        out = model.generate(idx, 30, generator=torch.Generator().manual_seed(2), **options)
        assert torch.equal(torch.cat([idx, *pieces], dim=1), out)
    assert list(model.stream(idx, 0)) == [] and torch.equal(model.generate(idx, 0), idx)


def test_stream_is_lazy_checks_its_temperature_at_once_and_leaves_grad_mode_alone(model):
    with pytest.raises(GenscaleError, match="temperature"):
        model.stream(prompts(1, 3), 5, temperature=-1.0)  # before any step is asked for
    tokens = model.stream(prompts(1, 3), 5, temperature=0)
    assert torch.is_grad_enabled()
    first = next(tokens)
    assert torch.is_grad_enabled()  # inference mode is entered and left inside each step only
    assert first.shape == (1, 1) and len(list(tokens)) == 4


def test_a_batch_of_prompts_equals_each_prompt_alone(model):
    idx = prompts(5, 6, seed=4)
    out = model.generate(idx, 20, temperature=0)
    for row in range(5):
        assert torch.equal(out[row:row + 1], model.generate(idx[row:row + 1], 20, temperature=0))


def gpt2_reference_logits(state: dict[str, torch.Tensor], config: dict, idx: torch.Tensor) -> torch.Tensor:
    """GPT-2's forward in its own layout: Conv1D weights are (in, out), so y = x @ W + b; the exact (erf) GELU that
    activation_function "gelu" names in transformers; LayerNorm with biases and layer_norm_epsilon."""
    B, T = idx.shape
    C, H, eps = config["n_embd"], config["n_head"], config["layer_norm_epsilon"]

    def conv1d(x: torch.Tensor, name: str) -> torch.Tensor:
        return x @ state[f"{name}.weight"] + state[f"{name}.bias"]

    def layer_norm(x: torch.Tensor, name: str) -> torch.Tensor:
        return F.layer_norm(x, (C,), state[f"{name}.weight"], state[f"{name}.bias"], eps)

    x = state["transformer.wte.weight"][idx] + state["transformer.wpe.weight"][:T]
    future = torch.ones(T, T).triu(1).bool()
    for i in range(config["n_layer"]):
        h = f"transformer.h.{i}"
        qkv = conv1d(layer_norm(x, f"{h}.ln_1"), f"{h}.attn.c_attn")  # (B, T, 3C)
        q, k, v = (t.view(B, T, H, C // H).transpose(1, 2) for t in qkv.split(C, -1))  # (B, H, T, C/H)
        att = (q @ k.transpose(-1, -2) / math.sqrt(C // H)).masked_fill(future, float("-inf")).softmax(-1)
        x = x + conv1d((att @ v).transpose(1, 2).reshape(B, T, C), f"{h}.attn.c_proj")
        u = conv1d(layer_norm(x, f"{h}.ln_2"), f"{h}.mlp.c_fc")
        x = x + conv1d(0.5 * u * (1 + torch.erf(u / math.sqrt(2))), f"{h}.mlp.c_proj")
    return layer_norm(x, "transformer.ln_f") @ state["lm_head.weight"].T


@pytest.mark.parametrize("bias", [False, True])
def test_gpt2_state_dict_computes_our_logits_in_gpt2s_layout(bias):
    model = tiny(bias=bias)
    config, state = gpt2_config(model.config), gpt2_state_dict(model)
    assert config["activation_function"] == "gelu" and config["n_positions"] == BLOCK
    assert config["n_inner"] == 4 * 32 and config["eos_token_id"] is None
    per_block = ("ln_1.weight", "ln_1.bias", "attn.c_attn.weight", "attn.c_attn.bias", "attn.c_proj.weight",
                 "attn.c_proj.bias", "ln_2.weight", "ln_2.bias", "mlp.c_fc.weight", "mlp.c_fc.bias",
                 "mlp.c_proj.weight", "mlp.c_proj.bias")
    assert set(state) == ({"transformer.wte.weight", "transformer.wpe.weight", "transformer.ln_f.weight",
                           "transformer.ln_f.bias", "lm_head.weight"}
                          | {f"transformer.h.{i}.{name}" for i in range(2) for name in per_block})
    assert state["transformer.h.0.attn.c_attn.weight"].shape == (32, 96)  # Conv1D: (in, out)
    assert state["lm_head.weight"] is state["transformer.wte.weight"]  # tied
    assert all(not t.requires_grad for t in state.values())
    if not bias:
        assert not state["transformer.h.1.mlp.c_fc.bias"].any()  # zeros: exactly the bias-free layer
    idx = prompts(2, 12)
    with torch.no_grad():
        torch.testing.assert_close(gpt2_reference_logits(state, config, idx), model(idx)[0], atol=1e-4, rtol=1e-4)
