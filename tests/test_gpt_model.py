import math

import pytest
import torch
import torch.nn.functional as F

from genscale.errors import GenscaleError
from genscale.models.gpt import (
    GPT,
    PRESETS,
    GPTConfig,
    build_gpt,
    count_parameters,
    decay_groups,
    filter_logits,
    gpt_preset,
    residual_init_std,
)

VOCAB = 64


def tiny(*, block_size: int = 16, dropout: float = 0.0, bias: bool = False, seed: int = 0) -> GPT:
    torch.manual_seed(seed)
    return build_gpt("tiny", vocab_size=VOCAB, block_size=block_size, dropout=dropout, bias=bias).eval()


def gpt_param_formula(*, vocab: int, block: int, n_layer: int, n_embd: int, bias: bool) -> int:
    """By hand: wte (tied with lm_head, once) + wpe + blocks + ln_f."""
    c = n_embd
    per_block = 12 * c * c + 2 * c  # qkv 3c^2, proj c^2, fc 4c^2, proj 4c^2; two LayerNorm gains
    if bias:
        per_block += 3 * c + c + 4 * c + c + 2 * c  # qkv, proj, fc, proj biases; two LayerNorm shifts
    return vocab * c + block * c + n_layer * per_block + (2 * c if bias else c)


def test_causal_logits_do_not_see_the_future():
    model = tiny(dropout=0.2)  # eval mode: dropout must be off, so both passes are deterministic
    g = torch.Generator().manual_seed(1)
    idx = torch.randint(VOCAB, (2, 12), generator=g)
    t = 5
    changed = idx.clone()
    changed[:, t:] = (idx[:, t:] + 1 + torch.randint(VOCAB - 1, (2, 12 - t), generator=g)) % VOCAB  # all differ
    a, _ = model(idx)
    b, _ = model(changed)
    assert torch.allclose(a[:, :t], b[:, :t], atol=1e-6)
    assert not torch.allclose(a[:, t], b[:, t], atol=1e-3)  # the changed position itself does see it
    prefix, _ = model(idx[:, :t])  # a shorter input gives the same logits on the shared positions
    assert torch.allclose(prefix, a[:, :t], atol=1e-6)


