"""Distributed checkpoints (torch.distributed.checkpoint) of model, optimizer (with its EMA),
training position and RNG, under <run_dir>/checkpoints/<name>/: `fsdp2_epoch_{N}` at the end of
epoch N (1-based, the reference's name), `step_{S}` after step S.

A checkpoint counts as complete only once `COMPLETE` is written, after every rank has finished
writing; a crash mid-save leaves an incomplete directory that resume ignores and the next save
of the same name replaces. Step checkpoints beyond `keep_last` are pruned; epoch ones are kept.
The reference's run directories (fsdp2_epoch_N directly in the run directory, its own module
names in the keys; training/reference_run.py) load too: their weights and optimizer state, but
no training position.
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

from training import reference_run

MARKER = "COMPLETE"
TRAINER_STATE = "trainer_state.json"
_NAME = re.compile(r"^(step|fsdp2_epoch)_(\d+)$")


def checkpoint_dir(run_dir: str | Path) -> Path:
    return Path(run_dir) / "checkpoints"


def epoch_checkpoint_name(epoch: int) -> str:
    """The checkpoint at the end of epoch `epoch` (1-based)."""
    return f"fsdp2_epoch_{epoch}"


def complete_checkpoints(run_dir: str | Path) -> list[Path]:
    """Complete checkpoints, oldest first (ordered by global step; a reference run's by epoch)."""
    found = []
    for path in checkpoint_dir(run_dir).glob("*"):
        if _NAME.match(path.name) and (path / MARKER).exists():
            found.append((json.loads((path / TRAINER_STATE).read_text())["step"], path.name, path))
    return [path for _, _, path in sorted(found)] + reference_run.epoch_checkpoints(run_dir)


def find_checkpoint(run_dir: str | Path, epoch: int | None = None, step: int | None = None) -> Path:
    """The latest complete checkpoint, or the one of a given epoch (its end) or step."""
    done = complete_checkpoints(run_dir)
    if epoch is not None:
        done = [p for p in done if p.name == epoch_checkpoint_name(epoch)]
    elif step is not None:
        done = [p for p in done if has_trainer_state(p) and read_trainer_state(p)["step"] == step]
    if not done:
        which = f"epoch {epoch}" if epoch is not None else f"step {step}" if step is not None else "any"
        available = [p.name for p in complete_checkpoints(run_dir)]
        raise FileNotFoundError(
            f"no complete checkpoint ({which}) under {checkpoint_dir(run_dir)}; complete ones: {available or 'none'}"
        )
    return done[-1]


def has_trainer_state(path: Path) -> bool:
    """Whether the checkpoint records its training position (ours do; the reference's do not)."""
    return (path / TRAINER_STATE).exists()


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


def _load(state: dict, reader) -> None:
    """dcp.load, converting plain tensors saved in another dtype (the reference keeps zL_init in
    bfloat16) through a temporary of the saved dtype."""
    saved = reader.read_metadata().state_dict_metadata
    converted = {}
    for key, tensor in state.items():
        meta = saved.get(key)
        if meta is not None and type(tensor) is torch.Tensor and meta.properties.dtype != tensor.dtype:
            converted[key] = tensor
            state[key] = torch.empty_like(tensor, dtype=meta.properties.dtype)
    with warnings.catch_warnings():  # a single-process load is the intent when no group exists
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        dcp.load(state, storage_reader=reader, no_dist=not dist.is_initialized())
    with torch.no_grad():
        for key, target in converted.items():
            target.copy_(state[key])
            state[key] = target


def load_checkpoint(path: Path, model, optimizer) -> None:
    """Collective. Restores model and optimizer (moments, step counts, EMA) in place. The
    optimizer's hyperparameters stay those it was built with (the run's config), as the learning
    rate does: the checkpoint would otherwise bring back the ones it was saved with."""
    optimizer.init_state()
    hyperparameters = [{k: v for k, v in group.items() if k != "params"} for group in optimizer.param_groups]
    model_sd, optim_sd = get_state_dict(model, optimizer)
    key = _key_naming(path, model)
    # flat DCP keys -> the tensors of our state dicts, filled in place
    state = {f"model.{key(name)}": tensor for name, tensor in model_sd.items()}
    state.update({f"optim.state.{key(name)}.{field}": tensor
                  for name, fields in optim_sd["state"].items() for field, tensor in fields.items()})
    _load(state, dcp.FileSystemReader(str(path)))
    set_state_dict(model, optimizer, model_state_dict=model_sd, optim_state_dict=optim_sd)
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


def _key_naming(path: Path, model):
    """Our parameter name -> its name in this checkpoint's keys (a reference checkpoint's depend on
    the model's net)."""
    if reference_run.is_reference_checkpoint(path):
        return lambda name: reference_run.reference_fqn(name, model.arch.net)
    return lambda name: name


def load_model_weights(path: Path, model, use_ema: bool = True) -> None:
    """Single process, no optimizer: the full model weights (EMA when present and asked for)."""
    reader = dcp.FileSystemReader(str(path))
    keys = reader.read_metadata().state_dict_metadata
    key = _key_naming(path, model)
    state = {}
    for name, tensor in model.state_dict().items():
        ema_key = f"optim.state.{key(name)}.param_ema"
        state[ema_key if use_ema and ema_key in keys else f"model.{key(name)}"] = tensor
    _load(state, reader)


def prune_step_checkpoints(run_dir: str | Path, keep_last: int) -> None:
    steps = [p for p in complete_checkpoints(run_dir) if p.name.startswith("step_")]
    for path in steps[:-keep_last]:
        shutil.rmtree(path, ignore_errors=True)
