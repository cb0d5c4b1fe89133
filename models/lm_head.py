"""Loss and metrics of the LM head (DESIGN.md §4).

The loss is cross-entropy in fp32 *summed* over valid tokens; the trainer divides it by the
all-ranks mean of valid-token counts, so that summing gradients over ranks gives the gradient of
the global mean loss. Metrics are (sum, count) pairs so they can be reduced across ranks and steps.
"""

import torch
import torch.nn.functional as F

from dataset_new import IGNORE_LABEL  # the packing format's ignore label (its one home)


def sample_ids_from_cu_seqlens(cu_seqlens: torch.Tensor, total_len: int) -> torch.Tensor:
    """Index of the sample each packed token belongs to; padding-tail tokens get an index past the
    last real sample (they carry ignore labels, so they never count)."""
    positions = torch.arange(total_len, device=cu_seqlens.device, dtype=cu_seqlens.dtype)
    return torch.searchsorted(cu_seqlens, positions, right=True) - 1


def loss_and_metrics(logits: torch.Tensor, labels: torch.Tensor, sample_ids: torch.Tensor, num_samples: int):
    """logits [N, V], labels [N] (IGNORE_LABEL where not trained), sample_ids [N] in [0, num_samples].

    Returns (loss_sum, metrics) with metrics[name] = (sum, count), all fp32 and detached:
    `loss` (summed cross-entropy, valid tokens), `token_accuracy` (right argmax, valid tokens),
    `exact_accuracy` (samples whose every valid token is right, samples with any valid token).
    """
    valid = labels != IGNORE_LABEL
    loss_sum = F.cross_entropy(logits.float(), labels, ignore_index=IGNORE_LABEL, reduction="sum")
    with torch.no_grad():
        correct = (logits.argmax(-1) == labels) & valid
        per_sample = torch.zeros(num_samples + 1, dtype=torch.float32, device=logits.device)
        wrong = per_sample.index_add(0, sample_ids, (valid & ~correct).float())
        has_labels = per_sample.index_add(0, sample_ids, valid.float()) > 0
        n_valid = valid.sum().float()
        metrics = {
            "loss": (loss_sum.detach(), n_valid),
            "token_accuracy": (correct.sum().float(), n_valid),
            "exact_accuracy": ((has_labels & (wrong == 0)).sum().float(), has_labels.sum().float()),
        }
    return loss_sum, metrics
