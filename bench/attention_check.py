"""GPU check of the packed attention backends (models/attention.py): accuracy against an fp32 sdpa
reference and forward+backward time, on random packed batches shaped like real training batches.

    python3 bench/attention_check.py
    python3 bench/attention_check.py --backends flex_fa4,flex   # only these (the sdpa reference is always run)
    python3 bench/attention_check.py --flex-sweep   # flex kernel options, timed and checked
    python3 bench/attention_check.py --decode       # decode attention at a full batch's decode shapes

Needs only torch (and numpy): models/attention.py imports nothing else of the repo (hydra,
pydantic, ...). Prints a table per batch; the latest figures are in bench/README.md.
"""

import argparse
import functools
import itertools
import json
import math
import warnings

import numpy as np
import torch

from common import copy_bandwidth, kernel_ms, median_ms, print_header, random_samples
from models import attention as A

HEADS, HEAD_DIM, MAX_SEQLEN, SLOTS = 10, 128, 4096, 256
TOLERANCE = 1e-2
EDGE = [(1, 1), (1, 40), (40, 1)]  # prefix length 1, response length 1


def make_batch(samples, total_len, device):
    lengths = [p + c for p, c in samples]
    cu = np.concatenate([[0], np.cumsum(lengths)])
    cu = np.concatenate([cu, np.full(SLOTS - len(samples), cu[-1])])
    prefix = np.array([p for p, _ in samples] + [0] * (SLOTS - len(samples)))
    as_t = lambda x: torch.tensor(x, dtype=torch.int32, device=device)  # noqa: E731
    return as_t(cu), as_t(prefix)


def count_syncs(fn):
    """Run fn with CUDA host-sync detection on; returns (result, number of syncs)."""
    torch.cuda.synchronize()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            result = fn()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return result, sum("synchroniz" in str(w.message) for w in caught)


def fwd_bwd(backend, q, k, v, grad_out, cu, prefix, attn_type):
    layout = A.build_layout(cu, prefix, q.shape[0], MAX_SEQLEN, backend, attn_type)
    out = A.packed_attention(q, k, v, layout)
    return (out.detach(), *torch.autograd.grad(out, (q, k, v), grad_out))


def print_backends(device, out=print):
    """Which backends run here (and why not), and what `auto` picks."""
    for name in A.BACKENDS:
        reason = A._unavailable_reason(name, device)
        out(f"backend {name:8}: {'available' if reason is None else 'UNAVAILABLE - ' + reason}")
    out(f"auto -> {A.resolve_backend('auto', device)}")


def relative_errors(got, ref) -> list[float]:
    return [((x.float() - r).norm() / r.norm()).item() for x, r in zip(got, ref)]


def check_batch(name, samples, total_len, backends, device, timing):
    cu, prefix = make_batch(samples, total_len, device)
    lens = [p + c for p, c in samples]
    print(
        f"\n== batch {name}: L={total_len} H={HEADS} D={HEAD_DIM}, {len(samples)} samples "
        f"(length median {int(np.median(lens))}, max {max(lens)}), tail {total_len - sum(lens)} tokens"
    )
    g = torch.Generator(device=device).manual_seed(0)
    # bf16-representable inputs, so the fp32 reference measures kernel error, not input rounding.
    q, k, v, grad_out = (
        torch.randn(total_len, HEADS, HEAD_DIM, device=device, generator=g).bfloat16() for _ in range(4)
    )
    tail = slice(sum(lens), total_len)
    for attn_type in A.ATTN_TYPES:
        ref = fwd_bwd("sdpa", *(x.float().requires_grad_() for x in (q, k, v)), grad_out.float(), cu, prefix, attn_type)
        print(f"-- {attn_type}: relative error vs fp32 sdpa (||x - ref|| / ||ref||)")
        header = f"{'backend':8} {'out':>9} {'dq':>9} {'dk':>9} {'dv':>9}  {'ok':4} {'tail=0':6}"
        if timing:
            header += f" {'layout ms':>9} {'syncs':>5} {'fwd ms':>7} {'fwd+bwd ms':>10} {'kernels ms':>10}"
        print(header)
        for backend in backends:
            leaves = [x.clone().requires_grad_() for x in (q, k, v)]
            got = fwd_bwd(backend, *leaves, grad_out, cu, prefix, attn_type)
            errs = relative_errors(got, ref)
            ok = all(e < TOLERANCE for e in errs) and all(torch.isfinite(x).all().item() for x in got)
            tail_zero = all((x[tail] == 0).all().item() for x in got)
            row = f"{backend:8} " + " ".join(f"{e:9.2e}" for e in errs) + f"  {'PASS' if ok else 'FAIL':4} {str(tail_zero):6}"
            if timing:
                build = lambda: A.build_layout(cu, prefix, total_len, MAX_SEQLEN, backend, attn_type)  # noqa: E731
                layout, syncs = count_syncs(build)
                build_ms = median_ms(build, iters=5, warmup=1)

                def step():
                    out = A.packed_attention(*leaves, layout)
                    torch.autograd.grad(out, leaves, grad_out)

                def forward():  # as the recurrence's no-grad calls
                    with torch.no_grad():
                        A.packed_attention(*leaves, layout)

                row += (f" {build_ms:9.2f} {syncs:5d} {median_ms(forward):7.3f} {median_ms(step):10.3f}"
                        f" {kernel_ms(step):10.3f}")
            print(row, flush=True)


