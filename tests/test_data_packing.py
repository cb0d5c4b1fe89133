import json

import numpy as np
import pytest
import torch

from data_io import DataError
from dataset_new import PackedDataset, pack
from models.lm_head import IGNORE_LABEL

X = IGNORE_LABEL
# Three samples (instruction, response): A = ([5,6,7], [8,9]), B = ([10,11], [12,13,14]), C = ([15], [16,17]).
SAMPLES = [([5, 6, 7], [8, 9]), ([10, 11], [12, 13, 14]), ([15], [16, 17])]
# Packed by hand into L = 16 tokens and M = 5 slots.
EXPECTED = {
    "inputs": [5, 6, 7, 8, 10, 11, 12, 13, 15, 16, 0, 0, 0, 0, 0, 0],
    "position_ids": [0, 1, 2, 3, 0, 1, 2, 3, 0, 1, 0, 0, 0, 0, 0, 0],
    "cu_seqlens": [0, 4, 8, 10, 10, 10],
    "prefix_lens": [3, 2, 1, 0, 0],
    "causal_lens": [1, 2, 1, 0, 0],
}
LABELS_TARGET_ONLY = [X, X, 8, 9, X, 12, 13, 14, 16, 17, X, X, X, X, X, X]
LABELS_ALL = [6, 7, 8, 9, 11, 12, 13, 14, 16, 17, X, X, X, X, X, X]
DTYPES = {"inputs": torch.int32, "labels": torch.int64, "position_ids": torch.int32,
          "cu_seqlens": torch.int32, "prefix_lens": torch.int32, "causal_lens": torch.int32}


def check_batch(batch, labels):
    assert set(batch) == set(DTYPES)
    for key, dtype in DTYPES.items():
        assert batch[key].dtype == dtype, key
    for key, expected in {**EXPECTED, "labels": labels}.items():
        assert batch[key].tolist() == expected, key


@pytest.mark.parametrize("target_only,labels,label_tokens", [(True, LABELS_TARGET_ONLY, 7), (False, LABELS_ALL, 10)])
def test_pack_by_hand(target_only, labels, label_tokens):
    batch, stats = pack([(np.array(i), np.array(o)) for i, o in SAMPLES], 16, 5, target_only)
    check_batch(batch, labels)
    assert stats == {"num_tokens": 10, "num_samples": 3, "num_label_tokens": label_tokens, "max_seqlen": 4,
                     "max_prefix_len": 3, "max_causal_len": 2}


def write_sampled(root, samples, vocab_size=32, max_seq_len=64, epochs=1, start_dtype=np.int64, len_dtype=np.int32):
    """A sampled dataset in the companion layout, written by hand (samples back to back, same order each epoch)."""
    root.mkdir(parents=True, exist_ok=True)
    tokens, spans, pos = [], {k: [] for k in ("inst_start", "inst_len", "resp_start", "resp_len")}, 0
    for inst, resp in samples:
        spans["inst_start"].append(pos)
        spans["inst_len"].append(len(inst))
        spans["resp_start"].append(pos + len(inst))
        spans["resp_len"].append(len(resp))
        tokens += list(inst) + list(resp)
        pos += len(inst) + len(resp)
    np.save(root / "tokens.npy", np.array(tokens, np.uint16))
    for e in range(epochs):
        (root / f"epoch_{e}").mkdir()
        for k, v in spans.items():
            np.save(root / f"epoch_{e}" / f"{k}.npy", np.array(v, start_dtype if k.endswith("start") else len_dtype))
    info = {"vocab_size": vocab_size, "tokenizer_path": "tokenizer.json", "boq": "<|boq|>", "eoq": "<|eoq|>",
            "eoa": "<|eoa|>", "condition_mapping": {"direct": "<|direct|>"}}
    (root / "metadata.json").write_text(json.dumps({"tokenizer_info": info, "max_seq_len": max_seq_len,
                                                    "total_length": len(tokens)}))
    return root


@pytest.mark.parametrize("start_dtype,len_dtype", [(np.int64, np.int32), (np.int32, np.int32), (np.uint64, np.int64)])
def test_companion_layout_loads(tmp_path, start_dtype, len_dtype):
    root = write_sampled(tmp_path / "d", SAMPLES, start_dtype=start_dtype, len_dtype=len_dtype)
    ds = PackedDataset(str(root), global_batch_size=16, max_samples_per_batch=5)
    batches = list(ds)
    assert len(batches) == len(ds) == 1
    batch, stats = batches[0]
    check_batch(batch, LABELS_TARGET_ONLY)
    assert stats["epoch"] == 0 and stats["step"] == 0 and stats["num_samples"] == 3


def random_samples(n, seed=0):
    rng = np.random.default_rng(seed)
    return [(rng.integers(0, 32, rng.integers(1, 9)), rng.integers(0, 32, rng.integers(2, 12))) for _ in range(n)]


