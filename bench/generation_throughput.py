"""Generation throughput (issue 5, acceptance 5): the native engine (simple_inference_engine.py,
static KV cache, compiled decode, slot refill) against transformers' `generate()` on the same
exported model (conversion/convert_to_hf.py's config and weights), same prompts, batch 32, greedy.

    python3 bench/generation_throughput.py [--size B] [--prompts 64] [--max-new-tokens 128]
    python3 bench/generation_throughput.py --cpu     # tiny smoke run

Random weights (both engines share them) and random prompt tokens; prompt lengths lognormal
(median 150) clipped to [8, 1024]. eoa is never generated on purpose, so both engines produce
close to max_new_tokens per prompt; tokens/s counts the generated tokens. Warm-up (compilation,
first-call overheads) runs on separate prompts before the timed run. Also prints how many greedy
outputs agree token for token (bf16 kernels differ, so long random-weight generations may diverge).
"""

import argparse
import datetime
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from conversion.convert_to_hf import hf_config, hf_state_dict  # noqa: E402
from models.model import LanguageModel, model_vocab_size  # noqa: E402
from simple_inference_engine import SimpleEngine  # noqa: E402
from training.config import compose  # noqa: E402

SPECIAL = {"<|pad|>": 0, "<|boq|>": 1, "<|eoq|>": 2, "<|eoa|>": 3, "<|direct|>": 4}


class StubTokenizer:
    """What SimpleEngine.generate_ids needs of a tokenizer: the special ids."""

    special_ids = SPECIAL
    conditions = ["direct"]


def make_prompts(rng, n, vocab, median, max_len):
    prompts = []
    for _ in range(n):
        length = int(np.clip(rng.lognormal(math.log(median), 0.7), 8, max_len))
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", default="B")
    parser.add_argument("--net", default="hrm")
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--context", type=int, default=4096)
    parser.add_argument("--median-prompt", type=int, default=150)
    parser.add_argument("--variants", default="native,transformers",
                        help="native (compiled on CUDA), native-eager (compile off), transformers")
    parser.add_argument("--cpu", action="store_true")
    args = parser.parse_args()
    if args.cpu:
        args.size, args.prompts, args.batch_size, args.max_new_tokens, args.context, args.median_prompt = \
            "tiny", 6, 4, 8, 128, 20
    device = torch.device("cpu" if args.cpu or not torch.cuda.is_available() else "cuda")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    print(f"command: python3 {' '.join(sys.argv)}")
    print(f"date: {datetime.datetime.now().astimezone():%Y-%m-%d %H:%M %Z}")
    print(f"device: {torch.cuda.get_device_name(device) if device.type == 'cuda' else 'cpu'}; torch {torch.__version__}")
    import transformers
    from transformers import HrmTextForCausalLM

    print(f"transformers {transformers.__version__}")

    arch = compose("cfg_pretrain", [f"arch/net@arch={args.net}", f"arch/size@arch={args.size}"]).arch
    vocab = model_vocab_size(32000 if not args.cpu else 500)
    torch.manual_seed(0)
    model = LanguageModel(arch, vocab)
    model.init_weights()
    with torch.no_grad():
        model.lm_head.weight[SPECIAL["<|eoa|>"]] = 0  # eoa never wins the argmax: full-length generations
    config = hf_config(arch, vocab, args.context, SPECIAL["<|boq|>"], SPECIAL["<|eoa|>"], SPECIAL["<|pad|>"])
    config._attn_implementation = "sdpa"
    peer = HrmTextForCausalLM(config)
    missing, unexpected = peer.load_state_dict(hf_state_dict(model), strict=False)
    assert not unexpected and all("rotary" in k for k in missing), (missing, unexpected)
    peer = peer.to(device=device, dtype=dtype).eval()
    model = model.to(device=device, dtype=dtype).eval()
    def native(ps, variant, max_new):
        engine = engines.setdefault(variant, SimpleEngine(model, StubTokenizer(), args.context,
                                                          compile=False if variant == "native-eager" else None))
        return engine.generate_ids(ps, max_new, 0.0, args.batch_size)

    engines = {}

    rng = np.random.default_rng(0)
    max_prompt = min(1024, args.context - args.max_new_tokens - 1)
    warm = make_prompts(rng, args.batch_size, vocab, args.median_prompt, max_prompt)
    prompts = make_prompts(rng, args.prompts, vocab, args.median_prompt, max_prompt)
    print(f"{len(prompts)} prompts, length median {int(np.median([len(p) for p in prompts]))}, "
          f"max {max(len(p) for p in prompts)}; batch {args.batch_size}; max_new_tokens {args.max_new_tokens}; "
          f"{args.net} size {args.size}, {sum(p.numel() for p in model.parameters()) / 1e6:.0f}M parameters, {dtype}")

    results = {}
    for name in args.variants.split(","):
        if name == "transformers":
            def run(ps, max_new=args.max_new_tokens):
                return hf_generate(peer, ps, max_new, args.batch_size, device)
        else:
            def run(ps, max_new=args.max_new_tokens, name=name):
                return native(ps, name, max_new)
        t0 = time.perf_counter()
        run(warm, 8)
        sync(device)
        warm_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        outs = run(prompts)
        sync(device)
        elapsed = time.perf_counter() - t0
        n = sum(len(o) for o in outs)
        results[name] = (outs, n, elapsed, warm_s)
        print(f"{name:12}: {n} tokens in {elapsed:.2f} s = {n / elapsed:8.1f} tokens/s (warm-up {warm_s:.0f} s)", flush=True)

    if "transformers" not in results:
        return
    hf = results["transformers"][0]
    hf_rate = results["transformers"][1] / results["transformers"][2]
    print()
    for name, (outs, n, elapsed, _) in results.items():
        if name == "transformers":
            continue
        same = sum(a == b for a, b in zip(outs, hf))
        prefix = [next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b))) for a, b in zip(outs, hf)]
        print(f"{name:15} / transformers generate(): {n / elapsed / hf_rate:5.2f}x  "
              f"(greedy outputs identical {same}/{len(outs)}, first disagreement at token {int(np.median(prefix))} median)")


if __name__ == "__main__":
    main()
