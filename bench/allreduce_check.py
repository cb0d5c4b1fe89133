"""All-reduce bus bandwidth across ranks: run before a long multi-GPU / multi-node job.

    torchrun --nproc_per_node=8 bench/allreduce_check.py
    torchrun --nnodes=2 --nproc_per_node=8 --rdzv_backend=c10d --rdzv_endpoint=HOST:29500 bench/allreduce_check.py
    torchrun --nproc_per_node=2 bench/allreduce_check.py --cpu      # gloo smoke test

For each message size it checks the sum (every rank contributes rank + 1), then times
`dist.all_reduce` (median of `--iters` after warm-up) and prints the algorithm bandwidth
(bytes / time) and the bus bandwidth (algbw * 2 (n - 1) / n, the nccl-tests convention: what each
link carries in a ring all-reduce, comparable across rank counts). On one NVLink host, H100/H200
reach a few hundred GB/s of bus bandwidth at >= 256 MB; a figure far below what the interconnect
should give (e.g. InfiniBand NDR ~40-50 GB/s per NIC) means a network or NCCL set-up problem.
"""

import argparse
import os
import time

import torch
import torch.distributed as dist

from common import print_header


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes-mb", default="1,16,64,256,1024")
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--cpu", action="store_true", help="gloo on the CPU (smoke test)")
    args = parser.parse_args()
    if "RANK" not in os.environ:
        raise SystemExit("run under torchrun, e.g. torchrun --nproc_per_node=2 bench/allreduce_check.py")
    use_cuda = torch.cuda.is_available() and not args.cpu
    local_rank = int(os.environ["LOCAL_RANK"])
    if use_cuda:
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
        dist.init_process_group("nccl", device_id=device)
    else:
        device = torch.device("cpu")
        dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    dtype = getattr(torch, args.dtype)
    print_header(device)
    if rank == 0:
        print(f"{world} ranks; backend {dist.get_backend()}; NCCL_NVLS_ENABLE={os.environ.get('NCCL_NVLS_ENABLE')}")
        print(f"{'size MB':>8} {'check':>5} {'time ms':>9} {'algbw GB/s':>10} {'busbw GB/s':>10}")
    failed = False
    for size_mb in (float(s) for s in args.sizes_mb.split(",")):
        numel = int(size_mb * 2**20) // torch.tensor([], dtype=dtype).element_size()
        x = torch.full((numel,), float(rank + 1), dtype=dtype, device=device)
        dist.all_reduce(x)
        expected = world * (world + 1) / 2
        ok = bool((x == expected).all().item())
        ok_all = torch.tensor([0.0 if ok else 1.0], device=device)
        dist.all_reduce(ok_all)
        ok = ok_all.item() == 0
        failed |= not ok
        for _ in range(args.warmup):
            dist.all_reduce(x)
        times = []
        for _ in range(args.iters):
            if use_cuda:
                torch.cuda.synchronize(device)
            dist.barrier()
            t0 = time.perf_counter()
            dist.all_reduce(x)
            if use_cuda:
                torch.cuda.synchronize(device)
            times.append(time.perf_counter() - t0)
        t = sorted(times)[len(times) // 2]
        t_max = torch.tensor([t], device=device)
        dist.all_reduce(t_max, op=dist.ReduceOp.MAX)  # the slowest rank decides
        t = t_max.item()
        nbytes = numel * x.element_size()
        algbw = nbytes / t / 1e9
        busbw = algbw * 2 * (world - 1) / world
        if rank == 0:
            print(f"{size_mb:8.0f} {'ok' if ok else 'FAIL':>5} {t * 1e3:9.3f} {algbw:10.1f} {busbw:10.1f}", flush=True)
    dist.destroy_process_group()
    if failed:
        raise SystemExit("all-reduce returned a wrong sum")


if __name__ == "__main__":
    main()
