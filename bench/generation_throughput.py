"""Generation throughput of the native engine (simple_inference_engine.py) against transformers'
`generate()` on the same exported model (conversion/convert_to_hf.py's config and weights), with
the decode roofline.

    python3 bench/generation_throughput.py --size L --prompts 128 --batch-size 64 --max-new-tokens 256
    python3 bench/generation_throughput.py --cpu     # tiny smoke run

Random weights (both engines share them) and random prompt tokens; prompt lengths lognormal
(median --median-prompt) clipped to [8, 1024]. eoa is never generated on purpose, so every
sequence runs to max_new_tokens; tokens/s counts generated tokens. Each timed call is made
once before (compilation, graph capture, first-call overheads). Sections:

  check      fp32, a small model: the fast path (compiled, CUDA graph, flex or flash decode) and the plain
             eager path give identical greedy tokens (on CUDA)
  bandwidth  device-to-device copy, bytes read + written per second: the HBM figure of the roofline
  generate   the main shape, native and transformers, tokens/s and their ratio
  roofline   decode steps of a full batch: bytes one step must move (each stack call's weights,
             each call's KV cache up to each row's position, the LM head and logits) over the
             measured bandwidth, against the measured step time; and batch-1 latency per token;
             with --profile, the full batch's step time per kernel group and kernel
  prefill    --prefill-prompts prompts of ~--prefill-len tokens, 1 new token (MMLU's shape); with
             --train-step, bench/train_throughput.py's training step of the same model beside it
  samples    --sample-prompts prompts x --samples samples at T=0.8: wall time over the decode-only
             time of the same tokens (steps x the measured step time of this batch and cache)
  evaluation as a user runs it: a run directory as pretrain.py writes it (training/run_dir.py; random
             weights, a tokenizer trained on the spot, eoa never generated), --eval-problems
             GSM8k-schema rows in a data_dir, and `python -m evaluation.main` on them in a subprocess
             (batch 64, 512 new tokens, 4096-token context): wall time including loading and
             compilation, whether a progress bar was printed, peak GPU memory
A summary table of the sections run ends the output.
"""

import argparse
import copy
import dataclasses
import json
import math
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from common import ROOT, copy_bandwidth, print_header, sync  # the project on sys.path
from conversion.convert_to_hf import hf_config, hf_state_dict  # noqa: E402
from inference.decode import DecodeBatch  # noqa: E402
from inference.sampling import Sampling  # noqa: E402
from models import attention as attn_lib  # noqa: E402
from models.model import LanguageModel, model_vocab_size  # noqa: E402
from simple_inference_engine import SimpleEngine, cache_length  # noqa: E402
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
    plain = SimpleEngine(copy.deepcopy(model), StubTokenizer(), context, compile=False, cuda_graphs=False,
                         decode_attention="dense", prefill_backend="sdpa")
    # the engine's default decode attention, and on CUDA every other fast one
    attentions = [None] + (["split"] if device.type == "cuda" else [])
    for attention in attentions:
        if attention and attn_lib.split_decode_unavailable(device, arch.head_dim):
            print(f"check fp32: decode attention {attention} skipped: "
                  f"{attn_lib.split_decode_unavailable(device, arch.head_dim)}")
            continue
        # compiles its copy's stacks in place
        fast = SimpleEngine(copy.deepcopy(model), StubTokenizer(), context, decode_attention=attention)
        for samples in (1, 3):
            a = fast.generate_ids(prompts, 24, batch_size=4, num_samples=samples, progress=False)
            b = plain.generate_ids(prompts, 24, batch_size=4, num_samples=samples, progress=False)
            same = sum(x == y for x, y in zip(a, b))
            print(f"check fp32 {args.net} tiny, num_samples={samples}: fast path (compile={fast.compiled}, "
                  f"graphs={fast.cuda_graphs}, decode attention {fast.decode_attention}, prefill "
                  f"{fast.prefill_backend}) == eager path: {same}/{len(a)} identical", flush=True)


def weight_bytes(module) -> int:
    return sum(p.numel() * p.element_size() for p in module.parameters())


