"""Pretraining entry point (docs/DESIGN.md, "Training").

    python pretrain.py [key=value ...]                              # one process (CPU or one GPU)
    torchrun --nproc_per_node=8 pretrain.py arch/size@arch=L lr=2.5e-4 global_batch_size=172032
    python pretrain.py --config-name cfg_demo                       # the CPU demo
    python pretrain.py --config-name cfg_sft resume_from=RUN_DIR data.path=...

Composes the pieces: config (training/config.py), process group (training/distributed.py),
data (dataset_new.py), model (models/), FSDP2 and compilation (training/parallel.py), optimizer
(models/optimizer.py), schedules (training/schedule.py, models/nets.py), the step and the loop's
state (training/trainer.py), the run directory and checkpoints (training/run_dir.py,
training/checkpoint.py) and metrics (training/logger.py). `--help` lists every key.
"""

import functools
import math
import os
import sys
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

import hydra
import torch
import torch.distributed as dist
from omegaconf import DictConfig
from tqdm import tqdm

from data_io import DataError
from dataset_new import PackedDataset
from models import attention as attn_lib
from models.flops import executed_flops, executed_flops_per_token
from models.model import LanguageModel, model_vocab_size
from models.nets import bp_steps_at
from models.optimizer import AdamATan2
from training import checkpoint as ckpt
from training import run_dir as run_files
from training.config import TrainConfig, accept_appends, check_override_keys, to_train_config
from training.distributed import Dist, broadcast_object, init_distributed, set_cpu_threads
from training.logger import MetricsLogger
from training.parallel import parallelize
from training.schedule import lr_at
from training.trainer import (MetricsWindow, StopRequest, checkpoint_name, freeze_startup_objects, loss_normalizer,
                              train_step)

ROOT = Path(__file__).resolve().parent


def fail(message: str):
    raise SystemExit(f"pretrain.py: {message}")


# ----------------------------------------------------------------------------------------------
# Set-up


@dataclass
class Run:
    """What the loop works on. `step` counts the optimizer steps done so far."""

    cfg: TrainConfig
    run_dir: Path
    dataset: PackedDataset
    model: LanguageModel
    optimizer: AdamATan2
    backend: str
    total_steps: int
    last_step: int
    flops_per_token: Callable[[int], float]  # at a gradient depth (bp steps), attention over half the context
    flops: Callable[[int, int, int], float]  # of a batch: (tokens, query-key pairs, bp steps)
    step: int = 0


def derive_names(cfg: TrainConfig, d: Dist) -> TrainConfig:
    """Fill omitted project/run/checkpoint names on rank 0 and broadcast them."""
    names = None
    if d.is_main:
        project = cfg.project_name or f"{Path(cfg.data.path).name}-{cfg.arch.net}-{cfg.arch.n_layers}x{cfg.arch.hidden_size}"
        run = cfg.run_name
        if run is None:
            import coolname

            run = f"{coolname.generate_slug(2)}-{datetime.now(timezone.utc):%Y%m%d-%H%M%S}"
        path = cfg.checkpoint_path or str(ROOT / "checkpoints" / project / run)
        names = (project, run, path)
    project, run, path = broadcast_object(names)
    return cfg.model_copy(update=dict(project_name=project, run_name=run, checkpoint_path=path))


def check_start(cfg: TrainConfig, d: Dist) -> None:
    if cfg.global_batch_size % d.world_size:
        fail(f"global_batch_size={cfg.global_batch_size} is not divisible by the world size {d.world_size}; "
             f"use a multiple of {d.world_size}")
    if not (Path(cfg.data.path) / "metadata.json").exists():
        fail(f"data.path={cfg.data.path}: no metadata.json there. Build a dataset with "
             "`python -m data_io.sample_tokenized` (or `python -m data_io.demo --out DIR` and data.path=DIR/sampled)")


