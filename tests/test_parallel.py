"""training/parallel.py's compiled blocks against the eager model (fp32, CPU): the compiler's
selective recomputation (activation_memory_budget < 1) must not change the math."""

import copy

import torch
import torch._functorch.config as functorch_config

from models.model import LanguageModel
from tests.test_models import packed_context, packed_inputs, tiny_arch
from training.parallel import compile_blocks


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
