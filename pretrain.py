"""Pretraining entry point (DESIGN.md §5).

    python pretrain.py [key=value ...]                              # one process (CPU or one GPU)
    torchrun --nproc_per_node=8 pretrain.py arch/size@arch=L lr=2.5e-4 global_batch_size=172032
    python pretrain.py --config-name cfg_demo                       # the CPU demo
    python pretrain.py --config-name cfg_sft resume_from=RUN_DIR data.path=...

Composes the pieces: config (training/config.py), process group (training/distributed.py),
data (dataset_new.py), model (models/), FSDP2 (training/parallel.py), optimizer
(models/optimizer.py), schedules (training/schedule.py, models/nets.py), checkpoints
(training/checkpoint.py) and metrics (training/logger.py). `--help` lists every key.
"""

import functools
import gc
import json
import math
import os
import shutil
import signal
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import hydra
import torch
import torch.distributed as dist
import yaml
from omegaconf import DictConfig
from tqdm import tqdm

from data_io import DataError
from dataset_new import IGNORE_LABEL, PackedDataset
from models import attention as attn_lib
from models.flops import executed_flops_per_token
from models.layers import PackedContext
from models.lm_head import sample_ids_from_cu_seqlens
from models.model import LanguageModel, model_vocab_size
from models.nets import bp_steps_at
from models.optimizer import AdamATan2
from training import checkpoint as ckpt
from training.config import TrainConfig, to_train_config
from training.distributed import Dist, all_reduce_sum, broadcast_object, init_distributed
from training.logger import MetricsLogger
from training.parallel import clip_grad_norm_, compile_units, reshard, shard_model
from training.schedule import lr_at

ROOT = Path(__file__).resolve().parent
# Dense bf16 datasheet peaks (TFLOP/s) for MFU; other devices report no MFU.
PEAK_BF16_TFLOPS = {"H100": 989.5, "H200": 989.5, "H800": 989.5, "A100": 312.0}


def fail(message: str):
    raise SystemExit(f"pretrain.py: {message}")


# ----------------------------------------------------------------------------------------------
# Run set-up


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


def check_resume_compatible(cfg: TrainConfig, resume_dir: Path) -> None:
    saved = resume_dir / "all_config.yaml"
    if not saved.exists():
        fail(f"resume_from={resume_dir}: no all_config.yaml there; is it a run directory of pretrain.py?")
    old_cfg = yaml.safe_load(saved.read_text())
    if not cfg.weights_only_resume_from_ema and (old_cfg.get("ema_rate") is None) != (cfg.ema_rate is None):
        # The EMA lives in the optimizer state: a run without one has none to resume, and a run
        # that stops updating its EMA would keep a stale one that evaluation and export would use.
        fail(f"resume_from={resume_dir}: ema_rate: run has {old_cfg.get('ema_rate')!r}, config has {cfg.ema_rate!r}; "
             "a resume can change the EMA rate but not switch the EMA on or off")
    old_arch = old_cfg["arch"]
    new_arch = cfg.arch.model_dump()
    keys = [k for k in new_arch if k not in ("attn_backend", "bp_warmup_ratio", "bp_max_steps") and old_arch.get(k) != new_arch[k]]
    if keys:
        diffs = ", ".join(f"arch.{k}: run has {old_arch.get(k)!r}, config has {new_arch[k]!r}" for k in keys)
        fail(f"resume_from={resume_dir}: architecture differs from the checkpoint's ({diffs}); "
             "pass the run's arch/net and arch/size overrides")


def write_run_files(cfg: TrainConfig, run_dir: Path, metadata: dict, extra: dict) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "all_config.yaml").write_text(yaml.safe_dump(cfg.model_dump(), sort_keys=False))
    (run_dir / "train_metadata.yaml").write_text(yaml.safe_dump(extra, sort_keys=False))
    # The tokenizer travels with the run, so evaluation and export work once /dev/shm is wiped.
    info = dict(metadata["tokenizer_info"])
    source = Path(info.get("tokenizer_path", ""))
    if not source.is_absolute():
        source = Path(cfg.data.path) / source
    tok_dir = run_dir / "tokenizer"
    tok_dir.mkdir(exist_ok=True)
    if source.is_dir():
        shutil.copytree(source, tok_dir, dirs_exist_ok=True)
        info["tokenizer_path"] = "tokenizer"
    elif source.is_file():
        shutil.copy2(source, tok_dir / source.name)
        info["tokenizer_path"] = f"tokenizer/{source.name}"
    (tok_dir / "tokenizer_info.json").write_text(json.dumps(info, indent=1))
    (run_dir / "dataset_metadata.json").write_text(json.dumps(metadata, indent=1))
    snapshot = run_dir / "code"
    for pattern in ("*.py", "config/**/*.yaml", "models/*.py", "training/*.py", "data_io/*.py"):
        for src in ROOT.glob(pattern):
            dst = snapshot / src.relative_to(ROOT)
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst)


