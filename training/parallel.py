"""FSDP2 wrapping: `fully_shard` per block and at the root, compute in `compute_dtype` with fp32
master weights and fp32 gradient reduction. The model definition knows nothing of this."""

import torch
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

from models.layers import Block
from models.model import LanguageModel


def shard_model(model: LanguageModel, compute_dtype: torch.dtype) -> LanguageModel:
    policy = MixedPrecisionPolicy(param_dtype=compute_dtype, reduce_dtype=torch.float32)
    for module in model.modules():
        if isinstance(module, Block):
            fully_shard(module, mp_policy=policy)
    fully_shard(model, mp_policy=policy)
    return model