# Candidate flex_attention kernel options (fwd_/bwd_ prefixes apply to one pass). torch's H100
# defaults for bf16, head_dim 128: forward BLOCK_M 128, BLOCK_N 64, 3 stages, 8 warps; backward
# BLOCK_M1 64, BLOCK_N1 128, BLOCK_M2 128, BLOCK_N2 64, 3 stages, 8 warps.
FLEX_CANDIDATES = {
    "default": {},
    "tma": {"USE_TMA": True},
    "rows-safe": {"ROWS_GUARANTEED_SAFE": True},
    "prescale-qk": {"PRESCALE_QK": True},
    # a query's visible keys form one contiguous run (its sample's start up to the query or the
    # end of the prefix), so every row of the block mask is contiguous
    "contiguous": {"BLOCKS_ARE_CONTIGUOUS": True},
    "fwd 128x128 s2 w8": {"fwd_BLOCK_M": 128, "fwd_BLOCK_N": 128, "fwd_num_stages": 2, "fwd_num_warps": 8},
    "fwd 128x64 s4 w8": {"fwd_BLOCK_M": 128, "fwd_BLOCK_N": 64, "fwd_num_stages": 4, "fwd_num_warps": 8},
    "fwd 64x128 s3 w4": {"fwd_BLOCK_M": 64, "fwd_BLOCK_N": 128, "fwd_num_stages": 3, "fwd_num_warps": 4},
    "bwd 64/64 s3 w4": {"bwd_BLOCK_M1": 64, "bwd_BLOCK_N1": 64, "bwd_BLOCK_M2": 64, "bwd_BLOCK_N2": 64,
                        "bwd_num_stages": 3, "bwd_num_warps": 4},
    "bwd 64/128 s2 w8": {"bwd_BLOCK_M1": 64, "bwd_BLOCK_N1": 128, "bwd_BLOCK_M2": 128, "bwd_BLOCK_N2": 64,
                         "bwd_num_stages": 2, "bwd_num_warps": 8},
    "bwd 32/128 s3 w4": {"bwd_BLOCK_M1": 32, "bwd_BLOCK_N1": 128, "bwd_BLOCK_M2": 128, "bwd_BLOCK_N2": 32,
                         "bwd_num_stages": 3, "bwd_num_warps": 4},
}


def flex_sweep(name, samples, total_len, device, candidates=FLEX_CANDIDATES):
    """Forward (no grad, as the recurrence's no-grad calls) and forward+backward time of flex under
    each candidate's kernel options, with its error against the fp32 sdpa reference."""
    cu, prefix = make_batch(samples, total_len, device)
    print(f"\n== flex kernel options, {name}: L={total_len} H={HEADS} D={HEAD_DIM}, {len(samples)} samples, prefixlm")
    g = torch.Generator(device=device).manual_seed(0)
    q, k, v, grad_out = (torch.randn(total_len, HEADS, HEAD_DIM, device=device, generator=g).bfloat16() for _ in range(4))
    ref = fwd_bwd("sdpa", *(x.float().requires_grad_() for x in (q, k, v)), grad_out.float(), cu, prefix, "prefixlm")
    layout = A.build_layout(cu, prefix, total_len, MAX_SEQLEN, "flex", "prefixlm")
    leaves = [x.clone().requires_grad_() for x in (q, k, v)]
    q4, k4, v4 = (x.transpose(0, 1)[None] for x in leaves)
    print(f"{'candidate':20} {'max rel err':>11} {'ok':4} {'fwd ms':>7} {'fwd+bwd ms':>10}  options")
    for cand, options in candidates.items():
        torch._dynamo.reset()
        A._compiled.cache_clear()
        try:
            out = A._only_rows(layout.token_valid, A._flex(q4, k4, v4, layout.block_mask, options)[0].transpose(0, 1))
            got = (out.detach(), *torch.autograd.grad(out, leaves, grad_out))
            err = max(relative_errors(got, ref), key=lambda e: math.inf if math.isnan(e) else e)  # NaN counts
            with torch.no_grad():
                fwd_ms = median_ms(lambda: A._flex(q4, k4, v4, layout.block_mask, options))
            both_ms = median_ms(lambda: torch.autograd.grad(A._flex(q4, k4, v4, layout.block_mask, options), leaves,
                                                            grad_out.transpose(0, 1)[None]))
            print(f"{cand:20} {err:11.2e} {'PASS' if err < TOLERANCE else 'FAIL':4} {fwd_ms:7.3f} {both_ms:10.3f}  "
                  f"{json.dumps(options)}", flush=True)
        except Exception as exc:  # a config the GPU cannot run (shared memory, registers)
            print(f"{cand:20} failed: {type(exc).__name__}: {str(exc).splitlines()[0][:120]}", flush=True)


