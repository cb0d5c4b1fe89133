"""Process group set-up: torchrun (NCCL on GPUs, gloo on CPU) or a single process.

A single process still joins a one-member group, so training always runs the same FSDP2 path.
"""

import os
import socket
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Dist:
    rank: int
    local_rank: int
    world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# Hidden sizes per CPU thread worth spreading a matmul over: below it, each thread's share of a
# tiny op is shorter than the threads' wake-up and spin-wait, and a busy neighbouring process,
# taking a core the threads spin for, stretches every op many times over.
HIDDEN_PER_CPU_THREAD = 512


def set_cpu_threads(hidden_size: int) -> int:
    """Set and return torch's CPU thread count: HRM_CPU_THREADS when given, else OMP_NUM_THREADS
    when given (torch reads it itself; torchrun sets 1 per process), else one per
    HIDDEN_PER_CPU_THREAD of hidden size, at least 1 and at most the cores this process may run on
    (os.sched_getaffinity: a container's or taskset's share, not the machine's)."""
    if os.environ.get("HRM_CPU_THREADS"):
        value = os.environ["HRM_CPU_THREADS"]
        if not value.isdigit() or int(value) < 1:
            raise SystemExit(f"HRM_CPU_THREADS={value!r}: give a positive whole number of CPU threads, or unset it")
        threads = int(value)
    elif os.environ.get("OMP_NUM_THREADS"):
        threads = torch.get_num_threads()
    else:
        threads = max(1, min(len(os.sched_getaffinity(0)), hidden_size // HIDDEN_PER_CPU_THREAD))
    torch.set_num_threads(threads)
    return threads


def init_distributed() -> Dist:
    if "RANK" not in os.environ:  # plain `python pretrain.py`
        os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1",
                          MASTER_ADDR="127.0.0.1", MASTER_PORT=str(_free_port()))
    local_rank = int(os.environ["LOCAL_RANK"])
    if torch.cuda.is_available():
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
        backend = "nccl"
    else:
        device = torch.device("cpu")
        backend = "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend=backend, device_id=device if backend == "nccl" else None)
    return Dist(dist.get_rank(), local_rank, dist.get_world_size(), device)


def broadcast_object(obj, src: int = 0):
    """rank `src`'s value of obj on every rank."""
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t