def decode_step_time(engine, group, cache_len, context, max_new_tokens, sampling, device,
                     profile: bool = False) -> tuple[float, float]:
    """(seconds per decode step, mean position at the start) of a batch of len(group) slots, one
    prompt each, over a cache of cache_len: max_new_tokens - 1 steps through the engine's compiled
    step (the same shapes as its own batch: no new compilation). `profile`: then where the GPU time
    of 3 more steps goes, run uncaptured (kernel groups and top kernels, train_throughput's table)."""
    batch = len(group)
    decode = DecodeBatch(engine.model, batch, cache_len, context, max_new_tokens, SPECIAL["<|eoa|>"], sampling,
                         engine.decode_attention)
    if engine.cuda_graphs:
        decode.capture()
    decode.prefill(group, [[] for _ in group], [[i] for i in range(batch)], [[i] for i in range(batch)],
                   engine.prefill_backend, engine.prefill_length(sum(map(len, group))))
    decode.run(2)
    start_positions = decode.positions.float().mean().item()
    steps = max_new_tokens - 1
    _, elapsed = timed(lambda: decode.run(steps), device)
    if profile:
        from train_throughput import profile_steps

        print(f"profile of the decode step, batch {batch}, uncaptured (the CUDA graph replays the same kernels):")
        profile_steps(lambda _: decode.step(), 0, 3, device)
    return elapsed / steps, start_positions


def roofline(args, engine, model, prompts, bandwidth, device) -> tuple[float, dict]:
    """Time decode steps of a full batch and of one sequence; print bytes per step and % reached."""
    arch = model.arch
    net = model.net
    per_call = [weight_bytes(net.stacks[net.stack_name(role)]) for role in net.roles(arch)]
    head = weight_bytes(model.lm_head)
    kv_per_position = 2 * net.layers_per_call * arch.num_heads * arch.head_dim * model.lm_head.weight.element_size()
    step_times = {}
    for keys, block, warps, method in args.split_decode:  # the split decode kernel beside the engine's default
        attn_lib.SPLIT_DECODE_KEYS, attn_lib.SPLIT_DECODE_BLOCK, attn_lib.SPLIT_DECODE_WARPS = keys, block, warps
        attn_lib.SPLIT_DECODE_METHOD = method
        split = SimpleEngine(model, engine.tokenizer, engine.context_len, decode_attention="split")
        cache_len = cache_length(max(len(p) for p in prompts) + args.max_new_tokens, args.context)
        per_step, _ = decode_step_time(split, prompts[:args.batch_size], cache_len, args.context,
                                       args.max_new_tokens, Sampling(), device)
        print(f"roofline batch {args.batch_size:3}, decode attention split ({method}, {keys} cache positions per "
              f"split, {block}-key tiles, {warps} warps): {per_step * 1e3:7.2f} ms/step", flush=True)
    for batch in (args.batch_size, 1):
        steps = args.max_new_tokens - 1
        # the cache length the engine gives the generate run, so the compiled step is reused
        cache_len = cache_length(max(len(p) for p in prompts) + args.max_new_tokens, args.context)
        per_step, start_positions = decode_step_time(engine, prompts[:batch], cache_len, args.context,
                                                     args.max_new_tokens, Sampling(), device,
                                                     profile=args.profile and batch == args.batch_size)
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
    return step_times[args.batch_size], step_times


NAMES = ("Natalia", "Weng", "Betty", "Julie", "James", "Albert", "Ken", "Alexis", "Tina", "Randy", "Joy", "Mark")
ITEMS = ("clips", "apples", "pages", "marbles", "cookies", "tickets", "books", "eggs", "shirts", "stamps")
SENTENCES = (
    "{a} sold {x} {i} to friends in April, and then sold half as many {i} in May.",
    "{a} earns ${x} an hour for babysitting and worked {y} minutes yesterday.",
    "{a} is saving money for a new wallet which costs ${x}, and has only half of the money needed.",
    "{a}'s parents gave {y} dollars for it, and {b}'s grandparents gave twice as much as the parents.",
    "{a} is reading a {x}-page book and read {y} pages yesterday, and today read twice as many pages.",
    "{b} wants to read half of the remaining pages tomorrow, so the book is finished by Friday.",
    "{a} writes a {x}-page letter to {y} different friends twice a week.",
    "{a} has a garden with flowers of {y} different colors, and there are {x} of each color.",
    "Each box holds {y} {i}, and {b} buys {x} boxes at the store on Monday.",
)


