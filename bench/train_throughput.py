"""Training-step throughput: tokens/s/GPU, model TFLOP/s, MFU, peak memory, attention backends,
and the transformers HrmTextForCausalLM step as a peer in the same run.

    python3 bench/train_throughput.py                                  # HRM L + Transformer L, peer
    python3 bench/train_throughput.py --models hrm:L --backends flex,flex_fa4 --no-peer
    torchrun --nproc_per_node=2 bench/train_throughput.py --models hrm:L --no-peer --no-attention
    python3 bench/train_throughput.py --cpu                            # tiny smoke run on a CPU

Our step is pretrain.py's: training.parallel.parallelize (FSDP2 and torch.compile per unit), the
packed layout built per step, and training.trainer.train_step: chunked loss (models/lm_head.py),
backward, reshard, the gradient norm, AdamATan2 (with EMA, compiled), zero_grad.
Synthetic packed batches: sample lengths lognormal (median 300) clipped to the 4096 context, the
prefix/response split uniform, packed greedily into `--tokens` slots per GPU (random tokens, labels
on the response). `--shape full` packs `tokens/4096` full-length samples instead.

MFU counts executed FLOPs (models/flops.py: no-grad recurrence calls 1x, grad calls 3x) against the
datasheet peak (training/trainer.py's table) two ways: `MFU` (the headline, as pretrain.py logs it)
counts attention over the batches' real query-key pairs (models.attention.query_key_pairs),
`MFU cnt` as over half the 4096 context for every token (the convention of published figures);
`MFU mm` is the headline against a bf16 8192^3 matmul measured in the same run. The peer is
credited with the same real work (its padding is not counted).

Peer: transformers' HrmTextForCausalLM (sdpa, bf16 weights, fused torch AdamW, eager), at the same
size, with the same recurrence (2 H x 3 L cycles, 5 gradient-carrying calls). At full length it
runs 2 x 4096; on the packed mix it must pad: the same samples in their order are cut into
micro-batches of at most `--peer-budget` padded tokens (each padded to its longest sample),
gradients accumulated, one optimizer step per packed batch.
"""

import argparse
import gc
import time

import numpy as np
import torch
import torch.nn.functional as F

import attention_check as check
from common import log, matmul_tflops, print_header, random_samples, sync
from dataset_new import default_max_samples
from models import attention as attn_lib
from models.flops import executed_flops, executed_flops_per_token
from models.lm_head import IGNORE_LABEL
from models.model import LanguageModel, model_vocab_size
from models.optimizer import AdamATan2
from training.config import compose
from training.distributed import init_distributed
from training.parallel import parallelize
from training.schedule import lr_at
from training.trainer import freeze_startup_objects, loss_normalizer, peak_flops, train_step

TOKENIZER_VOCAB = 32000


# ----------------------------------------------------------------------------------------------
# Synthetic packed batches


