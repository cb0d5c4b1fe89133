"""kill -9 at random points of a demo run that checkpoints every step, resuming after each kill:
every resume must continue exactly (CPU, fp32: the logged losses bit-identical to an uninterrupted
run's, step for step).

    python bench/kill_resume.py [--kills 20] [--steps 30] [--seed 0] [--out DIR]

Each kill lands a random time after a random step's loss is logged, so kills fall in steps, in
checkpoint writes (most of a step here) and in prunes (keep_last=1). Prints one line per kill
and a summary; exits 1 on any mismatch.
"""

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from training import checkpoint as ckpt  # noqa: E402


def losses(run: Path) -> dict[int, float]:
    path = run / "metrics.jsonl"
    if not path.exists():
        return {}
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return {r["step"]: r["train/loss"] for r in rows}


def command(data: Path, run: Path, steps: int, resume: bool) -> list[str]:
    where = f"resume_from={run}" if resume else f"checkpoint_path={run}"
    return [sys.executable, str(ROOT / "pretrain.py"), "--config-name", "cfg_demo", f"data.path={data}", where,
            f"max_steps={steps}", "global_batch_size=512", "log_interval=1", "checkpoint_every_steps=1",
            "keep_last=1", "lr_warmup_steps=5"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None, help="work folder (default: a temporary one)")
    args = parser.parse_args()
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
    while kills < args.kills:
        done = losses(run)
        last = max(done, default=0)
        if last >= args.steps - 1:
            break  # too close to the end for another kill inside the run
        target = rng.randint(last, args.steps - 1)  # kill after this step's loss is logged ...
        delay = rng.uniform(0.0, 1.0)  # ... and a random part of a second later
        resume = bool(run.exists() and ckpt.complete_checkpoints(run))
        if not resume:  # killed before its first checkpoint: nothing to resume, start again
            shutil.rmtree(run, ignore_errors=True)
        proc = subprocess.Popen(command(data, run, args.steps, resume), **quiet)
        while proc.poll() is None and max(losses(run), default=0) < target:
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
    sys.exit(1 if mismatched or set(resumed) != set(reference) else 0)


if __name__ == "__main__":
    main()
