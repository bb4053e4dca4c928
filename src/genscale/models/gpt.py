"""A GPT-2-style decoder-only transformer (Radford et al. 2019) for next-token prediction.

Pre-LayerNorm blocks of causal self-attention and a GELU MLP, learned position embeddings, and an output layer that
shares its weights with the token embedding (Press & Wolf 2017). Sizes are presets (data, below) so a study can vary
them by name. Tokens are (B, T) int64 ids with T <= block_size; logits are (B, T, vocab_size). Generation keeps a
key/value cache (`KVCache`), so each new token costs one position's forward instead of the whole context's.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from genscale.errors import GenscaleError

PRESETS: dict[str, dict[str, int]] = {
    "tiny": {"n_layer": 2, "n_head": 2, "n_embd": 32},  # tests: a forward pass in milliseconds on a CPU
    "micro": {"n_layer": 2, "n_head": 4, "n_embd": 64},  # 0.1M parameters in the blocks: the small end of a sweep
    "mini": {"n_layer": 4, "n_head": 4, "n_embd": 128},  # 0.8M in the blocks: trains on a CPU in minutes
    "small": {"n_layer": 6, "n_head": 6, "n_embd": 384},  # 10.6M: the "baby GPT" of character-level Shakespeare
    "medium": {"n_layer": 8, "n_head": 8, "n_embd": 512},  # 25M: wants a GPU
    "gpt2": {"n_layer": 12, "n_head": 12, "n_embd": 768},  # GPT-2 small: 124M with its 50257-token vocabulary
}


def gpt_preset(size: str) -> dict[str, int]:
    """The layer count, head count and width of a named size; an unknown name is a GenscaleError."""
    try:
        return PRESETS[size]
    except KeyError:
        raise GenscaleError(f"model.size: '{size}' is not a preset of gpt (choose from {', '.join(PRESETS)})") from None


@dataclass(frozen=True)
class GPTConfig:
    """The shape of a GPT. Checked on creation: a bad value is a GenscaleError naming it."""

    vocab_size: int  # token ids run over [0, vocab_size); set by the tokenizer, not by the user
    block_size: int = 256  # context length in tokens: the rows of the position embedding, the longest input
    n_layer: int = 6  # transformer blocks
    n_head: int = 6  # attention heads per block; each head has n_embd // n_head dimensions
    n_embd: int = 384  # width of the residual stream
    dropout: float = 0.0  # on embeddings, attention weights and residual branches; 0 suits short single-epoch runs
    bias: bool = False  # biases in Linear and LayerNorm; False is slightly faster and as good (no need to be GPT-2)

    def __post_init__(self) -> None:
        for name in ("vocab_size", "block_size", "n_layer", "n_head", "n_embd"):
            value = getattr(self, name)
            if value < 1:
                raise GenscaleError(f"model.{name}: {value} must be a positive integer")
        if not 0.0 <= self.dropout < 1.0:
            raise GenscaleError(f"model.dropout: {self.dropout} must be in [0, 1)")
        if self.n_embd % self.n_head:
            raise GenscaleError(f"model.size: n_embd {self.n_embd} is not a multiple of n_head {self.n_head}")


def residual_init_std(n_layer: int, *, base_std: float = 0.02) -> float:
    """Init std of the layers that write into the residual stream: base_std / sqrt(N) with N = 2 * n_layer residual
    layers (an attention and an MLP branch per block), so the stream's variance at init does not grow with depth
    (Radford et al. 2019, "Language Models are Unsupervised Multitask Learners", section 2.3)."""
    return base_std / math.sqrt(2 * n_layer)


@dataclass
class LayerKV:
    """One attention layer's keys and values of the positions seen so far, in buffers preallocated to block_size
    positions: appending writes in place. Measured on a 2-core CPU, greedy, 200 new tokens: 1.03-1.45x the tokens/s of
    growing the tensors with torch.cat each step (mini and small presets, batch 1 and 8)."""

    k: torch.Tensor  # (B, nh, block_size, hs); positions >= length are unwritten
    v: torch.Tensor  # (B, nh, block_size, hs)
    length: int = 0  # positions filled: the next position to write

    def append(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store new (B, nh, T_new, hs) keys and values after the past ones; return past + new, (B, nh, T, hs) views."""
        end = self.length + k.shape[2]
        self.k[:, :, self.length:end] = k
        self.v[:, :, self.length:end] = v
        self.length = end
        return self.k[:, :, :end], self.v[:, :, :end]


