"""AdamATan2 (models/optimizer.py) against a float64 implementation of the reference's update
(sapientinc/HRM-Text models/adam_atan2.py), eager and compiled (the fused per-tensor kernel
pretrain.py uses on CUDA)."""

import math

import numpy as np
import pytest
import torch
from torch._dynamo.utils import counters

from models.optimizer import AdamATan2

WD, B1, B2, EMA = 0.1, 0.9, 0.95, 0.8


def reference(p0: np.ndarray, grads: list[np.ndarray | None], lrs: list[float]):
    """Weights and EMA after each step, in float64, by the reference's rule: decay, moments, then
    p -= lr / (1 - b1^t) * atan2(m, sqrt(v) / sqrt(1 - b2^t)), then the EMA. None = no gradient that
    step: the parameter, its step count and its EMA are all left alone."""
    p, ema = p0.astype(np.float64), p0.astype(np.float64)
    m, v, t = np.zeros_like(p), np.zeros_like(p), 0
    history = []
    for lr, g in zip(lrs, grads):
        if g is not None:
            t += 1
            p = p * (1 - lr * WD)
            m = B1 * m + (1 - B1) * g
            v = B2 * v + (1 - B2) * g * g
            p = p - lr / (1 - B1 ** t) * np.arctan2(m, np.sqrt(v) / math.sqrt(1 - B2 ** t))
            ema = EMA * ema + (1 - EMA) * p
        history.append((p, ema))
    return history


@pytest.mark.parametrize("compile", [False, True])
def test_adam_atan2_matches_float64_reference_over_100_steps(compile):
    """Steps 1..100 under a changing learning rate, gradients over four decades, one parameter
    without gradient on some steps (as HRM's embedding during the bp warmup): every step's weights
    and EMA within 1e-6 of float64."""
    rng = np.random.default_rng(0)
    steps = 100
    lrs = [1e-3 * (1 + math.sin(k / 7)) for k in range(steps)]
    weight = torch.nn.Parameter(torch.tensor(rng.normal(size=(7, 5)) * 0.1, dtype=torch.float32))
    bias = torch.nn.Parameter(torch.tensor(rng.normal(size=(5,)) * 0.1, dtype=torch.float32))
    params = {"weight": weight, "bias": bias}
    p0 = {name: p.detach().double().numpy().copy() for name, p in params.items()}
    optimizer = AdamATan2([weight, bias], lr=lrs[0], betas=(B1, B2), weight_decay=WD, ema=EMA, compile=compile)
    grads = {name: [] for name in params}
    ours = {name: [] for name in params}
    for step, lr in enumerate(lrs):
        optimizer.param_groups[0]["lr"] = lr
        for name, param in params.items():
            no_grad = name == "bias" and (step < 3 or step % 10 == 5)
            g = None if no_grad else torch.tensor(rng.normal(size=param.shape) * 10 ** rng.uniform(-3, 1),
                                                  dtype=torch.float32)
            param.grad = g
            grads[name].append(None if g is None else g.double().numpy())
        optimizer.step()
        for name, param in params.items():
            ours[name].append((param.detach().double().numpy().copy(),
                               optimizer.state[param]["param_ema"].double().numpy().copy()))
    for name in params:
        for step, ((p, ema), (p_ref, ema_ref)) in enumerate(zip(ours[name], reference(p0[name], grads[name], lrs))):
            np.testing.assert_allclose(p, p_ref, rtol=0, atol=1e-6, err_msg=f"{name} weights, step {step + 1}")
            np.testing.assert_allclose(ema, ema_ref, rtol=0, atol=1e-6, err_msg=f"{name} EMA, step {step + 1}")
    assert optimizer.state[weight]["step"].item() == 100 and optimizer.state[bias]["step"].item() == 100 - 3 - 10


def test_first_step_moves_as_the_reference():
    """Hand-computed: at step 1, m = 0.1 g and sqrt(v) / sqrt(bc2) = |g|, so every coordinate moves
    lr / 0.1 * atan(0.1) against its gradient's sign (0.997 lr, not atan2(1, 1) lr = 0.785 lr)."""
    w = torch.nn.Parameter(torch.zeros(4))
    optimizer = AdamATan2([w], lr=0.01, betas=(0.9, 0.95), weight_decay=0.0)
    w.grad = torch.tensor([3.0, -0.5, 1e-4, -20.0])
    optimizer.step()
    expected = -torch.sign(w.grad) * 0.01 / 0.1 * math.atan(0.1)
    torch.testing.assert_close(w.detach(), expected, rtol=1e-6, atol=0)


def test_compiled_update_compiles_once_while_lr_and_step_change():
    """The compiled update must not be specialised to one step's learning rate or bias
    corrections: a recompile of the all-parameter graph costs about a minute on a GPU machine."""
    torch._dynamo.reset()  # forget graphs other tests compiled
    counters.clear()
    params = [torch.nn.Parameter(torch.randn(4, 3)) for _ in range(3)]
    optimizer = AdamATan2(params, lr=1e-3, ema=0.9, compile=True)
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
    optimizer = AdamATan2([w], lr=0.1, ema=0.5, compile=True)
    optimizer.init_state()
    state = optimizer.state[w]
    assert state["step"].item() == 0 and state["step"].device.type == "cpu"
    assert not state["exp_avg"].any() and not state["exp_avg_sq"].any()
    assert torch.equal(state["param_ema"], before) and torch.equal(w.detach(), before)
    assert counters["stats"]["unique_graphs"] == 0


def test_swap_ema_is_an_involution():
    w = torch.nn.Parameter(torch.randn(3, 3))
    optimizer = AdamATan2([w], lr=0.1, ema=0.5)
    w.grad = torch.randn(3, 3)
    optimizer.step()
    live, ema = w.detach().clone(), optimizer.state[w]["param_ema"].clone()
    assert not torch.equal(live, ema)
    optimizer.swap_ema()
    assert torch.equal(w.detach(), ema) and torch.equal(optimizer.state[w]["param_ema"], live)
    optimizer.swap_ema()
    assert torch.equal(w.detach(), live)
