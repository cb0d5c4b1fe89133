"""Distributed checkpoints (torch.distributed.checkpoint) of model, optimizer (with its EMA),
training position and RNG, under <run_dir>/checkpoints/<name>/.

A checkpoint counts as complete only once `COMPLETE` is written, after every rank has finished
writing; a crash mid-save leaves an incomplete directory that resume ignores and the next save
of the same name replaces. Step checkpoints beyond `keep_last` are pruned; epoch ones are kept.
"""

import json
import re
import shutil
import warnings
from pathlib import Path

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

MARKER = "COMPLETE"
TRAINER_STATE = "trainer_state.json"
_NAME = re.compile(r"^(step|epoch)_(\d+)$")


def checkpoint_dir(run_dir: str | Path) -> Path:
    return Path(run_dir) / "checkpoints"


def complete_checkpoints(run_dir: str | Path) -> list[Path]:
    """Complete checkpoints, oldest first (ordered by global step)."""
    found = []
    for path in checkpoint_dir(run_dir).glob("*"):
        if _NAME.match(path.name) and (path / MARKER).exists():
            found.append((json.loads((path / TRAINER_STATE).read_text())["step"], path.name, path))
    return [path for _, _, path in sorted(found)]


def find_checkpoint(run_dir: str | Path, epoch: int | None = None, step: int | None = None) -> Path:
    """The latest complete checkpoint, or the one of a given epoch (its end) or step."""
    done = complete_checkpoints(run_dir)
    if epoch is not None:
        done = [p for p in done if p.name == f"epoch_{epoch}"]
    elif step is not None:
        done = [p for p in done if json.loads((p / TRAINER_STATE).read_text())["step"] == step]
    if not done:
        which = f"epoch {epoch}" if epoch is not None else f"step {step}" if step is not None else "any"
        available = [p.name for p in complete_checkpoints(run_dir)]
        raise FileNotFoundError(
            f"no complete checkpoint ({which}) under {checkpoint_dir(run_dir)}; complete ones: {available or 'none'}"
        )
    return done[-1]


def read_trainer_state(path: Path) -> dict:
    return json.loads((path / TRAINER_STATE).read_text())


def save_checkpoint(path: Path, model, optimizer, trainer_state: dict) -> None:
    """Collective: every rank calls it. trainer_state is rank 0's JSON-able position."""
    rank = dist.get_rank()
    if rank == 0 and path.exists():
        shutil.rmtree(path)  # an incomplete leftover of the same name
    dist.barrier()
    model_sd, optim_sd = get_state_dict(model, optimizer)
    dcp.save({"model": model_sd, "optim": optim_sd}, checkpoint_id=str(path))
    torch.save({"torch": torch.get_rng_state()}, path / f"rng_rank{rank}.pt")
    dist.barrier()
    if rank == 0:
        (path / TRAINER_STATE).write_text(json.dumps(trainer_state, indent=1))
        (path / MARKER).write_text("ok\n")
    dist.barrier()


def load_checkpoint(path: Path, model, optimizer) -> None:
    """Collective. Restores model and optimizer (moments, step counts, EMA) in place. The
    optimizer's hyperparameters stay those it was built with (the run's config), as the learning
    rate does: the checkpoint would otherwise bring back the ones it was saved with."""
    optimizer.init_state()
    hyperparameters = [{k: v for k, v in group.items() if k != "params"} for group in optimizer.param_groups]
    model_sd, optim_sd = get_state_dict(model, optimizer)
    state = {"model": model_sd, "optim": optim_sd}
    dcp.load(state, checkpoint_id=str(path))
    set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"])
    for group, kept in zip(optimizer.param_groups, hyperparameters):
        group.update(kept)
    rng = path / f"rng_rank{dist.get_rank()}.pt"
    if rng.exists():
        torch.set_rng_state(torch.load(rng)["torch"])


def load_ema_weights(path: Path, model, optimizer) -> None:
    """Collective. Loads the checkpoint, then makes its EMA the model's weights; the caller then
    starts a fresh optimizer (SFT from EMA weights)."""
    load_checkpoint(path, model, optimizer)
    optimizer.swap_ema()


def load_model_weights(path: Path, model, use_ema: bool = True) -> None:
    """Single process, no optimizer: the full model weights (EMA when present and asked for)."""
    reader = dcp.FileSystemReader(str(path))
    metadata = reader.read_metadata()
    keys = metadata.state_dict_metadata
    model_sd = model.state_dict()
    state = {}
    for name, tensor in model_sd.items():
        ema_key = f"optim.state.{name}.param_ema"
        state[ema_key if use_ema and ema_key in keys else f"model.{name}"] = torch.empty_like(tensor)
    with warnings.catch_warnings():  # single-process load is the intent here, not a mistake
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        dcp.load(state, storage_reader=reader, no_dist=True)
    with torch.no_grad():
        for name, tensor in model_sd.items():
            ema_key = f"optim.state.{name}.param_ema"
            tensor.copy_(state[ema_key] if ema_key in state else state[f"model.{name}"])


def prune_step_checkpoints(run_dir: str | Path, keep_last: int) -> None:
    steps = [p for p in complete_checkpoints(run_dir) if p.name.startswith("step_")]
    for path in steps[:-keep_last]:
        shutil.rmtree(path, ignore_errors=True)
