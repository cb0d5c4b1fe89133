"""Distributed multipack batching: consecutive samples per global step, balanced over ranks.

Each global step takes as many consecutive samples (in the dataset's order) as can be placed on
`num_replicas` ranks without any rank exceeding `batch_max_length` tokens; no sample is split.
Attention cost grows with the square of a sample's length, so a step's time is set by the rank
with the most quadratic work (sum of squared sample lengths), not the most tokens. The placement:
  1. longest-processing-time first on quadratic work: samples by decreasing length, each to the
     rank with the least quadratic work that still has room for it (falls back to plain LPT on
     token counts when that greedy runs out of room at a tight fill);
  2. local search: move one sample off the rank with the most quadratic work, or swap it for a
     shorter one, whenever that lowers that rank's work without raising another above it and
     without breaking the token budget.
The step's sample count is the largest that step 1 can place (binary search), which keeps slot
efficiency (used / available token slots) near 100%. The plan is deterministic (no randomness,
no communication): every rank computes the same plan and takes its own part.
"""

import numpy as np
from numba import njit


@njit(cache=True)
def _place_lpt(lens_desc, num_ranks, capacity, max_count, quadratic, rank_of):
    """Greedy placement of lengths sorted decreasingly; False when some sample finds no room."""
    load = np.zeros(num_ranks, np.int64)
    count = np.zeros(num_ranks, np.int64)
    work = np.zeros(num_ranks, np.float64)
    for i in range(len(lens_desc)):
        length = lens_desc[i]
        best = -1
        for r in range(num_ranks):
            if load[r] + length > capacity or count[r] == max_count:
                continue
            if best < 0 or (work[r] < work[best] if quadratic else load[r] < load[best]):
                best = r
        if best < 0:
            return False
        rank_of[i] = best
        load[best] += length
        count[best] += 1
        work[best] += float(length) * length
    return True


@njit(cache=True)
def _place(lens_desc, num_ranks, capacity, max_count, quadratic, rank_of):
    if quadratic and _place_lpt(lens_desc, num_ranks, capacity, max_count, True, rank_of):
        return True
    return _place_lpt(lens_desc, num_ranks, capacity, max_count, False, rank_of)


@njit(cache=True)
def _improve(lens, num_ranks, capacity, max_count, rank_of, max_rounds):
    """Local search lowering the largest per-rank quadratic work (see module docstring)."""
    load = np.zeros(num_ranks, np.int64)
    count = np.zeros(num_ranks, np.int64)
    work = np.zeros(num_ranks, np.float64)
    for i in range(len(lens)):
        load[rank_of[i]] += lens[i]
        count[rank_of[i]] += 1
        work[rank_of[i]] += float(lens[i]) * lens[i]
    for _ in range(max_rounds):
        top = np.argmax(work)
        best_peak, best_i, best_j, best_to = work[top], -1, -1, -1
        for i in range(len(lens)):
            if rank_of[i] != top:
                continue
            qi = float(lens[i]) * lens[i]
            for r in range(num_ranks):  # move i to rank r
                if r != top and load[r] + lens[i] <= capacity and count[r] < max_count:
                    peak = max(work[top] - qi, work[r] + qi)
                    if peak < best_peak:
                        best_peak, best_i, best_j, best_to = peak, i, -1, r
            for j in range(len(lens)):  # swap i with a shorter j
                r = rank_of[j]
                if r == top or lens[j] >= lens[i] or load[r] - lens[j] + lens[i] > capacity:
                    continue
                delta = qi - float(lens[j]) * lens[j]
                peak = max(work[top] - delta, work[r] + delta)
                if peak < best_peak:
                    best_peak, best_i, best_j, best_to = peak, i, j, r
        if best_i < 0:
            return
        moved = lens[best_i] - (lens[best_j] if best_j >= 0 else 0)
        qmoved = float(lens[best_i]) * lens[best_i] - (float(lens[best_j]) * lens[best_j] if best_j >= 0 else 0.0)
        rank_of[best_i] = best_to
        if best_j >= 0:
            rank_of[best_j] = top
        load[top] -= moved
        load[best_to] += moved
        work[top] -= qmoved
        work[best_to] += qmoved
        if best_j < 0:
            count[top] -= 1
            count[best_to] += 1


