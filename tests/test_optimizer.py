"""AdamATan2 (models/optimizer.py) against a float64 recomputation of its formula, eager and
compiled (the fused per-tensor kernel pretrain.py uses on CUDA)."""

import numpy as np
import pytest
import torch
from torch._dynamo.utils import counters

from models.optimizer import AdamATan2

WD, B1, B2, EMA = 0.1, 0.9, 0.95, 0.8
LRS = [1e-2, 3e-2, 2e-2, 5e-3]  # a schedule: the learning rate changes every step


def reference(p0: np.ndarray, grads: list[np.ndarray | None]):
    """Weights and EMA after the given steps, in float64; None = no gradient that step (the EMA
    still moves, the step count does not)."""
    p, ema = p0.astype(np.float64), p0.astype(np.float64)
    m, v, t = np.zeros_like(p), np.zeros_like(p), 0
    for LR, g in zip(LRS, grads):
        if g is not None:
            t += 1
            m = B1 * m + (1 - B1) * g
            v = B2 * v + (1 - B2) * g * g
            p = p * (1 - LR * WD) - LR * np.arctan2(m / (1 - B1 ** t), np.sqrt(v / (1 - B2 ** t)))
        ema = EMA * ema + (1 - EMA) * p
    return p, ema


@pytest.mark.parametrize("compile", [False, True])
def test_adam_atan2_matches_float64_reference(compile):
    rng = np.random.default_rng(0)
    weight = torch.nn.Parameter(torch.tensor(rng.normal(size=(7, 5)), dtype=torch.float32))
    bias = torch.nn.Parameter(torch.tensor(rng.normal(size=(5,)), dtype=torch.float32))
    p0 = {"weight": weight.detach().double().numpy().copy(), "bias": bias.detach().double().numpy().copy()}
    optimizer = AdamATan2([weight, bias], lr=LRS[0], betas=(B1, B2), weight_decay=WD, ema_rate=EMA, compile=compile)
    history = {"weight": [], "bias": []}
    for step, lr in enumerate(LRS):
        optimizer.param_groups[0]["lr"] = lr
        for name, param in (("weight", weight), ("bias", bias)):
            # the bias gets no gradient in the first step (as HRM's embedding during warmup)
            g = None if name == "bias" and step == 0 else rng.normal(size=param.shape) * 10 ** rng.uniform(-3, 1)
            param.grad = None if g is None else torch.tensor(g, dtype=torch.float32)
            history[name].append(None if g is None else torch.tensor(g, dtype=torch.float32).double().numpy())
        optimizer.step()
    for name, param in (("weight", weight), ("bias", bias)):
        p_ref, ema_ref = reference(p0[name], history[name])
        np.testing.assert_allclose(param.detach().double().numpy(), p_ref, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(optimizer.state[param]["ema"].double().numpy(), ema_ref, rtol=1e-5, atol=1e-6)
    assert optimizer.state[weight]["step"].item() == 4 and optimizer.state[bias]["step"].item() == 3


def test_compiled_update_compiles_once_while_lr_and_step_change():
    """The compiled update must not be specialised to one step's learning rate or bias
    corrections: a recompile of the all-parameter graph costs about a minute on a GPU machine."""
    torch._dynamo.reset()  # forget graphs other tests compiled
    counters.clear()
    params = [torch.nn.Parameter(torch.randn(4, 3)) for _ in range(3)]
    optimizer = AdamATan2(params, lr=1e-3, ema_rate=0.9, compile=True)
    for step in range(4):
        optimizer.param_groups[0]["lr"] = 1e-3 * (step + 1)
        for p in params:
            p.grad = torch.randn_like(p)
        optimizer.step()
    assert counters["stats"]["unique_graphs"] == 1


def test_init_state_creates_every_state_without_a_step():
    """What a checkpoint is loaded into: all keys present, nothing updated, nothing compiled."""
    torch._dynamo.reset()
    counters.clear()
    w = torch.nn.Parameter(torch.randn(3, 3))
    before = w.detach().clone()
    optimizer = AdamATan2([w], lr=0.1, ema_rate=0.5, compile=True)
    optimizer.init_state()
    state = optimizer.state[w]
    assert state["step"].item() == 0 and state["step"].device.type == "cpu"
    assert not state["exp_avg"].any() and not state["exp_avg_sq"].any()
    assert torch.equal(state["ema"], before) and torch.equal(w.detach(), before)
    assert counters["stats"]["unique_graphs"] == 0


def test_swap_ema_is_an_involution():
    w = torch.nn.Parameter(torch.randn(3, 3))
    optimizer = AdamATan2([w], lr=0.1, ema_rate=0.5)
    w.grad = torch.randn(3, 3)
    optimizer.step()
    live, ema = w.detach().clone(), optimizer.state[w]["ema"].clone()
    assert not torch.equal(live, ema)
    optimizer.swap_ema()
    assert torch.equal(w.detach(), ema) and torch.equal(optimizer.state[w]["ema"], live)
    optimizer.swap_ema()
    assert torch.equal(w.detach(), live)
