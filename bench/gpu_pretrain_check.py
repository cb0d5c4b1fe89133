"""End-to-end GPU check of pretrain.py (issue 4, acceptance 7): write a synthetic sampled dataset,
train a size-B HRM for 50 compiled steps, and print the logged loss, tokens/s and MFU.

    python3 bench/gpu_pretrain_check.py [--out DIR] [--steps 50] [--size B] [--batch 32768]
    python3 bench/gpu_pretrain_check.py --cpu      # tiny smoke run of the same path on a CPU

The dataset is learnable but synthetic: instruction tokens are Zipf-distributed over a 32000-token
vocabulary; the response repeats the instruction's text tokens (so the loss falls below the
unigram entropy once the model learns to copy through attention). Sample lengths are lognormal
(median 300) clipped to the context, the instruction/response split uniform. Same on-disk format
as data_io's sampled output (docs/DESIGN.md, "Data format").
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

from common import ROOT, print_header

BOQ, EOQ, EOA, DIRECT, FIRST_TEXT = 1, 2, 3, 4, 8


def write_synthetic_dataset(path: Path, num_samples: int, context: int, vocab: int, epochs: int = 1,
                            seed: int = 0, median: float = 300.0, fixed_length: int | None = None) -> Path:
    rng = np.random.default_rng(seed)
    # Zipf over the text tokens (rank r has weight 1/r)
    weights = 1.0 / np.arange(1, vocab - FIRST_TEXT + 1)
    weights /= weights.sum()
    tokens, spans, at = [], [], 0
    for _ in range(num_samples):
        n = fixed_length or int(np.clip(rng.lognormal(np.log(median), 1.0), 6, context))  # inst + resp - 1
        inst_len = int(np.clip(round(rng.uniform(0.1, 0.9) * (n + 1)), 4, n - 2))
        resp_len = n + 1 - inst_len
        text = rng.choice(vocab - FIRST_TEXT, size=inst_len - 3, p=weights) + FIRST_TEXT
        inst = np.concatenate([[BOQ, DIRECT], text, [EOQ]])
        resp = np.concatenate([np.resize(text, resp_len - 1), [EOA]])
        tokens += [inst, resp]
        spans.append((at, inst_len, at + inst_len, resp_len))
        at += inst_len + resp_len
    path.mkdir(parents=True, exist_ok=True)
    dtype = np.uint16 if vocab <= 65536 else np.int32
    np.save(path / "tokens.npy", np.concatenate(tokens).astype(dtype))
    spans = np.array(spans, dtype=np.int64)
    for e in range(epochs):
        order = rng.permutation(len(spans))
        (path / f"epoch_{e}").mkdir(exist_ok=True)
        for col, name in enumerate(("inst_start", "inst_len", "resp_start", "resp_len")):
            np.save(path / f"epoch_{e}" / f"{name}.npy", spans[order, col])
    info = {"vocab_size": vocab, "tokenizer_path": "none", "boq": "<|boq|>", "eoq": "<|eoq|>", "eoa": "<|eoa|>",
            "condition_mapping": {"direct": "<|direct|>"}}
    total = int(spans[:, 1].sum() + spans[:, 3].sum())
    (path / "metadata.json").write_text(json.dumps({"tokenizer_info": info, "max_seq_len": context + 1,
                                                    "total_length": total}))
    return path


def pretrain_command(data: Path, run_dir: Path, size: str, batch: int, steps: int, nproc: int = 1, cpu: bool = False,
                     extra: list[str] = ()) -> list[str]:
    """pretrain.py on `data` (HRM of `size`, lr 1e-3 with 10 warm-up steps, one epoch, compiled on the
    GPU), under torchrun when `nproc` > 1. Later `extra` overrides win."""
    launcher = ([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
                if nproc > 1 else [sys.executable])
    return [*launcher, str(ROOT / "pretrain.py"), f"arch/size@arch={size}", "arch/net@arch=hrm",
            f"data.path={data}", f"checkpoint_path={run_dir}", f"global_batch_size={batch}",
            f"max_steps={steps}", "epochs=1", "lr=1e-3", "lr_warmup_steps=10", "wandb_mode=disabled",
            f"compile={'false' if cpu else 'true'}", *extra]


def run_pretrain(cmd: list[str], env: dict | None = None, wait: bool = True):
    """Start `cmd` from the repository root; with `wait`, wait for it and exit on failure, else return
    the Popen (collect it with finish_pretrain)."""
    print("command:", " ".join(cmd), flush=True)
    env = {**os.environ, **(env or {}), "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    process = subprocess.Popen(cmd, cwd=ROOT, env=env, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    return finish_pretrain(process) if wait else process


def finish_pretrain(process: subprocess.Popen) -> str:
    stdout, stderr = process.communicate()
    print(stdout[-3000:])
    if process.returncode != 0:
        print(stderr[-6000:])
        raise SystemExit(f"pretrain.py failed with exit code {process.returncode}")
    return stdout


def read_metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="/tmp/gpu_pretrain_check")
    parser.add_argument("--size", default="B")
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--batch", type=int, default=32768, help="global_batch_size (tokens)")
    parser.add_argument("--context", type=int, default=4096)
    parser.add_argument("--fixed-length", type=int, default=None,
                        help="every sample this many packed tokens (batches then hold the same samples at any world size)")
    parser.add_argument("--run-name", default="run")
    parser.add_argument("--log-interval", type=int, default=10)
    parser.add_argument("--nproc", type=int, default=1, help="GPUs (torchrun --standalone)")
    parser.add_argument("--cpu", action="store_true", help="tiny CPU smoke run (size tiny, short context)")
    parser.add_argument("extra", nargs="*", help="more hydra overrides for pretrain.py")
    args = parser.parse_args()
    if args.cpu:
        args.size, args.batch, args.context, args.steps, args.log_interval = "tiny", 1024, 128, min(args.steps, 6), 2
    print_header(torch.device("cpu" if args.cpu else "cuda"))
    out = Path(args.out)
    data = out / "data"
    if not (data / "metadata.json").exists():
        n = int(args.batch * args.steps * 1.3 / 330) + 100
        write_synthetic_dataset(data, n, args.context, 32000 if not args.cpu else 512, median=300 if not args.cpu else 40,
                                fixed_length=args.fixed_length)
    run_dir = out / args.run_name
    if run_dir.exists():  # this script's previous run of the same name; nothing else is deleted
        if not (run_dir / "all_config.yaml").is_file():
            raise SystemExit(f"{run_dir} exists and is not a run directory: pass another --out or --run-name")
        shutil.rmtree(run_dir)
    start = time.time()
    run_pretrain(pretrain_command(data, run_dir, args.size, args.batch, args.steps, args.nproc, args.cpu,
                                  [f"log_interval={args.log_interval}", "checkpoint_every_steps=null", *args.extra]))
    print(f"wall time {time.time() - start:.0f} s (including compile and the checkpoint at the end)")
    rows = read_metrics(run_dir)
    print(f"\n{'step':>5} {'loss':>8} {'tok acc':>8} {'bp':>3} {'lr':>9} {'tokens/s':>10} {'MFU':>6} {'peak GiB':>8}")
    for r in rows:
        print(f"{r['step']:5d} {r['train/loss']:8.4f} {r['train/token_accuracy']:8.4f} {r['train/bp_steps']:3d} "
              f"{r['train/lr']:9.2e} {r['perf/tokens_per_s']:10.0f} {r.get('perf/mfu', float('nan')):6.1%} "
              f"{r.get('perf/peak_memory_gib', float('nan')):8.1f}")
    first, last = rows[0]["train/loss"], rows[-1]["train/loss"]
    steady = [r["perf/tokens_per_s"] for r in rows[len(rows) // 3:]]
    print(f"steady tokens/s (last 2/3 of the logged windows): {np.mean(steady):.0f} total, "
          f"{np.mean(steady) / args.nproc:.0f} per GPU")
    print(f"\nloss {first:.4f} -> {last:.4f}: {'DOWN' if last < first else 'NOT DOWN'}")
    meta = (run_dir / "train_metadata.yaml").read_text()
    print(meta)


if __name__ == "__main__":
    main()
