"""Building blocks of every net: weightless RMSNorm, RoPE, gated attention, SwiGLU, the block and
the stack (docs/DESIGN.md, "Model"). Nothing here knows about parallelism or about packing: attention takes
an `AttentionContext` that says how tokens see each other (a packed layout for training, a KV
cache for generation) and defers to models/attention.py, the one home of attention semantics.
"""

from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import nn

from models import attention as attn_lib
from models.config import StackConfig


def rms_norm(x: torch.Tensor, eps: float) -> torch.Tensor:
    """Weightless RMSNorm, computed in fp32 for stability and cast back."""
    xf = x.float()
    return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)).type_as(x)


def rope_cos_sin(position_ids: torch.Tensor, head_dim: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin tables [..., head_dim] for rotate-half RoPE, computed in fp32 from integer positions."""
    inv_freq = 1.0 / theta ** (torch.arange(0, head_dim, 2, device=position_ids.device, dtype=torch.float32) / head_dim)
    freqs = position_ids.float()[..., None] * inv_freq
    angles = torch.cat((freqs, freqs), dim=-1)
    return angles.cos(), angles.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x [B, T, H, D]; cos/sin [B, T, D] in fp32. Rotation done in fp32, result in x's dtype."""
    xf = x.float()
    half = x.shape[-1] // 2
    rotated = torch.cat((-xf[..., half:], xf[..., :half]), dim=-1)
    return (xf * cos[:, :, None] + rotated * sin[:, :, None]).type_as(x)


# ----------------------------------------------------------------------------------------------
# Initializers


# 1 / std of fmod(N(0, 1), 3): restores unit std after folding the tails back
FOLDED_NORMAL_STD_CORRECTION = 1.014762601732121


@torch.no_grad()
def trunc_normal_(weight: torch.Tensor, std: float) -> torch.Tensor:
    """The reference's truncated normal: a standard normal with values beyond ±3 folded back in by
    fmod (|x| < 3), rescaled so the result has standard deviation `std`."""
    return weight.normal_().fmod_(3.0).mul_(FOLDED_NORMAL_STD_CORRECTION * std)


# ----------------------------------------------------------------------------------------------
# How tokens see each other


@dataclass
class PackedContext:
    """Training/scoring on one packed token axis (batch dimension 1). With a `cache`, this is also
    generation's packed prefill: token t's keys/values are written to cache row `cache_rows[t]` at
    position `cache_positions[t]`, so one forward fills the caches of many prompts."""

    layout: attn_lib.PackedLayout
    cache: "StaticKVCache | CallCache | None" = None
    cache_rows: torch.Tensor | None = None
    cache_positions: torch.Tensor | None = None

    def at_call(self, call: int) -> "PackedContext":
        return self if self.cache is None else replace(self, cache=self.cache.calls[call])


@dataclass
class CachedContext:
    """Decoding over a static KV cache: the keys/values of row b's queries are written at
    `positions[b]` ([B, Tq]) of cache row b, then the queries attend that row under `mask`: a bool
    `generation_mask` [B, 1, Tq, T] over the first T cache positions, a flex BlockMask
    (`decode_block_mask`) that skips the key tiles a row has not reached, or `KeyLengths` (one
    query per row, which reads only the keys the row has filled)."""

    cache: "StaticKVCache | CallCache"
    positions: torch.Tensor
    mask: "torch.Tensor | attn_lib.BlockMask | attn_lib.KeyLengths"

    def at_call(self, call: int) -> "CachedContext":
        return replace(self, cache=self.cache.calls[call])


AttentionContext = PackedContext | CachedContext


@dataclass
class CallCache:
    """The keys/values of one module call, one [B, T, H, D] tensor per layer. The net hands each
    call its own (`AttentionContext.at_call`), so a compiled stack takes them as inputs and one
    graph serves every call of every stack."""

    k: list[torch.Tensor]
    v: list[torch.Tensor]

    def update(self, layer: int, positions: torch.Tensor, k: torch.Tensor, v: torch.Tensor):
        """Write k/v [B, Tq, H, D] of every row at `positions` [B, Tq]; return the layer's whole
        cache as k, v [B, H, T, D]."""
        k_cache, v_cache = self.k[layer], self.v[layer]
        rows = torch.arange(k_cache.shape[0], device=k_cache.device)[:, None]
        k_cache.index_put_((rows, positions), k)
        v_cache.index_put_((rows, positions), v)
        return k_cache.transpose(1, 2), v_cache.transpose(1, 2)

    def write(self, layer: int, rows: torch.Tensor, positions: torch.Tensor, k: torch.Tensor, v: torch.Tensor):
        """Write packed tokens' k/v [L, H, D] at (rows[t], positions[t])."""
        self.k[layer].index_put_((rows, positions), k)
        self.v[layer].index_put_((rows, positions), v)


class StaticKVCache:
    """Pre-allocated keys/values for every (module call, layer) of the recurrence: each call of a
    recurrent stack sees different inputs, so each needs its own. One [B, T, H, D] tensor per call
    and layer: writing into slices of a single big tensor made a compiled decode step copy all of it."""

    def __init__(self, num_calls: int, layers_per_call: int, batch_size: int, max_len: int,
                 num_heads: int, head_dim: int, dtype: torch.dtype, device: torch.device | str):
        shape = (batch_size, max_len, num_heads, head_dim)
        self.max_len = max_len

        def tensors():
            return [torch.zeros(shape, dtype=dtype, device=device) for _ in range(layers_per_call)]

        self.calls = [CallCache(tensors(), tensors()) for _ in range(num_calls)]

    @staticmethod
    def bytes_per_row(num_calls: int, layers_per_call: int, max_len: int, num_heads: int, head_dim: int,
                      dtype: torch.dtype) -> int:
        """Memory of one cache row (one sequence), for sizing a batch to the free memory."""
        return 2 * num_calls * layers_per_call * max_len * num_heads * head_dim * dtype.itemsize

    def copy_rows(self, source: int, targets: torch.Tensor) -> None:
        """Rows `targets` become copies of row `source` in every tensor (a prompt's KV shared by its
        samples): one copy of the source row, broadcast."""
        for call in self.calls:
            for cache in (*call.k, *call.v):
                cache.index_copy_(0, targets, cache[source].clone().expand(len(targets), *cache.shape[1:]))


# ----------------------------------------------------------------------------------------------
# Modules


class Attention(nn.Module):
    """Gated attention: one fused projection hidden -> (gate, q, k, v), RoPE on q and k,
    output o_proj(sigmoid(gate) * attention(q, k, v))."""

    def __init__(self, cfg: StackConfig, layer_index: int):
        super().__init__()
        self.num_heads, self.head_dim, self.layer_index = cfg.num_heads, cfg.head_dim, layer_index
        inner = cfg.num_heads * cfg.head_dim
        self.gqkv_proj = nn.Linear(cfg.hidden_size, 4 * inner, bias=False)
        self.o_proj = nn.Linear(inner, cfg.hidden_size, bias=False)

    def forward(self, x, cos, sin, ctx: AttentionContext):
        B, T, _ = x.shape
        gate, q, k, v = self.gqkv_proj(x).view(B, T, 4, self.num_heads, self.head_dim).unbind(2)
        if cos is not None:  # pos_emb_type rope
            q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if isinstance(ctx, PackedContext):
            if ctx.cache is not None:
                ctx.cache.write(self.layer_index, ctx.cache_rows, ctx.cache_positions, k[0], v[0])
            out = attn_lib.packed_attention(q[0], k[0], v[0], ctx.layout)[None]
        else:
            k_all, v_all = ctx.cache.update(self.layer_index, ctx.positions, k, v)
            out = attn_lib.cached_attention(q.transpose(1, 2), k_all, v_all, ctx.mask).transpose(1, 2)
        return self.o_proj((torch.sigmoid(gate) * out).reshape(B, T, -1))


class SwiGLU(nn.Module):
    def __init__(self, cfg: StackConfig):
        super().__init__()
        self.gate_up_proj = nn.Linear(cfg.hidden_size, 2 * cfg.intermediate_size, bias=False)
        self.down_proj = nn.Linear(cfg.intermediate_size, cfg.hidden_size, bias=False)

    def forward(self, x):
        gate, up = self.gate_up_proj(x).chunk(2, dim=-1)
        return self.down_proj(F.silu(gate) * up)


class Block(nn.Module):
    def __init__(self, cfg: StackConfig, layer_index: int):
        super().__init__()
        self.eps, self.post_norm = cfg.norm_eps, cfg.norm_type == "post"
        self.attn = Attention(cfg, layer_index)
        self.mlp = SwiGLU(cfg)

    def forward(self, x, cos, sin, ctx: AttentionContext):
        if self.post_norm:
            x = rms_norm(x + self.attn(x, cos, sin, ctx), self.eps)
            return rms_norm(x + self.mlp(x), self.eps)
        x = x + self.attn(rms_norm(x, self.eps), cos, sin, ctx)
        return x + self.mlp(rms_norm(x, self.eps))


class Stack(nn.Module):
    """A stack of blocks. With pre-norm it ends in an exit RMSNorm, which keeps the recurrent
    state bounded across module calls (the paper's MagicNorm)."""

    def __init__(self, cfg: StackConfig):
        super().__init__()
        self.cfg = cfg
        self.layers = nn.ModuleList(Block(cfg, i) for i in range(cfg.n_layers))

    def forward(self, x, rope: tuple[torch.Tensor, torch.Tensor] | None, ctx: AttentionContext):
        """rope: the (cos, sin) tables of rope_cos_sin for this stack's head_dim and theta; None
        with pos_emb_type none (no position information but the causal mask's). ctx: this call's
        (`AttentionContext.at_call`)."""
        cos, sin = rope if rope is not None else (None, None)
        for layer in self.layers:
            x = layer(x, cos, sin, ctx)
        return rms_norm(x, self.cfg.norm_eps) if self.cfg.norm_type == "pre" else x

    def init_weights(self) -> None:
        """Each projection by the stack's `init_type` (StackConfig.init_stds)."""
        in_std, attn_out_std, mlp_out_std = self.cfg.init_stds
        for layer in self.layers:
            for proj, std in ((layer.attn.gqkv_proj, in_std), (layer.attn.o_proj, attn_out_std),
                              (layer.mlp.gate_up_proj, in_std), (layer.mlp.down_proj, mlp_out_std)):
                trunc_normal_(proj.weight, std)