def as_lists(batches):
    return [({k: v.tolist() for k, v in b.items()}, s) for b, s in batches]


def test_resume_reproduces_remaining_batches(tmp_path):
    root = write_sampled(tmp_path / "d", random_samples(300), epochs=2)
    make = lambda: PackedDataset(str(root), global_batch_size=128, num_replicas=2, rank=1, epochs=3)
    full = as_lists(make())
    steps = make().steps_per_epoch(0)
    assert len(full) == len(make()) == sum(make().steps_per_epoch(e) for e in range(3))
    for k in (3, steps - 1, steps + 2):  # inside an epoch, at its end, in the next one
        first = make()
        iterator = iter(first)
        head = [next(iterator) for _ in range(k)]
        state = first.state_dict()
        iterator.close()
        resumed = make()
        resumed.load_state_dict(state)
        assert as_lists(head) + as_lists(resumed) == full
    # Epoch 2 cycles back to epoch_0: same batches as epoch 0.
    assert [b for b, s in full if s["epoch"] == 2] == [b for b, s in full if s["epoch"] == 0]


def instructions_by_epoch(datasets, steps=None):
    """The instructions (one per sample) each epoch's batches hold, over the datasets of all ranks."""
    seen = {}
    for ds in datasets:
        for n, (batch, stats) in enumerate(ds):
            if n == steps:
                break
            cu, prefix = batch["cu_seqlens"].tolist(), batch["prefix_lens"].tolist()
            seen.setdefault(stats["epoch"], []).extend(
                tuple(batch["inputs"][cu[k]:cu[k] + prefix[k]].tolist()) for k in range(stats["num_samples"]))
    return seen


@pytest.mark.parametrize("saved,resumed", [((128, 2), (128, 1)), ((128, 1), (256, 4)), ((128, 4), (64, 2))])
def test_resume_under_another_packing_plan_trains_every_sample_once(tmp_path, saved, resumed):
    # Saved at step k on one world size and global batch, continued on another: the rest of the
    # epoch is planned again, so the epoch's head and tail together hold every sample exactly once,
    # and the next epoch is whole. Instructions start with the sample's number, so each is unique.
    rng = np.random.default_rng(5)
    samples = [([i, *rng.integers(0, 32, rng.integers(0, 8))], rng.integers(0, 32, rng.integers(2, 12)))
               for i in range(300)]
    root = write_sampled(tmp_path / "d", samples, vocab_size=512, epochs=2)
    everything = sorted(tuple(i) for i, _ in samples)
    old = [PackedDataset(str(root), global_batch_size=saved[0], num_replicas=saved[1], rank=r, epochs=2)
           for r in range(saved[1])]
    k = old[0].steps_per_epoch(0) // 3
    head = instructions_by_epoch(old, steps=k)
    new = [PackedDataset(str(root), global_batch_size=resumed[0], num_replicas=resumed[1], rank=r, epochs=2)
           for r in range(resumed[1])]
    whole_epoch = new[0].steps_per_epoch(0)
    for ds in new:
        ds.load_state_dict(saved_position(old, k))
    tail = instructions_by_epoch(new)
    assert sorted(head[0] + tail[0]) == everything
    assert sorted(tail[1]) == everything
    assert new[0].steps_per_epoch(1) == whole_epoch  # later epochs use this plan in full
    assert all(len(ds) == new[0].steps_per_epoch(0) + whole_epoch for ds in new)


def test_a_replanned_epoch_resumed_again_continues_its_plan(tmp_path):
    # Saved on 2 ranks, resumed on 1 (the epoch's rest replanned), saved again j steps later and
    # resumed on 1 again: the second resume yields exactly what the first would have gone on to.
    root = write_sampled(tmp_path / "d", random_samples(300, seed=7), epochs=2)
    first = PackedDataset(str(root), global_batch_size=128, epochs=2)
    first.load_state_dict(saved_position([PackedDataset(str(root), global_batch_size=128, num_replicas=2, epochs=2)], 5))
    iterator = iter(first)
    for _ in range(4):
        next(iterator)
    state = first.state_dict()
    tail = as_lists(iterator)
    assert state["replanned"][0] == 5 and len(tail) > 0
    again = PackedDataset(str(root), global_batch_size=128, epochs=2)
    again.load_state_dict(state)
    assert as_lists(again) == tail


def saved_position(datasets, k):
    """Rank 0's position after k steps (what a checkpoint at step k records)."""
    ds = PackedDataset(str(datasets[0].path), global_batch_size=datasets[0].batch_max_length * datasets[0].num_replicas,
                       num_replicas=datasets[0].num_replicas, rank=0, epochs=datasets[0].epochs)
    iterator = iter(ds)
    for _ in range(k):
        next(iterator)
    state = ds.state_dict()
    iterator.close()
    return state


