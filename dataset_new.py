"""PrefixLM packed batches over a sampled dataset (docs/DESIGN.md, "Data format"): the one home of the packing format.

Packing a sample with instruction `i` and response `o` (PrefixLM, task completion):
  inputs        i ++ o[:-1]                              (len(i) + len(o) - 1 tokens)
  labels        [IGNORE_LABEL] * (len(i) - 1) ++ o       (target_only, the default)
                i[1:] ++ o                               (target_only=False)
  position_ids  0 .. len(i) + len(o) - 2
  prefix length len(i) (bidirectional), causal length len(o) - 1; the last instruction token
  predicts o[0].

A rank's batch (`pack`, and what PackedDataset yields) is a pair (batch, stats):
  batch: dict of CPU tensors with fixed shapes, L = batch_max_length, M = max_samples_per_batch
    inputs        int32 [L]    samples back to back, then 0 (padding tail)
    labels        int64 [L]    as above, IGNORE_LABEL on the padding tail
    position_ids  int32 [L]    restart at 0 per sample, 0 on the padding tail
    cu_seqlens    int32 [M+1]  sample boundaries; after the last real sample the entries repeat
                               the real token total (zero-length padding samples)
    prefix_lens   int32 [M]    len(i) per sample, 0 for padding slots
    causal_lens   int32 [M]    len(o) - 1 per sample, 0 for padding slots
  stats: dict of host-side Python ints
    num_tokens (real tokens, = cu_seqlens[num_samples]), num_samples, num_label_tokens (labels
    != IGNORE_LABEL), max_seqlen, max_prefix_len, max_causal_len (0 for an empty batch); from
    PackedDataset also epoch and step (the batch's index within its epoch).
"""

import dataclasses
import json
import logging
import queue
import threading
from pathlib import Path

import numpy as np
import torch

from data_io import DataError
from data_io.spans import length_policy, load_spans, load_tokens
from models.lm_head import IGNORE_LABEL
from multipack_sampler import MultipackDistributedBatchSampler

FIX = "rebuild the dataset with `python -m data_io.sample_tokenized` (or `python -m data_io.demo`)"
log = logging.getLogger(__name__)


def pack(samples: list[tuple[np.ndarray, np.ndarray]], batch_max_length: int, max_samples: int,
         target_only: bool = True) -> tuple[dict[str, torch.Tensor], dict[str, int]]:
    """Pack (instruction, response) token arrays into one fixed-shape batch; see the module docstring."""
    L, M = batch_max_length, max_samples
    inputs = np.zeros(L, np.int32)
    labels = np.full(L, IGNORE_LABEL, np.int64)
    position_ids = np.zeros(L, np.int32)
    cu_seqlens = np.zeros(M + 1, np.int32)
    prefix_lens = np.zeros(M, np.int32)
    causal_lens = np.zeros(M, np.int32)
    if len(samples) > M:
        raise ValueError(f"{len(samples)} samples exceed max_samples_per_batch={M}")
    pos = 0
    for k, (inst, resp) in enumerate(samples):
        n_i, n_o = len(inst), len(resp)
        if n_i < 1 or n_o < 1:
            raise ValueError(f"sample {k}: need len(i) >= 1 and len(o) >= 1, got {n_i}, {n_o}")
        end = pos + n_i + n_o - 1
        if end > L:
            raise ValueError(f"samples need {end}+ tokens, over batch_max_length={L}")
        inputs[pos:pos + n_i] = inst
        inputs[pos + n_i:end] = resp[:-1]
        labels[pos + n_i - 1:end] = resp
        if not target_only:
            labels[pos:pos + n_i - 1] = inst[1:]
        position_ids[pos:end] = np.arange(end - pos)
        prefix_lens[k], causal_lens[k] = n_i, n_o - 1
        cu_seqlens[k + 1] = end
        pos = end
    cu_seqlens[len(samples) + 1:] = pos
    batch = {"inputs": inputs, "labels": labels, "position_ids": position_ids, "cu_seqlens": cu_seqlens,
             "prefix_lens": prefix_lens, "causal_lens": causal_lens}
    n = len(samples)
    stats = {"num_tokens": pos, "num_samples": n, "num_label_tokens": int((labels != IGNORE_LABEL).sum()),
             "max_seqlen": int((prefix_lens + causal_lens).max()) if n else 0,
             "max_prefix_len": int(prefix_lens.max()) if n else 0,
             "max_causal_len": int(causal_lens.max()) if n else 0}
    return {k: torch.from_numpy(v) for k, v in batch.items()}, stats


