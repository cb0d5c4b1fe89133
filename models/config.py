"""Architecture schema: one validated description of a net and its size (docs/DESIGN.md, "Model").

Hydra composes `arch/net/<net>.yaml` and `arch/size/<size>.yaml` into the `arch` node; this schema
validates it. Everything that builds a model (training, inference, export, FLOP counting) reads it.
"""

import math
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

NetName = Literal["hrm", "transformer", "trm", "trm_match_recurrence", "rins", "ut"]
NETS: tuple[str, ...] = NetName.__args__


def round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


class StackConfig(BaseModel):
    """One stack of identical blocks (what `H_override` may change for the H stack). Field names
    and meanings are the reference's (sapientinc/HRM-Text models/transformer.py)."""

    model_config = ConfigDict(extra="forbid")

    n_layers: int
    hidden_size: int
    num_heads: int
    expansion: float = 4.0
    norm_type: Literal["pre", "post"] = "pre"
    norm_eps: float = 1e-6
    pos_emb_type: Literal["rope", "none"] = "rope"
    rope_theta: float = 10000.0
    init_type: Literal["lecun_normal", "fixed_normal", "megatron"] = "lecun_normal"
    init_std: float | None = None  # fixed_normal: the std (default 0.02); megatron: the input std

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def intermediate_size(self) -> int:
        # SwiGLU's width that matches a plain MLP of this expansion in parameters
        return round_up(round(self.expansion * self.hidden_size * 2 / 3), 256)

    @property
    def init_stds(self) -> tuple[float, float, float]:
        """(input, attention output, MLP output) projection stds of `init_type`:
        lecun_normal  1/sqrt(hidden), 1/sqrt(hidden), 1/sqrt(intermediate): 1/sqrt(fan_in) everywhere
        fixed_normal  init_std (default 0.02) everywhere
        megatron      s = init_std (default 1/sqrt(hidden)) in, s / sqrt(2 n_layers) out, n_layers
                      this stack's own depth
        The embedding and LM head take the input std of the stack that produces the output."""
        if self.init_type == "lecun_normal":
            return self.hidden_size ** -0.5, self.hidden_size ** -0.5, self.intermediate_size ** -0.5
        if self.init_type == "fixed_normal":
            std = 0.02 if self.init_std is None else self.init_std
            return std, std, std
        std = self.hidden_size ** -0.5 if self.init_std is None else self.init_std
        out = std / math.sqrt(2.0 * self.n_layers)
        return std, out, out


H_OVERRIDABLE = {"n_layers", "expansion", "norm_type", "init_type", "init_std"}
# fields that say how training runs, not what the weights mean (may change on resume)
SCHEDULE = {"schedule": True}


class ArchConfig(StackConfig):
    """The size fields (StackConfig's) plus the net, its recurrence and attention. `n_layers` is
    the total: with `half_layers`, each of the H and L stacks gets half. Which net reads which
    recurrence key (models/nets.py; the reference's names and defaults):
        hrm                    H_cycles, L_cycles, bp_min_steps, bp_max_steps, bp_warmup_ratio, inject_input
        trm, trm_match_recur.  H_cycles, L_cycles, H_bp_steps, L_bp_steps, inject_input
        rins                   L_cycles, L_bp_cycles
        ut                     cycles, bp_cycles
    """

    net: NetName = "hrm"
    half_layers: bool = False
    H_override: dict = {}
    H_cycles: int = 2
    L_cycles: int = 3
    cycles: int = 4
    # Add the embedded input to every L call's input (z_L + z_H + x; the reference adds only z_H).
    # Without it, the TRM nets' embedding never receives a gradient (models/nets.py).
    inject_input: bool = False
    # which calls carry gradient: the gradient-depth schedule (hrm) and the baselines' counts
    bp_min_steps: int = Field(2, json_schema_extra=SCHEDULE)
    bp_max_steps: int = Field(5, json_schema_extra=SCHEDULE)
    bp_warmup_ratio: float = Field(0.2, json_schema_extra=SCHEDULE)
    H_bp_steps: int = Field(1, json_schema_extra=SCHEDULE)
    L_bp_steps: int = Field(1, json_schema_extra=SCHEDULE)
    L_bp_cycles: int = Field(4, json_schema_extra=SCHEDULE)
    bp_cycles: int = Field(2, json_schema_extra=SCHEDULE)
    # attention
    attn_type: Literal["prefixlm", "causal"] = "prefixlm"

    @classmethod
    def schedule_keys(cls) -> set[str]:
        return {name for name, field in cls.model_fields.items() if field.json_schema_extra == SCHEDULE}

    @model_validator(mode="after")
    def _check(self) -> "ArchConfig":
        if self.hidden_size % self.num_heads:
            raise ValueError(
                f"arch.hidden_size={self.hidden_size} is not divisible by arch.num_heads={self.num_heads}"
            )
        if self.head_dim % 2:
            raise ValueError(f"head_dim={self.head_dim} must be even for rotate-half RoPE")
        if self.half_layers and self.n_layers % 2:
            raise ValueError(f"arch.half_layers needs an even arch.n_layers, got {self.n_layers}")
        if min(self.H_cycles, self.L_cycles, self.cycles) < 1:
            raise ValueError("arch.H_cycles, arch.L_cycles and arch.cycles must be >= 1")
        if not 2 <= self.bp_min_steps <= self.bp_max_steps:
            raise ValueError(f"need 2 <= arch.bp_min_steps <= arch.bp_max_steps, got {self.bp_min_steps} and "
                             f"{self.bp_max_steps} (at least one L and the last H call carry gradient)")
        if not 0.0 <= self.bp_warmup_ratio <= 1.0:
            raise ValueError("arch.bp_warmup_ratio must lie in [0, 1]")
        if min(self.H_bp_steps, self.bp_cycles) < 1 or min(self.L_bp_steps, self.L_bp_cycles) < 0:
            raise ValueError("arch.H_bp_steps and arch.bp_cycles must be >= 1 (the last call carries gradient), "
                             "arch.L_bp_steps and arch.L_bp_cycles >= 0")
        if self.inject_input and self.net not in ("hrm", "trm", "trm_match_recurrence"):
            raise ValueError(f"arch.inject_input applies to hrm, trm and trm_match_recurrence; net {self.net} "
                             "injects its input by design")
        unknown = set(self.H_override) - H_OVERRIDABLE
        if unknown:
            raise ValueError(
                f"arch.H_override has keys {sorted(unknown)} it cannot change; allowed: {sorted(H_OVERRIDABLE)} "
                "(width and heads stay shared: z_H and z_L are added, and the KV cache has one shape)"
            )
        return self

    @property
    def embedding_std(self) -> float:
        """The init std of the embedding table and the LM head: the input std of the stack whose
        output the head reads (the H stack of hrm and rins), as the reference's head hint. The
        embedding's output is multiplied by its inverse, so the recurrence starts from unit-scale
        inputs whatever the init scheme."""
        return self.stack("H" if self.net in ("hrm", "rins") else "L").init_stds[0]

    def stack(self, role: Literal["L", "H"] = "L") -> StackConfig:
        """The config of the L (or only) stack, or of the H stack with `H_override` applied."""
        layers = self.n_layers // 2 if self.half_layers else self.n_layers
        base = StackConfig(**{**{k: getattr(self, k) for k in StackConfig.model_fields}, "n_layers": layers})
        if role == "H" and self.H_override:
            return StackConfig.model_validate({**base.model_dump(), **self.H_override})
        return base
