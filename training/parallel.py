"""FSDP2 wrapping: `fully_shard` per block and at the root, compute in `compute_dtype` with fp32
master weights and fp32 gradient reduction; and the per-block torch.compile of a training step.
The model definition knows nothing of this.

reshard_after_forward: FSDP2's default (True) frees a block's gathered bf16 parameters after each
forward call and gathers them again at the next call and in backward. A recurrent net calls each
block several times per step (HRM: every L block 6 times, every H block twice, and again for each
gradient-carrying call in backward), so resharding repeats the all-gather (and the fp32 -> bf16
cast) up to ~13 times per block and step. Keeping the gathered copy for the step costs 2 bytes per
parameter on every rank (about 1.2 GB for size L, 2.4 GB for XL) and gathers each block once in
forward; that is the default here (`reshard_after_forward=False`). Pass True to save that memory
for very large models on many GPUs. Backward still frees them after each gradient-carrying call
(FSDP2's reshard_after_backward), so a block with k such calls is gathered k - 1 more times in
backward (HRM: 1-2 times per block and step). Keeping them would need an explicit reshard before
each optimizer step (or the next forward reads stale weights); not done, as it is not measured.
"""

import torch
import torch._functorch.config as functorch_config
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

from models.layers import Block
from models.model import LanguageModel


def shard_model(model: LanguageModel, compute_dtype: torch.dtype, reshard_after_forward: bool = False) -> LanguageModel:
    policy = MixedPrecisionPolicy(param_dtype=compute_dtype, reduce_dtype=torch.float32)
    # A block's hidden-state input is already in compute_dtype (it comes from bf16 weights); its
    # other float inputs are the fp32 RoPE tables, which FSDP's default input cast would round to
    # bf16 (DESIGN.md §4 computes RoPE in fp32, as inference does).
    block_policy = MixedPrecisionPolicy(param_dtype=compute_dtype, reduce_dtype=torch.float32, cast_forward_inputs=False)
    for module in model.modules():
        if isinstance(module, Block):
            fully_shard(module, mp_policy=block_policy, reshard_after_forward=reshard_after_forward)
    fully_shard(model, mp_policy=policy, reshard_after_forward=reshard_after_forward)
    return model


def compile_blocks(model: LanguageModel, fullgraph: bool = False, activation_memory_budget: float = 1.0) -> LanguageModel:
    """torch.compile every Block in place (the unit FSDP2 wraps, so its hooks stay outside the
    graph). Shapes are static (fixed packed batches), so `dynamic=False`. One graph per grad mode
    serves every block and every module call of the recurrence: the `call` index is unused on
    packed batches, and parameters are graph inputs, so no recompiles across blocks or bp_steps.

    activation_memory_budget < 1 is selective activation checkpointing done by the compiler: the
    backward graph recomputes the cheapest forward results (by FLOPs) until what a block saves
    fits that fraction of what it would save otherwise (torch._functorch's partitioner knob; a
    process-wide setting)."""
    functorch_config.activation_memory_budget = activation_memory_budget
    for module in model.modules():
        if isinstance(module, Block):
            module.compile(dynamic=False, fullgraph=fullgraph)
    return model
