"""Parallelism and compilation of a model for training: `parallelize` shards (FSDP2
`fully_shard` per unit and at the root, compute in `compute_dtype` with fp32 master weights and
fp32 gradient reduction) and compiles the same units. The model definition knows nothing of this.

The unit of sharding and of compilation is a Stack by default (`shard_unit` in the training
config): every call of a unit costs host time (FSDP2's pre/post-forward and backward hooks, the
compiled graph's runtime wrappers), and a recurrent net calls its blocks many times per step
(HRM L: 156 block calls in forward and backward, 13 stack calls); per block, HRM L's step was
host-bound on Hopper. The cost: a stack's all-gather and reduce-scatter overlap with the other stack's compute rather
than layer by layer, and a Transformer (one stack) overlaps none. Multi-node runs of the
Transformer baseline on a slow interconnect may prefer `shard_unit=block`.

reshard_after_forward: FSDP2's default (True) frees a unit's gathered bf16 parameters after each
forward call and gathers them again at the next call and in backward. A recurrent net calls each
stack several times per step (HRM: the L stack 6 times, the H stack twice, and again for each
gradient-carrying call in backward), so resharding repeats the all-gather (and the fp32 -> bf16
cast) up to ~13 times per unit and step. Keeping the gathered copy for the step costs 2 bytes per
parameter on every rank (about 1.2 GB for size L, 2.4 GB for XL) and gathers each unit once in
forward; that is the default here (`reshard_after_forward=False`). Pass True (with
`shard_unit=block`, so that only one block is gathered at a time) to save that memory for very
large models on many GPUs.

reshard_after_backward: FSDP2's default (True) frees them again after each gradient-carrying call's
backward, so a unit with k such calls is gathered k - 1 more times in backward (HRM: 1-2 times per
unit and step), each a copy on the GPU and several Python hooks on the host. Here they stay
gathered (no extra memory: forward already held them all) until `reshard(model)`, which the
training step calls once after backward so that the next forward gathers the updated weights.
"""

import torch
import torch._functorch.config as functorch_config
import torch.distributed as dist
from torch import nn
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard
from torch.distributed.tensor import DTensor

from models.layers import Block, Stack
from models.model import LanguageModel

UNITS: dict[str, type[nn.Module]] = {"stack": Stack, "block": Block}


def unit_modules(model: nn.Module, unit: str) -> list[nn.Module]:
    """The modules of kind `unit` ("stack" or "block") in `model`."""
    if unit not in UNITS:
        raise ValueError(f"unit must be one of {sorted(UNITS)}, got {unit!r}")
    return [module for module in model.modules() if isinstance(module, UNITS[unit])]


def shard_model(model: LanguageModel, compute_dtype: torch.dtype, reshard_after_forward: bool = False,
                reshard_after_backward: bool = False, mesh: DeviceMesh | None = None,
                unit: str = "stack") -> LanguageModel:
    """mesh: FSDP2's default (None) is every rank on the accelerator if there is one, else the CPU.
    unit: which modules are sharded on their own, "stack" or "block" (see above)."""
    policy = MixedPrecisionPolicy(param_dtype=compute_dtype, reduce_dtype=torch.float32)
    # A unit's hidden-state input is already in compute_dtype (it comes from bf16 weights). Its
    # other float inputs are the fp32 RoPE tables (made once per forward by the net), which FSDP's
    # default input cast would round to bf16 (docs/DESIGN.md, "Model": RoPE is computed in fp32, as
    # inference does); skipping the cast also spares a walk over the attention context at every call.
    unit_policy = MixedPrecisionPolicy(param_dtype=compute_dtype, reduce_dtype=torch.float32, cast_forward_inputs=False)
    for module in unit_modules(model, unit):
        fully_shard(module, mesh=mesh, mp_policy=unit_policy, reshard_after_forward=reshard_after_forward)
    fully_shard(model, mesh=mesh, mp_policy=policy, reshard_after_forward=reshard_after_forward)
    model.set_reshard_after_backward(reshard_after_backward)
    return model


def reshard(model: nn.Module) -> None:
    """Free every FSDP2 module's gathered parameters (a no-op on an unwrapped model)."""
    for module in model.modules():
        if isinstance(module, FSDPModule):
            module.reshard()


def clip_grad_norm_(parameters, max_norm: float | None) -> torch.Tensor:
    """The global L2 norm of the gradients over all ranks; with max_norm, the gradients are scaled
    so that it is at most max_norm (as torch.nn.utils.clip_grad_norm_). Call it after `reshard`:
    until then an FSDP2 model's parameters are the gathered ones, which hold no gradient. Works on
    the local gradient shards: two foreach kernels and one all-reduce, where torch's version
    dispatches each DTensor gradient through Python, one by one."""
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


def compile_units(model: LanguageModel, fullgraph: bool = False, activation_memory_budget: float | None = 1.0,
                  unit: str = "stack") -> LanguageModel:
    """torch.compile every unit in place (the module FSDP2 wraps, so its hooks stay outside the
    graph). Shapes are static (fixed packed batches; generation pads its prefills to a few
    lengths), so `dynamic=False`. One graph per grad mode
    serves every unit of the same depth and every module call of the recurrence: parameters and a
    call's KV cache (generation, `AttentionContext.at_call`) are graph inputs, so no recompiles
    across stacks (unless H_override gives the H stack another depth) or bp_steps. Generation
    (simple_inference_engine.py) compiles the same units.

    activation_memory_budget < 1 is selective activation checkpointing done by the compiler: the
    backward graph recomputes the cheapest forward results (by FLOPs) until what a unit saves
    fits that fraction of what it would save otherwise (torch._functorch's partitioner knob; a
    process-wide setting).

    On a sharded model, `unit` must be shard_model's: compiling another unit would trace FSDP2's
    hooks into the graphs."""
    modules = unit_modules(model, unit)
    if isinstance(model, FSDPModule) and not all(isinstance(module, FSDPModule) for module in modules):
        raise ValueError(f"compile_units(unit={unit!r}): the model is sharded by another unit; pass shard_model's unit")
    if activation_memory_budget is not None:  # None (generation: no backward) leaves the setting alone
        functorch_config.activation_memory_budget = activation_memory_budget
    for module in modules:
        module.compile(dynamic=False, fullgraph=fullgraph)
    model.compiled_loss = True  # the chunked loss's per-chunk part too
    return model


def parallelize(model: LanguageModel, compute_dtype: torch.dtype, unit: str = "stack", compile: bool = False,
                activation_memory_budget: float = 1.0, mesh: DeviceMesh | None = None) -> LanguageModel:
    """Shard `model` by `unit` and, with `compile`, compile the same units: the training's one
    entry to both, so that the two always agree on the unit."""
    shard_model(model, compute_dtype, mesh=mesh, unit=unit)
    if compile:
        compile_units(model, activation_memory_budget=activation_memory_budget, unit=unit)
    return model
