"""Distributed checkpoints (torch.distributed.checkpoint) of model, optimizer (with its EMA),
training position and RNG, under <run_dir>/checkpoints/<name>/: `fsdp2_epoch_{N}` at the end of
epoch N (1-based, the reference's name), `step_{S}` after step S.

Writing is atomic: a checkpoint is written into a hidden `.<name>.partial` folder, `COMPLETE` is
written last, and the folder is then renamed to <name>; pruning removes `COMPLETE` first. So a
folder named like a checkpoint that holds `COMPLETE` is whole, whenever the process was killed,
and the checkpoint being replaced stays whole until the new one is. Step checkpoints beyond
`keep_last` are pruned; epoch ones are kept. The reference's run directories (fsdp2_epoch_N
directly in the run directory, its own module names in the keys; training/reference_run.py) load
too: their weights and optimizer state, but no training position.

Reading executes nothing: a DCP checkpoint's `.metadata` is a pickle, and checkpoints are shared
and downloaded, so it is read by an unpickler that builds only DCP's own metadata classes (and the
torch types they hold), and every tensor and byte item through `torch.load(weights_only=True)`.
"""

import contextlib
import errno
import io
import json
import os
import pickle
import re
import shutil
import warnings
from pathlib import Path

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint._traverse import set_element
from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner
from torch.distributed.checkpoint.metadata import StorageMeta
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

from training import reference_run

MARKER = "COMPLETE"
TRAINER_STATE = "trainer_state.json"
PARTIAL = ".partial"
_NAME = re.compile(r"^(step|fsdp2_epoch)_(\d+)$")


class CheckpointError(ValueError):
    """A checkpoint that cannot or must not be read or written; the message names the file and the
    reason."""


def damaged(folder: Path, problem: str) -> CheckpointError:
    """The error for a checkpoint folder whose files are missing or cut short (a partial copy)."""
    return CheckpointError(f"damaged checkpoint {folder}: {problem}; copy it again, or pick another with "
                           "resume_epoch=/resume_step= (training) or ckpt_epoch (evaluation, generation, export)")


# Writes the storage refused, named as such (torch.save alone would report a full disk as
# "unexpected pos", and DCP wraps its writers' errors).
_STORAGE_ERRORS = {errno.ENOSPC: "the disk is full", errno.EDQUOT: "the disk quota is exceeded",
                   errno.EROFS: "the file system is read-only", errno.EACCES: "it is not writable",
                   errno.EPERM: "it is not writable", errno.EFBIG: "the file size limit (ulimit -f) is reached"}


def storage_failure(err: BaseException, folder: Path | None = None) -> str | None:
    """'<file>: <why>' for a write the storage refused (disk full, quota, read-only, permissions,
    size limit), found behind the exceptions that wrap it, or, for an error that names no cause (a
    tensor's torch.save reports ENOSPC as "unexpected pos"), a nearly full disk under `folder`;
    None for any other error."""
    pending, unexplained_write = [err], False
    while pending:
        error = pending.pop()
        if isinstance(error, OSError) and error.errno in _STORAGE_ERRORS:
            return f"{error.filename or 'a file'}: {_STORAGE_ERRORS[error.errno]} ({error.strerror})"
        unexplained_write |= "unexpected pos" in str(error)
        pending += [e for e in (error.__cause__, error.__context__) if e is not None]
        for failure in getattr(error, "failures", {}).values():  # DCP's CheckpointException: rank -> (error, trace)
            pending.append(failure[0] if isinstance(failure, tuple) else failure)
    if unexplained_write and folder is not None:
        try:
            free = shutil.disk_usage(folder).free
        except OSError:
            return None
        if free < 2**20:
            return f"{folder}: the disk is full ({free} bytes free)"
    return None


# ----------------------------------------------------------------------------------------------
# Reading without executing


# What a DCP `.metadata` pickle may name: DCP's metadata dataclasses and the torch and pathlib
# values inside them. Anything else (os.system, builtins.eval, ...) is refused, not built.
_METADATA_CLASSES = {
    "torch.distributed.checkpoint.metadata": {"Metadata", "MetadataIndex", "StorageMeta", "TensorProperties",
                                              "TensorStorageMetadata", "BytesStorageMetadata",
                                              "ChunkStorageMetadata", "_MEM_FORMAT_ENCODING"},
    "torch.distributed.checkpoint.filesystem": {"_StorageInfo"},
    "torch": {"Size"},
    "torch.serialization": {"_get_layout"},  # maps a layout's name to torch.strided etc.
    "pathlib": {"PosixPath", "WindowsPath", "PurePosixPath", "PureWindowsPath", "Path"},
    "collections": {"OrderedDict"},
}


class _MetadataUnpickler(pickle.Unpickler):
    def __init__(self, file, source: Path):
        super().__init__(file)
        self.source = source

    def find_class(self, module: str, name: str):
        if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
            return getattr(torch, name)
        if name in _METADATA_CLASSES.get(module, ()):
            return super().find_class(module, name)
        raise CheckpointError(f"{self.source}: refusing to load: it names {module}.{name}, which a checkpoint's "
                              "metadata never holds (a tampered or foreign file; loading it could run code)")


