"""The parts of the training loop (docs/DESIGN.md, "Training"): one step, the metrics window
between logs, when to checkpoint, and the stop request. pretrain.py composes them.
"""

import gc
import signal
import time
from collections import deque

import torch

from models.layers import PackedContext
from models.lm_head import IGNORE_LABEL, sample_ids_from_cu_seqlens
from training import checkpoint as ckpt
from training.distributed import all_reduce_sum
from training.parallel import clip_grad_norm_, reshard

# Dense bf16 datasheet peaks (TFLOP/s) for MFU; other devices report no MFU.
PEAK_BF16_TFLOPS = {"H100": 989.5, "H200": 989.5, "H800": 989.5, "A100": 312.0}


def peak_flops(device: torch.device) -> float | None:
    """The device's dense bf16 peak in FLOP/s, or None where it is not known (CPU, other GPUs)."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((tf * 1e12 for key, tf in PEAK_BF16_TFLOPS.items() if key in name), None)


def loss_normalizer(labels: torch.Tensor, world_size: int) -> torch.Tensor:
    """The all-ranks mean of valid-label counts (at least 1), which the summed loss is divided by.
    Counted on the device: a host number copied in would be a blocking copy, stalling the CPU
    until the GPU has drained every step."""
    valid = (labels != IGNORE_LABEL).sum(dtype=torch.float32)
    return (all_reduce_sum(valid) / world_size).clamp(min=1.0)


def train_step(model, optimizer, batch, layout, bp_steps, normalizer, num_samples, grad_clip):
    """Forward, backward, gradient norm (clipped to grad_clip unless None), optimizer update.
    Returns the step's (sum, count) metrics and the gradient norm."""
    inputs = batch["inputs"]
    sample_ids = sample_ids_from_cu_seqlens(batch["cu_seqlens"], inputs.shape[0])
    loss_sum, metrics = model(inputs[None].long(), batch["position_ids"][None].long(), PackedContext(layout), bp_steps,
                              labels=batch["labels"], sample_ids=sample_ids, num_samples=num_samples)
    (loss_sum / normalizer).backward()
    reshard(model)  # the gathered weights were kept through backward; the next forward gathers the updated ones
    grad_norm = clip_grad_norm_(model.parameters(), grad_clip)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return metrics, grad_norm


def freeze_startup_objects() -> None:
    """Exempt everything alive now from garbage collection. Call it after the first step: torch
    compilation leaves millions of long-lived Python objects, and every full collection would walk
    them all again in the middle of a step (host time the GPU waits for)."""
    gc.collect()
    gc.freeze()


class MetricsWindow:
    """The steps since the last log: (sum, count) metrics on the device, and this rank's tokens
    and executed FLOPs on the host, counted two ways: `flops` from the batch's real query-key
    pairs (MFU's headline, perf/mfu), `counted_flops` with attention as over half the context for
    every token (perf/mfu_counted, the convention of published MFU figures). `reduce` averages
    them over ranks and starts a new window."""

    def __init__(self, device: torch.device, world_size: int):
        self.device, self.world_size = device, world_size
        self.peak = peak_flops(device)
        self._reset()

    def _reset(self) -> None:
        self.sums: dict[str, torch.Tensor] = {}
        self.tokens, self.flops, self.counted_flops, self.start = 0, 0.0, 0.0, time.perf_counter()

    def add(self, metrics: dict, tokens: int, flops: float, counted_flops: float) -> None:
        for name, (total, count) in metrics.items():
            self.sums.setdefault(name, torch.zeros(2, device=self.device)).add_(torch.stack([total, count]))
        self.tokens += tokens
        self.flops += flops
        self.counted_flops += counted_flops

    def reduce(self) -> dict[str, float]:
        """Collective: every rank calls it. Means of the metrics, tokens/s, MFU and peak memory."""
        names = sorted(self.sums)
        packed = all_reduce_sum(torch.stack([self.sums[k] for k in names]))
        work = all_reduce_sum(torch.tensor([self.tokens, self.flops, self.counted_flops], dtype=torch.float64,
                                           device=self.device))
        values = {f"train/{k}": (v[0] / v[1].clamp(min=1)).item() for k, v in zip(names, packed)}
        elapsed = time.perf_counter() - self.start
        tokens_per_s = work[0].item() / elapsed
        values.update({"perf/tokens_per_s": tokens_per_s, "perf/tokens_per_s_per_device": tokens_per_s / self.world_size})
        if self.peak:
            values["perf/mfu"] = work[1].item() / elapsed / (self.world_size * self.peak)
            values["perf/mfu_counted"] = work[2].item() / elapsed / (self.world_size * self.peak)
            values["perf/peak_memory_gib"] = torch.cuda.max_memory_allocated(self.device) / 2**30
        self._reset()
        return values


def checkpoint_name(step: int, last_step: int, epoch_ended: bool, epoch: int, epochs: int, checkpoint_interval: int,
                    every_steps: int | None) -> str | None:
    """The checkpoint to write after `step` (in 0-based `epoch` of `epochs`): one at the end of every
    `checkpoint_interval`-th epoch and of the last (named for the 1-based epoch, as the reference
    names them), one at the last step and one every `every_steps` steps; None when none is due."""
    if epoch_ended and ((epoch + 1) % checkpoint_interval == 0 or epoch + 1 == epochs):
        return ckpt.epoch_checkpoint_name(epoch + 1)
    if step == last_step or (every_steps and step % every_steps == 0):
        return f"step_{step}"
    return None


class StopRequest:
    """SIGTERM (e.g. a scheduler's preemption) or Ctrl-C (SIGINT) asks for a checkpoint and a clean
    exit, acted on within a few steps whatever the log interval: every step the ranks sum their
    flags, and the sum is read LAG steps later. By then the device has long computed it, so reading
    it never stalls the host, and every rank reads the same sum at the same step. A second Ctrl-C
    aborts at once (KeyboardInterrupt), without the checkpoint. Under torchrun each rank gets one
    SIGINT per Ctrl-C: torchrun forwards it to workers it started in sessions of their own."""

    LAG = 2

    def __init__(self, device: torch.device, announce: bool):
        self.device, self.announce = device, announce
        self.signal: str | None = None  # the name of the first stop signal received
        self.sums: deque = deque()  # (host copy of a step's sum, event marking it ready)
        signal.signal(signal.SIGTERM, self._handle)
        signal.signal(signal.SIGINT, self._handle)

    @property
    def requested(self) -> bool:
        return self.signal is not None

    def _handle(self, signum, frame):
        if signum == signal.SIGINT:
            signal.signal(signal.SIGINT, signal.default_int_handler)  # the next Ctrl-C aborts
            if self.announce:
                print("\nCtrl-C: writing a checkpoint of this step, then exiting (Ctrl-C again aborts without one)",
                      flush=True)
        self.signal = self.signal or signal.Signals(signum).name

    def agreed(self) -> bool:
        """Collective, called every step: whether any rank had been asked to stop LAG steps ago."""
        total = all_reduce_sum(torch.tensor([float(self.requested)], device=self.device))
        ready = None
        if self.device.type == "cuda":
            ready = torch.cuda.Event()
            total = total.to("cpu", non_blocking=True)
            ready.record()
        self.sums.append((total, ready))
        if len(self.sums) <= self.LAG:
            return False
        total, ready = self.sums.popleft()
        if ready is not None:
            ready.synchronize()
        return total.item() > 0
