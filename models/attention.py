"""Attention semantics of hrm-text, in one place (docs/DESIGN.md, "Attention semantics"), and the kernels that compute them.

A packed batch is one token axis of length L holding samples back to back. Sample i occupies
[cu_seqlens[i], cu_seqlens[i+1]); its first prefix_lens[i] tokens are the prefix (instruction), the
rest the response. Query q may attend key k iff both lie in the same sample and (k <= q, or both lie
in that sample's prefix). attn_type "causal" is plain causal attention within a sample (every prefix
length taken as 0). Tokens after the last sample (the padding tail) belong to no sample: every
backend outputs exactly 0 there and passes no gradient through them.

Backends, all computing exactly that:
- sdpa:   boolean mask + scaled_dot_product_attention; the reference, runs anywhere. A dense [L, L]
          mask, or, when 2 * max_seqlen <= L, a band: blocks of max_seqlen queries, each over the
          keys up to max_seqlen - 1 beyond its ends (same result, about L * 3 max_seqlen pairs).
- varlen: torch.nn.attention.varlen.varlen_attn (FA2 kernels inside PyTorch), in two passes: a
          non-causal pass over prefix tokens only, then a causal pass whose queries are the response
          tokens and whose keys are the whole sample, with the causal mask aligned bottom-right
          (query j of a c-token response over an n-token sample sees keys 0 .. j + n - c).
- fa3:    the same two passes through FlashAttention 3 (flash_attn_interface), Hopper only.
- flex:   flex_attention with a BlockMask built from the same metadata, Triton kernels. CUDA only: in
          torch 2.13 flex_attention runs forward on CPU but raises on backward there, so it cannot
          train on CPU.
- flex_fa4: the same flex_attention call and BlockMask, run by FlashAttention 4's CuTe DSL kernels
          (torch's kernel_options BACKEND="FLASH", torch >= 2.11, flash-attn-4 installed; compiled
          at first use): one pass, mask_mod evaluated only on the partial blocks, as with Triton.
          Hopper and Blackwell; checked on an H100 with flash-attn-4 4.0.0b36.

Generation (static KV cache) prefills prompts through `packed_attention` (prefix semantics), then
each new token attends causally to everything before it through `cached_attention`, under a
`generation_mask`, a flex `decode_block_mask`, or `KeyLengths` (`split_decode`, a Triton kernel
that reads only the keys a row has filled, split in equal parts).
"""

import functools
import importlib.util
import inspect
import logging
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.nn.attention import flex_attention as _flex_module
from torch.nn.attention.flex_attention import BlockMask, flex_attention

try:
    from torch.nn.attention.varlen import varlen_attn
except ImportError:  # torch < 2.10
    varlen_attn = None

try:
    from flash_attn_interface import flash_attn_varlen_func
except ImportError:
    flash_attn_varlen_func = None

try:
    import triton
    import triton.language as tl
except ImportError:
    triton = None

log = logging.getLogger(__name__)

BACKENDS = ("sdpa", "varlen", "fa3", "flex", "flex_fa4")
# The flex_attention backends and their kernel_options: torch's own Triton kernels, or FlashAttention 4's.
_FLEX_KERNELS = {"flex": None, "flex_fa4": {"BACKEND": "FLASH"}}
ATTN_TYPES = ("prefixlm", "causal")
# Fastest first (docs/DESIGN.md, "Decisions"): on prefix-LM batches compiled flex beats the two-pass
# backends (fa3, varlen). flex_fa4 is not listed: it needs its own install and compiles slowly at first use.
_AUTO_ORDER = ("flex", "fa3", "varlen", "sdpa")

# torch 2.10 spells causal `is_causal=True`; torch >= 2.11 replaced it with window_size=(-1, 0).
if varlen_attn is not None and "window_size" in inspect.signature(varlen_attn).parameters:
    _VARLEN_CAUSAL = {"window_size": (-1, 0)}
else:
    _VARLEN_CAUSAL = {"is_causal": True}


# ----------------------------------------------------------------------------------------------
# Backend selection


