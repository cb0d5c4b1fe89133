"""Time the packed-layout build for flex (its BlockMask) in a fresh process, first call and
repeats, printing the main thread's stack every 30 s while one runs: the builder used to be
compiled, and that compile stalled in Triton at 16384 tokens (bench/RESULTS.md §15).

    python3 bench/layout_compile_probe.py --tokens 16384
"""

import argparse
import faulthandler
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.attention_check import make_batch, random_samples  # noqa: E402
from models import attention as A  # noqa: E402

parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
parser.add_argument("--tokens", type=int, default=16384)
parser.add_argument("--repeats", type=int, default=3)
args = parser.parse_args()
faulthandler.dump_traceback_later(30, repeat=True)
cu, prefix = make_batch(random_samples(np.random.default_rng(0), args.tokens), args.tokens, "cuda")
for i in range(args.repeats):
    t0 = time.perf_counter()
    A.build_layout(cu, prefix, total_len=args.tokens, max_seqlen=4096, backend="flex")
    torch.cuda.synchronize()
    print(f"build_layout flex at {args.tokens} tokens, call {i + 1}: {time.perf_counter() - t0:.2f} s", flush=True)
faulthandler.cancel_dump_traceback_later()