@dataclasses.dataclass
class _EpochPlan:
    inst_start: np.ndarray
    inst_len: np.ndarray
    resp_start: np.ndarray
    resp_len: np.ndarray
    sampler: MultipackDistributedBatchSampler
    counts: dict[str, int]
    first_step: int = 0  # an epoch resumed under another packing plan: its sampler plans the steps from here
    first_sample: int = 0  # ... over the samples from here


def default_max_samples(batch_max_length: int) -> int:
    """Sample slots per batch when the config leaves them unset: room for samples of 4 tokens."""
    return max(1, batch_max_length // 4)


class PackedDataset:
    """This rank's packed batches, one per global step, over `epochs` epochs of a sampled dataset.

    path                   sampled dataset folder (metadata.json, tokens.npy, epoch_{e}/)
    global_batch_size      tokens per global step over all ranks; batch_max_length L is
                           global_batch_size // num_replicas
    num_replicas, rank     data-parallel world size and this process's rank
    epochs                 epoch e reads epoch_{e}/; with fewer folders it cycles (logged once)
    target_only            labels on the response only (default) or on everything after i[0]
    max_seq_len            the most tokens len(i) + len(o) a sample may have (the sampled
                           max_seq_len by default; never more than L + 1). Longer samples get their
                           response cut to fit, or are dropped when no response token would remain;
                           samples with an empty response are dropped. Every other sample the
                           sampler wrote trains, as in the reference's loader: a 1-token response
                           (an instruction one token short of the context) is one label, predicted
                           by the last instruction token. Counted per epoch: `drop_counts(epoch)`.
    max_samples_per_batch  M, the fixed number of sample slots per batch (default L // 4); the
                           sampler never puts more samples on a rank
    pin_memory             pin batches for fast host-to-device copies (default: CUDA available)
    prefetch               batches prepared ahead by the background loader thread

    Iterating yields (batch, stats) (see the module docstring) from the current position to the end
    of the last epoch; batches are packed in a background thread. `state_dict()` after receiving a
    batch is the position of the next one; a new instance given it by `load_state_dict` yields
    exactly the remaining batches. `steps_per_epoch(e)` and `len()` (all epochs) give schedule lengths.
    """

    def __init__(self, path: str, global_batch_size: int, num_replicas: int = 1, rank: int = 0, epochs: int = 1,
                 target_only: bool = True, max_seq_len: int | None = None, max_samples_per_batch: int | None = None,
                 pin_memory: bool | None = None, prefetch: int = 4):
        self.path = Path(path)
        if global_batch_size % num_replicas:
            raise ValueError(f"global_batch_size {global_batch_size} is not divisible by num_replicas "
                             f"{num_replicas}; pick a multiple so every rank gets the same token budget")
        self.batch_max_length = global_batch_size // num_replicas
        self.max_samples_per_batch = max_samples_per_batch or default_max_samples(self.batch_max_length)
        self.num_replicas, self.rank, self.epochs = num_replicas, rank, epochs
        self.target_only = target_only
        self.pin_memory = torch.cuda.is_available() if pin_memory is None else pin_memory
        self.prefetch = prefetch

        meta_file = self.path / "metadata.json"
        if not meta_file.is_file():
            raise DataError(f"{meta_file} is missing: {self.path} is not a sampled dataset; {FIX}")
        try:
            self.metadata = json.loads(meta_file.read_text())
            self.tokenizer_info = self.metadata["tokenizer_info"]
            self.vocab_size = int(self.tokenizer_info["vocab_size"])
            sampled_max = int(self.metadata["max_seq_len"])
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as err:
            raise DataError(f"{meta_file}: unreadable or missing field ({err!r}); it needs tokenizer_info."
                            f"vocab_size and max_seq_len; {FIX}") from None
        self.max_seq_len = min(max_seq_len or sampled_max, self.batch_max_length + 1)
        self.tokens = load_tokens(self.path / "tokens.npy", FIX)
        self.num_epoch_dirs = 0
        while (self.path / f"epoch_{self.num_epoch_dirs}").is_dir():
            self.num_epoch_dirs += 1
        if self.num_epoch_dirs == 0:
            raise DataError(f"{self.path / 'epoch_0'} is missing: no epoch folders in {self.path}; {FIX}")
        if epochs > self.num_epoch_dirs:
            log.warning("%s has %d epoch folders for %d epochs: epoch e reuses epoch_{e %% %d} (its order repeats)",
                        self.path, self.num_epoch_dirs, epochs, self.num_epoch_dirs)
        self._plans: dict[int | tuple, _EpochPlan] = {}
        self._epoch, self._step = 0, 0
        self._replanned: tuple[int, int, int] | None = None  # (epoch, step, first sample): see load_state_dict

    def _plan(self, epoch: int) -> _EpochPlan:
        """Spans kept after the length policy, and the multipack plan, for an epoch (cached)."""
        folder = epoch % self.num_epoch_dirs
        if self._replanned and self._replanned[0] == epoch:
            key = ("replanned", *self._replanned)
            if key not in self._plans:
                _, first_step, first = self._replanned
                full = self._plan_of_folder(folder)
                rest = full.inst_len[first:] + full.resp_len[first:] - 1
                sampler = MultipackDistributedBatchSampler(self.batch_max_length, rest, self.num_replicas, self.rank,
                                                           max_samples_per_rank=self.max_samples_per_batch)
                self._plans[key] = dataclasses.replace(full, sampler=sampler, first_step=first_step, first_sample=first)
            return self._plans[key]
        return self._plan_of_folder(folder)

    def _plan_of_folder(self, folder: int) -> _EpochPlan:
        if folder not in self._plans:
            spans = load_spans(self.path / f"epoch_{folder}", len(self.tokens), FIX)
            inst_len = spans["inst_len"]
            # a 1-token response still has a label (the last instruction token predicts it): kept,
            # as data_io's sampler keeps it at the context edge
            keep, resp_len, counts = length_policy(inst_len, spans["resp_len"], self.max_seq_len, min_resp_len=1)
            if counts["kept"] < counts["rows"]:
                log.warning("%s epoch_%d: %s", self.path, folder, counts)
            sampler = MultipackDistributedBatchSampler(
                self.batch_max_length, inst_len[keep] + resp_len[keep] - 1, self.num_replicas, self.rank,
                max_samples_per_rank=self.max_samples_per_batch)
            self._plans[folder] = _EpochPlan(spans["inst_start"][keep], inst_len[keep], spans["resp_start"][keep],
                                             resp_len[keep], sampler, counts)
        return self._plans[folder]

    def steps_per_epoch(self, epoch: int) -> int:
        plan = self._plan(epoch)
        return plan.first_step + len(plan.sampler)

    def __len__(self) -> int:
        return sum(self.steps_per_epoch(e) for e in range(self.epochs))

    def drop_counts(self, epoch: int) -> dict[str, int]:
        return dict(self._plan(epoch).counts)

    def efficiency(self, epoch: int) -> float:
        return self._plan(epoch).sampler.efficiency()

    def _plan_key(self) -> dict[str, int]:
        """What fixes the packing plan: a position means the same samples only under the same one."""
        return {"num_replicas": self.num_replicas, "batch_max_length": self.batch_max_length,
                "max_samples_per_batch": self.max_samples_per_batch, "max_seq_len": self.max_seq_len}

    def _samples_before(self, epoch: int, step: int) -> int:
        """Samples of the epoch that its steps before `step` trained on (a prefix of its order)."""
        if epoch >= self.epochs:
            return 0
        plan = self._plan(epoch)
        return plan.first_sample + plan.sampler.samples_before(step - plan.first_step)

    def state_dict(self) -> dict:
        state = {"epoch": self._epoch, "step": self._step, "plan": self._plan_key(),
                 "sample": self._samples_before(self._epoch, self._step)}
        if self._replanned and self._replanned[0] == self._epoch:
            state["replanned"] = list(self._replanned[1:])  # where this epoch's plan starts: (step, sample)
        return state

    def load_state_dict(self, state: dict) -> None:
        """Continue at a saved position. Saved under another packing plan (another world size,
        global_batch_size or max_samples_per_batch), the rest of that epoch is planned again for
        this one: a global step takes the next samples in the epoch's order, so the samples its
        steps trained on are a prefix of it, and no sample is skipped or repeated. The epoch's step
        count, and so the schedule's length, can then change by a few steps. A position inside such
        an epoch records where its plan starts, so a later resume continues the same plan."""
        saved_plan = state.get("plan")  # absent in positions saved before it was recorded
        epoch, step = int(state["epoch"]), int(state["step"])
        if saved_plan == self._plan_key() and "replanned" in state:  # the same replanned epoch, continued
            self._replanned = (epoch, *map(int, state["replanned"]))
        elif saved_plan is not None and saved_plan != self._plan_key():
            diffs = ", ".join(f"{k}: saved {saved_plan.get(k)}, now {v}" for k, v in self._plan_key().items()
                              if saved_plan.get(k) != v)
            if saved_plan.get("max_seq_len") != self.max_seq_len:
                raise DataError(f"{self.path}: the saved data position was planned with another max_seq_len "
                                f"({diffs}), which keeps other samples; resume with the run's data settings "
                                "(and global_batch_size / number of GPUs giving the same max_seq_len), or start a new run")
            if epoch < self.epochs:
                first = state.get("sample")
                if first is None:  # saved before positions recorded it: plan the saved way and count
                    lengths = self._plan(epoch).inst_len + self._plan(epoch).resp_len - 1
                    first = MultipackDistributedBatchSampler(
                        saved_plan["batch_max_length"], lengths, saved_plan["num_replicas"], 0,
                        max_samples_per_rank=saved_plan["max_samples_per_batch"]).samples_before(step)
                self._replanned = (epoch, step, int(first))
            log.warning("%s: data position saved under another packing plan (%s): the rest of epoch %d is "
                        "planned again for this one", self.path, diffs, epoch)
        if not (0 <= epoch <= self.epochs and 0 <= step <= (self.steps_per_epoch(epoch) if epoch < self.epochs else 0)):
            raise ValueError(f"dataset position {state} is outside this dataset's {self.epochs} epochs")
        self._epoch, self._step = epoch, step

    def batch(self, epoch: int, step: int) -> tuple[dict[str, torch.Tensor], dict[str, int]]:
        """This rank's batch at (epoch, step), packed on the calling thread."""
        plan = self._plan(epoch)
        samples = []
        for k in plan.sampler[step - plan.first_step] + plan.first_sample:
            inst = np.asarray(self.tokens[plan.inst_start[k]:plan.inst_start[k] + plan.inst_len[k]], np.int64)
            resp = np.asarray(self.tokens[plan.resp_start[k]:plan.resp_start[k] + plan.resp_len[k]], np.int64)
            if inst.max() >= self.vocab_size or resp.max() >= self.vocab_size or min(inst.min(), resp.min()) < 0:
                raise DataError(f"{self.path / 'tokens.npy'}: a sample of epoch {epoch} (spans at "
                                f"{plan.inst_start[k]}, {plan.resp_start[k]}) holds token ids outside "
                                f"[0, vocab_size={self.vocab_size}) of metadata.json; {FIX}")
            samples.append((inst, resp))
        batch, stats = pack(samples, self.batch_max_length, self.max_samples_per_batch, self.target_only)
        if self.pin_memory:
            batch = {k: v.pin_memory() for k, v in batch.items()}
        return batch, {**stats, "epoch": epoch, "step": step}

    def _positions(self, epoch: int, step: int):
        while epoch < self.epochs:
            for s in range(step, self.steps_per_epoch(epoch)):
                yield epoch, s
            epoch, step = epoch + 1, 0

    def __iter__(self):
        for e in range(self._epoch, self.epochs):  # plan on this thread: errors surface here
            self._plan(e)
        items: queue.Queue = queue.Queue(maxsize=self.prefetch)
        stop = threading.Event()
        done = object()

        def put(item) -> bool:
            while not stop.is_set():
                try:
                    items.put(item, timeout=0.1)
                    return True
                except queue.Full:
                    pass
            return False

        def produce():
            try:
                for epoch, step in self._positions(self._epoch, self._step):
                    if not put((epoch, step, *self.batch(epoch, step))):
                        return
                put(done)
            except BaseException as err:  # handed to the consumer, raised there
                put(err)

        loader = threading.Thread(target=produce, name="PackedDataset-loader", daemon=True)
        loader.start()
        try:
            while (item := items.get()) is not done:
                if isinstance(item, BaseException):
                    raise item
                epoch, step, batch, stats = item
                last = step + 1 == self.steps_per_epoch(epoch)
                self._epoch, self._step = (epoch + 1, 0) if last else (epoch, step + 1)
                yield batch, stats
        finally:
            stop.set()
            loader.join()