def _unavailable_reason(name: str, device: torch.device) -> str | None:
    """None when backend `name` can run forward and backward on `device`, else why not."""
    if name == "sdpa":
        return None
    if name == "varlen":
        if device.type != "cuda":
            return "varlen needs a CUDA device"
        if varlen_attn is None:
            return "torch.nn.attention.varlen.varlen_attn is not importable (needs torch >= 2.10)"
        return None
    if name == "fa3":
        if device.type != "cuda":
            return "fa3 needs a CUDA device"
        if flash_attn_varlen_func is None:
            return "flash_attn_interface (FlashAttention 3) is not installed"
        if torch.cuda.get_device_capability(device)[0] != 9:
            return f"fa3 needs a Hopper GPU (sm90), found {torch.cuda.get_device_name(device)}"
        return None
    if name in _FLEX_KERNELS:
        if device.type != "cuda":
            return f"flex_attention has no backward on {device.type} in torch {torch.__version__}"
        if importlib.util.find_spec("triton") is None:
            return "flex_attention on CUDA needs triton"
        if name == "flex":
            return None
        if "BACKEND" not in getattr(getattr(_flex_module, "FlexKernelOptions", None), "__annotations__", {}):
            return f"flex_attention in torch {torch.__version__} cannot run FlashAttention 4 kernels (needs torch >= 2.11)"
        import_error = _fa4_import_error()
        if import_error is not None:
            return f"flash_attn.cute (FlashAttention 4: pip install flash-attn-4) cannot be imported: {import_error}"
        if torch.cuda.get_device_capability(device)[0] not in (9, 10):
            return f"flex_fa4 needs a Hopper or Blackwell GPU (sm90/sm100), found {torch.cuda.get_device_name(device)}"
        return None
    raise ValueError(f"unknown attention backend {name!r}; choose from {BACKENDS + ('auto',)}")


@functools.cache
def _fa4_import_error() -> str | None:
    """Why FlashAttention 4 (pip install flash-attn-4), which flex_attention's BACKEND="FLASH" calls
    into, cannot be imported; None if it can. Checked on first need: importing it loads the CuTe DSL."""
    try:
        import flash_attn.cute.interface  # noqa: F401
    except Exception as exc:  # not installed, or installed beside an nvidia-cutlass-dsl it does not fit
        return f"{type(exc).__name__}: {exc}"
    return None


def available_backends(device: torch.device | str) -> list[str]:
    device = torch.device(device)
    return [name for name in BACKENDS if _unavailable_reason(name, device) is None]


_logged_choices: set[tuple[str, str]] = set()


def resolve_backend(name: str, device: torch.device | str) -> str:
    """'auto' -> the fastest backend available on `device` (logged once); a named backend is
    returned if it can run there, else ValueError says why and lists the available ones."""
    device = torch.device(device)
    available = available_backends(device)
    if name == "auto":
        chosen = next(b for b in _AUTO_ORDER if b in available)
        if (device.type, chosen) not in _logged_choices:
            _logged_choices.add((device.type, chosen))
            log.info("attention backend auto -> %s on %s: the first available of %s, fastest first as measured on "
                     "prefix-LM batches (docs/DESIGN.md, \"Decisions\"); available: %s", chosen, device.type,
                     " > ".join(_AUTO_ORDER), ", ".join(available))
        return chosen
    reason = _unavailable_reason(name, device)
    if reason is not None:
        raise ValueError(f"attention backend {name!r} is unavailable: {reason}; available on {device}: {available}")
    return name


# ----------------------------------------------------------------------------------------------
# Per-batch layout


@dataclass
class PackedLayout:
    """What one backend needs to attend over one packed batch. Built once per batch by
    `build_layout` and shared by every layer and recurrent call."""

    backend: str
    attn_type: str
    max_seqlen: int
    token_valid: torch.Tensor  # [L] bool: the token belongs to a sample (False on the padding tail)
    dense_mask: torch.Tensor | None = None  # sdpa: [L, L] bool, True = may attend
    # sdpa over a band (samples much shorter than L): query block i (rows [iB, (i+1)B)) sees the
    # keys band_keys[i] = [iB - W, (i+1)B + W) with W = max_seqlen - 1; band_mask [nb, B, B + 2W].
    band_keys: torch.Tensor | None = None  # int64 [nb, B + 2W], clamped into [0, L)
    band_mask: torch.Tensor | None = None
    block_mask: BlockMask | None = None  # flex, flex_fa4
    # varlen / fa3. Gathered rows j < (number of such tokens) read token idx[j]; later rows are
    # unused (idx 0, rows_valid False). The causal pass's keys are the untouched token axis.
    cu_seqlens: torch.Tensor | None = None  # int32 [M+1]: whole samples (causal-pass keys)
    prefix_cu: torch.Tensor | None = None  # int32 [M+1]: prefixes, in gathered prefix rows
    prefix_idx: torch.Tensor | None = None  # int64 [L]
    prefix_rows_valid: torch.Tensor | None = None  # bool [L]
    response_cu: torch.Tensor | None = None  # int32 [M+1]: responses, in gathered response rows
    response_idx: torch.Tensor | None = None  # int64 [L]
    response_rows_valid: torch.Tensor | None = None  # bool [L]


