"""models/attention.py: every backend computes the masking of docs/DESIGN.md, "Attention semantics", checked against the sdpa
reference, which is itself checked against an explicit per-(query, key) loop."""

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from models import attention as A

CPU = torch.device("cpu")

# (prefix, response) lengths, with prefix length 1 and response length 1 among them.
MIXED = [(5, 7), (1, 4), (6, 1), (1, 1), (9, 12), (3, 2)]
# Degenerate samples the kernels must also survive: no prefix, no response.
DEGENERATE = [(0, 6), (4, 0), (2, 3)]


def make_batch(samples, total_len, slots, device=CPU):
    """cu_seqlens [slots+1], prefix_lens/causal_lens [slots] as the data loader pads them."""
    lengths = [p + c for p, c in samples]
    assert sum(lengths) < total_len and len(samples) <= slots  # keep a padding tail
    cu = [0]
    for n in lengths:
        cu.append(cu[-1] + n)
    cu += [cu[-1]] * (slots - len(samples))
    prefix = [p for p, _ in samples] + [0] * (slots - len(samples))
    causal = [c for _, c in samples] + [0] * (slots - len(samples))
    as_int = lambda xs: torch.tensor(xs, dtype=torch.int32, device=device)  # noqa: E731
    return as_int(cu), as_int(prefix), as_int(causal)


def random_qkv(total_len, heads=3, dim=8, dtype=torch.float32, device=CPU, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(total_len, heads, dim, generator=g).to(device, dtype).requires_grad_() for _ in range(3)]


def loop_reference(q, k, v, samples, attn_type):
    """Explicit loop over (query, key) pairs in float64, straight from the rule in docs/DESIGN.md, "Attention semantics"."""
    L, H, D = q.shape
    out = torch.zeros(L, H, D, dtype=torch.float64)
    start = 0
    for p, c in samples:
        n, p = p + c, p if attn_type == "prefixlm" else 0
        for qi in range(start, start + n):
            for h in range(H):
                keys = [ki for ki in range(start, start + n) if ki <= qi or (ki < start + p and qi < start + p)]
                scores = torch.stack([(q[qi, h].double() @ k[ki, h].double()) / math.sqrt(D) for ki in keys])
                weights = torch.softmax(scores, 0)
                out[qi, h] = sum(w * v[ki, h].double() for w, ki in zip(weights, keys))
        start += n
    return out


def run(backend, q, k, v, cu, prefix, max_seqlen, attn_type, grad_out=None):
    layout = A.build_layout(cu, prefix, q.shape[0], max_seqlen, backend, attn_type)
    out = A.packed_attention(q, k, v, layout)
    if grad_out is None:
        return out, None
    grads = torch.autograd.grad(out, (q, k, v), grad_out)
    return out, grads


@pytest.mark.parametrize("max_seqlen", [8, 20], ids=["banded", "dense"])
@pytest.mark.parametrize("attn_type", A.ATTN_TYPES)
def test_sdpa_matches_explicit_loop(attn_type, max_seqlen):
    samples = [(3, 2), (1, 1), (2, 4), (0, 2)]
    cu, prefix, _ = make_batch(samples, total_len=20, slots=6)
    q, k, v = random_qkv(20, heads=2, dim=4)
    layout = A.build_layout(cu, prefix, 20, max_seqlen, "sdpa", attn_type)
    assert (layout.band_mask is not None) == (max_seqlen == 8)
    out, _ = run("sdpa", q, k, v, cu, prefix, max_seqlen, attn_type)
    torch.testing.assert_close(out.double(), loop_reference(q, k, v, samples, attn_type), atol=1e-6, rtol=0)


@pytest.mark.parametrize("attn_type", A.ATTN_TYPES)
def test_banded_sdpa_matches_dense(attn_type):
    """The band (samples far shorter than the batch) is only a cheaper way to the same result."""
    samples = MIXED + DEGENERATE
    total_len = sum(p + c for p, c in samples) + 9
    cu, prefix, _ = make_batch(samples, total_len, slots=len(samples) + 2)
    q, k, v = random_qkv(total_len, seed=4)
    grad_out = torch.randn(total_len, 3, 8)
    dense = run("sdpa", q, k, v, cu, prefix, total_len, attn_type, grad_out)
    banded = run("sdpa", q, k, v, cu, prefix, 21, attn_type, grad_out)
    for got, want in zip((banded[0], *banded[1]), (dense[0], *dense[1])):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=0)