def reference_logits(model: GPT, idx: torch.Tensor) -> torch.Tensor:
    """GPT-2's forward pass written out with explicit matrix products, an explicit causal mask and the erf GELU."""
    c = model.config
    B, T = idx.shape
    C, H = c.n_embd, c.n_head

    def linear(x, m):
        return x @ m.weight.T + (m.bias if m.bias is not None else 0.0)

    def layer_norm(x, m):
        mean, var = x.mean(-1, keepdim=True), x.var(-1, unbiased=False, keepdim=True)
        return (x - mean) / torch.sqrt(var + m.eps) * m.weight + (m.bias if m.bias is not None else 0.0)

    x = model.wte.weight[idx] + model.wpe.weight[:T]
    future = torch.ones(T, T).triu(1).bool()
    for b in model.blocks:
        qkv = linear(layer_norm(x, b.ln_1), b.attn.qkv)  # (B, T, 3C)
        q, k, v = (t.view(B, T, H, C // H).transpose(1, 2) for t in qkv.split(C, -1))  # (B, H, T, C/H)
        att = (q @ k.transpose(-1, -2) / math.sqrt(C // H)).masked_fill(future, float("-inf")).softmax(-1)
        x = x + linear((att @ v).transpose(1, 2).reshape(B, T, C), b.attn.proj)
        u = linear(layer_norm(x, b.ln_2), b.mlp.fc)
        x = x + linear(0.5 * u * (1 + torch.erf(u / math.sqrt(2))), b.mlp.proj)
    return layer_norm(x, model.ln_f) @ model.wte.weight.T


@pytest.mark.parametrize("bias", [False, True])
def test_forward_matches_a_reference_written_out_by_hand(bias):
    model = tiny(bias=bias)
    with torch.no_grad():  # away from the init (unit gains, zero biases), so every parameter's role shows
        for p in model.parameters():
            p.copy_(torch.randn_like(p) * 0.3)
    idx = torch.randint(VOCAB, (2, 10), generator=torch.Generator().manual_seed(7))
    logits, _ = model(idx)
    with torch.no_grad():
        assert torch.allclose(logits, reference_logits(model, idx), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("bias", [False, True])
def test_weight_tying_and_parameter_count(bias):
    model = tiny(bias=bias)
    assert model.lm_head.weight is model.wte.weight
    expected = gpt_param_formula(vocab=VOCAB, block=16, n_layer=2, n_embd=32, bias=bias)
    assert count_parameters(model) == expected
    assert count_parameters(model, non_embedding=True) == expected - 16 * 32  # wpe only
    assert sum(p.numel() for p in model.state_dict().values()) == expected + VOCAB * 32  # the tie, seen twice


def test_initial_loss_is_uniform_and_is_the_cross_entropy_of_the_logits():
    model = tiny()
    g = torch.Generator().manual_seed(2)
    idx, targets = torch.randint(VOCAB, (8, 16), generator=g), torch.randint(VOCAB, (8, 16), generator=g)
    logits, loss = model(idx, targets)
    assert logits.shape == (8, 16, VOCAB)
    assert abs(loss.item() - math.log(VOCAB)) < 0.1
    assert torch.equal(loss, F.cross_entropy(logits.reshape(-1, VOCAB), targets.reshape(-1)))
    assert model(idx)[1] is None


def test_residual_projections_start_smaller_with_depth():
    torch.manual_seed(3)
    n_layer = 8
    model = GPT(GPTConfig(vocab_size=VOCAB, block_size=16, n_layer=n_layer, n_head=4, n_embd=64))
    out = torch.cat([w.flatten() for b in model.blocks for w in (b.attn.proj.weight, b.mlp.proj.weight)])
    assert residual_init_std(n_layer) == pytest.approx(0.02 / math.sqrt(2 * n_layer))
    assert out.std().item() == pytest.approx(0.02 / math.sqrt(2 * n_layer), rel=0.1)
    qkv = torch.cat([b.attn.qkv.weight.flatten() for b in model.blocks])
    assert qkv.std().item() == pytest.approx(0.02, rel=0.1)  # the other matrices keep 0.02


def test_decay_groups_split_matrices_from_gains_and_biases():
    model = tiny(bias=True)
    groups = decay_groups(model, 0.1)
    ids = [id(p) for g in groups for p in g["params"]]
    assert len(ids) == len(set(ids))  # nothing twice, the tied weight included
    assert set(ids) == {id(p) for p in model.parameters()}
    decayed = {id(p) for g in groups if g["weight_decay"] == 0.1 for p in g["params"]}
    assert decayed == {id(p) for p in model.parameters() if p.dim() >= 2}
    assert all(g["weight_decay"] == 0.0 for g in groups if g["weight_decay"] != 0.1)
    torch.optim.AdamW(groups, lr=1e-3)  # a valid argument for the optimizer


def kept(logits: torch.Tensor) -> list[list[bool]]:
    return torch.isfinite(logits).tolist()


def test_filter_logits_top_k():
    logits = torch.tensor([[1.0, 3.0, 2.0, 0.0], [0.0, -1.0, 5.0, 4.0]])
    out = filter_logits(logits, top_k=2)
    assert kept(out) == [[False, True, True, False], [False, False, True, True]]
    assert torch.equal(out[torch.isfinite(out)], logits[torch.isfinite(out)])  # survivors unchanged
    assert kept(filter_logits(logits, top_k=10)) == [[True] * 4] * 2  # k above the vocabulary keeps all


def test_filter_logits_top_p_keeps_the_crossing_token():
    logits = torch.tensor([[0.15, 0.5, 0.05, 0.3]]).log()  # probabilities 0.15, 0.5, 0.05, 0.3
    assert kept(filter_logits(logits, top_p=0.4)) == [[False, True, False, False]]  # 0.5 crosses 0.4
    assert kept(filter_logits(logits, top_p=0.6)) == [[False, True, False, True]]  # 0.5 + 0.3 crosses 0.6
    assert kept(filter_logits(logits, top_p=0.85)) == [[True, True, False, True]]  # 0.8 < 0.85 needs 0.15 too
    assert kept(filter_logits(logits, top_p=1e-9)) == [[False, True, False, False]]  # at least one token
    assert kept(filter_logits(logits, top_p=1.0)) == [[True] * 4]
    out = filter_logits(logits, top_p=0.6)
    assert torch.equal(out[torch.isfinite(out)], logits[torch.isfinite(out)])


def test_filter_logits_applies_k_before_p():
    logits = torch.tensor([[0.15, 0.5, 0.05, 0.3]]).log()
    # top-2 leaves 0.5 and 0.3, renormalised to 0.625 and 0.375: 0.625 alone crosses 0.6. (p first would keep two.)
    assert kept(filter_logits(logits, top_k=2, top_p=0.6)) == [[False, True, False, False]]
    assert kept(filter_logits(logits, top_k=3, top_p=0.99)) == [[True, True, False, True]]


def test_filter_logits_rejects_bad_settings():
    logits = torch.zeros(1, 4)
    with pytest.raises(GenscaleError, match="top_k: 0"):
        filter_logits(logits, top_k=0)
    with pytest.raises(GenscaleError, match="top_p: 1.5"):
        filter_logits(logits, top_p=1.5)


def test_generate_greedy_is_argmax_of_forward():
    model = tiny()
    start = torch.randint(VOCAB, (3, 4), generator=torch.Generator().manual_seed(4))
    out = model.generate(start, 6, temperature=0)
    assert out.shape == (3, 10) and torch.equal(out[:, :4], start)
    idx = start
    for _ in range(6):
        logits, _ = model(idx)
        idx = torch.cat([idx, logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    assert torch.equal(out, idx)


def test_generate_is_reproducible_with_a_seeded_generator():
    model = tiny()
    start = torch.zeros(2, 1, dtype=torch.long)

    def sample(seed: int, **kw) -> torch.Tensor:
        return model.generate(start, 20, generator=torch.Generator().manual_seed(seed), **kw)

    assert sample(0).shape == (2, 21)
    assert torch.equal(sample(0), sample(0))
    assert not torch.equal(sample(0), sample(1))
    assert torch.equal(sample(5, top_k=5, top_p=0.9, temperature=0.8), sample(5, top_k=5, top_p=0.9, temperature=0.8))


def test_generate_crops_the_context_and_forward_refuses_long_inputs():
    model = tiny(block_size=8)
    long = torch.randint(VOCAB, (2, 11), generator=torch.Generator().manual_seed(6))
    out = model.generate(long, 4, temperature=0)  # longer than block_size: no error
    assert out.shape == (2, 15) and torch.equal(out[:, :11], long)
    from_tail = model.generate(long[:, -8:], 4, temperature=0)  # the same as starting from the last 8 tokens
    assert torch.equal(out[:, -4:], from_tail[:, -4:])
    with pytest.raises(GenscaleError, match="model.block_size"):
        model(long)
    with pytest.raises(GenscaleError, match="temperature"):
        model.generate(long, 1, temperature=-1.0)


def test_presets_build_and_match_the_parameter_formula():
    for size, p in PRESETS.items():
        assert p["n_embd"] % p["n_head"] == 0, size
        assert gpt_preset(size) == p
    for size in ("tiny", "micro", "mini", "small", "medium"):  # gpt2 is too slow to build here; its count below
        p = PRESETS[size]
        model = build_gpt(size, vocab_size=VOCAB, block_size=16, dropout=0.0, bias=False)
        assert len(model.blocks) == p["n_layer"] and model.blocks[0].attn.n_head == p["n_head"]
        assert count_parameters(model) == gpt_param_formula(vocab=VOCAB, block=16, n_layer=p["n_layer"],
                                                            n_embd=p["n_embd"], bias=False)
    # GPT-2 small with biases, its 50257-token vocabulary and 1024 positions: the published 124,439,808
    assert gpt_param_formula(vocab=50257, block=1024, n_layer=12, n_embd=768, bias=True) == 124_439_808
    assert PRESETS["gpt2"] == {"n_layer": 12, "n_head": 12, "n_embd": 768}


def test_unknown_size_and_bad_shapes_are_errors():
    with pytest.raises(GenscaleError, match="model.size: 'huge' is not a preset of gpt"):
        build_gpt("huge", vocab_size=VOCAB, block_size=16, dropout=0.0, bias=False)
    with pytest.raises(GenscaleError, match="model.size: n_embd 30 is not a multiple of n_head 4"):
        GPTConfig(vocab_size=VOCAB, n_layer=1, n_head=4, n_embd=30)
    with pytest.raises(GenscaleError, match="model.block_size: 0"):
        GPTConfig(vocab_size=VOCAB, block_size=0)
    with pytest.raises(GenscaleError, match="model.dropout"):
        GPTConfig(vocab_size=VOCAB, dropout=1.0)