@dataclass
class KVCache:
    """Every layer's LayerKV for one batch of equally long sequences being generated. Only for learned positions
    0..block_size-1: it cannot slide, so a context longer than block_size is recomputed without it (GPT.stream)."""

    layers: list[LayerKV]

    @classmethod
    def empty(cls, config: GPTConfig, batch: int, *, device: torch.device, dtype: torch.dtype) -> KVCache:
        """An empty cache for `batch` sequences of up to block_size tokens."""
        shape = (batch, config.n_head, config.block_size, config.n_embd // config.n_head)  # (B, nh, block_size, hs)

        def buffer() -> torch.Tensor:
            return torch.empty(shape, device=device, dtype=dtype)  # never read before written: no zeros needed

        return cls([LayerKV(buffer(), buffer()) for _ in range(config.n_layer)])

    @property
    def length(self) -> int:
        """Positions already cached: the position of the next token."""
        return self.layers[0].length


def cached_attention_mask(t_past: int, t_new: int, *, device: torch.device) -> torch.Tensor | None:
    """Which cached positions new queries may attend to: None where scaled_dot_product_attention needs no mask (one new
    query sees everything), else a (t_new, t_past + t_new) boolean mask, True = attend: query i sits at position
    t_past + i and sees positions <= t_past + i."""
    if t_new == 1:
        return None
    return torch.ones(t_new, t_past + t_new, dtype=torch.bool, device=device).tril(diagonal=t_past)


class CausalSelfAttention(nn.Module):
    """Multi-head self-attention in which position t attends to positions <= t only."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.n_head = config.n_head
        self.dropout = config.dropout
        self.qkv = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)  # q, k, v in one matmul
        self.proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)  # writes into the residual stream
        self.resid_drop = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor, cache: LayerKV | None = None) -> torch.Tensor:
        """x (B, T, C) -> (B, T, C). With a cache, x holds the T positions after the cached ones: their keys and values
        are appended to it and they attend to the cached positions and to each other, causally."""
        B, T, C = x.shape
        q, k, v = self.qkv(x).split(C, dim=2)  # 3 x (B, T, C)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))  # (B, nh, T, hs)
        dropout_p = self.dropout if self.training else 0.0
        if cache is None:  # training and full recomputation: T positions from 0
            y = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, is_causal=True)  # (B, nh, T, hs)
        elif cache.length == 0:  # prefill: the same causal attention, keys and values kept
            cache.append(k, v)
            y = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, is_causal=True)
        else:
            mask = cached_attention_mask(cache.length, T, device=x.device)  # before append moves the length on
            k, v = cache.append(k, v)  # (B, nh, T_past + T, hs)
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p)  # (B, nh, T, hs)
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # heads side by side again: (B, T, C)
        return self.resid_drop(self.proj(y))


class MLP(nn.Module):
    """Position-wise feed-forward layer, 4x wide, with the exact GELU as in GPT-2."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=config.bias)
        self.gelu = nn.GELU()
        self.proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=config.bias)  # writes into the residual stream
        self.drop = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.proj(self.gelu(self.fc(x))))  # (B, T, 4C) inside, (B, T, C) out