def test_resume_under_another_world_size_continues_with_the_same_batches(tmp_path):
    # Samples of one length: a global step holds the same samples on any world size, so the run
    # continued on 1 rank from a 2-rank position sees exactly the 1-rank run's remaining batches.
    rng = np.random.default_rng(2)
    samples = [([i, *rng.integers(0, 32, 5)], rng.integers(0, 32, 10)) for i in range(64)]  # 15 tokens packed
    root = write_sampled(tmp_path / "d", samples, vocab_size=512)
    state = saved_position([PackedDataset(str(root), global_batch_size=128, num_replicas=2)], 3)
    assert state["sample"] == 3 * 8
    resumed = PackedDataset(str(root), global_batch_size=128)
    resumed.load_state_dict(state)
    assert as_lists(resumed) == as_lists(PackedDataset(str(root), global_batch_size=128))[3:]


def test_resume_refuses_another_max_seq_len(tmp_path):
    # max_seq_len decides which samples are kept and cut: a position under another one means other samples
    root = write_sampled(tmp_path / "d", random_samples(100), max_seq_len=64)
    state = saved_position([PackedDataset(str(root), global_batch_size=128)], 2)
    with pytest.raises(DataError, match="another max_seq_len"):
        PackedDataset(str(root), global_batch_size=32).load_state_dict(state)  # max_seq_len min(64, 32 + 1)


def test_every_sample_once_per_epoch_over_ranks(tmp_path):
    samples = random_samples(200, seed=3)
    root = write_sampled(tmp_path / "d", samples)
    seen = []
    for rank in range(4):
        for batch, stats in PackedDataset(str(root), global_batch_size=256, num_replicas=4, rank=rank):
            cu, prefix = batch["cu_seqlens"].tolist(), batch["prefix_lens"].tolist()
            for k in range(stats["num_samples"]):
                seen.append(batch["inputs"][cu[k]:cu[k] + prefix[k]].tolist())
    assert sorted(seen) == sorted(i.tolist() for i, _ in samples)


def test_length_policy_counted(tmp_path):
    # At max_seq_len 8: a 1-token response trains its one label (the last instruction token predicts
    # it); an empty one is dropped; 4 + 10 tokens -> response cut to 4; 7 + 3 -> cut to a 1-token
    # response (the sampler's context edge); 8 + 2 -> no room, dropped.
    samples = [([1, 2], [3, 4]), ([5], [6]), ([7], []), ([1, 2, 3, 4], list(range(10, 20))),
               ([9] * 7, [2, 3, 4]), ([8] * 8, [2, 3])]
    root = write_sampled(tmp_path / "d", samples)
    ds = PackedDataset(str(root), global_batch_size=32, max_seq_len=8, max_samples_per_batch=4)
    assert ds.drop_counts(0) == {"rows": 6, "kept": 4, "short_response_dropped": 1, "too_long_dropped": 1,
                                 "truncated": 2}
    (batch, stats), = list(ds)
    cu = batch["cu_seqlens"].tolist()
    packed = sorted((batch["inputs"][cu[k]:cu[k + 1]].tolist(), batch["labels"][cu[k]:cu[k + 1]].tolist())
                    for k in range(stats["num_samples"]))
    assert packed == sorted([([1, 2, 3], [X, 3, 4]), ([5], [6]), ([1, 2, 3, 4, 10, 11, 12], [X, X, X, 10, 11, 12, 13]),
                             ([9] * 7, [X] * 6 + [2])])
    assert batch["causal_lens"][:4].sort().values.tolist() == [0, 0, 1, 3]


def test_errors_name_file_and_fix(tmp_path):
    with pytest.raises(DataError, match="metadata.json is missing.*sample_tokenized"):
        PackedDataset(str(tmp_path), global_batch_size=16)
    root = write_sampled(tmp_path / "a", SAMPLES)
    (root / "epoch_0" / "resp_len.npy").unlink()
    with pytest.raises(DataError, match="resp_len.npy is missing"):
        len(PackedDataset(str(root), global_batch_size=16))
    np.save(root / "epoch_0" / "resp_len.npy", np.array([2, 3], np.int32))
    with pytest.raises(DataError, match="unequal lengths"):
        len(PackedDataset(str(root), global_batch_size=16))
    np.save(root / "epoch_0" / "resp_len.npy", np.array([2, 3, 50], np.int32))
    with pytest.raises(DataError, match="sample 2 has resp span .* outside tokens.npy"):
        len(PackedDataset(str(root), global_batch_size=16))
    root = write_sampled(tmp_path / "b", SAMPLES, vocab_size=16)
    with pytest.raises(DataError, match="tokens.npy.*vocab_size=16"):
        list(PackedDataset(str(root), global_batch_size=16))
    import shutil
    shutil.rmtree(root / "epoch_0")
    with pytest.raises(DataError, match="epoch_0 is missing"):
        PackedDataset(str(root), global_batch_size=16)
    with pytest.raises(ValueError, match="not divisible"):
        PackedDataset(str(tmp_path / "a"), global_batch_size=15, num_replicas=2)
