"""kill -9 at random points of a demo run that checkpoints every step, resuming after each kill:
every resume must continue exactly (CPU, fp32: the logged losses bit-identical to an uninterrupted
run's, step for step).

    python bench/kill_resume.py [--kills 20] [--steps 80] [--seed 0] [--out DIR]

The kills land after `--kills` distinct random steps of the first three quarters (in order), each a random 0-2 s after that
step's loss is logged, so they fall in steps, in checkpoint writes (most of a step here), in
prunes (keep_last=1) and in start-up; a kill can land a few steps past its target, so the run is
several times longer than the number of kills. Prints one line per kill and a summary; exits 1 on
any mismatch or when fewer than `--kills` kills landed before the run's end.
"""

import argparse
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from common import ROOT, print_header
from gpu_pretrain_check import read_metrics

from training import checkpoint as ckpt


def losses(run: Path) -> dict[int, float]:
    """The logged loss of each step; none before the run's first log."""
    if not (run / "metrics.jsonl").exists():
        return {}
    return {r["step"]: r["train/loss"] for r in read_metrics(run)}


def logged_since(run: Path, start: float, step: int) -> bool:
    """Whether this process (it rewrites metrics.jsonl when it resumes) has logged `step` or later."""
    path = run / "metrics.jsonl"
    return path.exists() and path.stat().st_mtime > start and max(losses(run), default=0) >= step


def command(data: Path, run: Path, steps: int, resume: bool) -> list[str]:
    where = f"resume_from={run}" if resume else f"checkpoint_path={run}"
    return [sys.executable, str(ROOT / "pretrain.py"), "--config-name", "cfg_demo", f"data.path={data}", where,
            f"max_steps={steps}", "global_batch_size=512", "log_interval=1", "checkpoint_every_steps=1",
            "keep_last=1", "lr_warmup_steps=5"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--steps", type=int, default=80)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None, help="work folder (default: a temporary one)")
    args = parser.parse_args()
    last_target = args.steps * 3 // 4  # the last quarter left for kills that land past their target
    if args.kills < 1 or args.kills >= last_target:
        parser.error(f"--kills must be at least 1 and --steps must exceed 4/3 of it (got --kills {args.kills} "
                     f"--steps {args.steps})")
    print_header(torch.device("cpu"))
    rng = random.Random(args.seed)
    out = Path(args.out or tempfile.mkdtemp(prefix="kill_resume_"))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "WANDB_MODE": "disabled"}
    quiet = dict(cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    subprocess.run([sys.executable, "-m", "data_io.demo", "--out", str(out / "data"), "--train-size", "6000",
                    "--heldout-size", "10", "--epochs", "1"], check=True, **quiet)
    data = out / "data" / "sampled"

    started = time.time()
    subprocess.run(command(data, out / "reference", args.steps, resume=False), check=True, **quiet)
    reference = losses(out / "reference")
    print(f"reference: {len(reference)} steps in {time.time() - started:.0f} s", flush=True)

    run = out / "killed"
    kills = 0
    for target in sorted(rng.sample(range(1, last_target), args.kills)):
        delay = rng.uniform(0.0, 2.0)
        resume = bool(run.exists() and ckpt.complete_checkpoints(run))
        if not resume:  # killed before its first checkpoint: nothing to resume, start again
            shutil.rmtree(run, ignore_errors=True)
        start = time.time()
        proc = subprocess.Popen(command(data, run, args.steps, resume), **quiet)
        while proc.poll() is None and not logged_since(run, start, target):
            time.sleep(0.005)
        time.sleep(delay)
        if proc.poll() is not None:
            print(f"kill {kills + 1}: the run finished before the kill point; stopping here")
            break
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        kills += 1
        complete = ckpt.complete_checkpoints(run)
        at = ckpt.read_trainer_state(complete[-1])["step"] if complete else None
        print(f"kill {kills}: after step {max(losses(run), default=0)} (+{delay:.2f} s); "
              f"latest complete checkpoint: step {at}", flush=True)
    subprocess.run(command(data, run, args.steps, resume=True), check=True, **quiet)
    resumed = losses(run)
    mismatched = [s for s in reference if resumed.get(s) != reference[s]]
    print(f"{kills} kills; steps {len(resumed)}/{len(reference)} logged; "
          f"{'every step bit-identical to the uninterrupted run' if not mismatched else f'MISMATCH at steps {mismatched}'}")
    if kills < args.kills:
        print(f"only {kills} of {args.kills} kills landed before the run's end; raise --steps")
    sys.exit(1 if mismatched or set(resumed) != set(reference) or kills < args.kills else 0)


if __name__ == "__main__":
    main()