class Block(nn.Module):
    """A pre-LN transformer block: normalise before each branch, so the residual stream itself is never normalised
    and gradients reach early layers unscaled (GPT-2's change from the original transformer)."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.mlp = MLP(config)

    def forward(self, x: torch.Tensor, cache: LayerKV | None = None) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), cache)  # (B, T, C)
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    """Token and position embeddings, n_layer blocks, a final LayerNorm and a tied output layer."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.config = config
        self.wte = nn.Embedding(config.vocab_size, config.n_embd)  # token embedding, also the output layer
        self.wpe = nn.Embedding(config.block_size, config.n_embd)  # learned position embedding
        self.drop = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.n_layer))
        self.ln_f = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        # Weight tying (Press & Wolf 2017): one matrix embeds tokens and scores them; fewer parameters, lower loss.
        self.lm_head.weight = self.wte.weight
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Embedding)):
                nn.init.normal_(m.weight, mean=0.0, std=0.02)
            if isinstance(m, nn.Linear) and m.bias is not None:
                nn.init.zeros_(m.bias)
        std = residual_init_std(self.config.n_layer)
        for block in self.blocks:
            for proj in (block.attn.proj, block.mlp.proj):
                nn.init.normal_(proj.weight, mean=0.0, std=std)

    def _hidden(self, idx: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        """(B, T) token ids -> (B, T, C) final normalised states, before the output layer. With a cache, idx holds the
        tokens after the cached ones (positions cache.length onwards), and their keys and values join the cache."""
        T = idx.shape[1]
        start = 0 if cache is None else cache.length
        if start + T > self.config.block_size:
            raise GenscaleError(f"model.block_size: an input of {start + T} tokens is longer than the context of "
                                f"{self.config.block_size} tokens")
        if cache is None:
            pos = torch.arange(T, device=idx.device)  # (T,)
            x = self.drop(self.wte(idx) + self.wpe(pos))  # (B, T, C) + (T, C)
            for block in self.blocks:
                x = block(x)
        else:
            x = self.drop(self.wte(idx) + self.wpe.weight[start:start + T])  # (B, T, C) + (T, C)
            for block, layer_cache in zip(self.blocks, cache.layers, strict=True):
                x = block(x, layer_cache)
        return self.ln_f(x)  # (B, T, C)

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """idx (B, T) int64 with T <= block_size -> logits (B, T, vocab) for every position, and the mean
        cross-entropy over all positions when targets (B, T) are given (else None). T > block_size: GenscaleError."""
        logits = self.lm_head(self._hidden(idx))  # (B, T, V)
        if targets is None:
            return logits, None
        loss = F.cross_entropy(logits.view(-1, logits.size(-1)), targets.reshape(-1))
        return logits, loss

    def _last_logits(self, idx: torch.Tensor, cache: KVCache | None) -> torch.Tensor:
        """(B, T) -> (B, V) logits of the last position only (the output layer is the widest matmul at batch 1)."""
        return self.lm_head(self._hidden(idx, cache)[:, -1])

    def stream(self, idx: torch.Tensor, max_new_tokens: int, *, temperature: float = 1.0, top_k: int | None = None,
               top_p: float | None = None, generator: Generators = None) -> Iterator[torch.Tensor]:
        """The tokens `generate` appends, one (B, 1) tensor per step as soon as it is sampled (for streaming to a
        client). Same arguments and semantics as `generate`; a bad temperature is an error here, before any step."""
        check_temperature(temperature)
        return self._stream(idx, max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p,
                            generator=generator)

    @torch.inference_mode()  # torch enters and leaves it around each step of a generator, not around the caller
    def _stream(self, idx: torch.Tensor, max_new_tokens: int, *, temperature: float, top_k: int | None,
                top_p: float | None, generator: Generators) -> Iterator[torch.Tensor]:
        if max_new_tokens <= 0:
            return
        block_size = self.config.block_size
        context = idx[:, -block_size:]  # (B, <= block_size)
        w = self.wte.weight
        cache = KVCache.empty(self.config, idx.shape[0], device=w.device, dtype=w.dtype)
        logits = self._last_logits(context, cache)  # 1. prefill: the whole context once, keys and values kept
        for step in range(max_new_tokens):
            next_id = sample_next_token(logits, temperature=temperature, top_k=top_k, top_p=top_p,
                                        generator=generator)  # 2. sample: (B, 1)
            yield next_id
            if step == max_new_tokens - 1:  # no logits nobody will sample from
                return
            context = torch.cat([context, next_id], dim=1)
            if context.shape[1] <= block_size:  # 3a. decode: one position against the cache
                logits = self._last_logits(next_id, cache)
            else:  # 3b. past block_size the learned positions shift by one each step: recompute, like the uncached loop
                context = context[:, -block_size:]
                logits = self._last_logits(context, None)

    @torch.no_grad()
    def generate(self, idx: torch.Tensor, max_new_tokens: int, *, temperature: float = 1.0, top_k: int | None = None,
                 top_p: float | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
        """(B, T0) -> (B, T0 + max_new_tokens). The context is cropped to the last block_size tokens.
        temperature 0 means greedy (argmax); otherwise sample from softmax(filter_logits(logits / temperature))
        with torch.multinomial(..., generator=generator) so a seeded generator gives reproducible samples.
        The module's mode is left alone: call .eval() first, or dropout applies while sampling.
        Keys and values are cached while the sequence fits in block_size; beyond it each step recomputes the cropped
        context, so the tokens are those of recomputing every step (up to float rounding of the logits)."""
        new = list(self.stream(idx, max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p,
                               generator=generator))
        return torch.cat([idx, *new], dim=1)


MIN_TEMPERATURE = 1e-3  # below it logits / temperature can overflow float32 to inf, and softmax to NaN


def check_temperature(temperature: float) -> None:
    """0 (greedy) or at least MIN_TEMPERATURE, else a GenscaleError naming the value."""
    if temperature < 0 or 0 < temperature < MIN_TEMPERATURE:
        raise GenscaleError(f"temperature: {temperature} must be 0 (greedy) or at least {MIN_TEMPERATURE:g}")


Generators = torch.Generator | Sequence[tuple[int, torch.Generator]] | None


def sample_next_token(logits: torch.Tensor, *, temperature: float, top_k: int | None, top_p: float | None,
                      generator: Generators) -> torch.Tensor:
    """(B, V) last-position logits -> (B, 1) next token ids: argmax when temperature is 0, else a draw from
    softmax(filter_logits(logits / temperature)) with `generator`. `generator` may also be a list of (rows,
    generator) covering the B rows in order: each block of rows drawn with its own generator, as if sampled alone
    (the HTTP service batches requests so, each with its own seed)."""
    if temperature == 0:
        return logits.argmax(dim=-1, keepdim=True)  # (B, 1)
    probs = F.softmax(filter_logits(logits / temperature, top_k=top_k, top_p=top_p), dim=-1)
    if generator is None or isinstance(generator, torch.Generator):
        return torch.multinomial(probs, 1, generator=generator)  # (B, 1)
    if sum(rows for rows, _ in generator) != probs.shape[0]:
        raise ValueError(f"generators cover {sum(rows for rows, _ in generator)} rows of {probs.shape[0]}")
    blocks = probs.split([rows for rows, _ in generator])
    return torch.cat([torch.multinomial(b, 1, generator=g) for b, (_, g) in zip(blocks, generator, strict=True)])


def filter_logits(logits: torch.Tensor, *, top_k: int | None = None, top_p: float | None = None) -> torch.Tensor:
    """(B, V) -> (B, V) with excluded entries set to -inf. top-k keeps the k largest (Fan et al. 2018, "Hierarchical
    Neural Story Generation"; entries tied with the k-th largest are kept too); top-p (nucleus, Holtzman et al. 2020,
    "The Curious Case of Neural Text Degeneration") keeps the smallest set of most-probable tokens whose probability
    mass reaches top_p (the token that crosses the threshold is kept; at least one token always kept). Both may apply:
    k first, then p on the distribution renormalised over the k survivors."""
    if top_k is not None:
        if top_k < 1:
            raise GenscaleError(f"top_k: {top_k} must be at least 1")
        kth = torch.topk(logits, min(top_k, logits.size(-1)), dim=-1).values[..., -1:]  # (B, 1)
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None:
        if not 0.0 < top_p <= 1.0:
            raise GenscaleError(f"top_p: {top_p} must be in (0, 1]")
        if top_p < 1.0:  # 1 keeps every token; skipping also keeps rounding from dropping the least likely
            sorted_logits, order = logits.sort(dim=-1, descending=True)  # (B, V) each
            probs = sorted_logits.softmax(dim=-1)
            mass_before = probs.cumsum(dim=-1) - probs  # mass of the strictly more probable tokens
            drop_sorted = mass_before >= top_p  # the threshold was reached before this token
            drop_sorted[..., 0] = False  # the most probable token always stays
            drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)  # back to vocabulary order
            logits = logits.masked_fill(drop, float("-inf"))
    return logits


def build_gpt(size: str, *, vocab_size: int, block_size: int, dropout: float, bias: bool) -> GPT:
    """A freshly initialised GPT of a preset size."""
    config = GPTConfig(vocab_size=vocab_size, block_size=block_size, dropout=dropout, bias=bias, **gpt_preset(size))
    return GPT(config)


def count_parameters(model: nn.Module, *, non_embedding: bool = False) -> int:
    """Unique parameters: a tied weight (GPT's wte / lm_head) is counted once.

    non_embedding=True subtracts the position embedding `wpe` (when the module has one) and nothing else: the token
    embedding stays in the count because, tied, it is also the output layer's weight. This is the common convention
    for GPT-2-style models; Kaplan et al. 2020's N excludes both embeddings, so it is smaller by vocab_size * n_embd.
    """
    total = sum(p.numel() for p in model.parameters())  # .parameters() yields a shared tensor once
    wpe = getattr(model, "wpe", None)
    if non_embedding and isinstance(wpe, nn.Embedding):
        total -= wpe.weight.numel()
    return total


def decay_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """AdamW parameter groups: every parameter with dim >= 2 (matrices and embeddings) decays; biases and LayerNorm
    gains do not (as in GPT-3, Brown et al. 2020, and common practice: shrinking a gain or a shift towards 0 has no
    regularising meaning). Each trainable parameter appears exactly once; an empty group is left out."""
    params = [p for p in model.parameters() if p.requires_grad]  # unique: a tied weight once
    groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
              {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
    return [g for g in groups if g["params"]]


def gpt2_config(config: GPTConfig) -> dict:
    """Keyword arguments of a transformers `GPT2Config` whose GPT2LMHeadModel computes what GPT(config) computes, given
    `gpt2_state_dict`'s weights. transformers' "gelu" is torch's exact erf GELU (ours); GPT-2's own "gelu_new" is the
    tanh approximation. No BOS/EOS token: ours stops after max_new_tokens only, never at a token."""
    return {"vocab_size": config.vocab_size, "n_positions": config.block_size, "n_embd": config.n_embd,
            "n_layer": config.n_layer, "n_head": config.n_head, "n_inner": 4 * config.n_embd,
            "activation_function": "gelu", "layer_norm_epsilon": 1e-5,  # nn.LayerNorm's default eps
            "resid_pdrop": config.dropout, "embd_pdrop": config.dropout, "attn_pdrop": config.dropout,
            "scale_attn_weights": True, "scale_attn_by_inverse_layer_idx": False, "reorder_and_upcast_attn": False,
            "tie_word_embeddings": True, "bos_token_id": None, "eos_token_id": None}


def gpt2_state_dict(model: GPT) -> dict[str, torch.Tensor]:
    """The model's weights under GPT2LMHeadModel's names and layout. GPT-2's Conv1D stores (in, out), nn.Linear
    (out, in): matrices are transposed. GPT-2 always has biases: with bias=False they are zeros, which computes
    exactly the same. lm_head.weight is the very tensor of transformer.wte.weight (tied), as in GPT-2."""

    def bias_of(m: nn.Linear | nn.LayerNorm, size: int) -> torch.Tensor:
        return m.bias.detach().clone() if m.bias is not None else torch.zeros(size, dtype=m.weight.dtype,
                                                                               device=m.weight.device)

    def conv1d(prefix: str, m: nn.Linear) -> dict[str, torch.Tensor]:
        return {f"{prefix}.weight": m.weight.detach().t().contiguous(), f"{prefix}.bias": bias_of(m, m.out_features)}

    def layer_norm(prefix: str, m: nn.LayerNorm) -> dict[str, torch.Tensor]:
        return {f"{prefix}.weight": m.weight.detach().clone(), f"{prefix}.bias": bias_of(m, m.weight.numel())}

    wte = model.wte.weight.detach().clone()
    out = {"transformer.wte.weight": wte, "transformer.wpe.weight": model.wpe.weight.detach().clone()}
    for i, block in enumerate(model.blocks):
        h = f"transformer.h.{i}"
        out |= layer_norm(f"{h}.ln_1", block.ln_1) | conv1d(f"{h}.attn.c_attn", block.attn.qkv)
        out |= conv1d(f"{h}.attn.c_proj", block.attn.proj) | layer_norm(f"{h}.ln_2", block.ln_2)
        out |= conv1d(f"{h}.mlp.c_fc", block.mlp.fc) | conv1d(f"{h}.mlp.c_proj", block.mlp.proj)
    out |= layer_norm("transformer.ln_f", model.ln_f) | {"lm_head.weight": wte}
    return out
