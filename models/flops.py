"""Executed FLOPs: the one place FLOPs are counted (README table, MFU logging, benches).

A matmul of an [n, k] by [k, m] costs 2nkm. Per token and layer, forward:
  projections 2 * (4 d^2 [gate,q,k,v] + d^2 [o] + 3 d f [SwiGLU]) and attention 2 * 2 d * S/2
  (scores and weighted values over, on average, half of a causal context of S tokens).
A call that carries gradient costs forward + backward = 3x its forward; a no-grad call 1x.
The LM head (2 d V forward) always trains. Embedding lookups and norms are not counted.
"""

from models.config import ArchConfig, StackConfig
from models.nets import NET_CLASSES


def stack_forward_flops_per_token(cfg: StackConfig, context_len: float) -> float:
    d, f = cfg.hidden_size, cfg.intermediate_size
    projections = 2 * (5 * d * d + 3 * d * f)
    attention = 2 * 2 * d * context_len / 2
    return cfg.n_layers * (projections + attention)


def executed_flops(arch: ArchConfig, vocab_size: int, num_tokens: int, attn_pairs: int,
                   bp_steps: int | None = None) -> float:
    """FLOPs one training step executes on a batch of `num_tokens` tokens whose samples attend
    `attn_pairs` (query, key) pairs (models.attention.query_key_pairs): the real work, where
    executed_flops_per_token counts attention as over half a full context for every token.
    A token attending k keys costs what a token at context 2k costs there."""
    if num_tokens == 0:
        return 0.0
    return num_tokens * executed_flops_per_token(arch, vocab_size, 2 * attn_pairs / num_tokens, bp_steps)


def executed_flops_per_token(arch: ArchConfig, vocab_size: int, context_len: float,
                             bp_steps: int | None = None, training: bool = True) -> float:
    """FLOPs executed per token by one training step (or one forward when training=False)."""
    net_cls = NET_CLASSES[arch.net]
    plan = net_cls.call_plan_for(arch, arch.bp_max_steps if bp_steps is None else bp_steps)
    stack_flops = {role: stack_forward_flops_per_token(arch.stack(role), context_len) for role in ("L", "H")}
    if net_cls.shared_stack:
        stack_flops["H"] = stack_flops["L"]
    total = 0.0
    for role, grad in plan:
        total += stack_flops[role] * (3 if grad and training else 1)
    head = 2 * arch.hidden_size * vocab_size
    return total + head * (3 if training else 1)
