"""Loss and metrics of the LM head (docs/DESIGN.md, "Model").

The loss is cross-entropy in fp32 *summed* over valid tokens; the trainer divides it by the
all-ranks mean of valid-token counts, so that summing gradients over ranks gives the gradient of
the global mean loss. Metrics are (sum, count) pairs so they can be reduced across ranks and steps.
"""

import functools

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

# Labels equal to this are not trained on (prompts, padding); the data pipeline writes it.
IGNORE_LABEL = -100


def sample_ids_from_cu_seqlens(cu_seqlens: torch.Tensor, total_len: int) -> torch.Tensor:
    """Index of the sample each packed token belongs to; padding-tail tokens get an index past the
    last real sample (they carry ignore labels, so they never count)."""
    positions = torch.arange(total_len, device=cu_seqlens.device, dtype=cu_seqlens.dtype)
    return torch.searchsorted(cu_seqlens, positions, right=True) - 1


def token_loss(logits: torch.Tensor, labels: torch.Tensor):
    """Summed fp32 cross-entropy of a chunk's logits, and which of its tokens the argmax gets right."""
    loss_sum = F.cross_entropy(logits.float(), labels, ignore_index=IGNORE_LABEL, reduction="sum")
    return loss_sum, logits.detach().argmax(-1) == labels


@functools.cache
def compiled_token_loss():
    """token_loss under torch.compile, made once: eager, the fp32 copy of a chunk's logits, the
    softmax forward and backward and the argmax are each a pass over [chunk, vocab]."""
    return torch.compile(token_loss, dynamic=False, fullgraph=True)


def _chunk_loss(head, hidden: torch.Tensor, labels: torch.Tensor, compiled: bool):
    return (compiled_token_loss() if compiled else token_loss)(head(hidden), labels)


def loss_and_metrics(head, hidden: torch.Tensor, labels: torch.Tensor, sample_ids: torch.Tensor,
                     num_samples: int, chunk_size: int = 4096, compiled: bool = False):
    """hidden [N, D] -> head -> logits [N, V]; labels [N] (IGNORE_LABEL where not trained),
    sample_ids [N] in [0, num_samples]. compiled: each chunk's token_loss runs compiled.

    Computed `chunk_size` rows at a time, each chunk under activation checkpointing when training,
    so at most one chunk's logits (and their fp32 copy) are alive: the [N, V] logits of a 16k-token
    batch would otherwise cost several GB. Returns (loss_sum, metrics) with metrics[name] =
    (sum, count), fp32 and detached: `loss` (summed cross-entropy, valid tokens), `token_accuracy`
    (right argmax, valid tokens), `exact_accuracy` (samples whose every valid token is right,
    samples with any valid token).
    """
    valid = labels != IGNORE_LABEL
    training = torch.is_grad_enabled() and hidden.requires_grad
    losses, corrects = [], []
    for start in range(0, hidden.shape[0], chunk_size):
        rows = slice(start, start + chunk_size)
        if training:
            loss, correct = checkpoint(_chunk_loss, head, hidden[rows], labels[rows], compiled, use_reentrant=False)
        else:
            loss, correct = _chunk_loss(head, hidden[rows], labels[rows], compiled)
        losses.append(loss)
        corrects.append(correct)
    loss_sum = torch.stack(losses).sum()
    with torch.no_grad():
        correct = torch.cat(corrects) & valid
        per_sample = torch.zeros(num_samples + 1, dtype=torch.float32, device=hidden.device)
        wrong = per_sample.index_add(0, sample_ids, (valid & ~correct).float())
        has_labels = per_sample.index_add(0, sample_ids, valid.float()) > 0
        n_valid = valid.sum().float()
        metrics = {
            "loss": (loss_sum.detach(), n_valid),
            "token_accuracy": (correct.sum().float(), n_valid),
            "exact_accuracy": ((has_labels & (wrong == 0)).sum().float(), has_labels.sum().float()),
        }
    return loss_sum, metrics
