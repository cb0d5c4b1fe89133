"""training/parallel.py against the plain model on CPU: FSDP2 with bf16 compute must compute what
the unwrapped model does in bf16, training through FSDP2 must train as the unwrapped model does,
the gradient norm must be torch's, and the compiler's selective recomputation
(activation_memory_budget < 1) must not change the math."""

import copy

import pytest
import torch
import torch._functorch.config as functorch_config
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import FSDPModule

from models import lm_head
from models.layers import Block, Stack
from models.lm_head import IGNORE_LABEL, sample_ids_from_cu_seqlens
from models.model import LanguageModel
from models.optimizer import AdamATan2
from tests.test_models import packed_context, packed_inputs, tiny_arch
from training.parallel import clip_grad_norm_, compile_units, reshard, shard_model


def cpu_mesh():
    """These tests compare CPU models: without a mesh, FSDP2 would move the wrapped one to a GPU."""
    return init_device_mesh("cpu", (1,))


@pytest.mark.parametrize("unit", ["stack", "block"])
def test_sharded_bf16_forward_equals_the_plain_bf16_model(one_rank_group, unit):
    """FSDP2's mixed precision casts the fp32 master weights to bf16 and must leave the rest alone:
    RoPE tables are fp32 (docs/DESIGN.md, "Model"; a Block receives them as inputs), so the wrapped model's
    logits equal, bit for bit, those of a bf16 copy of the model run without FSDP."""
    arch = tiny_arch("hrm")
    torch.manual_seed(0)
    sharded = LanguageModel(arch, 512)
    sharded.init_weights()
    plain_bf16 = copy.deepcopy(sharded).to(torch.bfloat16)
    shard_model(sharded, torch.bfloat16, mesh=cpu_mesh(), unit=unit)
    g = torch.Generator().manual_seed(0)
    ids, pos, cu, pre = packed_inputs([9, 5, 7], [4, 1, 3], 24, 512, g)
    ctx = packed_context(cu, pre, 24, arch)
    with torch.no_grad():
        expected = plain_bf16(ids, pos, ctx)
        got = sharded(ids, pos, ctx)
    assert got.dtype == torch.bfloat16
    torch.testing.assert_close(got, expected, rtol=0, atol=0)


@pytest.mark.parametrize("unit, unit_class", [("stack", Stack), ("block", Block)])
def test_compiled_units_with_a_memory_budget_match_eager(unit, unit_class, monkeypatch):
    """The compiled units and compiled chunk loss give eager's logits, loss, accuracy and gradients,
    also when the compiler recomputes activations in backward."""
    compiled_loss_calls = []

    def counted_compiled_token_loss(real=lm_head.compiled_token_loss):
        compiled_loss_calls.append(1)
        return real()

    monkeypatch.setattr(lm_head, "compiled_token_loss", counted_compiled_token_loss)
    arch = tiny_arch("hrm")
    torch.manual_seed(0)
    eager = LanguageModel(arch, 512)
    eager.init_weights()
    compiled = copy.deepcopy(eager)
    try:
        compile_units(compiled, activation_memory_budget=0.3, unit=unit)
        compiled_kinds = {type(m) for m in compiled.modules() if getattr(m, "_compiled_call_impl", None)}
        assert compiled_kinds == {unit_class}
        g = torch.Generator().manual_seed(0)
        ids, pos, cu, pre = packed_inputs([9, 5, 7], [4, 1, 3], 24, 512, g)
        labels = torch.randint(0, 512, (1, 24), generator=g)
        labels[0, ::3] = IGNORE_LABEL
        sample_ids = sample_ids_from_cu_seqlens(cu, 24)[None]
        outputs, compiled_loss_chunks = [], []
        for model in (eager, compiled):
            before = len(compiled_loss_calls)
            logits = model(ids, pos, packed_context(cu, pre, 24, arch))
            loss_sum, metrics = model(ids, pos, packed_context(cu, pre, 24, arch), labels=labels,
                                      sample_ids=sample_ids, num_samples=3)
            (logits.float().pow(2).mean() + loss_sum).backward()
            outputs.append((logits.detach(), loss_sum.detach(), metrics["token_accuracy"][0]))
            compiled_loss_chunks.append(len(compiled_loss_calls) - before)
    finally:
        functorch_config.activation_memory_budget = 1.0  # process-wide: leave other tests unaffected
    assert compiled_loss_chunks[0] == 0 and compiled_loss_chunks[1] > 0  # only the compiled model's loss ran compiled
    torch.testing.assert_close(outputs[1], outputs[0], rtol=1e-4, atol=1e-5)
    for (name, p_eager), p_compiled in zip(eager.named_parameters(), compiled.parameters()):
        torch.testing.assert_close(p_compiled.grad, p_eager.grad, rtol=1e-4, atol=1e-6, msg=name)


