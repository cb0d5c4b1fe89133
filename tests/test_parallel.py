"""training/parallel.py against the plain model on CPU: FSDP2 with bf16 compute must compute what
the unwrapped model does in bf16, and the compiler's selective recomputation
(activation_memory_budget < 1) must not change the math."""

import copy

import torch
import torch._functorch.config as functorch_config

from models.model import LanguageModel
from tests.test_models import packed_context, packed_inputs, tiny_arch
from training.parallel import compile_blocks, shard_model


def test_sharded_bf16_forward_equals_the_plain_bf16_model(one_rank_group):
    """FSDP2's mixed precision casts the fp32 master weights to bf16 and must leave the rest alone:
    RoPE tables are fp32 (DESIGN.md §4), so the wrapped model's logits equal, bit for bit, those
    of a bf16 copy of the model run without FSDP."""
    arch = tiny_arch("hrm")
    torch.manual_seed(0)
    sharded = LanguageModel(arch, 512)
    sharded.init_weights()
    plain_bf16 = copy.deepcopy(sharded).to(torch.bfloat16)
    shard_model(sharded, torch.bfloat16)
    g = torch.Generator().manual_seed(0)
    ids, pos, cu, pre = packed_inputs([9, 5, 7], [4, 1, 3], 24, 512, g)
    ctx = packed_context(cu, pre, 24, arch)
    with torch.no_grad():
        expected = plain_bf16(ids, pos, ctx)
        got = sharded(ids, pos, ctx)
    assert got.dtype == torch.bfloat16
    torch.testing.assert_close(got, expected, rtol=0, atol=0)


def test_compiled_blocks_with_a_memory_budget_match_eager():
    arch = tiny_arch("hrm")
    torch.manual_seed(0)
    eager = LanguageModel(arch, 512)
    eager.init_weights()
    compiled = copy.deepcopy(eager)
    try:
        compile_blocks(compiled, activation_memory_budget=0.3)
        g = torch.Generator().manual_seed(0)
        ids, pos, cu, pre = packed_inputs([9, 5, 7], [4, 1, 3], 24, 512, g)
        outputs = []
        for model in (eager, compiled):
            logits = model(ids, pos, packed_context(cu, pre, 24, arch))
            logits.float().pow(2).mean().backward()
            outputs.append(logits.detach())
    finally:
        functorch_config.activation_memory_budget = 1.0  # process-wide: leave other tests unaffected
    torch.testing.assert_close(outputs[1], outputs[0], rtol=1e-4, atol=1e-5)
    for (name, p_eager), p_compiled in zip(eager.named_parameters(), compiled.parameters()):
        torch.testing.assert_close(p_compiled.grad, p_eager.grad, rtol=1e-4, atol=1e-6, msg=name)
