"""A GPT-2-style decoder-only transformer (Radford et al. 2019) for next-token prediction.

Pre-LayerNorm blocks of causal self-attention and a GELU MLP, learned position embeddings, and an output layer that
shares its weights with the token embedding (Press & Wolf 2017). Sizes are presets (data, below) so a study can vary
them by name. Tokens are (B, T) int64 ids with T <= block_size; logits are (B, T, vocab_size).
"""

from __future__ import annotations

import math
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


class CausalSelfAttention(nn.Module):
    """Multi-head self-attention in which position t attends to positions <= t only."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.n_head = config.n_head
        self.dropout = config.dropout
        self.qkv = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)  # q, k, v in one matmul
        self.proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)  # writes into the residual stream
        self.resid_drop = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.qkv(x).split(C, dim=2)  # 3 x (B, T, C)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))  # (B, nh, T, hs)
        y = F.scaled_dot_product_attention(q, k, v, dropout_p=self.dropout if self.training else 0.0,
                                           is_causal=True)  # (B, nh, T, hs)
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

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))  # (B, T, C)
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

    def _hidden(self, idx: torch.Tensor) -> torch.Tensor:
        """(B, T) token ids -> (B, T, C) final normalised states, before the output layer."""
        T = idx.shape[1]
        if T > self.config.block_size:
            raise GenscaleError(f"model.block_size: an input of {T} tokens is longer than the context of "
                                f"{self.config.block_size} tokens")
        pos = torch.arange(T, device=idx.device)  # (T,)
        x = self.drop(self.wte(idx) + self.wpe(pos))  # (B, T, C) + (T, C)
        for block in self.blocks:
            x = block(x)
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

    @torch.no_grad()
    def generate(self, idx: torch.Tensor, max_new_tokens: int, *, temperature: float = 1.0, top_k: int | None = None,
                 top_p: float | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
        """(B, T0) -> (B, T0 + max_new_tokens). The context is cropped to the last block_size tokens.
        temperature 0 means greedy (argmax); otherwise sample from softmax(filter_logits(logits / temperature))
        with torch.multinomial(..., generator=generator) so a seeded generator gives reproducible samples.
        The module's mode is left alone: call .eval() first, or dropout applies while sampling."""
        if temperature < 0:
            raise GenscaleError(f"temperature: {temperature} must be >= 0 (0 is greedy)")
        for _ in range(max_new_tokens):
            context = idx[:, -self.config.block_size:]  # (B, <= block_size)
            logits = self.lm_head(self._hidden(context)[:, -1])  # only the last position is needed: (B, V)
            if temperature == 0:
                next_id = logits.argmax(dim=-1, keepdim=True)  # (B, 1)
            else:
                probs = F.softmax(filter_logits(logits / temperature, top_k=top_k, top_p=top_p), dim=-1)
                next_id = torch.multinomial(probs, 1, generator=generator)  # (B, 1)
            idx = torch.cat([idx, next_id], dim=1)
        return idx


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
