"""The six nets (docs/DESIGN.md, "Model"): how stacks are called in sequence and which calls carry
gradient, as the reference's (sapientinc/HRM-Text models/baselines/*_nocarry*.py) with its key names.

Every net is a sequence of module calls, each of role "L" or "H". `call_plan(bp_steps)` lists
them in order with a flag saying whether the call runs with gradient; the rest run under
`torch.no_grad()`, which bounds activation memory (one-step gradient approximation).

| net                  | stacks                   | calls                          | calls with gradient              |
|----------------------|--------------------------|--------------------------------|----------------------------------|
| transformer          | one, n_layers            | f(x)                           | the one call                     |
| hrm                  | L and H, n_layers/2 each | H_cycles x (L_cycles x L, H)   | last min(H, b-1) H, b-rest L     |
| trm                  | one shared, n_layers     | H_cycles x (L_cycles x L, H)   | last H_bp_steps H, L_bp_steps L  |
| trm_match_recurrence | one shared, n_layers/2   | the same, its own cycle counts | the same                         |
| rins                 | L and H, n_layers/2 each | L_cycles x L, then H           | last L_bp_cycles L, the H        |
| ut                   | one, n_layers            | cycles x L                     | last bp_cycles                   |

The counts come from arch/net/<net>.yaml (b = bp_steps, HRM's warmed-up gradient depth).

Input injection: in hrm and the TRM nets an L call sees z_L + z_H and an H call z_H + z_L; the
embedded input x reaches them only as z_H's starting value. So the embedding gets a gradient only
when the first H call carries one: in hrm from b = 3 on (H_bp_steps = min(H_cycles, b-1) = 2), in
trm_match_recurrence always (H_bp_steps 2), in trm (H_bp_steps 1) never: its embedding stays at its
initial values, as in the reference. `inject_input: true` adds x to every L call
(z_L + z_H + x, as the TRM paper does), which trains the embedding through the last L call.
rins and ut add x to every call by design.
"""

import torch
from torch import nn

from models.config import ArchConfig
from models.layers import AttentionContext, Stack, rope_cos_sin, trunc_normal_


def bp_steps_at(arch: ArchConfig, step: int, total_steps: int) -> int:
    """HRM's gradient-depth warmup at optimizer step `step` (1 for the first update), as the
    reference: b grows linearly from bp_min_steps to bp_max_steps over the first bp_warmup_ratio
    of the total_steps, then stays there."""
    warmup_steps = total_steps * arch.bp_warmup_ratio
    progress = min(1.0, step / warmup_steps) if warmup_steps > 0 else 1.0
    return arch.bp_min_steps + int(progress * (arch.bp_max_steps - arch.bp_min_steps))


def _mark_last(roles: list[str], grad_per_role: dict[str, int]) -> list[tuple[str, bool]]:
    """Flag the last `grad_per_role[role]` calls of each role as gradient-carrying."""
    remaining = dict(grad_per_role)
    flags = []
    for role in reversed(roles):
        flags.append(remaining.get(role, 0) > 0)
        remaining[role] = remaining.get(role, 0) - 1
    return list(zip(roles, reversed(flags)))


class Net(nn.Module):
    """Base: owns the stacks and the fixed initial recurrent state z_L_init."""

    shared_stack = False  # one stack plays both roles
    uses_h_stack = True

    def __init__(self, arch: ArchConfig):
        super().__init__()
        self.arch = arch
        stacks = {"L": Stack(arch.stack("L"))}
        if self.uses_h_stack and not self.shared_stack:
            stacks["H"] = Stack(arch.stack("H"))
        self.stacks = nn.ModuleDict(stacks)
        # Fixed, persisted, never trained: the initial low-level state.
        self.register_buffer("z_L_init", torch.zeros(arch.hidden_size), persistent=True)

    def stack_name(self, role: str) -> str:
        return "L" if self.shared_stack or role == "L" else "H"

    def rope_tables(self, position_ids: torch.Tensor) -> dict[str, tuple[torch.Tensor, torch.Tensor] | None]:
        """Each stack's RoPE cos/sin for these positions (None with pos_emb_type none), made once
        per forward and passed to every call: inside a compiled stack they would be recomputed
        (sin, cos, pow) in each block's kernels, forward and backward, which makes those kernels
        compute-bound."""
        return {name: rope_cos_sin(position_ids, stack.cfg.head_dim, stack.cfg.rope_theta)
                if stack.cfg.pos_emb_type == "rope" else None for name, stack in self.stacks.items()}

    @property
    def num_calls(self) -> int:
        return len(self.roles(self.arch))

    @property
    def layers_per_call(self) -> int:
        return max(stack.cfg.n_layers for stack in self.stacks.values())

    @classmethod
    def roles(cls, arch: ArchConfig) -> list[str]:
        """The roles of the module calls, in order."""
        raise NotImplementedError

    @classmethod
    def grad_calls(cls, arch: ArchConfig, bp_steps: int) -> dict[str, int]:
        """How many of the last calls of each role carry gradient."""
        raise NotImplementedError

    @classmethod
    def call_plan_for(cls, arch: ArchConfig, bp_steps: int) -> list[tuple[str, bool]]:
        return _mark_last(cls.roles(arch), cls.grad_calls(arch, bp_steps))

    def call_plan(self, bp_steps: int) -> list[tuple[str, bool]]:
        return self.call_plan_for(self.arch, bp_steps)

    def init_weights(self) -> None:
        for stack in self.stacks.values():
            stack.init_weights()
        trunc_normal_(self.z_L_init, 1.0)

    def run_call(self, role, x, rope, ctx, call, grad):
        name = self.stack_name(role)
        with torch.set_grad_enabled(grad and torch.is_grad_enabled()):
            return self.stacks[name](x, rope[name], ctx.at_call(call))

    def forward(self, x, rope, ctx: AttentionContext, bp_steps: int) -> torch.Tensor:
        """x: the embedded input; rope: `rope_tables(position_ids)`."""
        raise NotImplementedError