def fake_varlen_kernel(q, k, v, cu_q, cu_k, max_len, causal):
    """Python stand-in for a varlen flash kernel, with its hazards made loud: bottom-right causal
    per sequence, and rows outside every sequence come out NaN in forward and backward."""
    out = torch.zeros_like(q)
    cu_q, cu_k = cu_q.tolist(), cu_k.tolist()
    for i in range(len(cu_q) - 1):
        qs, ks = q[cu_q[i] : cu_q[i + 1]], k[cu_k[i] : cu_k[i + 1]]
        nq, nk = qs.shape[0], ks.shape[0]
        assert nq <= max_len and nk <= max_len
        if nq == 0:
            continue
        allowed = torch.ones(nq, nk, dtype=torch.bool)
        if causal:  # query j sees keys 0 .. j + nk - nq
            allowed = torch.arange(nk)[None, :] <= torch.arange(nq)[:, None] + (nk - nq)
        o = torch.nn.functional.scaled_dot_product_attention(
            qs.transpose(0, 1), ks.transpose(0, 1), v[cu_k[i] : cu_k[i + 1]].transpose(0, 1), attn_mask=allowed
        )
        out = out.index_copy(0, torch.arange(cu_q[i], cu_q[i + 1]), o.transpose(0, 1))
    unused = q[cu_q[-1] :].sum() + k[cu_k[-1] :].sum() + v[cu_k[-1] :].sum()
    nan_rows = torch.full_like(q[cu_q[-1] :], math.nan) * unused
    return torch.cat([out[: cu_q[-1]], nan_rows])


@pytest.fixture
def fake_varlen(monkeypatch):
    monkeypatch.setitem(A._VARLEN_KERNELS, "varlen", fake_varlen_kernel)


def cpu_backends():
    """Backends with a full forward+backward on CPU, plus the two-pass varlen logic run through
    the fake kernel (the real kernels are checked by the CUDA tests and bench/attention_check.py)."""
    return A.available_backends(CPU) + ["varlen"]


@pytest.mark.parametrize("attn_type", A.ATTN_TYPES)
@pytest.mark.parametrize("samples", [MIXED, MIXED + DEGENERATE], ids=["mixed", "degenerate"])
@pytest.mark.parametrize("backend", cpu_backends())
def test_backend_matches_sdpa(backend, samples, attn_type, fake_varlen):
    total_len = sum(p + c for p, c in samples) + 7
    cu, prefix, _ = make_batch(samples, total_len, slots=len(samples) + 3)
    q, k, v = random_qkv(total_len)
    grad_out = torch.randn(total_len, 3, 8)  # nonzero on the padding tail too
    ref_out, ref_grads = run("sdpa", q, k, v, cu, prefix, 21, attn_type, grad_out)
    out, grads = run(backend, q, k, v, cu, prefix, 21, attn_type, grad_out)
    tail = slice(int(cu[-1]), total_len)
    for got, want in zip((out, *grads), (ref_out, *ref_grads)):
        assert torch.isfinite(got).all()
        assert (got[tail] == 0).all()
        assert (got - want).abs().max() < 1e-5


@pytest.mark.parametrize("attn_type", A.ATTN_TYPES)
def test_flex_forward_matches_sdpa_on_cpu(attn_type):
    """flex cannot train on CPU (no backward), but its block mask is checked here in forward."""
    samples = MIXED + DEGENERATE
    total_len = sum(p + c for p, c in samples) + 5
    cu, prefix, _ = make_batch(samples, total_len, slots=12)
    q, k, v = (x.detach() for x in random_qkv(total_len))
    ref, _ = run("sdpa", q, k, v, cu, prefix, 21, attn_type)
    out, _ = run("flex", q, k, v, cu, prefix, 21, attn_type)
    assert (out - ref).abs().max() < 1e-5


def dense_rule(samples, total_len, attn_type):
    """bool [L, L]: which keys each query may see, straight from docs/DESIGN.md, "Attention semantics" (the padding tail is
    causal among itself)."""
    allowed = torch.zeros(total_len, total_len, dtype=torch.bool)
    start = 0
    for p, c in samples + [(0, total_len - sum(p + c for p, c in samples))]:
        n, p = p + c, p if attn_type == "prefixlm" else 0
        seen = torch.ones(n, n).tril().bool()
        seen[:p, :p] = True
        allowed[start:start + n, start:start + n] = seen
        start += n
    return allowed


