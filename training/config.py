"""The training configuration: one pydantic schema, fed by Hydra (config/cfg_*.yaml).

Hydra composes the YAML tree and applies `key=value` overrides (an unknown key is refused before
that, naming the nearest known keys: check_override_keys); `TrainConfig` then validates types,
ranges and cross-field rules, so a bad value fails at start with the key that is wrong.
"""

import difflib
from pathlib import Path
from typing import Literal, get_args

from omegaconf import DictConfig, OmegaConf
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from models.config import ArchConfig

CONFIG_DIR = Path(__file__).resolve().parent.parent / "config"


class DataConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    path: str = "/dev/shm/sampled"
    target_only: bool = True
    max_samples_per_batch: int | None = Field(None, ge=1)  # sample slots per rank's batch; None: batch_max_length // 4


class TrainConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    arch: ArchConfig
    data: DataConfig = DataConfig()

    project_name: str | None = None
    run_name: str | None = None
    checkpoint_path: str | None = None

    global_batch_size: int = 196608
    epochs: int = 4
    max_steps: int | None = None
    lr: float = Field(2.2e-4, ge=0)  # 0 keeps the weights where they start
    lr_min_ratio: float = Field(1.0, ge=0, le=1)
    lr_warmup_steps: int = Field(2000, ge=0)
    weight_decay: float = Field(0.1, ge=0)
    beta1: float = Field(0.9, ge=0, lt=1)
    beta2: float = Field(0.95, ge=0, lt=1)
    ema: float | None = 0.9999  # the parameter EMA rate; None: no EMA
    grad_clip: float | None = Field(None, gt=0)  # max global gradient norm; None: not clipped
    seed: int = 0

    fwd_bwd_dtype: Literal["auto", "bfloat16", "float32"] = "auto"  # parameters and activations in forward and backward
    compile: Literal["auto", True, False] = "auto"
    # auto: the fastest correct kernels installed for this device (models/attention.py)
    attn_backend: Literal["auto", "sdpa", "varlen", "fa3", "flex", "flex_fa4"] = "auto"
    # the module FSDP2 shards and torch.compile compiles as one: a whole stack (fewer calls, less
    # host time per step) or each block (finer overlap of communication; training/parallel.py)
    shard_unit: Literal["stack", "block"] = "stack"
    # < 1: the compiler recomputes the cheapest activations in backward until a unit saves this
    # fraction of what it otherwise would (training/parallel.py; the trade-off measured in
    # bench/README.md)
    activation_memory_budget: float = 0.7

    log_interval: int = 10
    checkpoint_interval: int = 1  # epochs between epoch checkpoints (the last epoch always has one)
    checkpoint_every_steps: int | None = 1000
    keep_last: int = 3
    resume_from: str | None = None
    resume_epoch: int | None = None
    resume_step: int | None = None
    weights_only_resume_from_ema: bool = False
    resume_other_data: bool = False
    wandb_mode: Literal["auto", "online", "offline", "disabled"] = "auto"

    @model_validator(mode="after")
    def _check(self) -> "TrainConfig":
        for key in ("global_batch_size", "epochs", "log_interval", "keep_last", "checkpoint_interval"):
            if getattr(self, key) < 1:
                raise ValueError(f"{key} must be >= 1, got {getattr(self, key)}")
        for key in ("max_steps", "checkpoint_every_steps"):
            if getattr(self, key) is not None and getattr(self, key) < 1:
                raise ValueError(f"{key} must be >= 1 or null, got {getattr(self, key)}")
        if not 0.0 <= self.activation_memory_budget <= 1.0:
            raise ValueError(f"activation_memory_budget must lie in [0, 1], got {self.activation_memory_budget}")
        if self.ema is not None and not 0.0 <= self.ema < 1.0:
            raise ValueError(f"ema must lie in [0, 1) or be null, got {self.ema}")
        if self.resume_epoch is not None and self.resume_step is not None:
            raise ValueError("give at most one of resume_epoch and resume_step")
        if (self.resume_epoch is not None or self.resume_step is not None) and not self.resume_from:
            raise ValueError("resume_epoch/resume_step need resume_from=RUN_DIR")
        if self.weights_only_resume_from_ema and not self.resume_from:
            raise ValueError("weights_only_resume_from_ema=true needs resume_from=RUN_DIR")
        return self


def to_train_config(cfg: DictConfig) -> TrainConfig:
    """Validate a composed Hydra config; errors name the offending key path."""
    try:
        return TrainConfig.model_validate(OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True))
    except ValidationError as err:
        problems = [f"{'.'.join(str(p) for p in e['loc']) or '<config>'}: {e['msg']}" for e in err.errors()]
        raise SystemExit("invalid configuration: " + "; ".join(problems)) from None


def accept_appends(args: list[str]) -> list[str]:
    """Command-line overrides with `+key=value` read as `++key=value` (set the key, adding it if
    missing). The reference's configs list fewer keys, so its recipes add some with `+` (e.g.
    `+checkpoint_path=`, `+arch.init_std=`); ours lists them, and Hydra refuses `+` for a key that
    exists. A key the schema does not know still fails, at validation. Group appends
    (`+group@pkg=option`) are left as they are."""
    def is_key_append(arg: str) -> bool:
        key = arg.split("=", 1)[0]
        return arg.startswith("+") and not arg.startswith("++") and "=" in arg and not set("/@") & set(key)
    return ["+" + arg if is_key_append(arg) else arg for arg in args]


def _model_of(annotation) -> type[BaseModel] | None:
    """The pydantic model a field holds (also inside `X | None`), or None."""
    for candidate in (annotation, *get_args(annotation)):
        if isinstance(candidate, type) and issubclass(candidate, BaseModel):
            return candidate
    return None


def check_override_keys(args: list[str]) -> None:
    """Refuse a `key=value` override whose key the schema does not have, with the nearest keys at
    that level, before Hydra would (its error names no alternative). Group choices (`data=sft`,
    `arch/size@arch=L`), deletions and Hydra's own keys are Hydra's to check."""
    for arg in args:
        key = arg.lstrip("+").split("=", 1)[0]
        if "=" not in arg or arg.startswith(("~", "-")) or set("/@") & set(key) or key.split(".")[0] == "hydra":
            continue
        model, parts = TrainConfig, key.split(".")
        for depth, part in enumerate(parts):
            if part not in model.model_fields:
                prefix = ".".join(parts[:depth] + [""])
                near = [prefix + k for k in difflib.get_close_matches(part, model.model_fields, n=3)]
                hint = f"did you mean {' or '.join(repr(k) for k in near)}? " if near else ""
                raise SystemExit(f"invalid configuration: unknown key {key!r}; {hint}`python pretrain.py --cfg job` "
                                 "prints every key")
            model = _model_of(model.model_fields[part].annotation)
            if model is None:  # a value (or a dict, e.g. arch.H_override): Hydra and the schema check the rest
                break


def compose(config_name: str = "cfg_pretrain", overrides: list[str] | None = None) -> TrainConfig:
    """Compose and validate a config outside a Hydra app (tests, benches, tools)."""
    from hydra import compose as hydra_compose, initialize_config_dir

    check_override_keys(overrides or [])
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base=None):
        return to_train_config(hydra_compose(config_name=config_name, overrides=accept_appends(overrides or [])))