def resolve_resume(cfg: TrainConfig, dataset_metadata: dict) -> tuple[TrainConfig, Path | None, bool]:
    """The checkpoint to start from (None for a fresh run) and whether the run continues exactly
    (run_files.resumes_exactly: one of our checkpoints, the run's own dataset, not
    weights_only_resume_from_ema). A continued run stays in its own directory unless
    checkpoint_path says otherwise. Otherwise it is a warm start, as the reference's resume, in a
    new run directory: the weights and optimizer state (moments, step counts, EMA; or the EMA
    weights and a fresh optimizer), then step 0 of the new data (SFT)."""
    if not cfg.resume_from:
        return cfg, None, False
    resume_dir = Path(cfg.resume_from)
    try:
        run_files.check_resume_compatible(cfg.model_dump(), resume_dir, cfg.weights_only_resume_from_ema)
        checkpoint = ckpt.find_checkpoint(resume_dir, cfg.resume_epoch, cfg.resume_step)
        continues = run_files.resumes_exactly(cfg.model_dump(), resume_dir, checkpoint, dataset_metadata)
    except run_files.RunDirError as err:
        fail(str(err))
    if continues and cfg.checkpoint_path is None:
        cfg = cfg.model_copy(update=dict(checkpoint_path=str(resume_dir), run_name=resume_dir.name,
                                         project_name=resume_dir.parent.name))
    return cfg, checkpoint, continues


def fwd_bwd_dtype(cfg: TrainConfig, device: torch.device) -> torch.dtype:
    if cfg.fwd_bwd_dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return getattr(torch, cfg.fwd_bwd_dtype)


def new_optimizer(cfg: TrainConfig, model: LanguageModel) -> AdamATan2:
    return AdamATan2(model.parameters(), lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), weight_decay=cfg.weight_decay,
                     ema=cfg.ema, compile=model.compiled_loss)


def schedule_length(cfg: TrainConfig, dataset: PackedDataset) -> tuple[int, int]:
    """(total_steps, last_step): the schedule's length is the packing plan's exact step count
    (docs/DESIGN.md, "Training"); the run stops at max_steps when that comes first."""
    total_steps = len(dataset)
    return total_steps, min(total_steps, cfg.max_steps) if cfg.max_steps else total_steps


def set_up(cfg: TrainConfig, d: Dist) -> tuple[Run, Path | None, bool]:
    """Dataset, model (sharded and compiled) and optimizer of a run; the checkpoint to restore and
    whether the run continues from it exactly (resolve_resume)."""
    torch.manual_seed(cfg.seed)
    check_start(cfg, d)
    if d.device.type == "cpu":
        set_cpu_threads(cfg.arch.hidden_size)
    # the dataset first: the data.path a resume compares with the run's is checked as a fresh run's is
    dataset = PackedDataset(cfg.data.path, cfg.global_batch_size, num_replicas=d.world_size, rank=d.rank,
                            epochs=cfg.epochs, target_only=cfg.data.target_only,
                            max_samples_per_batch=cfg.data.max_samples_per_batch)
    cfg, resume_ckpt, continues = resolve_resume(cfg, dataset.metadata)
    cfg = derive_names(cfg, d)
    problem = None
    if d.is_main:  # decided once: rank 0 writes the directory as soon as it gets there
        try:
            run_files.check_unclaimed(Path(cfg.checkpoint_path), Path(cfg.resume_from) if continues else None)
        except run_files.RunDirError as err:
            problem = str(err)
    if broadcast_object(problem):
        fail(problem)
    vocab_size = model_vocab_size(dataset.vocab_size)
    context_len = dataset.max_seq_len - 1
    if dataset.metadata["max_seq_len"] > dataset.batch_max_length + 1:
        fail(f"global_batch_size={cfg.global_batch_size} gives each of the {d.world_size} rank(s) "
             f"{dataset.batch_max_length} tokens, less than one sample may need ({dataset.metadata['max_seq_len'] - 1}, "
             f"max_seq_len in {Path(cfg.data.path) / 'metadata.json'}); use global_batch_size >= "
             f"{(dataset.metadata['max_seq_len'] - 1) * d.world_size}")
    if len(dataset) == 0:
        fail(f"no training step: data.path={cfg.data.path} packs into 0 batches of global_batch_size="
             f"{cfg.global_batch_size}; lower global_batch_size or give more data")
    model = LanguageModel(cfg.arch, vocab_size).to(d.device)
    model.init_weights()
    parallelize(model, fwd_bwd_dtype(cfg, d.device), unit=cfg.shard_unit,
                compile=cfg.compile is True or (cfg.compile == "auto" and d.device.type == "cuda"),
                activation_memory_budget=cfg.activation_memory_budget)
    total_steps, last_step = schedule_length(cfg, dataset)
    run = Run(cfg, Path(cfg.checkpoint_path), dataset, model, new_optimizer(cfg, model),
              backend=attn_lib.resolve_backend(cfg.attn_backend, d.device), total_steps=total_steps, last_step=last_step,
              flops_per_token=functools.cache(functools.partial(executed_flops_per_token, cfg.arch, vocab_size,
                                                                context_len)),
              flops=functools.partial(executed_flops, cfg.arch, vocab_size))
    return run, resume_ckpt, continues