class Transformer(Net):
    uses_h_stack = False

    @classmethod
    def roles(cls, arch):
        return ["L"]

    @classmethod
    def grad_calls(cls, arch, bp_steps):
        return {"L": 1}

    def forward(self, x, rope, ctx, bp_steps):
        return self.run_call("L", x, rope, ctx, 0, True)


class HRM(Net):
    """z_H starts as the embedded input x, z_L as z_L_init. Per H cycle: L_cycles times
    z_L = L(z_L + z_H) (+ x with inject_input), then z_H = H(z_H + z_L). Output z_H."""

    @classmethod
    def roles(cls, arch):
        return (["L"] * arch.L_cycles + ["H"]) * arch.H_cycles

    @classmethod
    def grad_calls(cls, arch, bp_steps):
        # H first, and at least one L call
        h = min(arch.H_cycles, bp_steps - 1)
        return {"H": h, "L": bp_steps - h}

    def forward(self, x, rope, ctx, bp_steps):
        z_H, z_L = x, self.z_L_init.to(x.dtype).expand_as(x)
        for call, (role, grad) in enumerate(self.call_plan(bp_steps)):
            if role == "L":
                z_L = self.run_call("L", z_L + z_H + x if self.arch.inject_input else z_L + z_H, rope, ctx, call, grad)
            else:
                z_H = self.run_call("H", z_H + z_L, rope, ctx, call, grad)
        return z_H


class TRM(HRM):
    """HRM's recurrence through one shared stack, with fixed gradient counts (H_bp_steps,
    L_bp_steps) instead of the warmup. trm_match_recurrence is this net with HRM's cycle counts
    and half the layers (its yaml)."""

    shared_stack = True

    @classmethod
    def grad_calls(cls, arch, bp_steps):
        return {"H": arch.H_bp_steps, "L": arch.L_bp_steps}


class RINS(Net):
    """z_L = L(z_L + x) L_cycles times (gradient on the last L_bp_cycles), then one H(z_L) call."""

    @classmethod
    def roles(cls, arch):
        return ["L"] * arch.L_cycles + ["H"]

    @classmethod
    def grad_calls(cls, arch, bp_steps):
        return {"L": arch.L_bp_cycles, "H": 1}

    def forward(self, x, rope, ctx, bp_steps):
        z_L = self.z_L_init.to(x.dtype).expand_as(x)
        plan = self.call_plan(bp_steps)
        for call, (role, grad) in enumerate(plan[:-1]):
            z_L = self.run_call(role, z_L + x, rope, ctx, call, grad)
        role, grad = plan[-1]
        return self.run_call(role, z_L, rope, ctx, len(plan) - 1, grad)


class UniversalTransformer(Net):
    """One stack applied `cycles` times: z = f(z + x), gradient on the last bp_cycles calls."""

    uses_h_stack = False

    @classmethod
    def roles(cls, arch):
        return ["L"] * arch.cycles

    @classmethod
    def grad_calls(cls, arch, bp_steps):
        return {"L": arch.bp_cycles}

    def forward(self, x, rope, ctx, bp_steps):
        z = self.z_L_init.to(x.dtype).expand_as(x)
        for call, (role, grad) in enumerate(self.call_plan(bp_steps)):
            z = self.run_call(role, z + x, rope, ctx, call, grad)
        return z


NET_CLASSES: dict[str, type[Net]] = {
    "transformer": Transformer,
    "hrm": HRM,
    "trm": TRM,
    "trm_match_recurrence": TRM,
    "rins": RINS,
    "ut": UniversalTransformer,
}


def build_net(arch: ArchConfig) -> Net:
    return NET_CLASSES[arch.net](arch)
