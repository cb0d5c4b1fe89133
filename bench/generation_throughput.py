"""Generation throughput of the native engine (simple_inference_engine.py) against transformers'
`generate()` on the same exported model (conversion/convert_to_hf.py's config and weights), with
the decode roofline.

    python3 bench/generation_throughput.py --size L --prompts 128 --batch-size 64 --max-new-tokens 256
    python3 bench/generation_throughput.py --cpu     # tiny smoke run

Random weights (both engines share them) and random prompt tokens; prompt lengths lognormal
(median --median-prompt) clipped to [8, 1024]. eoa is never generated on purpose, so every
sequence runs to max_new_tokens; tokens/s counts generated tokens. Each timed call is made
once before (compilation, graph capture, first-call overheads). Sections:

  check      fp32, a small model: the fast path (compiled, CUDA graph, flex decode) and the plain
             eager path give identical greedy tokens (on CUDA)
  bandwidth  device-to-device copy, bytes read + written per second: the HBM figure of the roofline
  generate   the main shape, native and transformers, tokens/s and their ratio
  roofline   decode steps of a full batch: bytes one step must move (each stack call's weights,
             each call's KV cache up to each row's position, the LM head and logits) over the
             measured bandwidth, against the measured step time; and batch-1 latency per token
  prefill    --prefill-prompts prompts of ~--prefill-len tokens, 1 new token (MMLU's shape)
  samples    --sample-prompts prompts x --samples samples at T=0.8: wall time over the decode-only
             time of the same tokens (steps x the measured step time of this batch)
"""

import argparse
import datetime
import math
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from conversion.convert_to_hf import hf_config, hf_state_dict  # noqa: E402
from inference.decode import DecodeBatch  # noqa: E402
from inference.sampling import Sampling  # noqa: E402
from models.model import LanguageModel, model_vocab_size  # noqa: E402
from models.config import round_up  # noqa: E402
from simple_inference_engine import CACHE_GRANULE, SimpleEngine  # noqa: E402
from training.config import compose  # noqa: E402

SPECIAL = {"<|pad|>": 0, "<|boq|>": 1, "<|eoq|>": 2, "<|eoa|>": 3, "<|direct|>": 4}


class StubTokenizer:
    """What SimpleEngine.generate_ids needs of a tokenizer: the special ids."""

    special_ids = SPECIAL
    eoa_id = SPECIAL["<|eoa|>"]
    conditions = ["direct"]


def make_prompts(rng, n, vocab, median, max_len, spread=0.7):
    prompts = []
    for _ in range(n):
        length = int(np.clip(rng.lognormal(math.log(median), spread), 8, max_len))
        body = rng.integers(8, vocab, length - 3).tolist()
        prompts.append([SPECIAL["<|boq|>"], SPECIAL["<|direct|>"], *body, SPECIAL["<|eoq|>"]])
    return prompts


def hf_generate(model, prompts, max_new_tokens, batch_size, device):
    """Greedy generate() in batches of `batch_size`, left-padded, prompt marked by token_type_ids."""
    outputs = []
    for start in range(0, len(prompts), batch_size):
        group = prompts[start:start + batch_size]
        width = max(len(p) for p in group)
        ids = torch.full((len(group), width), SPECIAL["<|pad|>"], dtype=torch.long)
        mask = torch.zeros_like(ids)
        for i, p in enumerate(group):
            ids[i, width - len(p):] = torch.tensor(p)
            mask[i, width - len(p):] = 1
        ids, mask = ids.to(device), mask.to(device)
        out = model.generate(input_ids=ids, attention_mask=mask, token_type_ids=mask.clone(), do_sample=False,
                             max_new_tokens=max_new_tokens, min_new_tokens=0, eos_token_id=SPECIAL["<|eoa|>"],
                             pad_token_id=SPECIAL["<|pad|>"])
        for row in out[:, width:].tolist():
            if SPECIAL["<|eoa|>"] in row:
                row = row[:row.index(SPECIAL["<|eoa|>"])]
            outputs.append(row)
    return outputs


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device):
    sync(device)
    t0 = time.perf_counter()
    out = fn()
    sync(device)
    return out, time.perf_counter() - t0