def full_lengths(rng, budget: int, context: int):
    samples = []
    for _ in range(budget // context):
        p = int(rng.integers(context // 8, context - context // 8))
        samples.append((p, context - p))
    return samples


def sample_pairs(samples) -> int:
    """The prefix-LM query-key pairs of (prefix, response) samples, as pretrain.py counts them."""
    return attn_lib.query_key_pairs([p for p, _ in samples], [c for _, c in samples], "prefixlm")


def make_batch(samples, total_len: int, max_samples: int, vocab: int, rng):
    """Packed batch in dataset_new.pack's format (CPU tensors) + host stats; the last prefix token
    and every response token but the last carry labels."""
    inputs = rng.integers(8, vocab, total_len).astype(np.int32)
    labels = np.full(total_len, IGNORE_LABEL, np.int64)
    position_ids = np.zeros(total_len, np.int32)
    cu = np.zeros(max_samples + 1, np.int32)
    prefix = np.zeros(max_samples, np.int32)
    pos = 0
    for k, (p, c) in enumerate(samples):
        end = pos + p + c
        labels[pos + p - 1:end - 1] = rng.integers(8, vocab, c)
        position_ids[pos:end] = np.arange(p + c)
        prefix[k], cu[k + 1] = p, end
        pos = end
    cu[len(samples) + 1:] = pos
    inputs[pos:] = 0
    batch = {"inputs": torch.from_numpy(inputs), "labels": torch.from_numpy(labels),
             "position_ids": torch.from_numpy(position_ids), "cu_seqlens": torch.from_numpy(cu),
             "prefix_lens": torch.from_numpy(prefix)}
    if torch.cuda.is_available():  # as PackedDataset does: pinned, so the copies do not block the host
        batch = {k: v.pin_memory() for k, v in batch.items()}
    stats = {"num_tokens": pos, "samples": samples, "attn_pairs": sample_pairs(samples)}
    return batch, stats


# ----------------------------------------------------------------------------------------------
# Measurements


def compiled_graphs() -> int:
    from torch._dynamo.utils import counters

    return int(counters["stats"]["unique_graphs"])  # frames.ok misses fullgraph compiles (the loss)


def timed_steps(step, warmup: int, steps: int, device):
    """`warmup` steps, then `steps` timed ones (peak memory counted from there on). Returns the
    losses, warm-up seconds, timed seconds, and the graphs dynamo compiled during the warm-up and
    during the timed steps (recompiles)."""
    graphs_start = compiled_graphs()
    t0 = time.perf_counter()
    losses = []
    for i in range(warmup):  # the first steps compile: minutes for a large model, so show progress
        losses.append(step(i))
        sync(device)
        log(f"warm-up step {i + 1}/{warmup} done at {time.perf_counter() - t0:.1f} s")
    warm_s = time.perf_counter() - t0
    t_gc = time.perf_counter()
    freeze_startup_objects()  # as pretrain.py does after its first step
    log(f"gc: a full collection after warm-up took {(time.perf_counter() - t_gc) * 1e3:.0f} ms, "
        f"then {gc.get_freeze_count()} objects frozen")
    graphs_warm = compiled_graphs()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    t0 = time.perf_counter()
    losses += [step(i) for i in range(warmup, warmup + steps)]
    sync(device)
    elapsed = time.perf_counter() - t0
    return losses, warm_s, elapsed, graphs_warm - graphs_start, compiled_graphs() - graphs_warm


def run_ours(args, d, arch, shape: str, tokens: int, backend: str, memory_budget: float):
    """Time our training step; returns a result row (dict)."""
    device = d.device
    vocab = model_vocab_size(TOKENIZER_VOCAB if not args.cpu else 500)
    context = args.context
    rng = np.random.default_rng(1234 + d.rank)
    # pretrain.py's slot count (data.max_samples_per_batch): the varlen and fa3 kernels' grids grow with it
    max_samples = args.max_samples or default_max_samples(tokens)
    batches = []
    for _ in range(args.distinct_batches):
        samples = (full_lengths(rng, tokens, context) if shape == "full"
                   else random_samples(rng, tokens, context, max_samples))
        batches.append(make_batch(samples, tokens, max_samples, vocab, rng))

    torch.manual_seed(0)
    model = LanguageModel(arch, vocab).to(device)
    model.init_weights()
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    parallelize(model, dtype, unit=args.unit, compile=not args.cpu, activation_memory_budget=memory_budget)
    optimizer = AdamATan2(model.parameters(), lr=1e-4, betas=(0.9, 0.95), weight_decay=0.1, ema=0.9999,
                          compile=not args.cpu)
    bp = arch.bp_max_steps

    def step(i):
        # a warmup-then-cosine learning rate, new every step as in pretrain.py
        for group in optimizer.param_groups:
            group["lr"] = lr_at(i + 1, total_steps=1000, lr=1e-4, warmup_steps=5, min_ratio=0.1)
        batch, stats = batches[i % len(batches)]
        batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
        layout = attn_lib.build_layout(batch["cu_seqlens"], batch["prefix_lens"], total_len=tokens,
                                       max_seqlen=context, backend=backend, attn_type=arch.attn_type)
        metrics, _ = train_step(model, optimizer, batch, layout, bp, loss_normalizer(batch["labels"], d.world_size),
                                max_samples, grad_clip=None)
        return metrics["loss"]

    losses, warm_s, elapsed, graphs, recompiles = timed_steps(step, args.warmup, args.steps, device)
    peak = peak_gib(device)  # of the timed steps, before the diagnostics below
    if args.profile and device.type == "cuda":
        first = args.warmup + args.steps
        lead_trace(step, model.net, first, 3)
        profile_steps(step, first + 3, 2, device)
        sync_check(step, first + 5)
    if args.host_profile:
        host_profile_steps(step, args.warmup + args.steps, 2, device)
    real_tokens = sum(batches[i % len(batches)][1]["num_tokens"] for i in range(args.warmup, args.warmup + args.steps))
    pairs = sum(batches[i % len(batches)][1]["attn_pairs"] for i in range(args.warmup, args.warmup + args.steps))
    tok_s = real_tokens / elapsed
    fpt = executed_flops_per_token(arch, vocab, context)
    fpt_actual = executed_flops(arch, vocab, real_tokens, pairs) / real_tokens
    loss_values = [(t[0] / t[1]).item() for t in losses]
    variant = args.unit if memory_budget == 1 or args.cpu else f"{args.unit}@{memory_budget:g}"  # compiled only
    row = {"model": f"{arch.net}:{args.size_of[arch.net]}", "variant": variant, "shape": shape, "tokens": tokens,
           "backend": backend, "tok_s": tok_s, "tflops": tok_s * fpt / 1e12, "tflops_actual": tok_s * fpt_actual / 1e12,
           "step_ms": elapsed / args.steps * 1e3, "peak_gib": peak, "warm_s": warm_s,
           "graphs": graphs, "recompiles": recompiles, "loss_first": loss_values[0],
           "loss_last": loss_values[-1], "fpt": fpt, "fill": real_tokens / (tokens * args.steps)}
    del model, optimizer, batches
    free(device)
    return row


# Kernel groups of the --profile table: the first pattern that matches a kernel's name wins.
KERNEL_GROUPS = (
    ("attention bwd", r"flex_attention_backward|flash_bwd|fmha.*bwd|attention_backward"),
    ("attention fwd", r"flex_attention|flash_fwd|fmha|attention"),
    ("matmul", r"gemm|nvjet|cutlass|xmma|cublas|sm90_"),
    ("nccl", r"nccl"),
    ("compiled fused (triton)", r"^triton_"),
    ("foreach (optimizer, clip)", r"multi_tensor|foreach"),
    ("copies / memset", r"[Mm]emcpy|[Mm]emset|copy"),
    ("eager elementwise / reduce", r""),
)


def gpu_timeline(kernels):
    """kernels: (name, start, end) in us, possibly overlapping. Returns the busy time (their union)
    and the idle gaps as (idle us, at us from the first kernel's start, kernel before, kernel after)."""
    if not kernels:
        return 0.0, []
    ordered = sorted(kernels, key=lambda k: k[1])
    t_first = ordered[0][1]
    busy, end, last, gaps = 0.0, t_first, "", []
    for name, start, stop in ordered:
        if start > end:
            gaps.append((start - end, start - t_first, last, name))
        busy += max(0.0, stop - max(start, end))
        if stop > end:
            end, last = stop, name
    return busy, gaps


def profile_steps(step, first: int, n: int, device, top_per_group: int = 8) -> None:
    """Profile n steps and print where the GPU time goes: per kernel group and its top kernels, and
    how much of the wall time the GPU was idle (launch-bound or waiting on the host)."""
    import re

    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    sync(device)
    t0 = time.perf_counter()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for i in range(first, first + n):
            step(i)
        sync(device)
    wall_us = (time.perf_counter() - t0) * 1e6
    # record_function ranges (the optimizer's, FSDP's) also appear on the GPU timeline: not kernels
    kernels = [(e.name, e.time_range.start, e.time_range.end) for e in prof.events()
               if e.device_type == DeviceType.CUDA and not e.is_user_annotation
               and not re.match(r"Optimizer\.|FSDP::|## ", e.name)]
    busy, gaps = gpu_timeline(kernels)
    by_group: dict[str, float] = {}
    by_name: dict[tuple[str, str], list] = {}
    for name, start, stop in kernels:
        group = next(g for g, pattern in KERNEL_GROUPS if re.search(pattern, name))
        by_group[group] = by_group.get(group, 0.0) + stop - start
        entry = by_name.setdefault((group, name), [0.0, 0])
        entry[0] += stop - start
        entry[1] += 1
    total = sum(by_group.values())
    log(f"profile: {n} steps, wall {wall_us / n / 1e3:.1f} ms/step, GPU busy {busy / n / 1e3:.1f} ms/step "
        f"({busy / wall_us:.1%}), kernel time {total / n / 1e3:.1f} ms/step")
    for group, us in sorted(by_group.items(), key=lambda kv: -kv[1]):
        log(f"  {group:28} {us / n / 1e3:8.1f} ms/step {us / total:6.1%}; top kernels (ms/step, calls/step):")
        top = sorted(((v, name) for (g, name), v in by_name.items() if g == group), key=lambda x: -x[0][0])
        for (us_k, count), name in top[:top_per_group]:
            log(f"    {us_k / n / 1e3:7.2f} {count / n:6.1f}  {name[:110]}")
    # Where the GPU waited: idle gaps between kernels, and the host calls that block on the GPU
    # (a sync drains the queue, so the GPU then idles while the host issues the next kernels).
    long_gaps = [g for g in gaps if g[0] >= 50]
    log(f"GPU idle between kernels: {sum(g[0] for g in gaps) / n / 1e3:.1f} ms/step, of which "
        f"{sum(g[0] for g in long_gaps) / n / 1e3:.1f} ms/step in {len(long_gaps) / n:.0f} gaps >= 50 us; longest "
        "(at ms from the first kernel, us, kernel before -> after):")
    for gap_us, at_us, before, after in sorted(long_gaps, reverse=True)[:12]:
        log(f"    {at_us / 1e3:8.1f} {gap_us:8.0f}  {before[:50]} -> {after[:50]}")
    waits: dict[str, list] = {}
    for e in prof.events():
        if e.device_type != DeviceType.CUDA and re.fullmatch(r"cuda(\w*Synchronize|Memcpy|Free)", e.name):
            entry = waits.setdefault(e.name, [0.0, 0])
            entry[0] += e.time_range.end - e.time_range.start
            entry[1] += 1
    log(f"host calls that wait on the GPU over the {n} steps (the window's last sync and the profiler's exit included): "
        + ", ".join(f"{name} x{count} {us / 1e3:.1f} ms" for name, (us, count) in waits.items()))


def lead_trace(step, net, first: int, n: int) -> None:
    """Run n steps with marks at each stack call's forward and backward and at the step's ends: a
    CUDA event and the host's clock. After a sync, each mark of the last step shows how far ahead
    of the GPU the host was there (the GPU reached the mark `lead` ms after the host issued it);
    a lead near zero means the GPU was waiting for the host at that point."""
    marks = []

    def mark(label):
        event = torch.cuda.Event(enable_timing=True)
        event.record()
        marks.append((label, time.perf_counter(), event))

    def traced_run_call(role, x, rope, ctx, call, grad, run_call=net.run_call):
        mark(f"forward call {call} ({role}{', grad' if grad else ''})")
        out = run_call(role, x, rope, ctx, call, grad)
        if out.requires_grad:  # fires when backward reaches this call's output (on autograd's thread)
            out.register_hook(lambda _, label=f"backward call {call} ({role})": mark(label))
        return out

    torch.cuda.synchronize()
    mark("start (queue empty)")
    net.run_call = traced_run_call
    try:
        for i in range(first, first + n):
            last = len(marks)
            mark("step start")
            step(i)
            mark("step end")
    finally:
        del net.run_call
    torch.cuda.synchronize()
    _, t0, e0 = marks[0]
    log(f"host lead over the GPU in step {n} of {n} (ms; GPU time of the mark after the start, lead):")
    for label, t, event in marks[last:]:
        gpu_ms = e0.elapsed_time(event)
        log(f"    {label:34} {gpu_ms:9.1f} {gpu_ms - (t - t0) * 1e3:7.1f}")


def sync_check(step, i: int) -> None:
    """Run step i under CUDA's sync debug mode and print where the host waited for the GPU."""
    import warnings

    torch.cuda.set_sync_debug_mode("warn")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            step(i)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    places: dict[str, int] = {}
    for w in caught:
        if "synchroniz" in str(w.message):
            key = f"{w.filename}:{w.lineno}"
            places[key] = places.get(key, 0) + 1
    log("host syncs in one step (sync debug mode): " + (", ".join(f"{k} x{v}" for k, v in places.items()) or "none"))


def host_profile_steps(step, first: int, n: int, device, top: int = 40) -> None:
    """cProfile n steps: where the host's time goes (Python and launch overhead). Run it with a
    small --full-tokens, where the GPU finishes first and the step time is the host's."""
    import cProfile
    import io
    import pstats

    sync(device)
    profiler = cProfile.Profile()
    profiler.enable()
    for i in range(first, first + n):
        step(i)
    sync(device)
    profiler.disable()
    for key in ("tottime", "cumulative"):
        out = io.StringIO()
        pstats.Stats(profiler, stream=out).sort_stats(key).print_stats(top)
        log(f"host profile, {n} steps, by {key}:\n{out.getvalue()}")


def free(device):
    gc.unfreeze()  # the finished run's objects, frozen after its warm-up, must be collectable
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def peak_gib(device):
    return torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else float("nan")


# ----------------------------------------------------------------------------------------------
# Peer: transformers HrmTextForCausalLM


def run_peer(args, d, arch, shape: str, tokens: int):
    from transformers import HrmTextForCausalLM

    from conversion.convert_to_hf import hf_config

    device = d.device
    vocab = model_vocab_size(TOKENIZER_VOCAB if not args.cpu else 500)
    context = args.context
    rng = np.random.default_rng(1234)
    config = hf_config(arch, vocab, context, bos_token_id=1, eos_token_id=3, pad_token_id=0)
    config._attn_implementation = "sdpa"
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    torch.manual_seed(0)
    model = HrmTextForCausalLM(config).to(device=device, dtype=dtype)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95), weight_decay=0.1,
                                  fused=device.type == "cuda")

    def micro_batches(samples):
        """Consecutive samples, each micro-batch padded to its longest, at most peer_budget padded tokens."""
        groups, current = [], []
        for s in samples:
            longest = max([sum(x) for x in current + [s]])
            if current and longest * (len(current) + 1) > args.peer_budget:
                groups.append(current)
                current = []
            current.append(s)
        groups.append(current)
        return groups

    def tensors(group):
        T = max(p + c for p, c in group)
        B = len(group)
        ids = torch.from_numpy(rng.integers(8, vocab, (B, T))).long()
        labels = torch.full((B, T), IGNORE_LABEL, dtype=torch.long)
        mask = torch.zeros(B, T, dtype=torch.long)
        types = torch.zeros(B, T, dtype=torch.long)
        for b, (p, c) in enumerate(group):
            mask[b, :p + c] = 1
            types[b, :p] = 1
            labels[b, p - 1:p + c - 1] = torch.from_numpy(rng.integers(8, vocab, c))
        return [t.to(device) for t in (ids, labels, mask, types)]

    plans = []
    for _ in range(args.distinct_batches):
        samples = (full_lengths(rng, tokens, context) if shape == "full"
                   else random_samples(rng, tokens, context, max(8, tokens // 16)))
        plans.append((sum(p + c for p, c in samples), [tensors(g) for g in micro_batches(samples)],
                      sample_pairs(samples)))

    def step(i):
        real, groups, _ = plans[i % len(plans)]
        n_labels = sum(int((g[1] != IGNORE_LABEL).sum()) for g in groups)
        total = 0.0
        for ids, labels, mask, types in groups:
            positions = (mask.cumsum(-1) - 1).clamp(min=0)
            logits = model(input_ids=ids, attention_mask=mask, token_type_ids=types, position_ids=positions).logits
            loss = F.cross_entropy(logits.float().flatten(0, 1), labels.flatten(), ignore_index=IGNORE_LABEL,
                                   reduction="sum") / n_labels
            loss.backward()
            total += loss.detach()
            del logits
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return total

    losses, warm_s, elapsed, _, _ = timed_steps(step, args.peer_warmup, args.peer_steps, device)
    real = sum(plans[i % len(plans)][0] for i in range(args.peer_warmup, args.peer_warmup + args.peer_steps))
    padded = sum(sum(g[0].numel() for g in plans[i % len(plans)][1])
                 for i in range(args.peer_warmup, args.peer_warmup + args.peer_steps))
    pairs = sum(plans[i % len(plans)][2] for i in range(args.peer_warmup, args.peer_warmup + args.peer_steps))
    tok_s = real / elapsed
    fpt = executed_flops_per_token(arch, vocab, context)
    fpt_actual = executed_flops(arch, vocab, real, pairs) / real
    row = {"model": f"peer:{args.size_of[arch.net]}", "variant": "hf-sdpa", "shape": shape, "tokens": tokens,
           "backend": "sdpa", "tok_s": tok_s, "tflops": tok_s * fpt / 1e12, "tflops_actual": tok_s * fpt_actual / 1e12,
           "step_ms": elapsed / args.peer_steps * 1e3, "peak_gib": peak_gib(device), "warm_s": warm_s,
           "graphs": 0, "recompiles": 0, "loss_first": float(losses[0]), "loss_last": float(losses[-1]),
           "fpt": fpt, "fill": real / padded}
    del model, optimizer, plans
    free(device)
    return row


# ----------------------------------------------------------------------------------------------


def attention_table(device):
    """bench/attention_check.py's correctness + fwd/bwd timing of every backend, at size L's heads."""
    backends = check.A.available_backends(device)
    check.print_backends(device, log)
    rng = np.random.default_rng(0)
    realistic = check.EDGE + random_samples(rng, 16384 - 64)
    check.check_batch("realistic", realistic, 16384, backends, device, timing=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="hrm:L,transformer:L", help="net:size,... (arch/net, arch/size configs)")
    parser.add_argument("--unit", default="stack", choices=["stack", "block"],
                        help="what FSDP2 shards and torch.compile compiles as one (shard_unit)")
    parser.add_argument("--tokens", type=int, default=16384, help="packed tokens per GPU")
    parser.add_argument("--shapes", default="mix,full", help="mix (packed realistic) and/or full (4096-token samples)")
    parser.add_argument("--full-tokens", type=int, default=8192, help="tokens per GPU for the full-length shape")
    parser.add_argument("--backends", default="auto", help="attention backends for our step, e.g. auto,varlen")
    parser.add_argument("--context", type=int, default=4096)
    parser.add_argument("--max-samples", type=int, default=None,
                        help="sample slots per batch (the training key data.max_samples_per_batch; default tokens // 4)")
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--distinct-batches", type=int, default=4)
    parser.add_argument("--no-peer", action="store_true")
    parser.add_argument("--peer-budget", type=int, default=8192, help="padded tokens per peer micro-batch")
    parser.add_argument("--peer-steps", type=int, default=4)
    parser.add_argument("--peer-warmup", type=int, default=1)
    parser.add_argument("--no-attention", action="store_true", help="skip the attention backend table")
    parser.add_argument("--memory-budget", type=float, default=None,
                        help="activation_memory_budget of compile_units (default: cfg_pretrain's)")
    parser.add_argument("--profile", action="store_true",
                        help="after timing: the host's lead over the GPU through 3 steps, a profile of 2 "
                        "(GPU time per kernel group, GPU idle gaps, host waits), one step under CUDA's sync debug mode")
    parser.add_argument("--host-profile", action="store_true",
                        help="after timing, cProfile 2 steps: host time per Python function")
    parser.add_argument("--cpu", action="store_true", help="tiny sizes on the CPU (smoke test, no compile)")
    args = parser.parse_args()
    if args.cpu:
        args.models = ",".join(m.split(":")[0] + ":tiny" for m in args.models.split(","))
        args.tokens, args.full_tokens, args.context = 1024, 512, 256
        args.steps, args.warmup, args.peer_steps, args.peer_budget = 2, 1, 1, 512
        args.no_attention = True

    d = init_distributed()
    device = d.device
    print_header(device)
    log(f"world size {d.world_size}")
    peak = peak_flops(device) / 1e12 if peak_flops(device) else None
    measured = matmul_tflops(device) if device.type == "cuda" else None
    if measured:
        log(f"bf16 8192^3 matmul: {measured:.0f} TFLOP/s measured; datasheet peak {peak} TFLOP/s")
    if device.type == "cuda" and not args.no_attention and d.rank == 0:
        attention_table(device)

    rows = []
    args.size_of = {}
    for spec in args.models.split(","):
        net, size = spec.split(":")
        args.size_of[net] = size
        for backend_name in args.backends.split(","):
            cfg = compose("cfg_pretrain", [f"arch/net@arch={net}", f"arch/size@arch={size}",
                                           f"attn_backend={backend_name}"])
            arch = cfg.arch
            backend = attn_lib.resolve_backend(cfg.attn_backend, device)
            budget = cfg.activation_memory_budget if args.memory_budget is None else args.memory_budget
            for shape in args.shapes.split(","):
                tokens = args.tokens if shape == "mix" else args.full_tokens
                try:
                    row = run_ours(args, d, arch, shape, tokens, backend, budget)
                except torch.OutOfMemoryError:
                    row = {"model": f"{net}:{size}", "variant": args.unit, "shape": shape, "tokens": tokens,
                           "backend": backend, "oom": True}
                    free(device)
                rows.append(row)
                log(format_row(row, peak, measured))
                if net == "hrm" and not args.no_peer and backend_name == args.backends.split(",")[0]:
                    try:
                        row = run_peer(args, d, arch, shape, tokens)
                    except torch.OutOfMemoryError:
                        row = {"model": f"peer:{size}", "variant": "hf-sdpa", "shape": shape, "tokens": tokens,
                               "backend": "sdpa", "oom": True}
                        free(device)
                    rows.append(row)
                    log(format_row(row, peak, measured))

    log("\n== summary (tokens/s per GPU; MFU = executed model FLOPs over real query-key pairs / peak)")
    log(HEADER)
    for row in rows:
        log(format_row(row, peak, measured))
    for shape in args.shapes.split(","):
        peers = [r for r in rows if r["model"].startswith("peer") and r["shape"] == shape and not r.get("oom")]
        ours = [r for r in rows if r["model"].startswith("hrm") and r["shape"] == shape and not r.get("oom")]
        if peers and ours:
            best = max(ours, key=lambda r: r["tok_s"])
            log(f"ours/peer on {shape}: {best['tok_s'] / peers[0]['tok_s']:.2f}x "
                f"({best['variant']} {best['backend']} {best['tok_s']:.0f} vs {peers[0]['tok_s']:.0f} tokens/s)")
    import torch.distributed as dist

    dist.destroy_process_group()


HEADER = (f"{'model':16} {'variant':9} {'shape':5} {'tok/GPU':>7} {'attn':8} {'tok/s':>8} {'step ms':>8} "
          f"{'TFLOP/s':>7} {'MFU':>6} {'MFU cnt':>7} {'MFU mm':>6} {'peak GiB':>8} {'warm s':>6} "
          f"{'graphs':>6} {'recomp':>6} {'loss0':>7} {'lossN':>7} {'fill':>5}")


def format_row(row, peak, measured):
    if row.get("oom"):
        return f"{row['model']:16} {row['variant']:9} {row['shape']:5} {row['tokens']:7d} {row['backend']:8} OUT OF MEMORY"
    mfu = row["tflops_actual"] / peak if peak else float("nan")
    counted = row["tflops"] / peak if peak else float("nan")
    mm = row["tflops_actual"] / measured if measured else float("nan")
    return (f"{row['model']:16} {row['variant']:9} {row['shape']:5} {row['tokens']:7d} {row['backend']:8} "
            f"{row['tok_s']:8.0f} {row['step_ms']:8.1f} {row['tflops_actual']:7.1f} {mfu:6.1%} {counted:7.1%} {mm:6.1%} "
            f"{row['peak_gib']:8.1f} {row['warm_s']:6.0f} {row['graphs']:6d} {row['recompiles']:6d} "
            f"{row['loss_first']:7.3f} {row['loss_last']:7.3f} {row['fill']:5.2f}")


if __name__ == "__main__":
    main()
