"""Multipack planning quality and speed: plain LPT on token counts vs the sampler's placement.

    python bench/multipack_bench.py [--samples 200000] [--ranks 8] [--tokens 16384]

Lengths are lognormal (median 300, sigma 1.0, clipped to [1, 4096], seed 0). Prints, per method:
slot efficiency (used / available token slots), planning time for the epoch (one core; numba
compiled beforehand), and the median and 90th percentile over global steps of the max/mean over
ranks of quadratic attention work (sum of squared sample lengths).
"""

import argparse
import os
import time

os.environ.setdefault("NUMBA_NUM_THREADS", "1")

import numpy as np
import torch

from common import print_header
from multipack_sampler import MultipackDistributedBatchSampler, plan_batches


def quadratic_imbalance(lengths, order, offsets, ranks):
    """Per global step: max over ranks of sum(len^2) divided by the mean over ranks."""
    sq = lengths.astype(np.float64) ** 2
    per_slot = np.add.reduceat(np.append(sq[order], 0.0), offsets[:-1])
    per_slot[offsets[:-1] == offsets[1:]] = 0.0  # reduceat repeats a value on empty slots
    work = per_slot.reshape(-1, ranks)
    return work.max(1) / work.mean(1)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=200_000)
    parser.add_argument("--ranks", type=int, default=8)
    parser.add_argument("--tokens", type=int, default=16384, help="batch_max_length per rank")
    parser.add_argument("--sigma", type=float, default=1.0, help="lognormal sigma of the lengths")
    args = parser.parse_args()
    print_header(torch.device("cpu"))

    rng = np.random.default_rng(0)
    lengths = np.clip(np.round(rng.lognormal(np.log(300), args.sigma, args.samples)), 1, 4096).astype(np.int64)
    print(f"{args.samples} samples, lengths lognormal median {np.median(lengths):.0f} mean {lengths.mean():.0f} "
          f"max {lengths.max()}; {args.ranks} ranks x {args.tokens} tokens")
    plan_batches(lengths[:1000], args.tokens, args.ranks, balance_quadratic=True)  # compile (numba caches it on disk)
    plan_batches(lengths[:1000], args.tokens, args.ranks, balance_quadratic=False)

    print(f"{'method':<28}{'steps':>7}{'efficiency':>12}{'plan s':>9}{'quad max/mean median':>23}{'p90':>7}")
    for name, quadratic in (("plain LPT (token counts)", False), ("sampler (quadratic + swaps)", True)):
        t0 = time.perf_counter()
        order, offsets = plan_batches(lengths, args.tokens, args.ranks, balance_quadratic=quadratic)
        seconds = time.perf_counter() - t0
        steps = (len(offsets) - 1) // args.ranks
        efficiency = lengths.sum() / (steps * args.ranks * args.tokens)
        ratio = quadratic_imbalance(lengths, order, offsets, args.ranks)[:-1]  # last step: leftovers
        print(f"{name:<28}{steps:>7}{efficiency:>11.2%}{seconds:>9.2f}{np.median(ratio):>23.3f}"
              f"{np.percentile(ratio, 90):>7.3f}")

    sampler = MultipackDistributedBatchSampler(args.tokens, lengths, args.ranks, rank=0)
    print(f"MultipackDistributedBatchSampler.efficiency() = {sampler.efficiency():.2%}")


if __name__ == "__main__":
    main()
