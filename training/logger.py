"""Metrics sinks on rank 0: `metrics.jsonl` in the run directory (always) and Weights & Biases.

W&B never prompts: `auto` logs online when an API key is configured, otherwise offline into the
run directory (sync later with `wandb sync`), and says so in one line.
"""

import json
import netrc
import os
from pathlib import Path

METRICS_FILE = "metrics.jsonl"


def wandb_logged_in() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        return netrc.netrc().authenticators("api.wandb.ai") is not None
    except (FileNotFoundError, netrc.NetrcParseError):
        return False


def resolve_wandb_mode(requested: str) -> tuple[str, str | None]:
    """(mode, note): the mode to use and a one-line explanation when it differs from online."""
    env_mode = os.environ.get("WANDB_MODE")
    if requested == "auto" and env_mode in ("disabled", "offline", "online"):
        requested = env_mode
    if requested == "auto":
        if wandb_logged_in():
            return "online", None
        return "offline", "W&B: no API key found (wandb login / WANDB_API_KEY); logging offline into the run directory"
    if requested == "online" and not wandb_logged_in():
        return "offline", "W&B: wandb_mode=online but no API key found; logging offline into the run directory instead"
    if requested == "disabled":
        return "disabled", "W&B: disabled; metrics go to metrics.jsonl only"
    return requested, None


class MetricsLogger:
    def __init__(self, run_dir: Path, project: str, run_name: str, config: dict, wandb_mode: str, resume: bool):
        self.path = run_dir / METRICS_FILE
        self.wandb_run = None
        mode, note = resolve_wandb_mode(wandb_mode)
        if note:
            print(note, flush=True)
        if mode != "disabled":
            import wandb

            self.wandb_run = wandb.init(project=project, name=run_name, id=run_name, config=config, mode=mode,
                                        dir=str(run_dir), resume="allow" if resume else None)

    def truncate_after(self, step: int) -> None:
        """On resume, drop lines a killed run logged after the checkpoint it resumes from."""
        if self.path.exists():
            kept = [line for line in self.path.read_text().splitlines() if json.loads(line)["step"] <= step]
            self.path.write_text("".join(line + "\n" for line in kept))

    def log(self, step: int, metrics: dict) -> None:
        with self.path.open("a") as f:
            f.write(json.dumps({"step": step, **metrics}) + "\n")
        if self.wandb_run is not None:
            self.wandb_run.log(metrics, step=step)

    def close(self) -> None:
        if self.wandb_run is not None:
            self.wandb_run.finish()
