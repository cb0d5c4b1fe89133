"""What the benchmarks share: the project on sys.path, rank-0 logging, the run header (command,
date, device), GPU timing, the synthetic length mix of packed batches, and the measured ceilings
(bf16 matmul rate, HBM copy bandwidth).

Importing it needs only torch and numpy; the benchmarks import the project after it.
"""

import datetime
import math
import os
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def log(*args) -> None:
    """print on rank 0 only (the benchmarks may run under torchrun)."""
    if int(os.environ.get("RANK", "0")) == 0:
        print(*args, flush=True)


def print_header(device: torch.device) -> None:
    """The command, date and device: the facts bench/README.md records beside each figure."""
    log(f"command: {' '.join([Path(sys.executable).name, *sys.argv])}")
    log(f"date: {datetime.datetime.now().astimezone():%Y-%m-%d %H:%M %Z}")
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    log(f"device: {name}; torch {torch.__version__}")


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_ms(fn, iters: int = 20, warmup: int = 3) -> float:
    """Median wall time of fn() on the GPU (CUDA events), after warm-up calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(iters):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return float(np.median(times))


def kernel_ms(fn, iters: int = 10) -> float:
    """GPU kernel time of one fn() (summed kernel durations from the profiler): unlike the event
    timing, it leaves out gaps where the GPU waits for the host to launch the next kernel."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(iters):
            fn()
        torch.cuda.synchronize()
    return sum(e.time_range.elapsed_us() for e in prof.events()
               if e.device_type == DeviceType.CUDA and not e.is_user_annotation) / iters / 1e3


def random_samples(rng, budget: int, context: int = 4096, max_samples: int | None = None,
                   median: float = 300.0) -> list[tuple[int, int]]:
    """(prefix, response) lengths: total length lognormal (median `median`, clipped to [2, context]),
    prefix a random fraction of it, packed greedily below `budget` (10 misses or `max_samples`
    samples end the batch): the length mix of the packed-batch benchmarks."""
    samples, used, misses = [], 0, 0
    while misses < 10 and (max_samples is None or len(samples) < max_samples):
        n = int(np.clip(rng.lognormal(math.log(median), 1.0), 2, context))
        if used + n >= budget:
            misses += 1
            continue
        p = int(np.clip(round(rng.uniform(0.05, 0.95) * n), 1, n - 1))
        samples.append((p, n - p))
        used += n
    return samples


def copy_bandwidth(device: torch.device) -> float:
    """Bytes read + written per second by a device-to-device copy of 2 GiB: the measured HBM
    ceiling of the decode rooflines."""
    src = torch.empty(1 << 30, dtype=torch.bfloat16, device=device)
    dst = torch.empty_like(src)
    ms = median_ms(lambda: dst.copy_(src), iters=10, warmup=3)
    return 2 * src.numel() * src.element_size() / ms * 1e3


def matmul_tflops(device: torch.device) -> float:
    """The bf16 rate of an 8192^3 matmul on random data: the measured compute ceiling."""
    n = 8192
    a, b = (torch.randn(n, n, device=device, dtype=torch.bfloat16) for _ in range(2))
    ms = median_ms(lambda: a @ b, iters=20, warmup=5)
    return 2 * n ** 3 / ms / 1e9