@njit(cache=True)
def _plan(lengths, num_ranks, capacity, max_count, balance_quadratic):
    n_total = len(lengths)
    cum = np.zeros(n_total + 1, np.int64)
    cum[1:] = np.cumsum(lengths)
    order = np.empty(n_total, np.int64)
    offsets = np.zeros(n_total * num_ranks + 1, np.int64)
    rank_scratch = np.empty(n_total, np.int64)
    start, pos, slot = 0, 0, 0
    while start < n_total:
        # Largest count whose tokens fit the step at all, then the largest that can be placed.
        hi = np.searchsorted(cum, cum[start] + num_ranks * capacity, side="right") - 1 - start
        lo = 1
        while lo < hi:
            mid = (lo + hi + 1) // 2
            by_len = np.argsort(-lengths[start:start + mid], kind="mergesort")
            if _place(lengths[start:start + mid][by_len], num_ranks, capacity, max_count, balance_quadratic, rank_scratch):
                lo = mid
            else:
                hi = mid - 1
        count = lo
        lens = lengths[start:start + count]
        by_len = np.argsort(-lens, kind="mergesort")
        placed = rank_scratch[:count]
        _place(lens[by_len], num_ranks, capacity, max_count, balance_quadratic, placed)
        rank_of = np.empty(count, np.int64)
        rank_of[by_len] = placed
        if balance_quadratic:
            _improve(lens, num_ranks, capacity, max_count, rank_of, 4 * count)
        for r in range(num_ranks):  # each rank's samples in dataset order
            for i in range(count):
                if rank_of[i] == r:
                    order[pos] = start + i
                    pos += 1
            slot += 1
            offsets[slot] = pos
        start += count
    return order, offsets[:slot + 1]


def plan_batches(lengths, batch_max_length: int, num_replicas: int, max_samples_per_rank: int | None = None,
                 balance_quadratic: bool = True):
    """The whole plan: (order, offsets); rank r of global step s gets the sample indices
    order[offsets[s * num_replicas + r] : offsets[s * num_replicas + r + 1]], at most
    `max_samples_per_rank` of them (None: no limit). `balance_quadratic=False` is plain LPT on token
    counts (kept for comparison, see bench/)."""
    lengths = np.asarray(lengths, dtype=np.int64)
    if lengths.ndim != 1:
        raise ValueError(f"lengths must be 1-D, got shape {lengths.shape}")
    bad = np.flatnonzero((lengths < 1) | (lengths > batch_max_length))
    if len(bad):
        raise ValueError(f"sample {bad[0]} has length {lengths[bad[0]]}, outside [1, batch_max_length="
                         f"{batch_max_length}]; drop or truncate such samples before planning")
    if num_replicas < 1 or batch_max_length < 1 or (max_samples_per_rank or 1) < 1:
        raise ValueError(f"need num_replicas, batch_max_length and max_samples_per_rank >= 1, got "
                         f"{num_replicas}, {batch_max_length}, {max_samples_per_rank}")
    max_count = len(lengths) if max_samples_per_rank is None else max_samples_per_rank
    return _plan(lengths, num_replicas, batch_max_length, max_count, balance_quadratic)


class MultipackDistributedBatchSampler:
    """Iterating yields this rank's sample-index array (int64, in dataset order) per global step;
    every rank yields the same number of arrays (an array may be empty on the last step).
    `drop_last_batch=True` leaves out the final global step, the one holding the leftovers.
    `max_samples_per_rank` caps a rank's sample count per step (fixed-shape packing needs it)."""

    def __init__(self, batch_max_length: int, lengths, num_replicas: int, rank: int, drop_last_batch: bool = False,
                 max_samples_per_rank: int | None = None):
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank {rank} is outside [0, num_replicas={num_replicas})")
        self.batch_max_length = batch_max_length
        self.num_replicas = num_replicas
        self.rank = rank
        self.lengths = np.asarray(lengths, dtype=np.int64)
        self._order, self._offsets = plan_batches(self.lengths, batch_max_length, num_replicas, max_samples_per_rank)
        self.num_steps = (len(self._offsets) - 1) // num_replicas
        if drop_last_batch and self.num_steps > 0:
            self.num_steps -= 1

    def __len__(self) -> int:
        return self.num_steps

    def __getitem__(self, step: int) -> np.ndarray:
        """This rank's samples at global step `step` (random access, for resuming)."""
        if not 0 <= step < self.num_steps:
            raise IndexError(f"step {step} outside [0, {self.num_steps})")
        slot = step * self.num_replicas + self.rank
        return self._order[self._offsets[slot]:self._offsets[slot + 1]]

    def __iter__(self):
        return (self[s] for s in range(self.num_steps))

    def samples_before(self, step: int) -> int:
        """How many samples global steps 0..step-1 hold: a step takes the next samples in dataset
        order, so these are the first ones, whatever the world size."""
        return int(self._offsets[step * self.num_replicas])

    def efficiency(self) -> float:
        """Used token slots over available ones, all ranks and steps."""
        used = self.lengths[self._order[:self._offsets[self.num_steps * self.num_replicas]]].sum()
        return float(used) / max(1, self.num_steps * self.num_replicas * self.batch_max_length)