@pytest.mark.parametrize("attn_type", ["prefixlm", "causal"])
def test_query_key_pairs_count_the_dense_rule(attn_type):
    samples = [(1, 1), (5, 0), (3, 7), (12, 4), (1, 9)]
    total = sum(p + c for p, c in samples)
    expected = int(dense_rule(samples, total, attn_type).sum())  # no padding tail: every pair is a sample's
    prefix, causal = [p for p, _ in samples] + [0, 0], [c for _, c in samples] + [0, 0]  # two empty slots
    assert A.query_key_pairs(torch.tensor(prefix), torch.tensor(causal), attn_type) == expected


def tiles_of(counts, indices, n):
    """A BlockMask's per-row tile lists as bool [query tiles, key tiles]; the listed indices must
    be distinct and increasing."""
    tiles = torch.zeros(n, n, dtype=torch.bool)
    for row in range(n):
        listed = indices[0, 0, row, :counts[0, 0, row]]
        assert (listed[1:] > listed[:-1]).all()
        tiles[row, listed.long()] = True
    return tiles


@pytest.mark.parametrize("tail", [0, 1, 150])
@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("attn_type", A.ATTN_TYPES)
def test_flex_tiles_match_the_dense_mask(attn_type, seed, tail):
    """flex's BlockMask, classified from per-tile bounds, lists exactly the tiles where some pair
    may attend, and as full exactly those where every pair may, against the dense rule cut into
    tiles. Lengths from 1 token to several tiles, prefixes reaching across tile edges."""
    g = torch.Generator().manual_seed(seed)
    samples = [(1, 1), (0, 3), (130, 2), (1, 300), (100, 500)]
    while sum(p + c for p, c in samples) < 1400:
        n = int(torch.randint(2, 400, (), generator=g))
        p = int(torch.randint(0, n + 1, (), generator=g))
        samples.append((p, n - p))
    # first a prefix ending one token before a tile edge (its last key tile is partial, not full),
    # then (after a filler sample up to the edge at 512) one from a tile edge whose prefix ends on
    # an edge (the next key tile is empty for its queries)
    edges = [(255, 10), (1, 246), (256, 10)]
    samples = edges + [samples[i] for i in torch.randperm(len(samples), generator=g)]
    total_len = sum(p + c for p, c in samples) + tail
    as_int = lambda xs: torch.tensor(xs, dtype=torch.int32)  # noqa: E731
    cu = as_int([0] + torch.tensor([p + c for p, c in samples]).cumsum(0).tolist() + [total_len - tail] * 2)
    prefix = as_int([p for p, _ in samples] + [0, 0])  # two padding slots
    mask = A.build_layout(cu, prefix, total_len, 4096, "flex", attn_type).block_mask

    t = A.FLEX_TILE
    n = -(-total_len // t)
    dense = torch.nn.functional.pad(dense_rule(samples, total_len, attn_type), (0, n * t - total_len, 0, n * t - total_len))
    per_tile = dense.view(n, t, n, t)
    every = per_tile.all(3).all(1)  # a tile cut by the batch's end is never full
    some = per_tile.any(3).any(1)
    assert torch.equal(tiles_of(mask.full_kv_num_blocks, mask.full_kv_indices, n), every)
    assert torch.equal(tiles_of(mask.kv_num_blocks, mask.kv_indices, n), some & ~every)
    assert every.any() and (some & ~every).any() and (~some).any()  # all three kinds occur


def test_prefill_then_decode_matches_packed():
    """Prefill each row's prompt into a static cache, decode token by token: equals packed prefix-LM."""
    samples = [(4, 5), (1, 7), (6, 1)]
    total_len = sum(p + c for p, c in samples) + 3
    cu, prefix, _ = make_batch(samples, total_len, slots=4)
    q, k, v = (x.detach() for x in random_qkv(total_len, heads=2, dim=8))
    packed, _ = run("sdpa", q, k, v, cu, prefix, 16, "prefixlm")

    B, H, D, T = len(samples), 2, 8, 12
    row_q, row_k, row_v = (torch.zeros(B, H, T, D) for _ in range(3))
    for b, (start, (p, c)) in enumerate(zip(cu.tolist(), samples)):
        for x, row in ((q, row_q), (k, row_k), (v, row_v)):
            row[b, :, : p + c] = x[start : start + p + c].transpose(0, 1)
    prompt_lens = torch.tensor([p for p, _ in samples])
    cache_k, cache_v = torch.zeros(B, H, T, D), torch.zeros(B, H, T, D)
    got = torch.zeros(B, H, T, D)

    # Prefill the longest prompt's span for every row: shorter rows' extra positions are response
    # tokens, and the mask makes them causal, exactly as if they had been decoded one by one.
    n_prefill = int(prompt_lens.max())
    positions = torch.arange(n_prefill).expand(B, n_prefill)
    cache_k[:, :, :n_prefill], cache_v[:, :, :n_prefill] = row_k[:, :, :n_prefill], row_v[:, :, :n_prefill]
    mask = A.generation_mask(positions, prompt_lens, T)
    assert mask.shape == (B, 1, n_prefill, T)
    got[:, :, :n_prefill] = A.cached_attention(row_q[:, :, :n_prefill], cache_k, cache_v, mask)
    for t in range(n_prefill, T):
        cache_k[:, :, t], cache_v[:, :, t] = row_k[:, :, t], row_v[:, :, t]
        mask = A.generation_mask(torch.full((B, 1), t), prompt_lens, T)
        got[:, :, t : t + 1] = A.cached_attention(row_q[:, :, t : t + 1], cache_k, cache_v, mask)

    for b, (start, (p, c)) in enumerate(zip(cu.tolist(), samples)):
        want = packed[start : start + p + c].transpose(0, 1)
        assert (got[b, :, : p + c] - want).abs().max() < 1e-5


def test_generation_mask_rule():
    mask = A.generation_mask(torch.arange(4), torch.tensor([2, 0]), 5)[:, 0]
    prompt2 = torch.tensor(
        [[1, 1, 0, 0, 0], [1, 1, 0, 0, 0], [1, 1, 1, 0, 0], [1, 1, 1, 1, 0]], dtype=torch.bool
    )
    assert torch.equal(mask[0], prompt2)
    assert torch.equal(mask[1], torch.ones(4, 5, dtype=torch.bool).tril())


def test_backend_resolution_on_cpu():
    assert A.available_backends(CPU) == ["sdpa"]
    assert A.resolve_backend("auto", CPU) == "sdpa"
    assert A.resolve_backend("sdpa", "cpu") == "sdpa"
    with pytest.raises(ValueError, match=r"'varlen' is unavailable: varlen needs a CUDA device.*\['sdpa'\]"):
        A.resolve_backend("varlen", CPU)
    for flex in ("flex", "flex_fa4"):
        with pytest.raises(ValueError, match="flex_attention has no backward on cpu"):
            A.resolve_backend(flex, CPU)
    with pytest.raises(ValueError, match="unknown attention backend"):
        A.resolve_backend("xformers", CPU)


CUDA_BACKENDS = A.available_backends("cuda") if torch.cuda.is_available() else []


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("attn_type", A.ATTN_TYPES)
@pytest.mark.parametrize("backend", [b for b in CUDA_BACKENDS if b != "sdpa"])
def test_cuda_backend_matches_fp32_sdpa(backend, attn_type):
    cuda = torch.device("cuda")
    samples = MIXED * 8 + [(130, 200), (1, 300), (250, 1)]
    total_len = sum(p + c for p, c in samples) + 100
    cu, prefix, _ = make_batch(samples, total_len, slots=len(samples) + 8, device=cuda)
    q, k, v = random_qkv(total_len, heads=4, dim=64, device=cuda)
    grad_out = torch.randn(total_len, 4, 64, device=cuda)
    ref_out, ref_grads = run("sdpa", q, k, v, cu, prefix, 512, attn_type, grad_out)
    lq, lk, lv = (x.detach().bfloat16().requires_grad_() for x in (q, k, v))
    out, grads = run(backend, lq, lk, lv, cu, prefix, 512, attn_type, grad_out.bfloat16())
    for got, want in zip((out, *grads), (ref_out, *ref_grads)):
        assert torch.isfinite(got).all()
        assert ((got.float() - want).norm() / want.norm()) < 1e-2


def _decode_case(device, B=6, H=4, T=640, D=128):
    """One query per row over a cache [B, T, H, D] whose rows are filled to different lengths (1
    key, a tile edge, past one, the whole cache), unfilled slots holding huge values (a leak shows),
    and the float32 dense-mask reference."""
    positions = torch.tensor([0, 127, 128, T // 2, T - 40, T - 1][:B], device=device)  # each row's query position
    q = torch.randn(B, H, 1, D, device=device)
    k, v = (torch.randn(B, T, H, D, device=device) for _ in range(2))
    for b, p in enumerate(positions.tolist()):
        k[b, p + 1:], v[b, p + 1:] = 1e4, 1e4
    kt, vt = k.transpose(1, 2), v.transpose(1, 2)
    want = A.cached_attention(q, kt, vt, A.generation_mask(positions[:, None], torch.zeros(B, device=device), T))
    return q, k, v, positions, want


# Where `make test` installs triton on a CPU-only machine: beside the environment, not in it (with
# triton importable, every CPU process that loads torch._dynamo ends with triton's leak warnings).
TRITON_SITE = Path(__file__).resolve().parents[1] / ".triton"


@pytest.mark.skipif(A.triton is None and not TRITON_SITE.is_dir(), reason="needs triton (make test installs it)")
def test_split_decode_kernel_in_triton_interpreter():
    """The split kernel's checks below, on CPU tensors in a process running triton's interpreter
    (TRITON_INTERPRET must be set before triton loads, so not in this one)."""
    if os.environ.get("TRITON_INTERPRET") == "1":
        pytest.skip("this process runs them itself")
    path = os.pathsep.join(filter(None, [str(TRITON_SITE) if A.triton is None else "", os.environ.get("PYTHONPATH")]))
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", __file__, "-k",
                           "split_decode_kernel_matches_dense_mask"],
                          env={**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": path}, capture_output=True, text=True)
    assert done.returncode == 0 and " passed" in done.stdout and "skipped" not in done.stdout, done.stdout[-4000:]


@pytest.mark.skipif(A.triton is None or os.environ.get("TRITON_INTERPRET") != "1",
                    reason="run by test_split_decode_kernel_in_triton_interpreter (TRITON_INTERPRET=1)")
@pytest.mark.parametrize("method", A.SPLIT_DECODE_METHODS)
@pytest.mark.parametrize("splits,block,heads_outer", [(1, 64, False), (3, 64, False), (8, 32, False), (3, 128, True)])
def test_split_decode_kernel_matches_dense_mask_in_triton_interpreter(splits, block, heads_outer, method):
    q, k, v, positions, want = _decode_case("cpu", T=320)
    if heads_outer:  # a [B, H, T, D] cache, passed as its [B, T, H, D] view
        k, v = (x.transpose(1, 2).contiguous().transpose(1, 2) for x in (k, v))
    got = A.split_decode(q[:, :, 0], k, v, (positions + 1).int(), splits, block, method=method)
    assert (got - want[:, :, 0]).abs().max() < 1e-4


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("kind", [*(f"split-{m}" for m in A.SPLIT_DECODE_METHODS), "flex"])
def test_cuda_decode_attention_matches_fp32_dense_mask(kind, monkeypatch):
    """KeyLengths (split, each tile reduction) and decode_block_mask (flex) in bf16 against
    generation_mask + float32 sdpa, rows filled to different lengths."""
    if kind.startswith("split") and A.split_decode_unavailable("cuda", 128):
        pytest.skip(A.split_decode_unavailable("cuda", 128))
    monkeypatch.setattr(A, "SPLIT_DECODE_METHOD", kind.removeprefix("split-"))
    q, k, v, positions, want = _decode_case(torch.device("cuda"))
    T = k.shape[1]
    kt, vt = k.transpose(1, 2), v.transpose(1, 2)
    mask = A.KeyLengths((positions + 1).int()) if kind.startswith("split") else A.decode_block_mask(positions, T)
    got = A.cached_attention(q.bfloat16(), kt.bfloat16(), vt.bfloat16(), mask)
    assert got.shape == want.shape
    assert ((got.float() - want).norm() / want.norm()) < 1e-2