def compute_dtype(cfg: TrainConfig, device: torch.device) -> torch.dtype:
    if cfg.compute_dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return getattr(torch, cfg.compute_dtype)


def peak_flops(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((tf * 1e12 for key, tf in PEAK_BF16_TFLOPS.items() if key in name), None)


# ----------------------------------------------------------------------------------------------
# Training


class StopRequest:
    """SIGTERM (e.g. a scheduler's preemption) asks for a checkpoint and a clean exit."""

    def __init__(self):
        self.requested = False
        signal.signal(signal.SIGTERM, self._handle)

    def _handle(self, signum, frame):
        self.requested = True

    def agreed(self, device) -> bool:
        flag = torch.tensor([float(self.requested)], device=device)
        return all_reduce_sum(flag).item() > 0


def loss_normalizer(labels: torch.Tensor, world_size: int) -> torch.Tensor:
    """The all-ranks mean of valid-label counts (at least 1), which the summed loss is divided by.
    Counted on the device: a host number copied in would be a blocking copy, stalling the CPU
    until the GPU has drained every step."""
    valid = (labels != IGNORE_LABEL).sum(dtype=torch.float32)
    return (all_reduce_sum(valid) / world_size).clamp(min=1.0)


def train_step(model, optimizer, batch, layout, bp_steps, normalizer, num_samples, grad_clip):
    """Forward, backward, gradient norm (clipped to grad_clip unless None), optimizer update.
    Returns the step's (sum, count) metrics and the gradient norm."""
    inputs = batch["inputs"]
    sample_ids = sample_ids_from_cu_seqlens(batch["cu_seqlens"], inputs.shape[0])
    loss_sum, metrics = model(inputs[None].long(), batch["position_ids"][None].long(), PackedContext(layout), bp_steps,
                              labels=batch["labels"], sample_ids=sample_ids, num_samples=num_samples)
    (loss_sum / normalizer).backward()
    reshard(model)  # the gathered weights were kept through backward; the next forward gathers the updated ones
    grad_norm = clip_grad_norm_(model.parameters(), grad_clip)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return metrics, grad_norm


def freeze_startup_objects() -> None:
    """Exempt everything alive now from garbage collection. Call it after the first step: torch
    compilation leaves millions of long-lived Python objects, and every full collection would walk
    them all again in the middle of a step (host time the GPU waits for)."""
    gc.collect()
    gc.freeze()


def run(cfg: TrainConfig, d: Dist) -> None:
    torch.manual_seed(cfg.seed)
    if cfg.global_batch_size % d.world_size:
        fail(f"global_batch_size={cfg.global_batch_size} is not divisible by the world size {d.world_size}; "
             f"use a multiple of {d.world_size}")
    if not (Path(cfg.data.path) / "metadata.json").exists():
        fail(f"data.path={cfg.data.path}: no metadata.json there. Build a dataset with "
             "`python -m data_io.sample_tokenized` (or `python -m data_io.demo --out DIR` and data.path=DIR/sampled)")
    resume_dir = Path(cfg.resume_from) if cfg.resume_from else None
    if resume_dir is not None:
        check_resume_compatible(cfg, resume_dir)
        resume_ckpt = ckpt.find_checkpoint(resume_dir, cfg.resume_epoch, cfg.resume_step)
        if cfg.checkpoint_path is None and not cfg.weights_only_resume_from_ema:
            cfg = cfg.model_copy(update=dict(checkpoint_path=str(resume_dir), run_name=resume_dir.name,
                                             project_name=resume_dir.parent.name))
    cfg = derive_names(cfg, d)
    run_dir = Path(cfg.checkpoint_path)

    batch_max_length = cfg.global_batch_size // d.world_size
    dataset = PackedDataset(cfg.data.path, cfg.global_batch_size, num_replicas=d.world_size, rank=d.rank,
                            epochs=cfg.epochs, target_only=cfg.data.target_only,
                            max_samples_per_batch=cfg.data.max_samples_per_batch)
    meta = dataset.metadata
    vocab_size = model_vocab_size(meta["tokenizer_info"]["vocab_size"])
    context_len = dataset.max_seq_len - 1
    # DESIGN.md §5 estimates the schedule length as epochs * total_length / global_batch_size; the
    # packing plan knows it exactly (samples are len(i) + len(o) - 1 tokens, slots not all filled),
    # so the cosine ends where the data does.
    total_steps = len(dataset)
    last_step = min(total_steps, cfg.max_steps) if cfg.max_steps else total_steps

    backend = attn_lib.resolve_backend(cfg.arch.attn_backend, d.device)
    model = LanguageModel(cfg.arch, vocab_size).to(d.device)
    model.init_weights()
    n_params = sum(p.numel() for p in model.parameters())
    shard_model(model, compute_dtype(cfg, d.device), unit=cfg.shard_unit)
    compiled = cfg.compile is True or (cfg.compile == "auto" and d.device.type == "cuda")
    if compiled:
        compile_units(model, activation_memory_budget=cfg.activation_memory_budget, unit=cfg.shard_unit)

    def new_optimizer() -> AdamATan2:
        return AdamATan2(model.parameters(), lr=cfg.lr, betas=(cfg.beta1, cfg.beta2),
                         weight_decay=cfg.weight_decay, ema_rate=cfg.ema_rate, compile=compiled)

    optimizer = new_optimizer()

    step = 0
    if resume_dir is not None and cfg.weights_only_resume_from_ema:
        ckpt.load_ema_weights(resume_ckpt, model, optimizer)
        optimizer = new_optimizer()
        if d.is_main:
            print(f"SFT: starting from the EMA weights of {resume_ckpt} with a fresh optimizer", flush=True)
    elif resume_dir is not None:
        ckpt.load_checkpoint(resume_ckpt, model, optimizer)
        state = ckpt.read_trainer_state(resume_ckpt)
        step = state["step"]
        dataset.load_state_dict(state["data"])
        if d.is_main:
            print(f"resuming {resume_ckpt} at step {step} (data position {state['data']})", flush=True)

    @functools.cache
    def flops_per_token(bp_steps: int) -> float:  # the gradient depth changes during the bp warmup
        return executed_flops_per_token(cfg.arch, vocab_size, context_len, bp_steps)

    logger = None
    if d.is_main:
        write_run_files(cfg, run_dir, meta, {
            "started": datetime.now(timezone.utc).isoformat(), "world_size": d.world_size,
            "device": torch.cuda.get_device_name(d.device) if d.device.type == "cuda" else "cpu",
            "torch": str(torch.__version__), "attention_backend": backend, "parameters": n_params,
            "vocab_size": vocab_size, "total_steps": total_steps, "last_step": last_step,
            # at full gradient depth; the bp warmup's steps execute fewer
            "executed_flops_per_token": flops_per_token(cfg.arch.bp_max_steps),
            "batch_max_length": batch_max_length,
        })
        logger = MetricsLogger(run_dir, cfg.project_name, cfg.run_name, cfg.model_dump(), cfg.wandb_mode,
                               resume=step > 0)
        logger.truncate_after(step)
        print(f"run directory: {run_dir}\n{cfg.arch.net}: {n_params / 1e6:.1f}M parameters, attention {backend}, "
              f"{d.world_size} x {d.device.type}, {total_steps} steps in the full run", flush=True)
    dist.barrier()

    def save(name: str) -> None:
        trainer_state = {"step": step, "data": dataset.state_dict(), "total_steps": total_steps,
                         "arch": cfg.arch.model_dump()}
        ckpt.save_checkpoint(run_dir / "checkpoints" / name, model, optimizer, trainer_state)
        if d.is_main:
            ckpt.prune_step_checkpoints(run_dir, cfg.keep_last)

    stop = StopRequest()
    peak = peak_flops(d.device)
    sums: dict[str, torch.Tensor] = {}
    # this rank's tokens and executed FLOPs since the last log
    window_tokens, window_flops, window_start = 0, 0.0, time.perf_counter()

    def log_metrics(step, lr, bp_steps, grad_norm) -> None:
        """Reduce the (sum, count) metrics of the window over ranks; log on rank 0."""
        nonlocal window_tokens, window_flops, window_start
        names = sorted(sums)
        packed = all_reduce_sum(torch.stack([sums[k] for k in names]))
        work = all_reduce_sum(torch.tensor([window_tokens, window_flops], dtype=torch.float64, device=d.device))
        values = {f"train/{k}": (v[0] / v[1].clamp(min=1)).item() for k, v in zip(names, packed)}
        if not math.isfinite(values["train/loss"]):
            done = ckpt.complete_checkpoints(run_dir)
            fail(f"non-finite loss at step {step}; last good checkpoint: {done[-1] if done else 'none'}")
        elapsed = time.perf_counter() - window_start
        tokens_per_s = work[0].item() / elapsed
        values.update({"train/lr": lr, "train/bp_steps": bp_steps, "train/grad_norm": grad_norm.item(),
                       "perf/tokens_per_s": tokens_per_s, "perf/tokens_per_s_per_device": tokens_per_s / d.world_size})
        if peak:
            values["perf/mfu"] = work[1].item() / elapsed / (d.world_size * peak)
            values["perf/peak_memory_gib"] = torch.cuda.max_memory_allocated(d.device) / 2**30
        if logger:
            logger.log(step, values)
            bar.set_postfix(loss=f"{values['train/loss']:.4f}", lr=f"{lr:.2e}")
        sums.clear()
        window_tokens, window_flops, window_start = 0, 0.0, time.perf_counter()
    bar = tqdm(total=last_step, initial=step, desc="train", disable=not d.is_main, dynamic_ncols=True)
    first_step = step + 1
    model.train()
    for batch, stats in dataset:
        batch = {k: v.to(d.device, non_blocking=True) for k, v in batch.items()}
        step += 1
        lr = lr_at(step, total_steps, cfg.lr, cfg.lr_warmup_steps, cfg.lr_min_ratio)
        bp_steps = bp_steps_at(cfg.arch, step - 1, total_steps)
        for group in optimizer.param_groups:
            group["lr"] = lr
        layout = attn_lib.build_layout(batch["cu_seqlens"], batch["prefix_lens"], total_len=batch_max_length,
                                       max_seqlen=context_len, backend=backend, attn_type=cfg.arch.attn_type)
        normalizer = loss_normalizer(batch["labels"], d.world_size)
        metrics, grad_norm = train_step(model, optimizer, batch, layout, bp_steps, normalizer,
                                        dataset.max_samples_per_batch, cfg.grad_clip)
        for name, (total, count) in metrics.items():
            sums.setdefault(name, torch.zeros(2, device=d.device)).add_(torch.stack([total, count]))
        window_tokens += stats["num_tokens"]
        window_flops += stats["num_tokens"] * flops_per_token(bp_steps)
        bar.update(1)
        if step == first_step:
            freeze_startup_objects()

        if step % cfg.log_interval == 0 or step == last_step:
            log_metrics(step, lr, bp_steps, grad_norm)
        epoch_ended = dataset.state_dict()["step"] == 0
        if epoch_ended:
            save(f"epoch_{stats['epoch']}")
        elif step == last_step or (cfg.checkpoint_every_steps and step % cfg.checkpoint_every_steps == 0):
            save(f"step_{step}")
        if step >= last_step:
            break
        if step % cfg.log_interval == 0 and stop.agreed(d.device):
            if not epoch_ended:
                save(f"step_{step}")
            if d.is_main:
                print(f"SIGTERM: checkpoint written at step {step}; exiting", flush=True)
            break
    bar.close()
    if logger:
        logger.close()
        print(f"done: step {step}; checkpoints in {run_dir / 'checkpoints'}", flush=True)


@hydra.main(config_path="config", config_name="cfg_pretrain", version_base=None)
def main(hydra_cfg: DictConfig) -> None:
    cfg = to_train_config(hydra_cfg)
    d = init_distributed()
    try:
        run(cfg, d)
    except DataError as err:
        fail(str(err))
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    # Hydra's own output directories are not wanted: the run directory holds everything.
    sys.argv += ["hydra.run.dir=.", "hydra.output_subdir=null", "hydra/job_logging=none", "hydra/hydra_logging=none"]
    os.environ.setdefault("HYDRA_FULL_ERROR", "0")
    main()
