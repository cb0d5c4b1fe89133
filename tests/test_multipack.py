import numpy as np
import pytest

from multipack_sampler import MultipackDistributedBatchSampler


def lognormal_lengths(n, cap, seed=0):
    rng = np.random.default_rng(seed)
    return np.clip(np.round(rng.lognormal(np.log(300), 1.0, n)), 1, cap).astype(np.int64)


def all_ranks(lengths, capacity, ranks, **kw):
    return [MultipackDistributedBatchSampler(capacity, lengths, ranks, r, **kw) for r in range(ranks)]


def test_small_plan_by_hand():
    # 10 tokens fit 2 ranks x 5 in one step; by decreasing length, each sample goes to the rank with
    # the least squared work that has room: 0 -> r0, 1 -> r1, 2 -> r0 (tie: first), 3 -> r1.
    r0, r1 = all_ranks([3, 3, 2, 2], 5, 2)
    assert [b.tolist() for b in r0] == [[0, 2]]
    assert [b.tolist() for b in r1] == [[1, 3]]
    assert r0.efficiency() == 1.0


def test_each_sample_once_within_budget_and_ranks_agree():
    lengths = lognormal_lengths(3000, 2048)
    samplers = all_ranks(lengths, 2048, 4)
    assert len({len(s) for s in samplers}) == 1
    seen = np.concatenate([b for s in samplers for b in s])
    assert np.array_equal(np.sort(seen), np.arange(len(lengths)))
    for s in samplers:
        assert all(lengths[b].sum() <= 2048 for b in s)
    # Steps take consecutive samples: step k's samples all precede step k+1's.
    steps = [np.concatenate([s[k] for s in samplers]) for k in range(len(samplers[0]))]
    assert all(a.max() < b.min() for a, b in zip(steps, steps[1:]))
    # Plans computed independently agree.
    again = MultipackDistributedBatchSampler(2048, lengths, 4, 2)
    assert all(np.array_equal(a, b) for a, b in zip(again, samplers[2]))


def test_drop_last_batch_and_sample_cap():
    lengths = lognormal_lengths(2000, 1024, seed=1)
    full = all_ranks(lengths, 1024, 2)
    dropped = all_ranks(lengths, 1024, 2, drop_last_batch=True)
    assert len(dropped[0]) == len(full[0]) - 1
    last = np.concatenate([s[len(s) - 1] for s in full])
    seen = np.concatenate([b for s in dropped for b in s])
    assert np.array_equal(np.sort(np.concatenate([seen, last])), np.arange(len(lengths)))
    capped = all_ranks(np.full(100, 3), 64, 2, max_samples_per_rank=5)
    assert all(len(b) <= 5 for s in capped for b in s)
    assert len(capped[0]) == 10


def test_quadratic_work_balanced_and_efficient():
    lengths = lognormal_lengths(30000, 4096)
    samplers = all_ranks(lengths, 16384, 8)
    work = np.array([[float((lengths[s[k]] ** 2).sum()) for s in samplers] for k in range(len(samplers[0]) - 1)])
    assert np.median(work.max(1) / work.mean(1)) <= 1.10
    assert samplers[0].efficiency() >= 0.99


def test_bad_lengths_rejected():
    with pytest.raises(ValueError, match="sample 1 has length 9"):
        MultipackDistributedBatchSampler(8, [3, 9], 2, 0)
    with pytest.raises(ValueError, match="rank 2"):
        MultipackDistributedBatchSampler(8, [3], 2, 2)
