"""AdamATan2 with an optional parameter EMA kept in the optimizer state (docs/DESIGN.md, "Model"), as
the reference (sapientinc/HRM-Text) computes it.

Update per parameter p with gradient g, step t (bc1 = 1 - b1^t, bc2 = 1 - b2^t):
    m = b1 m + (1 - b1) g,   v = b2 v + (1 - b2) g^2
    p = p * (1 - lr * wd) - (lr / bc1) * atan2(m, sqrt(v) / sqrt(bc2))
atan2 replaces m / (sqrt(v) + eps): bounded, no epsilon, and invariant to the gradient's scale.
The first bias correction scales the step outside atan2: at step 1 (b1 = 0.9, b2 = 0.95) each
coordinate moves lr * atan(0.1) / 0.1 = 0.997 lr, where atan2(m / bc1, sqrt(v / bc2)) would move
it lr * pi / 4.
The EMA (`param_ema = ema * param_ema + (1 - ema) * p`, `ema` the rate) lives in the state under
"param_ema", so distributed checkpoints save and shard it with the moments (under the reference's
key names); `swap_ema()` exchanges it with the live weights for evaluation or export (call it
again to swap back). A parameter without gradient in a step is left alone entirely: no decay,
no moment update, no EMA update (HRM's bp warmup leaves the embedding without gradient at first).

Works on plain tensors and on FSDP2's sharded DTensor parameters (it updates the local shards).
"""

import functools
import math

import torch


def _local(t: torch.Tensor) -> torch.Tensor:
    return t.to_local() if hasattr(t, "to_local") else t


def adam_atan2_update_(params, grads, exp_avgs, exp_avg_sqs, emas, lr, step_size, bias_correction2_sqrt,
                       weight_decay: float, beta1: float, beta2: float, ema: float) -> None:
    """The update of the module docstring, in place, for lists of tensors that share a step count;
    then the EMA of the new weights (`emas` empty: no EMA). step_size = lr / bc1; lr, step_size and
    bias_correction2_sqrt = sqrt(bc2) are floats or 0-dim CPU tensors (see `_fused_update`)."""
    for i, (p, g, m, v) in enumerate(zip(params, grads, exp_avgs, exp_avg_sqs)):
        p.mul_(1 - lr * weight_decay)
        m.lerp_(g, 1 - beta1)
        v.mul_(beta2).addcmul_(g, g, value=1 - beta2)
        p.sub_(torch.atan2(m, v.sqrt() / bias_correction2_sqrt).mul_(step_size))
        if emas:
            emas[i].lerp_(p, 1 - ema)


@functools.cache
def _fused_update():
    """adam_atan2_update_ compiled: one kernel per tensor that reads p, g, m, v (and the EMA) once
    and writes them once, where the eager form makes ~10 passes over memory, and one call for all
    tensors (a compiled call per tensor costs more host time than its kernel). The values that
    change every step (lr, the step size, the bias correction) come as 0-dim CPU tensors: graph
    inputs, so one graph serves every step. As Python floats they were baked into the graphs:
    recompiles as they changed, and graphs that silently kept an old learning rate (torch 2.11 and
    2.13; tests/test_optimizer.py checks a changing lr against float64). Weight decay, betas and
    the EMA rate stay floats: they are constant in a run (changing them would recompile)."""
    return torch.compile(adam_atan2_update_)


class AdamATan2(torch.optim.Optimizer):
    """`ema`: the EMA rate (None: no EMA), as the reference's optimizer argument. `compile=True`
    runs the update through torch.compile (one fused kernel per tensor); otherwise the same
    function runs eagerly."""

    def __init__(self, params, lr: float = 1e-4, betas=(0.9, 0.95), weight_decay: float = 0.1,
                 ema: float | None = None, compile: bool = False):
        if lr < 0 or weight_decay < 0 or not all(0 <= b < 1 for b in betas):
            raise ValueError(f"invalid AdamATan2 hyperparameters lr={lr} betas={betas} weight_decay={weight_decay}")
        super().__init__(params, dict(lr=lr, betas=tuple(betas), weight_decay=weight_decay, ema=ema))
        self.compile = compile

    @torch.no_grad()
    def init_state(self) -> None:
        """Create every parameter's state (zero moments, EMA = weights) without a step, for a
        checkpoint to be loaded into: otherwise torch.distributed.checkpoint creates it by running
        `step()` with zero gradients and lr 0, which would compile a graph the run never uses."""
        for group in self.param_groups:
            for p in group["params"]:
                self._state(p)

    def _state(self, p: torch.Tensor) -> dict:
        state = self.state[p]
        if not state:
            state["step"] = torch.zeros((), dtype=torch.float32)
            state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            if self.defaults["ema"] is not None:
                state["param_ema"] = p.detach().clone()
        return state

    @torch.no_grad()
    def step(self, closure=None):
        """One update of every parameter with a gradient, grouped by step count (HRM's warmup
        leaves the embedding without gradient at first, so its count lags). Tensors are the local
        shards of FSDP2 parameters. The step counters stay CPU tensors, so the update needs no
        host-device sync."""
        assert closure is None, "AdamATan2 does not take a closure"
        update = _fused_update() if self.compile else adam_atan2_update_
        for group in self.param_groups:
            lr, (b1, b2), wd, ema = group["lr"], group["betas"], group["weight_decay"], group["ema"]
            by_step: dict[float, list] = {}
            for p in group["params"]:
                # State exists for every parameter, trained this step or not, so checkpoints
                # always have all keys.
                state = self._state(p)
                if p.grad is None:
                    continue
                state["step"] += 1
                t = state["step"].item()  # a CPU tensor: no device sync
                by_step.setdefault(t, []).append((_local(p), _local(p.grad), _local(state["exp_avg"]),
                                                  _local(state["exp_avg_sq"]),
                                                  _local(state["param_ema"]) if ema is not None else None))
            for t, items in by_step.items():
                params, grads, exp_avgs, exp_avg_sqs, emas = (list(x) for x in zip(*items))
                per_step = (lr, lr / (1 - b1 ** t), math.sqrt(1 - b2 ** t))
                if self.compile:
                    per_step = tuple(torch.tensor(x, dtype=torch.float32) for x in per_step)
                update(params, grads, exp_avgs, exp_avg_sqs, emas if ema is not None else [], *per_step, wd, b1, b2,
                       ema if ema is not None else 0.0)

    @torch.no_grad()
    def swap_ema(self) -> None:
        """Exchange live weights and EMA weights (an involution: call twice to restore)."""
        for group in self.param_groups:
            for p in group["params"]:
                param_ema = self.state[p].get("param_ema")
                if param_ema is None:
                    raise RuntimeError("swap_ema: no EMA state (ema is null, or no step was taken yet)")
                param, ema_local = _local(p), _local(param_ema)
                tmp = param.clone()
                param.copy_(ema_local)
                ema_local.copy_(tmp)