def gsm8k_rows(rng, n: int) -> list[dict]:
    """GSM8k-schema rows (question, answer ending in '#### N') of GSM8k's length, about 45 words."""
    rows = []
    for _ in range(n):
        fill = lambda t: t.format(a=rng.choice(NAMES), b=rng.choice(NAMES), i=rng.choice(ITEMS),
                                  x=int(rng.integers(2, 200)), y=int(rng.integers(2, 60)))
        question = " ".join(fill(t) for t in rng.choice(SENTENCES, int(rng.integers(2, 5)), replace=False))
        x, y = int(rng.integers(2, 200)), int(rng.integers(2, 60))
        rows.append({"question": question + f" How many {rng.choice(ITEMS)} are there in total?",
                     "answer": f"There are {x} + {y} = <<{x}+{y}={x + y}>>{x + y} in total.\n#### {x + y}"})
    return rows


def write_random_run(out: Path, net: str, size: str, context: int, rows: list[dict]) -> Path:
    """A run directory as pretrain.py writes it (training/run_dir.py): config, metadata, a BPE
    tokenizer trained on `rows`, and an epoch checkpoint of random weights whose LM head never
    picks eoa (so every generation runs to its token limit)."""
    import torch.distributed as dist

    from data_io.text_tokenizer import load_tokenizer
    from data_io.train_tokenizer import train_tokenizer
    from training import checkpoint as ckpt
    from training.run_dir import write_run_files

    corpus = out / "corpus"
    corpus.mkdir(parents=True, exist_ok=True)
    (corpus / "train.jsonl").write_text("".join(json.dumps({"instruction": r["question"], "response": r["answer"],
                                                            "condition": "synth,cot"}) + "\n" for r in rows))
    tok_dir = out / "tokenizer"
    train_tokenizer([str(corpus)], str(tok_dir), vocab_size=4096)
    tokenizer = load_tokenizer(str(tok_dir / "tokenizer.json"))
    info = tokenizer.info() | {"tokenizer_path": "tokenizer.json"}
    cfg = compose("cfg_pretrain", [f"arch/net@arch={net}", f"arch/size@arch={size}", f"data.path={tok_dir}"])
    run = out / "run"
    write_run_files(run, cfg.model_dump(), tok_dir, {"tokenizer_info": info, "max_seq_len": context + 1},
                    {"parameters": "random"})
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    with torch.device(device):
        model = LanguageModel(cfg.arch, model_vocab_size(tokenizer.vocab_size))
        model.init_weights()
    with torch.no_grad():
        model.lm_head.weight[tokenizer.eoa_id] = 0
    dist.init_process_group("gloo", init_method=f"file://{out / 'store'}", rank=0, world_size=1)
    try:
        ckpt.save_checkpoint(ckpt.checkpoint_dir(run) / ckpt.epoch_checkpoint_name(1), model,
                             torch.optim.SGD(model.parameters(), lr=0.0), {"step": 1})
    finally:
        dist.destroy_process_group()
    return run