def build_model(arch, vocab, device, dtype):
    torch.manual_seed(0)
    model = LanguageModel(arch, vocab)
    model.init_weights()
    with torch.no_grad():
        model.lm_head.weight[SPECIAL["<|eoa|>"]] = 0  # eoa never wins the argmax: full-length generations
    return model.to(device=device, dtype=dtype).eval()


def copy_bandwidth(device) -> float:
    """Bytes read + written per second by a device-to-device copy of 2 GiB."""
    if device.type != "cuda":
        return float("nan")
    src = torch.empty(1 << 30, dtype=torch.bfloat16, device=device)
    dst = torch.empty_like(src)
    for _ in range(3):
        dst.copy_(src)
    _, elapsed = timed(lambda: [dst.copy_(src) for _ in range(10)], device)
    return 2 * src.numel() * src.element_size() * 10 / elapsed


def check_fp32(args, device, rng) -> None:
    """Fast path vs plain eager path, fp32, identical greedy tokens (slot refill, token limit,
    num_samples > 1 through the KV copy, an over-long prompt)."""
    arch = compose("cfg_pretrain", [f"arch/net@arch={args.net}", "arch/size@arch=tiny"]).arch
    vocab = model_vocab_size(500)
    torch.manual_seed(1)
    model = LanguageModel(arch, vocab)
    model.init_weights()
    model = model.to(device).eval()
    context = 256
    prompts = make_prompts(rng, 11, vocab, 40, 200) + [[1] * (context + 5)]
    fast = SimpleEngine(model, StubTokenizer(), context)
    plain = SimpleEngine(model, StubTokenizer(), context, compile=False, cuda_graphs=False, flex_decode=False,
                         prefill_backend="sdpa")
    for samples in (1, 3):
        a = fast.generate_ids(prompts, 24, batch_size=4, num_samples=samples, progress=False)
        b = plain.generate_ids(prompts, 24, batch_size=4, num_samples=samples, progress=False)
        same = sum(x == y for x, y in zip(a, b))
        print(f"check fp32 {args.net} tiny, num_samples={samples}: fast path (compile={fast._forward is not model}, "
              f"graphs={fast.cuda_graphs}, flex decode={fast.flex_decode}, prefill {fast.prefill_backend}) "
              f"== eager path: {same}/{len(a)} identical", flush=True)


def weight_bytes(module) -> int:
    return sum(p.numel() * p.element_size() for p in module.parameters())