def graph_us(fn, calls: int = 24) -> float:
    """Microseconds per fn(), replayed from one CUDA graph of `calls` calls: as a captured decode
    step runs its attention calls, with no launch gaps between them."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):  # warm-up (compilation) off the capture
        for _ in range(3):
            fn()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(calls):
            fn()
    return median_ms(graph.replay, iters=20, warmup=3) * 1e3 / calls


def decode_sweep(args, device):
    """One query per row over a bf16 KV cache whose rows are filled to random lengths (the decode
    step of a full batch): each decode attention path, compiled as in the engine's step, its error
    against the fp32 dense mask, time per call and the bandwidth it reaches on the keys and values
    the rows have filled (the bytes a decode roofline counts), beside the device copy bandwidth."""
    B, T, H, D = args.decode_batch, args.decode_cache_len, HEADS, HEAD_DIM
    lo, hi = args.decode_lengths
    rng = np.random.default_rng(0)
    lengths = torch.tensor(rng.integers(lo, hi + 1, B), device=device, dtype=torch.int32)
    positions = lengths.long() - 1
    g = torch.Generator(device=device).manual_seed(0)
    q, k, v = (torch.randn(shape, device=device, generator=g).bfloat16()
               for shape in ((B, H, 1, D), (B, T, H, D), (B, T, H, D)))
    heads_outer = [x.transpose(1, 2).contiguous().transpose(1, 2) for x in (k, v)]  # a [B, H, T, D] cache
    dense_mask = A.generation_mask(positions[:, None], torch.zeros(B, device=device), T)
    want = A.cached_attention(q.float(), k.float().transpose(1, 2), v.float().transpose(1, 2), dense_mask)
    filled = lengths.sum().item() * H * D * 2 * k.element_size()
    bandwidth = copy_bandwidth(device)
    print(f"\n== decode attention: batch {B}, cache {T} positions, H={H} D={D}, rows filled to {lo}..{hi} "
          f"(mean {lengths.float().mean().item():.0f}): {filled / 1e6:.1f} MB of keys and values; "
          f"device copy {bandwidth / 1e12:.2f} TB/s")
    masks = {"sdpa, whole cache": dense_mask, "flex": A.decode_block_mask(positions, T),
             f"split, defaults ({A.SPLIT_DECODE_KEYS} cache positions per split)": A.KeyLengths(lengths)}
    kernels = {name: functools.partial(A.cached_attention, q, k.transpose(1, 2), v.transpose(1, 2), mask)
               for name, mask in masks.items()}
    kernels["flex, [B,H,T,D] cache"] = functools.partial(A.cached_attention, q, *(x.transpose(1, 2) for x in heads_outer),
                                                         masks["flex"])
    layouts = {"[B,T,H,D]": (k, v), **({"[B,H,T,D]": heads_outer} if args.decode_layouts else {})}
    for method, splits, block, warps, layout in itertools.product(
            args.decode_methods, args.decode_splits, args.decode_blocks, args.decode_warps, layouts):
        kernels[f"split {method} {splits} x {block}-key tiles, {warps} warps, {layout}"] = functools.partial(
            lambda kv, *knobs: A.split_decode(q[:, :, 0], *kv, lengths, *knobs)[:, :, None],
            layouts[layout], splits, block, warps, method)
    print(f"{'decode attention':56} {'rel err':>8} {'ok':4} {'us/call':>8} {'TB/s':>6} {'% copy':>6}")
    for name, fn in kernels.items():
        torch._dynamo.reset()
        try:
            compiled = torch.compile(fn, dynamic=False)
            with torch.no_grad():
                err = relative_errors([compiled()], [want])[0]
                us = graph_us(compiled)
            rate = filled / us / 1e6
            print(f"{name:56} {err:8.1e} {'PASS' if err < TOLERANCE else 'FAIL':4} {us:8.1f} {rate:6.2f} "
                  f"{100 * rate * 1e12 / bandwidth:6.0f}", flush=True)
        except Exception as exc:  # a config the GPU cannot run (shared memory, registers)
            print(f"{name:56} failed: {type(exc).__name__}: {str(exc).splitlines()[0][:120]}", flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--flex-sweep", action="store_true", help="time flex kernel options instead of the backends")
    parser.add_argument("--decode", action="store_true",
                        help="time decode attention (flex, split kernel configs, dense) instead of the backends")
    ints = lambda v: [int(x) for x in v.split(",")]  # noqa: E731
    parser.add_argument("--decode-batch", type=int, default=64, help="--decode: rows (sequences)")
    parser.add_argument("--decode-cache-len", type=int, default=512, help="--decode: cache positions per row")
    parser.add_argument("--decode-lengths", type=ints, default=[150, 406],
                        help="--decode: filled keys per row, drawn uniformly from LO,HI")
    parser.add_argument("--decode-splits", type=ints, default=[1, 2, 4, 8], help="--decode: split kernel splits")
    parser.add_argument("--decode-blocks", type=ints, default=[32, 64], help="--decode: split kernel keys per tile")
    parser.add_argument("--decode-warps", type=ints, default=[4, 8], help="--decode: split kernel warps")
    parser.add_argument("--decode-methods", type=lambda v: v.split(","), default=list(A.SPLIT_DECODE_METHODS),
                        help=f"--decode: split kernel tile reductions, of {','.join(A.SPLIT_DECODE_METHODS)}")
    parser.add_argument("--decode-layouts", action="store_true",
                        help="--decode: also time each split kernel setting over a [B, H, T, D] cache (flex always is)")
    parser.add_argument("--backends", default=None, help="comma list to check and time (default: every available one)")
    parser.add_argument("--batches", default="realistic,full,degenerate",
                        help="comma list of the batches to run: realistic (L=16384 mix), full (2 x 4096), degenerate "
                             "(--flex-sweep runs its own two)")
    args = parser.parse_args()
    batches = args.batches.split(",")
    if not set(batches) <= {"realistic", "full", "degenerate"}:
        parser.error(f"--batches: unknown batch in {args.batches!r}; choose from realistic, full, degenerate")
    device = torch.device("cuda")
    print_header(device)
    if args.backends is None:
        backends = A.available_backends(device)
    else:  # each must run here; resolve_backend says why not
        backends = [A.resolve_backend(name, device) for name in args.backends.split(",")]
    print_backends(device)

    def full_length(rng):  # the shape of the peer comparison (train_throughput.py --shapes full)
        return [(int(p), MAX_SEQLEN - int(p)) for p in rng.integers(MAX_SEQLEN // 8, MAX_SEQLEN * 7 // 8, 2)]

    if args.decode:
        decode_sweep(args, device)
        return
    rng = np.random.default_rng(0)
    if args.flex_sweep:
        flex_sweep("2 full-length samples", full_length(rng), 2 * MAX_SEQLEN, device)
        flex_sweep("realistic mix", random_samples(rng, 16384 - 64), 16384, device)
        return
    # Every batch is drawn (in this order) even when not run, so each is the same in every run.
    realistic = EDGE + random_samples(rng, 16384 - sum(p + c for p, c in EDGE) - 64)
    # Samples the loader should drop (no prefix, no response) must still not break the kernels.
    degenerate = [(0, 50), (7, 0), (1, 1)] + random_samples(rng, 4000)
    if "realistic" in batches:
        check_batch("realistic", realistic, 16384, backends, device, timing=True)
    if "full" in batches:  # its own generator, so that the batches drawn from `rng` stay those of earlier runs
        check_batch("2 full-length", full_length(np.random.default_rng(0)), 2 * MAX_SEQLEN, backends, device, timing=True)
    if "degenerate" in batches:
        check_batch("degenerate", degenerate, 4096, backends, device, timing=False)


if __name__ == "__main__":
    main()
