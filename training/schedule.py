"""Learning-rate schedule: linear warmup, then cosine from lr down to lr * lr_min_ratio.
Steps count from 1 (the first update uses lr / warmup_steps), so a short run with `max_steps` is
exactly a prefix of the full run: the schedule depends only on the full run's total_steps."""

import math


def lr_at(step: int, total_steps: int, lr: float, warmup_steps: int, min_ratio: float) -> float:
    if step < warmup_steps:
        return lr * step / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return lr * (min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))
