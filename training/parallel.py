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
for very large models on many GPUs.

reshard_after_backward: FSDP2's default (True) frees them again after each gradient-carrying call's
backward, so a block with k such calls is gathered k - 1 more times in backward (HRM: 1-2 times per
block and step), each a copy on the GPU and several Python hooks on the host. Here they stay
gathered (no extra memory: forward already held them all) until `reshard(model)`, which the
training step calls once after backward so that the next forward gathers the updated weights.
"""

import torch
import torch._functorch.config as functorch_config
import torch.distributed as dist
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard
from torch.distributed.tensor import DTensor

from models.layers import Block
from models.model import LanguageModel


def shard_model(model: LanguageModel, compute_dtype: torch.dtype, reshard_after_forward: bool = False,
                reshard_after_backward: bool = False, mesh: DeviceMesh | None = None) -> LanguageModel:
    """mesh: FSDP2's default (None) is every rank on the accelerator if there is one, else the CPU."""
    policy = MixedPrecisionPolicy(param_dtype=compute_dtype, reduce_dtype=torch.float32)
    # A block's hidden-state input is already in compute_dtype (it comes from bf16 weights); its
    # other float inputs are the fp32 RoPE tables, which FSDP's default input cast would round to
    # bf16 (DESIGN.md §4 computes RoPE in fp32, as inference does).
    block_policy = MixedPrecisionPolicy(param_dtype=compute_dtype, reduce_dtype=torch.float32, cast_forward_inputs=False)
    for module in model.modules():
        if isinstance(module, Block):
            fully_shard(module, mesh=mesh, mp_policy=block_policy, reshard_after_forward=reshard_after_forward)
    fully_shard(model, mesh=mesh, mp_policy=policy, reshard_after_forward=reshard_after_forward)
    model.set_reshard_after_backward(reshard_after_backward)
    return model


def reshard(model: torch.nn.Module) -> None:
    """Free every FSDP2 module's gathered parameters (a no-op on an unwrapped model)."""
    for module in model.modules():
        if isinstance(module, FSDPModule):
            module.reshard()


def clip_grad_norm_(parameters, max_norm: float | None) -> torch.Tensor:
    """The global L2 norm of the gradients over all ranks; with max_norm, the gradients are scaled
    so that it is at most max_norm (as torch.nn.utils.clip_grad_norm_). Call it after `reshard`:
    until then an FSDP2 model's parameters are the gathered ones, which hold no gradient. Works on
    the local gradient shards: two foreach kernels and one all-reduce, where torch's version
    dispatches each DTensor gradient through Python (12 ms per HRM L step under cProfile on an
    H100, bench/RESULTS.md §13)."""
    grads = [p.grad for p in parameters if p.grad is not None]
    if not grads:
        raise ValueError("clip_grad_norm_: no parameter has a gradient (call it after backward and reshard)")
    dtensors = [g for g in grads if isinstance(g, DTensor)]
    if dtensors and (len(dtensors) < len(grads) or not all(pl.is_shard() for g in dtensors for pl in g.placements)):
        raise ValueError("clip_grad_norm_: every gradient must be a sharded DTensor (FSDP2), or none")
    group = dtensors[0].device_mesh.get_group() if dtensors else None
    local = [g.to_local() for g in dtensors] or grads
    total_sq = torch.stack(torch._foreach_norm(local)).float().square().sum()
    if group is not None and dist.get_world_size(group) > 1:
        dist.all_reduce(total_sq, group=group)  # the shards are disjoint: squared norms add up
    total = total_sq.sqrt()
    if max_norm is not None:
        torch._foreach_mul_(local, (max_norm / (total + 1e-6)).clamp(max=1.0))
    return total


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
