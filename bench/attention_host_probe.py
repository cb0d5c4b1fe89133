"""Host (CPU) cost of one packed attention call, per backend: what bounds a training step when the
GPU work is faster than the Python that launches it (bench/RESULTS.md §13).

    python3 bench/attention_host_probe.py --backends flex,flex_fa4
    python3 bench/attention_host_probe.py --backends flex_fa4 --cprofile   # where that time goes

On one fixed 2 x 4096 prefix-LM batch (prefixes 1000 and 2500 tokens; H=10, D=128), for the
no-grad forward and forward+backward:
- host ms/call: the launch time of 30 calls divided by 30, timed without a sync;
- host-sync check: a ~1 s GPU sleep is queued first, then 10 calls: if they return to the host
  long before the sleep ends, the call never waits for the GPU.
"""

import argparse
import cProfile
import pstats
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench import attention_check as check  # noqa: E402
from models import attention as A  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backends", default="flex,flex_fa4",
                        help="comma list of packed attention backends (models/attention.py) to probe")
    parser.add_argument("--cprofile", action="store_true", help="also print the top Python functions per call kind")
    args = parser.parse_args()
    device = torch.device("cuda")
    print(f"command: python3 {' '.join(sys.argv)}; gpu: {torch.cuda.get_device_name(device)}; torch {torch.__version__}")
    cu, prefix = check.make_batch([(1000, 3096), (2500, 1596)], 8192, device)
    q, k, v, grad_out = (torch.randn(8192, check.HEADS, check.HEAD_DIM, device=device).bfloat16() for _ in range(4))
    leaves = [x.requires_grad_() for x in (q, k, v)]
    for backend in [A.resolve_backend(name, device) for name in args.backends.split(",")]:
        layout = A.build_layout(cu, prefix, 8192, check.MAX_SEQLEN, backend, "prefixlm")

        def forward():
            with torch.no_grad():
                A.packed_attention(*leaves, layout)

        def forward_backward():
            torch.autograd.grad(A.packed_attention(*leaves, layout), leaves, grad_out)

        for name, fn in (("fwd", forward), ("fwd+bwd", forward_backward)):
            for _ in range(3):  # compile, warm up
                fn()
            torch.cuda.synchronize()
            start = time.perf_counter()
            for _ in range(30):
                fn()
            launch_ms = (time.perf_counter() - start) / 30 * 1e3
            torch.cuda.synchronize()
            torch.cuda._sleep(2_000_000_000)  # about 1 s of GPU time
            start = time.perf_counter()
            for _ in range(10):
                fn()
            returned_ms = (time.perf_counter() - start) * 1e3
            torch.cuda.synchronize()
            done_ms = (time.perf_counter() - start) * 1e3
            print(f"{backend:9} {name:8} host {launch_ms:6.3f} ms/call; behind a GPU sleep, 10 calls returned "
                  f"after {returned_ms:7.1f} ms, the GPU finished after {done_ms:7.1f} ms", flush=True)
            if args.cprofile:
                profiler = cProfile.Profile()
                profiler.enable()
                for _ in range(30):
                    fn()
                profiler.disable()
                torch.cuda.synchronize()
                pstats.Stats(profiler).sort_stats("cumulative").print_stats(25)


if __name__ == "__main__":
    main()