class SafeReader(dcp.FileSystemReader):
    """DCP's file reader with the metadata read by the allow-list unpickler, and every storage
    file checked to lie inside the checkpoint folder."""

    def read_metadata(self, *args, **kwargs):
        path = Path(self.path) / ".metadata"
        try:
            with open(path, "rb") as f:
                metadata = _MetadataUnpickler(f, path).load()
        except CheckpointError:
            raise
        except FileNotFoundError:
            raise damaged(path.parent, f"{path.name} is missing") from None
        except Exception as err:
            raise damaged(path.parent, f"{path.name} is unreadable ({err!r})") from None
        if type(metadata).__name__ != "Metadata" or not isinstance(getattr(metadata, "storage_data", None), dict):
            raise CheckpointError(f"{path}: not DCP checkpoint metadata (a {type(metadata).__name__})")
        for info in metadata.storage_data.values():
            relative = Path(getattr(info, "relative_path", ""))
            if relative.is_absolute() or len(relative.parts) != 1 or relative.name in ("", ".", ".."):
                raise CheckpointError(f"{path}: refusing to load: it points outside its folder ({str(relative)!r})")
        _check_storage_files(Path(self.path), metadata.storage_data.values())
        metadata.storage_meta = metadata.storage_meta or StorageMeta()
        metadata.storage_meta.load_id = self.load_id
        return metadata


def _check_storage_files(folder: Path, infos) -> None:
    """Every storage file the metadata points to is there, and long enough for its items (DCP
    itself would fail half-way through the load, with an EOFError or FileNotFoundError)."""
    needed: dict[str, int] = {}
    for info in infos:
        needed[info.relative_path] = max(needed.get(info.relative_path, 0), info.offset + info.length)
    for name, size in sorted(needed.items()):
        try:
            have = (folder / name).stat().st_size
        except FileNotFoundError:
            raise damaged(folder, f"{name} is missing") from None
        if have < size:
            raise damaged(folder, f"{name} is truncated ({have} bytes, its items need {size})")


class SafeLoadPlanner(DefaultLoadPlanner):
    """Non-tensor items (the optimizer's hyperparameters) are unpickled with weights_only=True;
    DCP's default planner would unpickle them unrestricted."""

    def load_bytes(self, read_item, value: io.BytesIO) -> None:
        try:
            loaded = torch.load(value, weights_only=True)
        except pickle.UnpicklingError as err:
            raise CheckpointError(f"checkpoint item {read_item.dest_index.fqn}: refusing to load ({err})") from None
        if self.flatten_state_dict:
            set_element(self.original_state_dict, self.mappings[read_item.dest_index.fqn], loaded)
        else:
            self.state_dict[read_item.dest_index.fqn] = loaded


def read_metadata(path: Path):
    """The checkpoint's DCP metadata, read safely (CheckpointError on anything suspicious)."""
    return SafeReader(str(path)).read_metadata()


# ----------------------------------------------------------------------------------------------
# Finding


def checkpoint_dir(run_dir: str | Path) -> Path:
    return Path(run_dir) / "checkpoints"


def epoch_checkpoint_name(epoch: int) -> str:
    """The checkpoint at the end of epoch `epoch` (1-based)."""
    return f"fsdp2_epoch_{epoch}"


def has_trainer_state(path: Path) -> bool:
    """Whether the checkpoint records its training position (ours do; the reference's do not)."""
    return (path / TRAINER_STATE).exists()


def read_trainer_state(path: Path) -> dict:
    file = path / TRAINER_STATE
    try:
        state = json.loads(file.read_text())
        int(state["step"])
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise damaged(path, f"{TRAINER_STATE} is unreadable ({err!r})") from None
    return state


def complete_checkpoints(run_dir: str | Path) -> list[Path]:
    """Complete checkpoints, oldest first (ordered by global step; a reference run's by epoch)."""
    found = []
    for path in checkpoint_dir(run_dir).glob("*"):
        if _NAME.match(path.name) and (path / MARKER).exists():
            try:
                found.append((read_trainer_state(path)["step"], path.name, path))
            except CheckpointError:
                if (path / MARKER).exists():  # else a prune (its marker goes first) took it meanwhile
                    raise
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


# ----------------------------------------------------------------------------------------------
# Writing