def restore(run: Run, checkpoint: Path, continues: bool, d: Dist) -> None:
    """Continue a run from its checkpoint, or warm-start from a checkpoint (resolve_resume): its
    weights and optimizer state, or (weights_only_resume_from_ema) its EMA weights with a fresh
    optimizer."""
    if run.cfg.weights_only_resume_from_ema:
        ckpt.load_ema_weights(checkpoint, run.model, run.optimizer)
        run.optimizer = new_optimizer(run.cfg, run.model)
        message = f"starting from the EMA weights of {checkpoint} with a fresh optimizer"
    elif continues:
        ckpt.load_checkpoint(checkpoint, run.model, run.optimizer)
        state = ckpt.read_trainer_state(checkpoint)
        run.step = state["step"]
        run.dataset.load_state_dict(state["data"])
        # a position saved under another packing plan replans the rest of its epoch
        run.total_steps, run.last_step = schedule_length(run.cfg, run.dataset)
        message = f"resuming {checkpoint} at step {run.step} (data position {state['data']})"
    else:
        ckpt.load_checkpoint(checkpoint, run.model, run.optimizer)
        message = f"starting from the weights and optimizer state (moments, EMA) of {checkpoint} at step 0"
    if d.is_main:
        print(message, flush=True)


def start_run_directory(run: Run, d: Dist) -> MetricsLogger | None:
    """Rank 0 writes the run's files and opens its metrics log; the others wait."""
    logger = None
    if d.is_main:
        n_params = sum(p.numel() for p in run.model.parameters())
        run_files.write_run_files(run.run_dir, run.cfg.model_dump(), run.cfg.data.path, run.dataset.metadata, {
            "started": datetime.now(timezone.utc).isoformat(), "world_size": d.world_size,
            "device": torch.cuda.get_device_name(d.device) if d.device.type == "cuda" else "cpu",
            "torch": str(torch.__version__), "attention_backend": run.backend, "parameters": n_params,
            "vocab_size": run.model.vocab_size, "total_steps": run.total_steps, "last_step": run.last_step,
            # at full gradient depth; the bp warmup's steps execute fewer
            "executed_flops_per_token": run.flops_per_token(run.cfg.arch.bp_max_steps),
            "batch_max_length": run.dataset.batch_max_length,
        })
        logger = MetricsLogger(run.run_dir, run.cfg.project_name, run.cfg.run_name, run.cfg.model_dump(),
                               run.cfg.wandb_mode, resume=run.step > 0)
        logger.truncate_after(run.step)
        print(f"run directory: {run.run_dir}\n{run.cfg.arch.net}: {n_params / 1e6:.1f}M parameters, attention "
              f"{run.backend}, {d.world_size} x {d.device.type}, {run.total_steps} steps in the full run", flush=True)
    dist.barrier()
    return logger


# ----------------------------------------------------------------------------------------------
# Training


def save(run: Run, name: str, d: Dist) -> None:
    trainer_state = {"step": run.step, "data": run.dataset.state_dict(), "total_steps": run.total_steps,
                     "arch": run.cfg.arch.model_dump()}
    ckpt.save_checkpoint(ckpt.checkpoint_dir(run.run_dir) / name, run.model, run.optimizer, trainer_state)
    if d.is_main:
        ckpt.prune_step_checkpoints(run.run_dir, run.cfg.keep_last)


def log_window(run: Run, window: MetricsWindow, logger: MetricsLogger | None, bar: tqdm, lr: float, bp_steps: int,
               grad_norm: torch.Tensor) -> None:
    """Collective: reduce the window's metrics over ranks; rank 0 logs them."""
    values = window.reduce()
    if not math.isfinite(values["train/loss"]):
        done = ckpt.complete_checkpoints(run.run_dir)
        fail(f"non-finite loss at step {run.step}; last good checkpoint: {done[-1] if done else 'none'}")
    values.update({"train/lr": lr, "train/bp_steps": bp_steps, "train/grad_norm": grad_norm.item()})
    if logger:
        logger.log(run.step, values)
        bar.set_postfix(loss=f"{values['train/loss']:.4f}", lr=f"{lr:.2e}")


