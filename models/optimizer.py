"""AdamATan2 with an optional parameter EMA kept in the optimizer state (DESIGN.md §5).

Update per parameter p with gradient g, step t:
    m = b1 m + (1 - b1) g,   v = b2 v + (1 - b2) g^2
    p = p * (1 - lr * wd) - lr * atan2(m / (1 - b1^t), sqrt(v / (1 - b2^t)))
atan2 replaces m / (sqrt(v) + eps): bounded, no epsilon, and invariant to the gradient's scale.
The EMA (`ema = ema_rate * ema + (1 - ema_rate) * p`) lives in the state under "ema", so
distributed checkpoints save and shard it with the moments; `swap_ema()` exchanges it with the
live weights for evaluation or export (call it again to swap back).

Works on plain tensors and on FSDP2's sharded DTensor parameters (it updates the local shards).
"""

import torch


def _local(t: torch.Tensor) -> torch.Tensor:
    return t.to_local() if hasattr(t, "to_local") else t


class AdamATan2(torch.optim.Optimizer):
    def __init__(self, params, lr: float = 1e-4, betas=(0.9, 0.95), weight_decay: float = 0.1,
                 ema_rate: float | None = None):
        if lr < 0 or weight_decay < 0 or not all(0 <= b < 1 for b in betas):
            raise ValueError(f"invalid AdamATan2 hyperparameters lr={lr} betas={betas} weight_decay={weight_decay}")
        super().__init__(params, dict(lr=lr, betas=tuple(betas), weight_decay=weight_decay, ema_rate=ema_rate))

    def _state(self, p: torch.Tensor) -> dict:
        state = self.state[p]
        if not state:
            state["step"] = torch.zeros((), dtype=torch.float32)
            state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            if self.defaults["ema_rate"] is not None:
                state["ema"] = p.detach().clone()
        return state

    @torch.no_grad()
    def step(self, closure=None):
        """One update of every parameter with a gradient (and the EMA of every parameter).

        Batched with torch._foreach_* kernels over the parameters of a group that share a step
        count (usually all of them): a handful of launches per group instead of ~8 per parameter,
        the same elementwise math as the per-parameter form written in the module docstring.
        The step counters stay CPU tensors, so the update needs no host-device sync."""
        assert closure is None, "AdamATan2 does not take a closure"
        for group in self.param_groups:
            lr, (b1, b2), wd, ema_rate = group["lr"], group["betas"], group["weight_decay"], group["ema_rate"]
            by_step: dict[float, list] = {}
            emas, ema_params = [], []
            for p in group["params"]:
                # State exists for every parameter, trained this step or not (HRM's warmup leaves
                # the embedding without gradient at first), so checkpoints always have all keys.
                state = self._state(p)
                param = _local(p)
                if p.grad is not None:
                    state["step"] += 1
                    t = state["step"].item()  # a CPU tensor: no device sync
                    by_step.setdefault(t, []).append(
                        (param, _local(p.grad), _local(state["exp_avg"]), _local(state["exp_avg_sq"])))
                if ema_rate is not None:
                    emas.append(_local(state["ema"]))
                    ema_params.append(param)
            for t, items in by_step.items():
                params, grads, ms, vs = (list(x) for x in zip(*items))
                torch._foreach_lerp_(ms, grads, 1 - b1)
                torch._foreach_mul_(vs, b2)
                torch._foreach_addcmul_(vs, grads, grads, value=1 - b2)
                torch._foreach_mul_(params, 1 - lr * wd)
                m_hat = torch._foreach_div(ms, 1 - b1 ** t)
                v_hat = torch._foreach_div(vs, 1 - b2 ** t)
                torch._foreach_sqrt_(v_hat)
                for m, v in zip(m_hat, v_hat):
                    torch.atan2(m, v, out=m)
                del v_hat
                torch._foreach_add_(params, m_hat, alpha=-lr)
            if emas:
                # Updated after the parameters: the EMA tracks the new weights, as before.
                torch._foreach_lerp_(emas, ema_params, 1 - ema_rate)

    @torch.no_grad()
    def swap_ema(self) -> None:
        """Exchange live weights and EMA weights (an involution: call twice to restore)."""
        for group in self.param_groups:
            for p in group["params"]:
                ema = self.state[p].get("ema")
                if ema is None:
                    raise RuntimeError("swap_ema: no EMA state (ema_rate is null, or no step was taken yet)")
                param, ema_local = _local(p), _local(ema)
                tmp = param.clone()
                param.copy_(ema_local)
                ema_local.copy_(tmp)