def _write_synced(path: Path, data: bytes) -> None:
    try:
        with open(path, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    except OSError as err:  # a failed write() names no file
        raise OSError(err.errno, err.strerror, str(path)) from None


def _sync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _remove(path: Path) -> None:
    """Delete a checkpoint folder, its marker first: a deletion cut short leaves no folder that
    looks complete."""
    (path / MARKER).unlink(missing_ok=True)
    shutil.rmtree(path, ignore_errors=True)


@contextlib.contextmanager
def _every_rank_agrees():
    """Runs this rank's own share of a save, then waits for the others as a barrier would; when the
    share failed on any rank, every rank raises (a failed one its own error, the others a
    CheckpointError naming it), instead of the others waiting at the next collective until the
    process group's timeout."""
    failure = None
    try:
        yield
    except Exception as err:
        failure = err
    failures = [None] * dist.get_world_size()
    dist.all_gather_object(failures, None if failure is None else f"{type(failure).__name__}: {failure}")
    if failure is not None:
        raise failure
    failed = {rank: message for rank, message in enumerate(failures) if message is not None}
    if failed:
        raise CheckpointError(f"rank {min(failed)} failed writing its part ({failed[min(failed)]})")


def save_checkpoint(path: Path, model, optimizer, trainer_state: dict) -> None:
    """Collective: every rank calls it. trainer_state is rank 0's JSON-able position. An existing
    checkpoint of the same name is replaced only once the new one is whole. A write the storage
    refuses (disk full, read-only) is a CheckpointError naming the folder and why, on every rank."""
    rank = dist.get_rank()
    partial = path.with_name(f".{path.name}{PARTIAL}")
    try:
        with _every_rank_agrees():
            if rank == 0:
                shutil.rmtree(partial, ignore_errors=True)  # a leftover of a save that was killed
                partial.mkdir(parents=True)
        model_sd, optim_sd = get_state_dict(model, optimizer)
        dcp.save({"model": model_sd, "optim": optim_sd}, checkpoint_id=str(partial))  # fails on every rank
        with _every_rank_agrees():
            rng = io.BytesIO()
            torch.save({"torch": torch.get_rng_state()}, rng)
            _write_synced(partial / f"rng_rank{rank}.pt", rng.getvalue())
        with _every_rank_agrees():
            if rank == 0:
                _write_synced(partial / TRAINER_STATE, json.dumps(trainer_state, indent=1).encode())
                _write_synced(partial / MARKER, b"ok\n")
                # the old copy of the same name is renamed aside, not deleted, until the new one is in
                # its place: a kill during a (long) deletion cannot leave neither
                replaced = path.with_name(f".{path.name}.replaced{PARTIAL}")
                if path.exists():
                    shutil.rmtree(replaced, ignore_errors=True)
                    os.replace(path, replaced)
                os.replace(partial, path)
                _sync_dir(path.parent)
                _remove(replaced)
    except BaseException as err:  # DCP's CheckpointException is a BaseException
        problem = storage_failure(err, path.parent)
        if problem is None:
            raise
        if rank == 0:
            shutil.rmtree(partial, ignore_errors=True)  # what it holds is of no use, and takes space
        raise CheckpointError(f"saving checkpoint {path}: {problem}; free space or make it writable, "
                              f"then resume_from the run directory (its complete checkpoints are whole)") from err


# ----------------------------------------------------------------------------------------------
# Loading


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
        dcp.load(state, storage_reader=reader, planner=SafeLoadPlanner(), no_dist=not dist.is_initialized())
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
    _load(state, SafeReader(str(path)))  # a refused .metadata stops every rank before DCP's collective load
    set_state_dict(model, optimizer, model_state_dict=model_sd, optim_state_dict=optim_sd)
    for group, kept in zip(optimizer.param_groups, hyperparameters):
        group.update(kept)
    rng = path / f"rng_rank{dist.get_rank()}.pt"
    if rng.exists():
        try:
            torch.set_rng_state(torch.load(rng, weights_only=True)["torch"])
        except pickle.UnpicklingError as err:
            raise CheckpointError(f"{rng}: refusing to load ({err})") from None
        except (RuntimeError, EOFError) as err:
            raise damaged(path, f"{rng.name} is unreadable ({err})") from None


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
    reader = SafeReader(str(path))
    keys = reader.read_metadata().state_dict_metadata
    key = _key_naming(path, model)
    state = {}
    for name, tensor in model.state_dict().items():
        ema_key = f"optim.state.{key(name)}.param_ema"
        state[ema_key if use_ema and ema_key in keys else f"model.{key(name)}"] = tensor
    _load(state, reader)


# ----------------------------------------------------------------------------------------------
# Pruning


def prune_step_checkpoints(run_dir: str | Path, keep_last: int) -> None:
    """Rank 0, after a save: delete step checkpoints beyond the last `keep_last`, and what killed
    saves and prunes left behind (partial folders, step folders without their marker)."""
    folder = checkpoint_dir(run_dir)
    for leftover in folder.glob(f".*{PARTIAL}"):
        shutil.rmtree(leftover, ignore_errors=True)
    for path in folder.glob("step_*"):
        if _NAME.match(path.name) and not (path / MARKER).exists():
            shutil.rmtree(path, ignore_errors=True)
    steps = [p for p in complete_checkpoints(run_dir) if p.name.startswith("step_")]
    for path in steps[:-keep_last]:
        _remove(path)
