"""The language model: scaled token embedding -> net (recurrence of stacks) -> untied LM head."""

import torch
from torch import nn

from models.config import ArchConfig, round_up
from models.layers import AttentionContext, StaticKVCache, trunc_normal_
from models.lm_head import loss_and_metrics
from models.nets import build_net


def model_vocab_size(tokenizer_vocab_size: int) -> int:
    """The model's vocabulary: the tokenizer's rounded up to a multiple of 256 (kernel-friendly)."""
    return round_up(tokenizer_vocab_size, 256)


class LanguageModel(nn.Module):
    def __init__(self, arch: ArchConfig, vocab_size: int):
        super().__init__()
        self.arch = arch
        self.vocab_size = vocab_size
        self.embed_tokens = nn.Embedding(vocab_size, arch.hidden_size)
        self.net = build_net(arch)
        self.embedding_std = arch.embedding_std
        self.embedding_scale = 1.0 / self.embedding_std
        self.lm_head = nn.Linear(arch.hidden_size, vocab_size, bias=False)
        self.compiled_loss = False  # set by training.parallel.compile_units (models/lm_head.py)

    @torch.no_grad()
    def init_weights(self) -> None:
        trunc_normal_(self.embed_tokens.weight, self.embedding_std)
        trunc_normal_(self.lm_head.weight, self.embedding_std)
        self.net.init_weights()

    def forward(self, input_ids: torch.Tensor, position_ids: torch.Tensor, ctx: AttentionContext,
                bp_steps: int | None = None, labels: torch.Tensor | None = None,
                sample_ids: torch.Tensor | None = None, num_samples: int = 0):
        """input_ids/position_ids [B, T] -> logits [B, T, V]; bp_steps defaults to bp_max_steps.
        With labels (and sample_ids, num_samples; see models/lm_head.py): (loss_sum, metrics)
        instead, computed in chunks so the full logits never exist."""
        z = self.hidden_states(input_ids, position_ids, ctx, bp_steps)
        if labels is None:
            return self.lm_head(z)
        return loss_and_metrics(self.lm_head, z.flatten(0, 1), labels.flatten(), sample_ids.flatten(), num_samples,
                                compiled=self.compiled_loss)

    def hidden_states(self, input_ids: torch.Tensor, position_ids: torch.Tensor, ctx: AttentionContext,
                      bp_steps: int | None = None) -> torch.Tensor:
        """The net's output z [B, T, hidden], before the LM head (generation's prefill needs the
        logits of each prompt's last token only)."""
        x = self.embed_tokens(input_ids) * self.embedding_scale
        return self.net(x, self.net.rope_tables(position_ids), ctx, self.arch.bp_max_steps if bp_steps is None else bp_steps)

    def new_kv_cache(self, batch_size: int, max_len: int, dtype=None, device=None) -> StaticKVCache:
        ref = self.lm_head.weight
        return StaticKVCache(self.net.num_calls, self.net.layers_per_call, batch_size, max_len,
                             self.arch.num_heads, self.arch.head_dim, dtype or ref.dtype, device or ref.device)

    def kv_cache_bytes_per_row(self, max_len: int, dtype=None) -> int:
        return StaticKVCache.bytes_per_row(self.net.num_calls, self.net.layers_per_call, max_len, self.arch.num_heads,
                                           self.arch.head_dim, dtype or self.lm_head.weight.dtype)