def roofline(args, engine, model, prompts, bandwidth, device) -> tuple[float, dict]:
    """Time decode steps of a full batch and of one sequence; print bytes per step and % reached."""
    arch = model.arch
    net = model.net
    per_call = [weight_bytes(net.stacks[net.stack_name(role)]) for role in net.roles(arch)]
    head = weight_bytes(model.lm_head)
    kv_per_position = 2 * net.layers_per_call * arch.num_heads * arch.head_dim * model.lm_head.weight.element_size()
    step_times = {}
    for batch in (args.batch_size, 1):
        group = prompts[:batch]
        steps = args.max_new_tokens - 1
        # the cache length the engine gives the generate run, so the compiled step is reused
        cache_len = min(args.context, round_up(max(len(p) for p in prompts) + args.max_new_tokens, CACHE_GRANULE))
        decode = DecodeBatch(model, batch, cache_len, args.context, args.max_new_tokens, SPECIAL["<|eoa|>"], Sampling(),
                             engine._forward, engine.flex_decode)
        if engine.cuda_graphs:
            decode.capture()
        decode.prefill(group, [[] for _ in group], [[i] for i in range(batch)], [[i] for i in range(batch)], engine.prefill_backend)
        decode.run(2)
        start_positions = decode.positions.float().mean().item()
        _, elapsed = timed(lambda: decode.run(steps), device)
        per_step = elapsed / steps
        step_times[batch] = per_step
        mean_pos = start_positions + steps / 2  # keys read per row per call: position + 1
        kv = batch * (mean_pos + 1) * kv_per_position * len(per_call)
        logits = batch * model.vocab_size * model.lm_head.weight.element_size()
        total = sum(per_call) + head + kv + logits
        ideal = total / bandwidth
        print(f"roofline batch {batch:3}: {per_step * 1e3:7.2f} ms/step; bytes/step {total / 1e9:6.2f} GB = weights "
              f"{sum(per_call) / 1e9:.2f} ({len(per_call)} calls x {per_call[0] / 1e9:.3f}) + head {head / 1e9:.2f} "
              f"+ KV {kv / 1e9:.2f} (mean position {mean_pos:.0f}) + logits {logits / 1e9:.3f}; at "
              f"{bandwidth / 1e12:.2f} TB/s: {ideal * 1e3:.2f} ms -> {100 * ideal / per_step:.0f}% of roofline"
              + (f"; {per_step * 1e3:.2f} ms/token latency" if batch == 1 else ""), flush=True)
        del decode
    return step_times[args.batch_size], step_times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", default="L")
    parser.add_argument("--net", default="hrm")
    parser.add_argument("--prompts", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--max-new-tokens", type=int, default=256)
    parser.add_argument("--context", type=int, default=4096)
    parser.add_argument("--median-prompt", type=int, default=150)
    parser.add_argument("--prefill-prompts", type=int, default=2000)
    parser.add_argument("--prefill-len", type=int, default=600)
    parser.add_argument("--sample-prompts", type=int, default=64)
    parser.add_argument("--samples", type=int, default=64)
    parser.add_argument("--sample-new-tokens", type=int, default=64)
    parser.add_argument("--sections", default="check,bandwidth,generate,roofline,prefill,samples",
                        help="comma list of: check, bandwidth, generate, transformers, roofline, prefill, samples")
    parser.add_argument("--train-step", action="store_true",
                        help="also run bench/train_throughput.py on the same model for the training step's tokens/s")
    parser.add_argument("--cpu", action="store_true")
    args = parser.parse_args()
    if args.cpu:
        args.size, args.prompts, args.batch_size, args.max_new_tokens, args.context, args.median_prompt = \
            "tiny", 6, 4, 8, 128, 20
        args.prefill_prompts, args.prefill_len, args.sample_prompts, args.samples, args.sample_new_tokens = 8, 40, 2, 4, 4
    sections = set(args.sections.split(","))
    device = torch.device("cpu" if args.cpu or not torch.cuda.is_available() else "cuda")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    print(f"command: python3 {' '.join(sys.argv)}")
    print(f"date: {datetime.datetime.now().astimezone():%Y-%m-%d %H:%M %Z}")
    print(f"device: {torch.cuda.get_device_name(device) if device.type == 'cuda' else 'cpu'}; torch {torch.__version__}")
    rng = np.random.default_rng(0)
    if "check" in sections:
        check_fp32(args, device, rng)

    arch = compose("cfg_pretrain", [f"arch/net@arch={args.net}", f"arch/size@arch={args.size}"]).arch
    vocab = model_vocab_size(32000 if not args.cpu else 500)
    model = build_model(arch, vocab, device, dtype)
    engine = SimpleEngine(model, StubTokenizer(), args.context)
    max_prompt = min(1024, args.context - args.max_new_tokens - 1)
    warm = make_prompts(rng, args.batch_size, vocab, args.median_prompt, max_prompt)
    prompts = make_prompts(rng, args.prompts, vocab, args.median_prompt, max_prompt)
    print(f"{len(prompts)} prompts, length median {int(np.median([len(p) for p in prompts]))}, "
          f"max {max(len(p) for p in prompts)}; batch {args.batch_size}; max_new_tokens {args.max_new_tokens}; "
          f"{args.net} size {args.size}, {sum(p.numel() for p in model.parameters()) / 1e6:.0f}M parameters, {dtype}; "
          f"compile {engine._forward is not model}, CUDA graphs {engine.cuda_graphs}, flex decode {engine.flex_decode}, "
          f"prefill attention {engine.prefill_backend}, host check every {engine.steps_per_check} steps", flush=True)

    bandwidth = copy_bandwidth(device)
    print(f"bandwidth: device-to-device copy {bandwidth / 1e12:.2f} TB/s (bytes read + written)", flush=True)

    native_rate = None
    if "generate" in sections:
        def run():
            return engine.generate_ids(prompts, args.max_new_tokens, batch_size=args.batch_size, progress=False)

        _, warm_s = timed(run, device)  # the same call first: compilation and capture for these shapes
        outs, elapsed = timed(run, device)
        n = sum(len(o) for o in outs)
        native_rate = n / elapsed
        print(f"generate native      : {n} tokens in {elapsed:6.2f} s = {native_rate:8.1f} tokens/s "
              f"(first call, compiling: {warm_s:.0f} s)", flush=True)
        if "transformers" in sections:
            from transformers import HrmTextForCausalLM

            config = hf_config(arch, vocab, args.context, SPECIAL["<|boq|>"], SPECIAL["<|eoa|>"], SPECIAL["<|pad|>"])
            config._attn_implementation = "sdpa"
            peer = HrmTextForCausalLM(config)
            missing, unexpected = peer.load_state_dict(hf_state_dict(model), strict=False)
            assert not unexpected and all("rotary" in k for k in missing), (missing, unexpected)
            peer = peer.to(device=device, dtype=dtype).eval()
            hf_generate(peer, warm, 8, args.batch_size, device)
            hf, hf_elapsed = timed(lambda: hf_generate(peer, prompts, args.max_new_tokens, args.batch_size, device), device)
            hf_n = sum(len(o) for o in hf)
            same = sum(a == b for a, b in zip(outs, hf))
            first = [next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b))) for a, b in zip(outs, hf)]
            print(f"generate transformers: {hf_n} tokens in {hf_elapsed:6.2f} s = {hf_n / hf_elapsed:8.1f} tokens/s; "
                  f"native / transformers = {native_rate / (hf_n / hf_elapsed):.2f}x (greedy outputs identical "
                  f"{same}/{len(outs)}, first disagreement at token {int(np.median(first))} median)", flush=True)
            del peer

    step_time = None
    if "roofline" in sections:
        step_time, _ = roofline(args, engine, model, prompts, bandwidth, device)

    if "prefill" in sections:
        long = make_prompts(rng, args.prefill_prompts, vocab, args.prefill_len, 2 * args.prefill_len, spread=0.1)
        engine.generate_ids(long, 1, batch_size=args.batch_size, progress=False)
        _, elapsed = timed(lambda: engine.generate_ids(long, 1, batch_size=args.batch_size, progress=False), device)
        tokens = sum(len(p) for p in long)
        print(f"prefill: {len(long)} prompts, {tokens} tokens (median {int(np.median([len(p) for p in long]))}), "
              f"1 new token, batch {args.batch_size}: {elapsed:.2f} s = {tokens / elapsed:9.0f} prompt tokens/s", flush=True)

    if "samples" in sections:
        group = prompts[:args.sample_prompts]
        kw = dict(temperature=0.8, batch_size=args.batch_size, num_samples=args.samples, progress=False)
        engine.generate_ids(group, args.sample_new_tokens, **kw)
        outs, elapsed = timed(lambda: engine.generate_ids(group, args.sample_new_tokens, **kw), device)
        n = sum(len(o) for o in outs)
        line = (f"samples: {len(group)} prompts x {args.samples} samples, T=0.8, {args.sample_new_tokens} new tokens, "
                f"batch {args.batch_size}: {n} tokens in {elapsed:.2f} s = {n / elapsed:.0f} tokens/s")
        if step_time is not None:
            decode_only = n / args.batch_size * step_time
            line += f"; decode-only time of these tokens {decode_only:.2f} s -> wall / decode-only = {elapsed / decode_only:.2f}"
        print(line, flush=True)

    if args.train_step:
        subprocess.run([sys.executable, str(ROOT / "bench" / "train_throughput.py"), "--models", f"{args.net}:{args.size}",
                        "--variants", "after", "--no-peer", "--no-attention"], check=False)


if __name__ == "__main__":
    main()
