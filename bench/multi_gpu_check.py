"""Training on several GPUs against one: per-step loss parity, and resume across world sizes.

    python3 bench/multi_gpu_check.py                    # 2 GPUs against 1, HRM B, 20 steps
    python3 bench/multi_gpu_check.py --size L --nproc 2 --steps 20 --resume-at 10
    python3 bench/multi_gpu_check.py --cpu              # gloo, 2 processes, a tiny model (smoke run)

Every sample of the synthetic dataset (gpu_pretrain_check.py's) has the same packed length, so a
global step holds the same samples at any world size, and the same seed and global batch give
the same training problem. Four pretrain.py runs (per-stack FSDP2 units, compiled on the GPU):

  N GPUs, steps 1..S           checkpoints at --resume-at and S
  1 GPU,  steps 1..S           the reference trajectory
  1 GPU,  resumed from the N-GPU run at --resume-at        (saved on N, continued on 1)
  N GPUs, resumed from the 1-GPU run at --resume-at        (saved on 1, continued on N)

It prints the per-step losses side by side with their relative differences. The first step after
a resume is computed from the checkpoint's weights on the batch the uninterrupted run saw at that
step, so it differs from that run's only by the summation order of another world size; later
steps carry that rounding forward like any two world sizes do.
"""

import argparse
import os
from pathlib import Path

import torch

from common import print_header
from gpu_pretrain_check import finish_pretrain, pretrain_command, read_metrics, run_pretrain, write_synthetic_dataset


def losses(run_dir: Path) -> dict[int, float]:
    return {row["step"]: row["train/loss"] for row in read_metrics(run_dir)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="/tmp/multi_gpu_check")
    parser.add_argument("--nproc", type=int, default=2, help="world size compared with one GPU")
    parser.add_argument("--size", default="B")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--resume-at", type=int, default=10, help="the step whose checkpoint the resumed runs start from")
    parser.add_argument("--batch", type=int, default=32768, help="global_batch_size (tokens)")
    parser.add_argument("--sample-length", type=int, default=1024, help="packed tokens of every sample")
    parser.add_argument("--tolerance", type=float, default=2e-3, help="relative loss difference reported as within")
    parser.add_argument("--cpu", action="store_true", help="gloo on the CPU, size tiny, short samples (smoke run)")
    parser.add_argument("extra", nargs="*", help="more hydra overrides for every pretrain.py run")
    args = parser.parse_args()
    if args.cpu:
        args.size, args.batch, args.sample_length = "tiny", 512, 64
    print_header(torch.device("cpu" if args.cpu else "cuda"))
    out, n, k = Path(args.out), args.nproc, args.resume_at
    data = write_synthetic_dataset(out / "data", int(args.batch * args.steps / args.sample_length * 1.1) + 8,
                                   context=args.sample_length, vocab=512 if args.cpu else 32000,
                                   fixed_length=args.sample_length)
    common = ["log_interval=1", f"checkpoint_every_steps={k}", f"keep_last={args.steps}", *args.extra]
    runs = {name: out / name for name in (f"{n}gpu", "1gpu", f"{n}to1", f"1to{n}")}

    def command(run: str, nproc: int, resume_from: str | None = None) -> list[str]:
        resume = [f"resume_from={runs[resume_from]}", f"resume_step={k}"] if resume_from else []
        return pretrain_command(data, runs[run], args.size, args.batch, args.steps, nproc, args.cpu, [*common, *resume])

    for run_dir in runs.values():
        if run_dir.exists():
            raise SystemExit(f"{run_dir} exists: pass another --out or remove it")
    run_pretrain(command(f"{n}gpu", n))
    # The two one-GPU runs are independent: on a machine with N >= 2 GPUs they run side by side.
    side_by_side = not args.cpu and torch.cuda.device_count() >= 2
    first = run_pretrain(command("1gpu", 1), env={"CUDA_VISIBLE_DEVICES": "0"} if side_by_side else None,
                         wait=not side_by_side)
    second = run_pretrain(command(f"{n}to1", 1, resume_from=f"{n}gpu"),
                          env={"CUDA_VISIBLE_DEVICES": "1"} if side_by_side else None, wait=not side_by_side)
    if side_by_side:
        finish_pretrain(first), finish_pretrain(second)
    run_pretrain(command(f"1to{n}", n, resume_from="1gpu"))

    loss = {name: losses(run_dir) for name, run_dir in runs.items()}
    rel = lambda a, b: abs(a - b) / abs(b)  # noqa: E731
    print(f"\n{'step':>4} {'1 GPU':>9} {f'{n} GPUs':>9} {'rel diff':>9} {f'{n}->1':>9} {f'vs {n}':>9} "
          f"{f'1->{n}':>9} {'vs 1':>9}")
    for step in range(1, args.steps + 1):
        one, many = loss["1gpu"][step], loss[f"{n}gpu"][step]
        row = f"{step:4d} {one:9.5f} {many:9.5f} {rel(many, one):9.2e}"
        if step > k:
            down, up = loss[f"{n}to1"][step], loss[f"1to{n}"][step]
            row += f" {down:9.5f} {rel(down, many):9.2e} {up:9.5f} {rel(up, one):9.2e}"
        print(row)
    worst = max(rel(loss[f"{n}gpu"][s], loss["1gpu"][s]) for s in range(1, args.steps + 1))
    after = range(k + 1, args.steps + 1)
    resumed = max(max(rel(loss[f"{n}to1"][s], loss[f"{n}gpu"][s]), rel(loss[f"1to{n}"][s], loss["1gpu"][s]))
                  for s in after)
    first_after = max(rel(loss[f"{n}to1"][k + 1], loss[f"{n}gpu"][k + 1]), rel(loss[f"1to{n}"][k + 1], loss["1gpu"][k + 1]))
    verdict = lambda x: "within" if x <= args.tolerance else "OVER"  # noqa: E731
    print(f"\n{n} GPUs against 1, steps 1-{args.steps}: max relative loss difference {worst:.2e} "
          f"({verdict(worst)} {args.tolerance:g})")
    print(f"resumed across world sizes, steps {k + 1}-{args.steps}: max {resumed:.2e} ({verdict(resumed)} "
          f"{args.tolerance:g}); first step after the resume: {first_after:.2e}")


if __name__ == "__main__":
    os.environ.setdefault("NCCL_NVLS_ENABLE", "0")
    main()