def evaluation_run(args, out: Path, rng) -> dict:
    """`python -m evaluation.main` on a random-weight run as a user runs it; its wall time, whether
    it printed a progress bar, its peak GPU memory (the line evaluation.main prints)."""
    data = out / "data"
    rows = gsm8k_rows(rng, args.eval_problems)
    (data / "GSM8k").mkdir(parents=True, exist_ok=True)
    (data / "GSM8k" / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    t0 = time.perf_counter()
    run = write_random_run(out, args.net, args.size, args.context, rows)
    print(f"evaluation: run directory {run} written in {time.perf_counter() - t0:.0f} s", flush=True)
    command = [sys.executable, "-m", "evaluation.main", f"ckpt_path={run}", f"data_dir={data}", "run_only=[GSM8k]",
               f"generation_config.batch_size={args.batch_size}", f"generation_config.max_tokens={args.eval_new_tokens}",
               f"generation_config.max_context={args.context}"]
    print("evaluation: " + " ".join(command[1:]), flush=True)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    t0 = time.perf_counter()
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    (out / "evaluation.log").write_text(done.stdout + "\n--- stderr ---\n" + done.stderr)
    print(done.stdout[-3000:] + "\n" + done.stderr[-1500:].replace("\r", "\n"), flush=True)
    peak = re.search(r"peak GPU memory ([0-9.]+) GiB", done.stdout)
    result = {"rc": done.returncode, "wall_s": wall, "progress_bar": "generate:" in done.stderr,
              "peak_gib": float(peak.group(1)) if peak else float("nan")}
    print(f"evaluation: {args.eval_problems} problems, {args.eval_new_tokens} new tokens, batch {args.batch_size}: "
          f"exit {result['rc']}, {wall:.0f} s wall (loading and compilation included), progress bar "
          f"{'printed' if result['progress_bar'] else 'MISSING'}, peak GPU memory {result['peak_gib']:.1f} GiB; "
          f"log {out / 'evaluation.log'}", flush=True)
    return result


def train_step_tokens_per_s(args) -> float:
    """bench/train_throughput.py's training step of the same model on the packed mix: tokens/s."""
    done = subprocess.run([sys.executable, str(ROOT / "bench" / "train_throughput.py"), "--models",
                           f"{args.net}:{args.size}", "--shapes", "mix", "--steps", "5", "--warmup", "2",
                           "--no-peer", "--no-attention"] + (["--cpu"] if args.cpu else []),
                          capture_output=True, text=True)
    print(done.stdout[-2500:] + done.stderr[-1500:], flush=True)
    summary = done.stdout.split("== summary")[-1].splitlines()
    row = next((line.split() for line in summary if line.startswith(f"{args.net}:")), None)
    return float(row[5]) if row and len(row) > 5 else float("nan")


def split_decode_settings(text: str) -> list[tuple[int, int, int, str]]:
    settings = []
    for item in text.split(","):
        *numbers, method = item.split(":")
        if len(numbers) != 3 or not all(n.isdigit() for n in numbers) or method not in attn_lib.SPLIT_DECODE_METHODS:
            raise argparse.ArgumentTypeError(f"{item!r} is not KEYS:BLOCK:WARPS:METHOD with METHOD one of "
                                             f"{', '.join(attn_lib.SPLIT_DECODE_METHODS)} (e.g. 256:64:4:reduce)")
        settings.append((*map(int, numbers), method))
    return settings


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
    parser.add_argument("--eval-problems", type=int, default=1319, help="evaluation section: GSM8k-schema rows")
    parser.add_argument("--eval-new-tokens", type=int, default=512, help="evaluation section: max_tokens")
    parser.add_argument("--out", default=None, help="evaluation section: where its run, data and log go (default: a temp dir)")
    parser.add_argument("--sections", default="check,bandwidth,generate,roofline,prefill,samples",
                        help="comma list of: check, bandwidth, generate, transformers, roofline, prefill, samples, "
                             "evaluation")
    parser.add_argument("--train-step", action="store_true",
                        help="prefill section: also run bench/train_throughput.py on the same model for the "
                             "training step's tokens/s")
    parser.add_argument("--split-decode", type=split_decode_settings, default=[],
                        help="roofline section: also time the split decode kernel under these settings, a comma "
                        "list of KEYS:BLOCK:WARPS:METHOD (cache positions per split, keys per tile, warps, tile "
                        "reduction; bench/attention_check.py --decode sweeps them), e.g. 128:64:4:reduce")
    parser.add_argument("--gemm-autotune", action="store_true",
                        help="compile the engine's stacks with inductor's matmul autotuning (max_autotune_gemm: "
                             "Triton templates timed against cuBLAS per shape; slow to compile), to see whether "
                             "the decode step's small-batch matmuls gain")
    parser.add_argument("--profile", action="store_true",
                        help="roofline section: also where the GPU time of a full batch's decode step goes")
    parser.add_argument("--cpu", action="store_true")
    args = parser.parse_args()
    if args.cpu:
        args.size, args.prompts, args.batch_size, args.max_new_tokens, args.context, args.median_prompt = \
            "tiny", 6, 4, 8, 128, 20
        args.prefill_prompts, args.prefill_len, args.sample_prompts, args.samples, args.sample_new_tokens = 8, 40, 2, 4, 4
        args.eval_problems, args.eval_new_tokens = 12, 8
    sections = set(args.sections.split(","))
    unknown = sections - {"check", "bandwidth", "generate", "transformers", "roofline", "prefill", "samples", "evaluation"}
    if unknown:
        parser.error(f"--sections: unknown {sorted(unknown)}")
    summary: list[tuple[str, str]] = []
    device = torch.device("cpu" if args.cpu or not torch.cuda.is_available() else "cuda")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    print_header(device)
    if args.gemm_autotune:
        import torch._inductor.config as inductor_config

        inductor_config.max_autotune_gemm = True
    rng = np.random.default_rng(0)
    if "check" in sections:
        check_fp32(args, device, rng)
    if "evaluation" in sections:  # first: evaluation.main owns the GPU while it runs
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(args.out or tmp)
            result = evaluation_run(args, out, rng)
        summary.append(("evaluation.main, GSM8k-schema", f"{args.eval_problems} problems x {args.eval_new_tokens} "
                        f"tokens: {result['wall_s']:.0f} s (exit {result['rc']}), progress bar "
                        f"{'yes' if result['progress_bar'] else 'NO'}, peak {result['peak_gib']:.1f} GiB"))
        if sections == {"evaluation"}:
            print_summary(summary)
            return

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
          f"compiled stacks {engine.compiled}, CUDA graphs {engine.cuda_graphs}, decode attention {engine.decode_attention}, "
          f"prefill attention {engine.prefill_backend}, host check every {engine.steps_per_check} steps", flush=True)

    bandwidth = copy_bandwidth(device) if device.type == "cuda" else math.nan
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
        summary.append(("generate, native", f"{native_rate:.0f} tokens/s (first call {warm_s:.0f} s)"))
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

    if "roofline" in sections:
        step_time, step_times = roofline(args, engine, model, prompts, bandwidth, device)
        summary.append(("decode step", f"batch {args.batch_size}: {step_time * 1e3:.2f} ms; batch 1: "
                        f"{step_times[1] * 1e3:.2f} ms/token (% of roofline: see above)"))

    if "prefill" in sections:
        long = make_prompts(rng, args.prefill_prompts, vocab, args.prefill_len, 2 * args.prefill_len, spread=0.1)
        # the same call first: each prefill length (PREFILL_BUCKETS) compiles at its first use
        _, warm_s = timed(lambda: engine.generate_ids(long, 1, batch_size=args.batch_size, progress=False), device)
        _, elapsed = timed(lambda: engine.generate_ids(long, 1, batch_size=args.batch_size, progress=False), device)
        tokens = sum(len(p) for p in long)
        print(f"prefill: {len(long)} prompts, {tokens} tokens (median {int(np.median([len(p) for p in long]))}), "
              f"1 new token, batch {args.batch_size}: {elapsed:.2f} s = {tokens / elapsed:9.0f} prompt tokens/s "
              f"(first call, compiling: {warm_s:.0f} s)", flush=True)
        figure = f"{tokens / elapsed:.0f} prompt tokens/s ({len(long)} prompts, {elapsed:.1f} s)"
        if args.train_step:
            train = train_step_tokens_per_s(args)
            figure += f"; training step {train:.0f} tokens/s: prefill / training = {tokens / elapsed / train:.2f}x"
        summary.append(("prefill, 1 new token", figure))

    if "samples" in sections:
        group = prompts[:args.sample_prompts]
        kw = dict(temperature=0.8, batch_size=args.batch_size, num_samples=args.samples, progress=False)
        # warm-up: the longest prompt gives the same batch and cache length, hence the same compiled step
        longest = max(group, key=len)
        engine.generate_ids([longest], args.sample_new_tokens, **kw)
        before = dataclasses.replace(engine.stats)
        outs, elapsed = timed(lambda: engine.generate_ids(group, args.sample_new_tokens, **kw), device)
        steps, chunks = (getattr(engine.stats, f) - getattr(before, f) for f in ("decode_steps", "prefill_chunks"))
        n = sum(len(o) for o in outs)
        cache_len = cache_length(len(longest) + args.sample_new_tokens, args.context)
        step_time, _ = decode_step_time(engine, (group * args.batch_size)[:args.batch_size], cache_len, args.context,
                                        args.sample_new_tokens, Sampling(temperature=0.8), device)
        decode_only = n / args.batch_size * step_time
        print(f"samples: {len(group)} prompts x {args.samples} samples, T=0.8, {args.sample_new_tokens} new tokens, "
              f"batch {args.batch_size}: {n} tokens in {elapsed:.2f} s = {n / elapsed:.0f} tokens/s; decode-only time "
              f"of these tokens {decode_only:.2f} s ({step_time * 1e3:.2f} ms/step) -> wall / decode-only = "
              f"{elapsed / decode_only:.2f} ({steps} decode steps run: {steps * step_time:.2f} s; {chunks} prefill chunks)",
              flush=True)
        summary.append((f"samples, {len(group)} x {args.samples}, T=0.8",
                        f"{elapsed:.1f} s against {decode_only:.1f} s decode-only: {elapsed / decode_only:.2f}x"))
    print_summary(summary)


def print_summary(summary: list[tuple[str, str]]) -> None:
    print("\n== summary\n" + "\n".join(f"{what:32} {figure}" for what, figure in summary), flush=True)


if __name__ == "__main__":
    main()