def train(run: Run, d: Dist, logger: MetricsLogger | None) -> None:
    cfg, dataset = run.cfg, run.dataset
    window, stop = MetricsWindow(d.device, d.world_size), StopRequest(d.device, announce=d.is_main)
    bar = tqdm(total=run.last_step, initial=run.step, desc="train", disable=not d.is_main, dynamic_ncols=True)
    first_step = run.step + 1
    run.model.train()
    for batch, stats in dataset:
        pairs = attn_lib.query_key_pairs(batch["prefix_lens"], batch["causal_lens"], cfg.arch.attn_type)
        batch = {k: v.to(d.device, non_blocking=True) for k, v in batch.items()}
        run.step += 1
        lr = lr_at(run.step, run.total_steps, cfg.lr, cfg.lr_warmup_steps, cfg.lr_min_ratio)
        bp_steps = bp_steps_at(cfg.arch, run.step, run.total_steps)
        for group in run.optimizer.param_groups:
            group["lr"] = lr
        layout = attn_lib.build_layout(batch["cu_seqlens"], batch["prefix_lens"], total_len=dataset.batch_max_length,
                                       max_seqlen=dataset.max_seq_len - 1, backend=run.backend,
                                       attn_type=cfg.arch.attn_type)
        metrics, grad_norm = train_step(run.model, run.optimizer, batch, layout, bp_steps,
                                        loss_normalizer(batch["labels"], d.world_size),
                                        dataset.max_samples_per_batch, cfg.grad_clip)
        window.add(metrics, stats["num_tokens"], run.flops(stats["num_tokens"], pairs, bp_steps),
                   stats["num_tokens"] * run.flops_per_token(bp_steps))
        bar.update(1)
        if run.step == first_step:
            freeze_startup_objects()
        if run.step % cfg.log_interval == 0 or run.step == run.last_step:
            log_window(run, window, logger, bar, lr, bp_steps, grad_norm)
        name = checkpoint_name(run.step, run.last_step, dataset.state_dict()["step"] == 0, stats["epoch"], cfg.epochs,
                               cfg.checkpoint_interval, cfg.checkpoint_every_steps)
        if name:
            save(run, name, d)
        if run.step >= run.last_step:
            break
        if stop.agreed():
            if name is None:  # a checkpoint of this step was just written
                save(run, f"step_{run.step}", d)
            if d.is_main:
                print(f"{stop.signal or 'stop requested on another rank'}: checkpoint written at step {run.step}; "
                      "exiting", flush=True)
            break
    bar.close()


def run_training(cfg: TrainConfig, d: Dist) -> None:
    run, resume_ckpt, continues = set_up(cfg, d)
    if resume_ckpt is not None:
        restore(run, resume_ckpt, continues, d)
        if run.step >= run.last_step:  # nothing written: the finished run stays as it was
            if d.is_main:
                print(f"{resume_ckpt} is at step {run.step}, the run's last (max_steps={cfg.max_steps}, "
                      f"{run.total_steps} in the schedule); nothing to train. Raise max_steps to go on", flush=True)
            return
    logger = start_run_directory(run, d)
    train(run, d, logger)
    if logger:
        logger.close()
        print(f"done: step {run.step}; checkpoints in {ckpt.checkpoint_dir(run.run_dir)}", flush=True)


def launch(cfg: TrainConfig) -> None:
    """Train in this process (one rank of torchrun, or alone); bad input exits with one line."""
    d = init_distributed()
    try:
        run_training(cfg, d)
    except (DataError, ckpt.CheckpointError, FileNotFoundError) as err:
        fail(str(err))
    except OSError as err:  # the run directory's files and metrics: disk full, read-only
        problem = ckpt.storage_failure(err)
        if problem is None:
            raise
        fail(f"{problem}; free space or choose a writable checkpoint_path")
    except KeyboardInterrupt:  # Ctrl-C before training began, or a second one during it
        print("pretrain.py: interrupted; the steps since the last complete checkpoint are not saved",
              file=sys.stderr, flush=True)
        raise SystemExit(130) from None
    finally:
        dist.destroy_process_group()


@hydra.main(config_path="config", config_name="cfg_pretrain", version_base=None)
def main(hydra_cfg: DictConfig) -> None:
    launch(to_train_config(hydra_cfg))


if __name__ == "__main__":
    check_override_keys(sys.argv[1:])
    # Hydra's own output directories are not wanted: the run directory holds everything.
    sys.argv = [sys.argv[0], *accept_appends(sys.argv[1:]), "hydra.run.dir=.", "hydra.output_subdir=null",
                "hydra/job_logging=none", "hydra/hydra_logging=none"]
    os.environ.setdefault("HYDRA_FULL_ERROR", "0")
    main()