def _may_attend(seg_q, seg_k, prefix_end_q, q_idx, k_idx):
    """The one definition of who sees whom (docs/DESIGN.md, "Attention semantics"), over absolute token indices.
    The padding tail is given its own segment (and a prefix end at its start), so its rows are
    causal among themselves: never empty, hence never NaN; the backends zero them afterwards."""
    both_in_prefix = (k_idx < prefix_end_q) & (q_idx < prefix_end_q)
    return (seg_q == seg_k) & ((k_idx <= q_idx) | both_in_prefix)


def query_key_pairs(prefix_lens, causal_lens, attn_type: str) -> int:
    """How many (query, key) pairs `_may_attend` lets a packed batch's samples attend: the
    attention work a kernel that skips masked pairs does. A sample of prefix p and causal part c
    has p^2 + c p + c (c + 1) / 2 under prefix-LM (the prefix sees itself whole, each response
    token the prefix and the response up to itself) and n (n + 1) / 2, n = p + c, under causal.
    Host integers or CPU tensors (slots of length 0 count nothing)."""
    p, c = (torch.as_tensor(x, dtype=torch.int64) for x in (prefix_lens, causal_lens))
    if attn_type == "causal":
        n = p + c
        return int((n * (n + 1) // 2).sum())
    return int((p * p + c * p + c * (c + 1) // 2).sum())


def _compact(keep: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Fixed-length gather of the tokens where `keep`, in token order, without a host sync:
    row j reads token idx[j] for j < keep.sum(); later rows are unused (idx 0, valid False)."""
    count = torch.cumsum(keep, 0)
    rows = torch.arange(1, keep.numel() + 1, device=keep.device)
    idx = torch.searchsorted(count, rows)  # first token at which the running count reaches j + 1
    valid = rows <= count[-1]
    return torch.where(valid, idx, 0), valid


def _band(seg, prefix_end, total_len: int, max_seqlen: int):
    """Keys and mask of the banded sdpa: a sample is contiguous and at most max_seqlen long, so a
    query never sees a key more than max_seqlen - 1 tokens away (before it, or after it within a
    bidirectional prefix). Costs L * (B + 2W) instead of L * L; the mask is `_may_attend`'s."""
    block, halo = max_seqlen, max_seqlen - 1
    n_blocks = -(-total_len // block)
    q_idx = torch.arange(n_blocks * block, device=seg.device).view(n_blocks, block)
    k_idx = q_idx[:, :1] - halo + torch.arange(block + 2 * halo, device=seg.device)
    q_in, k_in = q_idx.clamp(max=total_len - 1), k_idx.clamp(0, total_len - 1)
    mask = _may_attend(seg[q_in][:, :, None], seg[k_in][:, None, :], prefix_end[q_in][:, :, None],
                       q_idx[:, :, None], k_idx[:, None, :])
    mask &= ((k_idx >= 0) & (k_idx < total_len))[:, None, :]
    # rows past L (block padding) see themselves only: never empty, so never NaN
    mask |= (q_idx >= total_len)[:, :, None] & (k_idx[:, None, :] == q_idx[:, :, None])
    return k_in, mask


def _banded_sdpa(q, k, v, layout: PackedLayout) -> torch.Tensor:
    """[L, H, D] -> [L, H, D] through block-local sdpa over the band."""
    total_len = q.shape[0]
    n_blocks, block = layout.band_mask.shape[:2]
    q_blocks = F.pad(q, (0, 0, 0, 0, 0, n_blocks * block - total_len)).view(n_blocks, block, *q.shape[1:])
    k_win, v_win = k[layout.band_keys], v[layout.band_keys]  # [nb, B + 2W, H, D]
    out = F.scaled_dot_product_attention(q_blocks.transpose(1, 2), k_win.transpose(1, 2), v_win.transpose(1, 2),
                                         attn_mask=layout.band_mask[:, None])
    return out.transpose(1, 2).reshape(n_blocks * block, *q.shape[1:])[:total_len]


def _cumulative(lengths: torch.Tensor) -> torch.Tensor:
    return F.pad(torch.cumsum(lengths, 0), (1, 0)).to(torch.int32)


def build_layout(
    cu_seqlens: torch.Tensor,
    prefix_lens: torch.Tensor,
    total_len: int,
    max_seqlen: int,
    backend: str,
    attn_type: str = "prefixlm",
) -> PackedLayout:
    """cu_seqlens int32 [M+1] (padding slots repeat the total: zero-length samples), prefix_lens
    int32 [M], total_len L (static), max_seqlen a static upper bound on any sample's length.
    `backend` is a resolved name (see resolve_backend). No host syncs for varlen / fa3."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown attention backend {backend!r}; choose from {BACKENDS}")
    if attn_type not in ATTN_TYPES:
        raise ValueError(f"unknown attn_type {attn_type!r}; choose from {ATTN_TYPES}")
    device = cu_seqlens.device
    cu = cu_seqlens.long()
    prefix = prefix_lens.long() if attn_type == "prefixlm" else torch.zeros_like(prefix_lens, dtype=torch.long)
    tokens = torch.arange(total_len, device=device)
    # Sample id per token; tail tokens get id M (right=True skips zero-length padding samples).
    seg = torch.searchsorted(cu[1:], tokens, right=True)
    prefix_end = cu[seg] + F.pad(prefix, (0, 1))[seg]
    token_valid = tokens < cu[-1]
    layout = PackedLayout(backend, attn_type, max_seqlen, token_valid)

    if backend == "sdpa" and 2 * max_seqlen <= total_len:
        layout.band_keys, layout.band_mask = _band(seg, prefix_end, total_len, max_seqlen)
    elif backend == "sdpa":
        layout.dense_mask = _may_attend(seg[:, None], seg[None, :], prefix_end[:, None], tokens[:, None], tokens[None, :])
    elif backend in _FLEX_KERNELS:
        # int32: what the CuTe DSL kernels read inside mask_mod (and half the bytes for Triton's)
        layout.block_mask = _flex_block_mask(seg.int(), prefix_end.int(), total_len)
    else:  # the two-pass backends
        layout.cu_seqlens = cu_seqlens.to(torch.int32)
        if attn_type == "prefixlm":
            is_prefix = token_valid & (tokens < prefix_end)
            layout.prefix_cu = _cumulative(prefix)
            layout.prefix_idx, layout.prefix_rows_valid = _compact(is_prefix)
            layout.response_cu = _cumulative(cu[1:] - cu[:-1] - prefix)
            layout.response_idx, layout.response_rows_valid = _compact(token_valid & ~is_prefix)
    return layout


# ----------------------------------------------------------------------------------------------
# Packed attention


def _torch_varlen(q, k, v, cu_q, cu_k, max_len, causal):
    return varlen_attn(q, k, v, cu_q, cu_k, max_len, max_len, **(_VARLEN_CAUSAL if causal else {}))


def _fa3_varlen(q, k, v, cu_q, cu_k, max_len, causal):
    out = flash_attn_varlen_func(q, k, v, cu_q, cu_k, max_len, max_len, causal=causal)
    return out[0] if isinstance(out, tuple) else out  # older FA3 builds also return the LSE


# Both take q [Tq, H, D], k/v [Tk, H, D] and return [Tq, H, D]; causal is bottom-right aligned.
_VARLEN_KERNELS = {"varlen": _torch_varlen, "fa3": _fa3_varlen}

FLEX_TILE = 128  # the BlockMask's tile (flex_attention's default block, FA4's tile on Hopper)


def _flex_block_mask(seg, prefix_end, total_len: int) -> BlockMask:
    """The packed layout's BlockMask, classified per FLEX_TILE x FLEX_TILE tile of (query, key)
    from per-tile bounds in O((L / 128)^2) work: empty tiles are skipped, full tiles run without
    mask_mod, partial ones apply it per pair. Evaluating mask_mod over all L x L pairs (what
    create_block_mask does) cost several ms per step eagerly, and compiled, its Triton kernel was
    slow to compile at long batches.

    Exact for _may_attend because each segment is one contiguous run of tokens and segment ids
    increase along them: a query tile Q and key tile K share a pair that may attend iff their
    segment ranges overlap and (K starts before Q ends or some prefix in Q reaches K's start); every
    pair may attend iff Q and K are whole tiles of one segment and K ends before that segment's
    prefix does or before Q starts. This needs each prefix to end inside its sample (prefix length <=
    sample length, as dataset_new.py guarantees). tests/test_attention.py checks it against the dense
    rule."""
    def mask_mod(b, h, q_idx, kv_idx):
        return _may_attend(seg[q_idx], seg[kv_idx], prefix_end[q_idx], q_idx, kv_idx)

    tiles = -(-total_len // FLEX_TILE)
    first = torch.arange(tiles, device=seg.device) * FLEX_TILE
    last = (first + FLEX_TILE - 1).clamp(max=total_len - 1)
    seg_lo, seg_hi = seg[first], seg[last]
    reach = F.pad(prefix_end, (0, tiles * FLEX_TILE - total_len)).view(tiles, FLEX_TILE).amax(-1)
    # rows: query tiles, columns: key tiles
    overlap = (seg_lo[None, :] <= seg_hi[:, None]) & (seg_lo[:, None] <= seg_hi[None, :])
    some = overlap & ((first[None, :] <= last[:, None]) | (reach[:, None] > first[None, :]))
    whole = (seg_lo == seg_hi) & (last - first == FLEX_TILE - 1)
    same = whole[:, None] & whole[None, :] & (seg_lo[:, None] == seg_lo[None, :])
    every = same & ((last[None, :] < prefix_end[first][:, None]) | (last[None, :] <= first[:, None]))
    return BlockMask.from_kv_blocks(*_tile_lists(some & ~every), *_tile_lists(every), BLOCK_SIZE=FLEX_TILE,
                                    mask_mod=mask_mod, seq_lengths=(total_len, total_len))


def _tile_lists(tiles: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """bool [Q tiles, K tiles] -> BlockMask's per-row count and key-tile indices (the selected
    ones first, in order), with batch and head dimensions of 1."""
    counts = tiles.sum(-1, dtype=torch.int32)
    indices = torch.argsort(tiles.to(torch.uint8), dim=-1, descending=True, stable=True).to(torch.int32)
    return counts[None, None], indices[None, None]


@functools.cache
def _compiled(fn):
    """fn under torch.compile (static shapes: packed batches have a fixed length), made once."""
    return torch.compile(fn, dynamic=False)


def _flex(q, k, v, block_mask, kernel_options=None):
    """kernel_options: flex_attention's knobs. Training passes only the kernel family (_FLEX_KERNELS):
    torch's H100 tuning defaults were the fastest on our batches (`bench/attention_check.py --flex-sweep`)."""
    if q.device.type != "cuda":
        return flex_attention(q, k, v, block_mask=block_mask)  # unfused; forward only off CUDA
    # flex_attention is only fused (and memory-efficient) when compiled.
    return _compiled(flex_attention)(q, k, v, block_mask=block_mask, kernel_options=kernel_options)


def _only_rows(rows_valid: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return torch.where(rows_valid[:, None, None], x, 0)


def _two_pass(q, k, v, layout: PackedLayout) -> torch.Tensor:
    kernel = _VARLEN_KERNELS[layout.backend]
    n = layout.max_seqlen
    # Rows outside every sequence (padding tail, unused gathered rows) are never written by the
    # kernels, forward or backward: their outputs and gradients are garbage, so zero them both ways.
    k, v = _only_rows(layout.token_valid, k), _only_rows(layout.token_valid, v)
    if layout.attn_type == "causal":
        out = kernel(_only_rows(layout.token_valid, q), k, v, layout.cu_seqlens, layout.cu_seqlens, n, True)
        return _only_rows(layout.token_valid, out)

    out = torch.zeros_like(q)
    # Pass 1: prefix queries over prefix keys, bidirectional.
    idx, rows = layout.prefix_idx, layout.prefix_rows_valid
    qp, kp, vp = (_only_rows(rows, x.index_select(0, idx)) for x in (q, k, v))
    out_prefix = kernel(qp, kp, vp, layout.prefix_cu, layout.prefix_cu, n, False)
    # index_add, not index_copy: unused rows all point at token 0 and must add exactly nothing.
    out = out.index_add(0, idx, _only_rows(rows, out_prefix))
    # Pass 2: response queries over the whole sample; bottom-right causal = k <= q in the sample.
    idx, rows = layout.response_idx, layout.response_rows_valid
    qr = _only_rows(rows, q.index_select(0, idx))
    out_response = kernel(qr, k, v, layout.response_cu, layout.cu_seqlens, n, True)
    return out.index_add(0, idx, _only_rows(rows, out_response))


def packed_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layout: PackedLayout) -> torch.Tensor:
    """q, k, v [L, H, D] (RoPE applied) -> [L, H, D]; softmax scale 1/sqrt(D)."""
    if layout.backend in _VARLEN_KERNELS:
        return _two_pass(q, k, v, layout)
    if layout.band_mask is not None:
        return _only_rows(layout.token_valid, _banded_sdpa(q, k, v, layout))
    q4, k4, v4 = (x.transpose(0, 1)[None] for x in (q, k, v))  # [1, H, L, D]
    if layout.backend == "sdpa":
        out = F.scaled_dot_product_attention(q4, k4, v4, attn_mask=layout.dense_mask)
    else:
        out = _flex(q4, k4, v4, layout.block_mask, _FLEX_KERNELS[layout.backend])
    return _only_rows(layout.token_valid, out[0].transpose(0, 1))


# ----------------------------------------------------------------------------------------------
# Generation with a static KV cache


def generation_mask(query_positions: torch.Tensor, prompt_lens: torch.Tensor, cache_len: int) -> torch.Tensor:
    """Bool mask [B, 1, Tq, cache_len] for queries at cache positions query_positions [B, Tq]
    (or [Tq], shared by all rows); row b's prompt fills cache positions 0 .. prompt_lens[b]-1.
    Query q sees key k iff k <= q, or both lie in the prompt (prefix semantics for the prefill)."""
    q = query_positions[..., :, None]  # [B or 1, Tq, 1]
    k = torch.arange(cache_len, device=query_positions.device)
    prompt = prompt_lens[:, None, None]
    mask = (k <= q) | ((k < prompt) & (q < prompt))
    return mask[:, None]


def decode_block_mask(positions: torch.Tensor, cache_len: int) -> BlockMask:
    """Decoding's mask as a flex BlockMask: row b's one query, at cache position positions[b] [B]
    (past its prompt), sees keys 0 .. positions[b] (`generation_mask`'s rule there). Key tiles past
    positions[b] are skipped, so a row reads only the part of the cache it has filled."""
    def mask_mod(b, h, q_idx, kv_idx):
        return kv_idx <= positions[b]

    tiles = -(-cache_len // FLEX_TILE)
    query_tile = (positions // FLEX_TILE).int()[:, None, None]  # [B, 1, 1]
    order = torch.arange(tiles, device=positions.device, dtype=torch.int32).repeat(positions.shape[0], 1, 1, 1)
    # The query's own tile is partial (mask_mod applies there); every tile before it is full.
    partial_index = torch.where(order == 0, query_tile[..., None], order)
    return BlockMask.from_kv_blocks(torch.ones_like(query_tile), partial_index, query_tile, order,
                                    BLOCK_SIZE=FLEX_TILE, mask_mod=mask_mod, seq_lengths=(1, cache_len),
                                    compute_q_blocks=False)  # forward only


@dataclass
class KeyLengths:
    """Decoding's mask for one query per row (past its prompt): row b sees cache positions
    0 .. lengths[b] - 1 (`generation_mask`'s rule there). The kernel reads those keys only."""

    lengths: torch.Tensor  # int32 [B]


if triton is not None:
    @triton.jit
    def _split_decode_kernel(Q, K, V, lengths, acc_out, max_out, sum_out, stride_kb, stride_kt, stride_kh, scale,
                             HEADS: tl.constexpr, DIM: tl.constexpr, SPLITS: tl.constexpr, BLOCK: tl.constexpr,
                             METHOD: tl.constexpr, DOT_PRECISION: tl.constexpr):
        """Program (row x head, split): the split-th of SPLITS equal parts of the row's filled keys
        (0 .. lengths[row] - 1) in BLOCK-key tiles, as a running softmax: its unnormalised output
        [DIM], its running max and its sum of exponentials. METHOD (SPLIT_DECODE_METHODS) is how a
        tile is reduced: "reduce" over its keys at once; "streams" keeps one running softmax per key
        slot of the tile, reduced once at the end (no reduction across warps in the loop); "dot"
        pads the query to 16 rows for tensor-core dots (in DOT_PRECISION: "ieee" for float32)."""
        row_head, split = tl.program_id(0), tl.program_id(1)
        row, head = row_head // HEADS, row_head % HEADS
        n = tl.load(lengths + row)
        per_split = tl.cdiv(tl.cdiv(n, SPLITS), BLOCK) * BLOCK
        start = split * per_split
        end = tl.minimum(n, start + per_split)
        dims = tl.arange(0, DIM)
        base = row.to(tl.int64) * stride_kb + head * stride_kh  # a layer's cache may exceed 2^31 elements
        # running maxima start finite: an empty split (or slot) combines with weight 0
        if METHOD == 0:
            q = tl.load(Q + row_head * DIM + dims).to(tl.float32) * scale
            running_max = tl.full((), -1e30, tl.float32)
            running_sum = tl.zeros((), tl.float32)
            acc = tl.zeros((DIM,), tl.float32)
        elif METHOD == 1:
            q = tl.load(Q + row_head * DIM + dims).to(tl.float32) * scale
            running_max = tl.full((BLOCK,), -1e30, tl.float32)
            running_sum = tl.zeros((BLOCK,), tl.float32)
            acc = tl.zeros((BLOCK, DIM), tl.float32)
        else:
            rows = tl.arange(0, 16)
            q = tl.load(Q + row_head * DIM + rows[:, None] * 0 + dims[None, :], mask=rows[:, None] == 0, other=0.0)
            running_max = tl.full((16,), -1e30, tl.float32)
            running_sum = tl.zeros((16,), tl.float32)
            acc = tl.zeros((16, DIM), tl.float32)
        for tile in range(start, end, BLOCK):
            keys = tile + tl.arange(0, BLOCK)
            valid = keys < end
            offsets = base + keys[:, None] * stride_kt + dims[None, :]
            # both loads issued before any arithmetic: more bytes in flight per program
            k = tl.load(K + offsets, mask=valid[:, None], other=0.0)
            v = tl.load(V + offsets, mask=valid[:, None], other=0.0)
            if METHOD == 0:
                scores = tl.where(valid, tl.sum(k.to(tl.float32) * q[None, :], 1), float("-inf"))
                new_max = tl.maximum(running_max, tl.max(scores, 0))
                rescale = tl.exp(running_max - new_max)
                weights = tl.exp(scores - new_max)
                acc = acc * rescale + tl.sum(weights[:, None] * v.to(tl.float32), 0)
                running_sum = running_sum * rescale + tl.sum(weights, 0)
            elif METHOD == 1:
                scores = tl.where(valid, tl.sum(k.to(tl.float32) * q[None, :], 1), float("-inf"))
                new_max = tl.maximum(running_max, scores)
                rescale = tl.exp(running_max - new_max)
                weights = tl.exp(scores - new_max)
                acc = acc * rescale[:, None] + weights[:, None] * v.to(tl.float32)
                running_sum = running_sum * rescale + weights
            else:
                scores = tl.where(valid[None, :], tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION) * scale, float("-inf"))
                new_max = tl.maximum(running_max, tl.max(scores, 1))
                rescale = tl.exp(running_max - new_max)
                weights = tl.exp(scores - new_max[:, None])
                acc = acc * rescale[:, None] + tl.dot(weights.to(v.dtype), v, input_precision=DOT_PRECISION)
                running_sum = running_sum * rescale + tl.sum(weights, 1)
            running_max = new_max
        if METHOD == 1:  # combine the key slots' running softmaxes
            slot_max = running_max
            running_max = tl.max(slot_max, 0)
            slot_weights = tl.exp(slot_max - running_max)
            acc = tl.sum(slot_weights[:, None] * acc, 0)
            running_sum = tl.sum(slot_weights * running_sum, 0)
        elif METHOD == 2:  # the query's row
            first = rows == 0
            acc = tl.sum(tl.where(first[:, None], acc, 0.0), 0)
            running_max = tl.max(tl.where(first, running_max, -1e30), 0)
            running_sum = tl.sum(tl.where(first, running_sum, 0.0), 0)
        out = row_head * SPLITS + split
        tl.store(acc_out + out * DIM + dims, acc)
        tl.store(max_out + out, running_max)
        tl.store(sum_out + out, running_sum)

    @torch.library.triton_op("hrm_text::split_decode", mutates_args=())
    def _split_decode_op(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, lengths: torch.Tensor,
                         splits: int, block: int, num_warps: int, method: int) -> torch.Tensor:
        B, _, H, D = k.shape
        acc = torch.empty(B * H, splits, D, device=q.device, dtype=torch.float32)
        maxima = torch.empty(B * H, splits, device=q.device, dtype=torch.float32)
        sums = torch.empty_like(maxima)
        torch.library.wrap_triton(_split_decode_kernel)[(B * H, splits)](
            q, k, v, lengths, acc, maxima, sums, k.stride(0), k.stride(1), k.stride(2), D ** -0.5,
            HEADS=H, DIM=D, SPLITS=splits, BLOCK=block, METHOD=method,
            DOT_PRECISION="ieee" if q.dtype == torch.float32 else "tf32", num_warps=num_warps)
        weights = torch.exp(maxima - maxima.amax(-1, keepdim=True))
        out = (acc * weights[..., None]).sum(1) / (sums * weights).sum(1)[:, None]
        return out.view(B, H, D).to(q.dtype)


SPLIT_DECODE_BLOCK = 64  # keys per tile of the split decode kernel
SPLIT_DECODE_WARPS = 4
SPLIT_DECODE_METHODS = ("reduce", "streams", "dot")  # how the kernel reduces a tile (its docstring)
SPLIT_DECODE_METHOD = "reduce"
SPLIT_DECODE_KEYS = 256  # cache positions per split (at most 8 splits): the default split count


def split_decode(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, lengths: torch.Tensor,
                 splits: int | None = None, block: int | None = None, num_warps: int | None = None,
                 method: str | None = None) -> torch.Tensor:
    """One query per row over a cache k, v [B, T, H, D] (any strides but the last: the cache's own
    [B, T, H, D] storage or a [B, H, T, D] one transposed; k and v alike), row b seeing keys
    0 .. lengths[b] - 1 (lengths >= 1): q [B, H, D] -> [B, H, D]. Each (row, head) is split into `splits` equal
    parts of its *filled* keys (flash decoding balanced on the row's length, where flex splits the
    cache's whole length), combined by their softmax statistics. Unset knobs take the SPLIT_DECODE_
    defaults, read at call time (bench/attention_check.py --decode sweeps them)."""
    if k.stride() != v.stride() or k.stride(-1) != 1:
        raise ValueError(f"split_decode: k and v need the same strides, dims contiguous; got {k.stride()}, {v.stride()}")
    splits = splits or max(1, min(8, k.shape[1] // SPLIT_DECODE_KEYS))
    return _split_decode_op(q.contiguous(), k, v, lengths, splits, block or SPLIT_DECODE_BLOCK,
                            num_warps or SPLIT_DECODE_WARPS, SPLIT_DECODE_METHODS.index(method or SPLIT_DECODE_METHOD))


def split_decode_unavailable(device: torch.device | str, head_dim: int) -> str | None:
    """None when `KeyLengths` decoding (split_decode) can run on `device`, else why not."""
    if torch.device(device).type != "cuda":
        return "split decoding needs a CUDA device"
    if triton is None:
        return "split decoding needs triton"
    if head_dim & (head_dim - 1):
        return f"split decoding needs a power-of-two head_dim, not {head_dim}"
    return None


def cached_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask) -> torch.Tensor:
    """q [B, H, Tq, D] over a KV cache k, v [B, H, T, D] -> [B, H, Tq, D]. `mask` is a
    `generation_mask` [B, 1, Tq, T'] over the first T' <= T positions, a `decode_block_mask`, or
    `KeyLengths` (Tq = 1)."""
    if isinstance(mask, KeyLengths):  # k, v: the cache's own [B, T, H, D] storage, transposed
        return split_decode(q[:, :, 0], k.transpose(1, 2), v.transpose(1, 2), mask.lengths)[:, :, None]
    if isinstance(mask, BlockMask):
        return _flex(q, k, v, mask)
    T = mask.shape[-1]
    return F.scaled_dot_product_attention(q, k[:, :, :T], v[:, :, :T], attn_mask=mask)