@pytest.mark.parametrize("unit, unit_class", [("stack", Stack), ("block", Block)])
def test_sharded_training_matches_the_plain_model(one_rank_group, unit, unit_class):
    """Three optimizer steps through FSDP2 (fp32 compute, parameters kept gathered through
    backward, then `reshard`) train exactly as the unwrapped model does, with torch's
    clip_grad_norm_ as the reference for the gradient norm and clipping. Without the reshard, the
    second forward would read the first step's gathered weights."""
    arch = tiny_arch("hrm")
    torch.manual_seed(0)
    plain = LanguageModel(arch, 512)
    plain.init_weights()
    sharded = shard_model(copy.deepcopy(plain), torch.float32, mesh=cpu_mesh(), unit=unit)
    # every unit, and nothing else but the root, is sharded on its own
    units = [m for m in sharded.modules() if isinstance(m, unit_class)]
    wrapped = [m for m in sharded.modules() if isinstance(m, FSDPModule)]
    assert units and all(isinstance(m, FSDPModule) for m in units) and len(wrapped) == len(units) + 1
    optimizers = [AdamATan2(m.parameters(), lr=1e-2, betas=(0.9, 0.95), weight_decay=0.1, ema=None)
                  for m in (plain, sharded)]
    g = torch.Generator().manual_seed(0)
    ids, pos, cu, pre = packed_inputs([9, 5, 7], [4, 1, 3], 24, 512, g)
    ctx = packed_context(cu, pre, 24, arch)
    for step in range(3):
        norms = []
        for model, optimizer, clip in ((plain, optimizers[0], torch.nn.utils.clip_grad_norm_),
                                       (sharded, optimizers[1], clip_grad_norm_)):
            model(ids, pos, ctx).float().pow(2).mean().backward()
            reshard(model)
            norms.append(clip(model.parameters(), 0.05))
        assert norms[0] > 0.05, "the reference must clip for the test to check clipping"
        torch.testing.assert_close(norms[1], norms[0], rtol=1e-5, atol=0)
        for (name, p_plain), p_sharded in zip(plain.named_parameters(), sharded.parameters()):
            if p_plain.grad is not None:
                torch.testing.assert_close(p_sharded.grad.full_tensor(), p_plain.grad, rtol=1e-5, atol=1e-8, msg=name)
        for optimizer in optimizers:
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
    # Each weight moves up to 3 x lr = 3e-2; atan2 turns the gradients' summation-order rounding
    # (asserted above to 1e-5) into differences of a few 1e-6 on elements whose moments are near
    # zero. A missed reshard or a wrong clip moves weights by ~1e-3 or more.
    for (name, p_plain), p_sharded in zip(plain.named_parameters(), sharded.parameters()):
        torch.testing.assert_close(p_sharded.full_tensor(), p_plain.detach(), rtol=1e-5, atol=2e-5, msg=name)


@pytest.mark.parametrize("max_norm", [None, 0.5, 100.0])
def test_clip_grad_norm_matches_torch_on_plain_tensors(max_norm):
    g = torch.Generator().manual_seed(0)
    params = [torch.nn.Parameter(torch.zeros(shape)) for shape in [(3, 4), (5,), (2, 2, 2)]]
    for p in params:
        p.grad = torch.randn(p.shape, generator=g)
    reference = [torch.nn.Parameter(p.detach().clone()) for p in params]
    for r, p in zip(reference, params):
        r.grad = p.grad.clone()
    got = clip_grad_norm_(params, max_norm)
    want = torch.nn.utils.clip_grad_norm_(reference, float("inf") if max_norm is None else max_norm)
    torch.testing.assert_close(got, want)
    for p, r in zip(params, reference):
        torch.testing.assert_close(p.grad, r.grad)


def test_clip_grad_norm_refuses_parameters_without_gradients():
    with pytest.raises(ValueError, match="after backward and reshard"):
        clip_grad_norm_([torch.nn.Parameter(torch.zeros(3))], 1.0)


def test_compile_units_refuses_another_unit_than_the_sharding_one(one_rank_group):
    """Compiling blocks inside stacks that FSDP2 wraps would trace its hooks into the graphs."""
    model = shard_model(LanguageModel(tiny_arch("hrm"), 512), torch.float32, mesh=cpu_mesh(), unit="stack")
    with pytest.raises(ValueError, match="sharded by another unit"):
        compile_units(model, unit="block")
    with pytest.raises(ValueError, match="unit must be one of"):
        compile_units(model, unit="layer")
