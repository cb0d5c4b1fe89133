"""The CPU demo's step time alone and beside one busy process on the same cores: with CPU threads
chosen by training/distributed.py (set_cpu_threads) the busy process should cost about a fair
share (at most 3x), not the collapse of spinning threads. The same pair with HRM_CPU_THREADS set
to the core count shows what a thread per core costs.

    python bench/busy_neighbour.py [--cores 0,1] [--steps 40] [--out DIR]

Both the run and the busy process are pinned to --cores. Step time: the mean (and median) over
logged steps (the first 5 left out: start-up) of the wall time between consecutive metrics lines;
the ratio is of the means. The load average before each pair is printed: on a shared machine other
work is a second neighbour.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from common import ROOT, print_header
BUSY = "while True: pass"


def step_times(run: Path, proc: subprocess.Popen) -> list[float]:
    """Seconds between consecutive logged steps, timed as the lines appear."""
    path, seen, stamps = run / "metrics.jsonl", 0, []
    while proc.poll() is None:
        if path.exists():
            lines = path.read_text().count("\n")
            if lines > seen:
                stamps += [time.perf_counter()] * (lines - seen)
                seen = lines
        time.sleep(0.002)
    return [b - a for a, b in zip(stamps, stamps[1:])][5:]


def run_demo(data: Path, run: Path, steps: int, cores: set[int], env: dict, busy: bool) -> list[float]:
    neighbour = None
    if busy:
        neighbour = subprocess.Popen([sys.executable, "-c", BUSY], preexec_fn=lambda: os.sched_setaffinity(0, cores))
    try:
        proc = subprocess.Popen([sys.executable, str(ROOT / "pretrain.py"), "--config-name", "cfg_demo",
                                 f"data.path={data}", f"checkpoint_path={run}", f"max_steps={steps}",
                                 "global_batch_size=2048", "log_interval=1", "checkpoint_every_steps=null"],
                                cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                preexec_fn=lambda: os.sched_setaffinity(0, cores))
        times = step_times(run, proc)
        if proc.wait() != 0:
            raise SystemExit(f"the demo run failed; run it by hand: checkpoint_path={run}")
    finally:
        if neighbour is not None:
            neighbour.kill()
            neighbour.wait()
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cores", default=None, help="comma list of cores (default: all this process may use)")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--out", default=None, help="work folder (default: a temporary one)")
    args = parser.parse_args()
    print_header(torch.device("cpu"))
    cores = {int(c) for c in args.cores.split(",")} if args.cores else os.sched_getaffinity(0)
    out = Path(args.out or tempfile.mkdtemp(prefix="busy_neighbour_"))
    base_env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "HRM_CPU_THREADS")}
    base_env.update(PYTHONPATH=str(ROOT), WANDB_MODE="disabled")
    subprocess.run([sys.executable, "-m", "data_io.demo", "--out", str(out / "data"), "--train-size", "20000",
                    "--heldout-size", "10", "--epochs", "1"], cwd=ROOT, env=base_env, check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    print(f"cores {sorted(cores)}, {args.steps} steps of the CPU demo (global_batch_size=2048)")
    print("| threads | load avg | alone s/step mean (median) | beside a busy process s/step mean (median) | ratio of means |\n"
          "|---|---|---|---|---|")
    for label, extra in (("chosen (default)", {}), (f"{len(cores)} (HRM_CPU_THREADS)", {"HRM_CPU_THREADS": str(len(cores))})):
        env = {**base_env, **extra}
        load = os.getloadavg()[0]
        alone = run_demo(out / "data" / "sampled", out / f"alone{len(extra)}", args.steps, cores, env, busy=False)
        busy = run_demo(out / "data" / "sampled", out / f"busy{len(extra)}", args.steps, cores, env, busy=True)
        print(f"| {label} | {load:.1f} | {statistics.mean(alone):.3f} ({statistics.median(alone):.3f}) | "
              f"{statistics.mean(busy):.3f} ({statistics.median(busy):.3f}) | "
              f"{statistics.mean(busy) / statistics.mean(alone):.2f}x |", flush=True)


if __name__ == "__main__":
    main()
