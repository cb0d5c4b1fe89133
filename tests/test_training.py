"""pretrain.py end to end on CPU: distributed equivalence (torchrun + gloo + FSDP2 against one
process), compiled against eager, exact resume after SIGKILL, SFT from EMA weights, W&B without
credentials, and clear errors for bad configurations. Datasets are written by hand in the format of docs/DESIGN.md, "Data format"."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from models.optimizer import AdamATan2
from training import checkpoint as ckpt

ROOT = Path(__file__).resolve().parent.parent
VOCAB = 64
TINY = ["arch/size@arch=tiny", "arch.hidden_size=64", "arch.num_heads=2", "fwd_bwd_dtype=float32",
        "compile=false", "wandb_mode=disabled", "log_interval=1", "lr_warmup_steps=2", "lr=3e-3", "epochs=2"]


def write_sampled(path: Path, lengths: list[tuple[int, int]], epochs: int = 2, seed: int = 0) -> Path:
    """A sampled dataset: instruction = boq(1) + random tokens + eoq(2), response = tokens + eoa(3).
    Epoch e visits the samples in a seeded permutation."""
    rng = np.random.default_rng(seed)
    tokens, spans = [], []
    at = 0
    for inst_len, resp_len in lengths:
        inst = np.concatenate([[1], rng.integers(8, VOCAB, inst_len - 2), [2]])
        resp = np.concatenate([rng.integers(8, VOCAB, resp_len - 1), [3]])
        tokens += [inst, resp]
        spans.append((at, inst_len, at + inst_len, resp_len))
        at += inst_len + resp_len
    path.mkdir(parents=True)
    np.save(path / "tokens.npy", np.concatenate(tokens).astype(np.uint16))
    spans = np.array(spans, dtype=np.int64)
    for e in range(epochs):
        order = rng.permutation(len(spans))
        (path / f"epoch_{e}").mkdir()
        for col, name in enumerate(("inst_start", "inst_len", "resp_start", "resp_len")):
            np.save(path / f"epoch_{e}" / f"{name}.npy", spans[order, col])
    info = {"vocab_size": VOCAB, "tokenizer_path": "none", "boq": "<|boq|>", "eoq": "<|eoq|>", "eoa": "<|eoa|>",
            "condition_mapping": {"direct": "<|direct|>"}}
    total = int(sum(i + r for i, r in lengths))
    (path / "metadata.json").write_text(json.dumps({"tokenizer_info": info, "max_seq_len": 32, "total_length": total}))
    return path


def pretrain(args, nproc=1, env=None, check=True, config_name="cfg_pretrain", **popen):
    cmd = ([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
           if nproc > 1 else [sys.executable]) + [str(ROOT / "pretrain.py"), "--config-name", config_name, *TINY, *args]
    full_env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", **(env or {})}
    full_env = {k: v for k, v in full_env.items() if v is not None}  # None: unset
    if popen:
        return subprocess.Popen(cmd, cwd=ROOT, env=full_env, **popen)
    result = subprocess.run(cmd, cwd=ROOT, env=full_env, capture_output=True, text=True, timeout=600)
    if check and result.returncode != 0:
        raise AssertionError(f"pretrain failed ({result.returncode}):\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}")
    return result


def losses(run_dir: Path, key: str = "train/loss") -> dict[int, float]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r[key] for r in rows}


@pytest.fixture(scope="module")
def equal_lengths(tmp_path_factory):
    # 96 samples of 8 + 8 tokens (15 packed tokens each): a 240-token global batch holds 16
    # of them, 8 per rank with two ranks, so each global step sees the same samples either way.
    return write_sampled(tmp_path_factory.mktemp("data") / "equal", [(8, 8)] * 96)


@pytest.fixture(scope="module")
def mixed_lengths(tmp_path_factory):
    rng = np.random.default_rng(1)
    lengths = [(int(a), int(b)) for a, b in zip(rng.integers(3, 14, 400), rng.integers(2, 14, 400))]
    return write_sampled(tmp_path_factory.mktemp("data") / "mixed", lengths)


def test_two_ranks_match_one_process(equal_lengths, tmp_path):
    """grad_clip small enough to clip every step: each rank must measure, and scale by, the global norm.
    The two ranks shard per block (the compiled two-rank test below covers the default, per stack)."""
    common = [f"data.path={equal_lengths}", "global_batch_size=240", "max_steps=5", "checkpoint_every_steps=null",
              "grad_clip=0.05"]
    pretrain([*common, f"checkpoint_path={tmp_path / 'one'}"])
    pretrain([*common, f"checkpoint_path={tmp_path / 'two'}", "shard_unit=block"], nproc=2)
    one, two = losses(tmp_path / "one"), losses(tmp_path / "two")
    assert sorted(one) == sorted(two) == [1, 2, 3, 4, 5]
    for step in one:
        assert abs(one[step] - two[step]) / abs(one[step]) < 1e-4, (step, one[step], two[step])
    assert one[5] < one[1]  # it learns
    norm_one, norm_two = losses(tmp_path / "one", "train/grad_norm"), losses(tmp_path / "two", "train/grad_norm")
    for step in norm_one:
        assert norm_one[step] > 0.05, "every step must clip for the test to check clipping"
        assert abs(norm_one[step] - norm_two[step]) / norm_one[step] < 1e-4, (step, norm_one[step], norm_two[step])


def test_compiled_two_rank_run_matches_eager_one_process(equal_lengths, tmp_path):
    """compile=true (compiled stacks with the memory budget, the compiled optimizer on sharded
    parameters: what runs on GPUs) on two ranks trains like compile=false in one process while the
    learning rate warms up and changes every step."""
    common = [f"data.path={equal_lengths}", "global_batch_size=240", "max_steps=6", "lr_warmup_steps=4",
              "checkpoint_every_steps=null"]
    pretrain([*common, f"checkpoint_path={tmp_path / 'eager'}"])
    pretrain([*common, f"checkpoint_path={tmp_path / 'compiled'}", "compile=true"], nproc=2)
    eager, compiled = losses(tmp_path / "eager"), losses(tmp_path / "compiled")
    assert sorted(eager) == sorted(compiled) == [1, 2, 3, 4, 5, 6]
    for step in eager:
        assert abs(eager[step] - compiled[step]) / abs(eager[step]) < 1e-4, (step, eager[step], compiled[step])


def wait_for(predicate, timeout=300):
    end = time.time() + timeout
    while time.time() < end:
        if predicate():
            return
        time.sleep(0.01)
    raise TimeoutError


def test_resume_after_sigkill_is_exact(mixed_lengths, tmp_path):
    common = [f"data.path={mixed_lengths}", "global_batch_size=256", "checkpoint_every_steps=3", "keep_last=2"]
    pretrain([*common, f"checkpoint_path={tmp_path / 'full'}"])
    full = losses(tmp_path / "full")
    steps = sorted(full)
    assert len(steps) >= 10  # two epochs, so the resume crosses an epoch boundary too

    killed = tmp_path / "killed"
    proc = pretrain([*common, f"checkpoint_path={killed}"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: any(p.name == "step_3" for p in ckpt.complete_checkpoints(killed)))
        proc.send_signal(signal.SIGSTOP)  # freeze at once, wherever it is (mid-step, mid-save)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    resumed_from = ckpt.complete_checkpoints(killed)[-1]
    k = ckpt.read_trainer_state(resumed_from)["step"]
    assert k < steps[-1]
    pretrain([*common, f"resume_from={killed}"])
    after = losses(killed)
    assert sorted(after) == steps
    for step in steps:
        assert after[step] == full[step], (step, after[step], full[step])  # exact on CPU fp32
    # the last of the two epochs, 1-based as the reference names it
    assert any(p.name == "fsdp2_epoch_2" for p in ckpt.complete_checkpoints(killed))


def test_sft_starts_from_ema_weights(mixed_lengths, tmp_path):
    base = tmp_path / "base"
    pretrain([f"data.path={mixed_lengths}", "global_batch_size=256", "max_steps=4", "ema=0.5",
              f"checkpoint_path={base}"])
    sft = tmp_path / "sft"
    # lr=0: the first SFT step leaves the weights where SFT started
    pretrain([f"resume_from={base}", f"data.path={mixed_lengths}", "global_batch_size=256", "max_steps=1",
              "lr=0.0", "lr_warmup_steps=0", f"checkpoint_path={sft}", "weights_only_resume_from_ema=true"],
             config_name="cfg_sft")

    from models.model import LanguageModel
    from training.config import compose

    arch = compose("cfg_pretrain", TINY[:3]).arch
    ema, live, started = (LanguageModel(arch, 256) for _ in range(3))
    base_ckpt = ckpt.find_checkpoint(base)
    ckpt.load_model_weights(base_ckpt, ema, use_ema=True)
    ckpt.load_model_weights(base_ckpt, live, use_ema=False)
    sft_ckpt = ckpt.find_checkpoint(sft)
    ckpt.load_model_weights(sft_ckpt, started, use_ema=False)
    for (name, a), b in zip(ema.state_dict().items(), started.state_dict().values()):
        torch.testing.assert_close(b, a, rtol=0, atol=0, msg=name)
    # the EMA really differs from the live weights, or the comparison would prove nothing
    assert not torch.equal(ema.lm_head.weight, live.lm_head.weight)
    state = ckpt.read_trainer_state(sft_ckpt)
    assert state["step"] == 1 and (state["data"]["epoch"], state["data"]["step"]) == (0, 1)  # SFT counts from 0
    assert optimizer_step_count(sft_ckpt) == 1 and optimizer_step_count(base_ckpt) == 4  # fresh optimizer


def test_sft_by_default_keeps_the_optimizer_state_and_ema(mixed_lengths, tmp_path):
    """The reference's SFT defaults: the pretrained run's live weights, moments, step counts and
    EMA carry over; the SFT data starts at its step 0."""
    from training.config import compose

    cfg = compose("cfg_sft", ["resume_from=RUN", "data.path=SFT"])
    assert (cfg.weights_only_resume_from_ema, cfg.epochs, cfg.global_batch_size, cfg.checkpoint_interval,
            cfg.lr, cfg.lr_min_ratio, cfg.lr_warmup_steps, cfg.ema, cfg.arch.bp_warmup_ratio) == \
        (False, 5, 32768, 1, 3e-5, 0.1, 0, 0.999, 0.0)
    base = tmp_path / "base"
    pretrain([f"data.path={mixed_lengths}", "global_batch_size=256", "max_steps=4", "ema=0.5",
              f"checkpoint_path={base}"])
    sft_data = write_sampled(tmp_path / "sft_data", [(5, 6)] * 64, seed=3)
    sft = tmp_path / "sft"
    # lr=0: the first SFT step leaves the live weights where the pretrained run left them
    pretrain([f"resume_from={base}", f"data.path={sft_data}", "global_batch_size=256", "max_steps=1",
              "lr=0.0", "lr_warmup_steps=0", f"checkpoint_path={sft}"], config_name="cfg_sft")

    from models.model import LanguageModel

    arch = compose("cfg_pretrain", TINY[:3]).arch
    base_live, base_ema, sft_live, sft_ema = (LanguageModel(arch, 256) for _ in range(4))
    base_ckpt, sft_ckpt = ckpt.find_checkpoint(base), ckpt.find_checkpoint(sft)
    ckpt.load_model_weights(base_ckpt, base_live, use_ema=False)
    ckpt.load_model_weights(base_ckpt, base_ema, use_ema=True)
    ckpt.load_model_weights(sft_ckpt, sft_live, use_ema=False)
    ckpt.load_model_weights(sft_ckpt, sft_ema, use_ema=True)
    for name, p in base_live.state_dict().items():
        torch.testing.assert_close(sft_live.state_dict()[name], p, rtol=0, atol=0, msg=name)
    # one EMA step at the SFT rate 0.999 from the pretrained EMA towards the (unchanged) weights
    w_live, w_ema = base_live.lm_head.weight, base_ema.lm_head.weight
    assert not torch.equal(w_live, w_ema)
    torch.testing.assert_close(sft_ema.lm_head.weight, w_ema + 0.001 * (w_live - w_ema), rtol=0, atol=1e-7)
    assert optimizer_step_count(sft_ckpt) == 5 and optimizer_step_count(base_ckpt) == 4  # moments continue
    state = ckpt.read_trainer_state(sft_ckpt)
    assert state["step"] == 1 and (state["data"]["epoch"], state["data"]["step"]) == (0, 1)


def optimizer_step_count(path: Path) -> float:
    import torch.distributed.checkpoint as dcp

    key = "optim.state.lm_head.weight.step"
    state = {key: torch.zeros(())}
    dcp.load(state, storage_reader=dcp.FileSystemReader(str(path)), no_dist=True)
    return state[key].item()


def test_no_wandb_credentials_goes_offline_with_one_line(mixed_lengths, tmp_path):
    env = {"HOME": str(tmp_path), "WANDB_API_KEY": None, "WANDB_MODE": None, "WANDB_DIR": str(tmp_path),
           "WANDB_SILENT": "true", "NETRC": None}
    result = pretrain([f"data.path={mixed_lengths}", "global_batch_size=256", "max_steps=1", "wandb_mode=auto",
                       f"checkpoint_path={tmp_path / 'run'}"], env=env)
    notes = [line for line in result.stdout.splitlines() if line.startswith("W&B")]
    assert len(notes) == 1 and "offline" in notes[0], result.stdout
    assert losses(tmp_path / "run")


@pytest.mark.parametrize("args, nproc, expected", [
    (["no_such_key=1"], 1, "no_such_key"),
    (["lrr=1e-3"], 1, "unknown key 'lrr'; did you mean 'lr'? `python pretrain.py --cfg job` prints every key"),
    (["lr=-1"], 1, "lr: Input should be greater than or equal to 0"),
    (["global_batch_size=255"], 2, "global_batch_size=255 is not divisible by the world size 2"),
    (["data.path=/nonexistent/sampled"], 1, "data.path=/nonexistent/sampled"),
    (["lr=abc"], 1, "lr"),
    (["activation_memory_budget=1.5"], 1, "activation_memory_budget must lie in [0, 1]"),
    (["grad_clip=0"], 1, "grad_clip"),
    (["shard_unit=layer"], 1, "shard_unit"),
])
def test_bad_config_fails_at_start_naming_the_key(args, nproc, expected, mixed_lengths, tmp_path):
    args = [f"data.path={mixed_lengths}", "max_steps=1", f"checkpoint_path={tmp_path / 'r'}", *args]
    result = pretrain(args, nproc=nproc, check=False)
    assert result.returncode != 0
    assert expected in result.stdout + result.stderr


def test_loading_a_checkpoint_keeps_the_configured_hyperparameters(one_rank_group, tmp_path):
    """The checkpoint restores weights and optimizer state; weight decay, betas and the EMA rate
    stay those of the optimizer it is loaded into (the resumed run's config)."""
    torch.manual_seed(0)
    saved_model = torch.nn.Linear(4, 3)
    saved_opt = AdamATan2(saved_model.parameters(), lr=1e-2, betas=(0.9, 0.95), weight_decay=0.1, ema=0.9)
    saved_model(torch.randn(2, 4)).sum().backward()
    saved_opt.step()
    ckpt.save_checkpoint(tmp_path / "ck", saved_model, saved_opt, {"step": 1})
    model = torch.nn.Linear(4, 3)
    opt = AdamATan2(model.parameters(), lr=5e-3, betas=(0.8, 0.99), weight_decay=0.0, ema=0.5)
    ckpt.load_checkpoint(tmp_path / "ck", model, opt)
    assert torch.equal(model.weight, saved_model.weight)
    for p, saved_p in zip(model.parameters(), saved_model.parameters()):
        for key in ("step", "exp_avg", "exp_avg_sq", "param_ema"):
            assert torch.equal(opt.state[p][key], saved_opt.state[saved_p][key]), key
    group = opt.param_groups[0]
    assert (group["lr"], group["betas"], group["weight_decay"], group["ema"]) == (5e-3, (0.8, 0.99), 0.0, 0.5)


def test_resume_refuses_another_architecture_or_switching_the_ema(mixed_lengths, tmp_path):
    run = tmp_path / "run"
    pretrain([f"data.path={mixed_lengths}", "global_batch_size=256", "max_steps=1", f"checkpoint_path={run}"])
    for override, expected in (("arch.n_layers=2", "arch.n_layers: run has 4, config has 2"),
                               ("ema=null", "ema: run has 0.9999, config has None")):
        result = pretrain([f"data.path={mixed_lengths}", f"resume_from={run}", override], check=False)
        assert result.returncode != 0
        assert expected in result.stdout + result.stderr


def test_sigterm_writes_a_checkpoint_and_exits_zero(mixed_lengths, tmp_path):
    run = tmp_path / "run"
    proc = pretrain([f"data.path={mixed_lengths}", "global_batch_size=256", "checkpoint_every_steps=null",
                     f"checkpoint_path={run}"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    wait_for(lambda: (run / "metrics.jsonl").exists() and len(losses(run)) >= 2)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, out
    assert "SIGTERM: checkpoint written at step" in out
    done = ckpt.complete_checkpoints(run)
    assert done and ckpt.read_trainer_state(done[-1])["step"] == max(losses(run)) < 40


def test_ctrl_c_writes_a_checkpoint_and_a_second_one_aborts(mixed_lengths, tmp_path):
    run = tmp_path / "run"
    common = [f"data.path={mixed_lengths}", "global_batch_size=256", "checkpoint_every_steps=null"]
    proc = pretrain([*common, f"checkpoint_path={run}"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    wait_for(lambda: (run / "metrics.jsonl").exists() and len(losses(run)) >= 2)
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, out
    assert "SIGINT: checkpoint written at step" in out and "KeyboardInterrupt" not in out
    done = ckpt.complete_checkpoints(run)
    assert done and ckpt.read_trainer_state(done[-1])["step"] == max(losses(run)) < 40


def test_a_second_ctrl_c_aborts_at_once(one_rank_group):
    from training.trainer import StopRequest

    stop = StopRequest(torch.device("cpu"), announce=False)
    try:
        os.kill(os.getpid(), signal.SIGINT)  # the first: a request, agreed on LAG steps later
        assert stop.signal == "SIGINT"
        assert [stop.agreed() for _ in range(StopRequest.LAG + 1)] == [False] * StopRequest.LAG + [True]
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(1)  # the handler runs before this returns
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


def test_non_finite_loss_stops_naming_the_step(mixed_lengths, tmp_path):
    # AdamATan2 moves each weight by about lr per step: lr=1e30 overflows at once
    result = pretrain([f"data.path={mixed_lengths}", "global_batch_size=256", "lr=1e30", "lr_warmup_steps=0",
                       "max_steps=6", "checkpoint_every_steps=null", f"checkpoint_path={tmp_path / 'run'}"], check=False)
    assert result.returncode != 0
    assert "non-finite loss at step 2; last good checkpoint: none" in result.stdout + result.stderr
