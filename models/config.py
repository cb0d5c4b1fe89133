"""Architecture schema: one validated description of a net and its size (docs/DESIGN.md, "Model").

Hydra composes `arch/net/<net>.yaml` and `arch/size/<size>.yaml` into the `arch` node; this schema
validates it. Everything that builds a model (training, inference, export, FLOP counting) reads it.
"""

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

NetName = Literal["hrm", "transformer", "trm", "trm_match_recurrence", "rins", "ut"]
NETS: tuple[str, ...] = NetName.__args__


def round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


class StackConfig(BaseModel):
    """One stack of identical blocks (what `H_override` may change for the H stack)."""

    model_config = ConfigDict(extra="forbid")

    n_layers: int
    hidden_size: int
    num_heads: int
    expansion: float = 4.0
    rope_theta: float = 10000.0
    norm_eps: float = 1e-6
    post_norm: bool = False

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def intermediate_size(self) -> int:
        return round_up(int(self.expansion * self.hidden_size * 2 / 3), 256)


H_OVERRIDABLE = {"n_layers", "expansion", "post_norm"}
SCHEDULE = {"schedule": True}


class ArchConfig(StackConfig):
    """The size fields (StackConfig's) plus the net, its recurrence and attention. `n_layers` is
    the total: with `half_layers`, each of the H and L stacks gets half."""

    net: NetName = "hrm"
    init: Literal["lecun_normal", "fixed_normal", "megatron"] = "lecun_normal"
    # recurrence (ignored by `transformer`; fixed by the baselines, see models/nets.py)
    half_layers: bool = False
    H_cycles: int = 2
    L_cycles: int = 3
    # the gradient-depth schedule: how training runs, not what the weights mean (may change on resume)
    bp_max_steps: int = Field(5, json_schema_extra=SCHEDULE)
    bp_warmup_ratio: float = Field(0.2, json_schema_extra=SCHEDULE)
    H_override: dict = {}
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
        if min(self.H_cycles, self.L_cycles) < 1:
            raise ValueError("arch.H_cycles and arch.L_cycles must be >= 1")
        if self.bp_max_steps < 2:
            raise ValueError("arch.bp_max_steps must be >= 2 (one L and one H call carry gradient)")
        if not 0.0 <= self.bp_warmup_ratio <= 1.0:
            raise ValueError("arch.bp_warmup_ratio must lie in [0, 1]")
        unknown = set(self.H_override) - H_OVERRIDABLE
        if unknown:
            raise ValueError(
                f"arch.H_override has keys {sorted(unknown)} it cannot change; allowed: {sorted(H_OVERRIDABLE)} "
                "(width and heads stay shared: z_H and z_L are added, and the KV cache has one shape)"
            )
        return self

    def stack(self, role: Literal["L", "H"] = "L") -> StackConfig:
        """The config of the L (or only) stack, or of the H stack with `H_override` applied."""
        layers = self.n_layers // 2 if self.half_layers else self.n_layers
        base = StackConfig(**{**{k: getattr(self, k) for k in StackConfig.model_fields}, "n_layers": layers})
        if role == "H" and self.H_override:
            return base.model_copy(update=self.H_override)
        return base
