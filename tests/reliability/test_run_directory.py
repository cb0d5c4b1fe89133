"""Nothing pre-existing is lost: a new run never writes into an existing run directory, SIGTERM on
a checkpoint step keeps that checkpoint (a SIGKILL right after still leaves one, with keep_last=1),
a prune cut short leaves no checkpoint that looks whole but is not, and every resume is exact."""

import shutil
import signal
import subprocess
import time

import pytest

from test_training import losses, pretrain, write_sampled
from training import checkpoint as ckpt

COMMON = ["global_batch_size=256", "checkpoint_every_steps=1"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    import numpy as np

    rng = np.random.default_rng(3)
    lengths = [(int(a), int(b)) for a, b in zip(rng.integers(3, 14, 160), rng.integers(2, 14, 160))]
    return write_sampled(tmp_path_factory.mktemp("data") / "mixed", lengths, epochs=1)


@pytest.fixture(scope="module")
def full(data, tmp_path_factory):
    """The uninterrupted run every resume must reproduce exactly."""
    run = tmp_path_factory.mktemp("full") / "run"
    pretrain([f"data.path={data}", *COMMON, "epochs=1", f"checkpoint_path={run}"])
    return losses(run)


def files_of(run):
    return {p.relative_to(run).as_posix(): p.read_bytes() for p in sorted(run.rglob("*")) if p.is_file()}


def test_rerun_into_an_existing_run_is_refused_and_resume_continues_exactly(data, full, tmp_path):
    run = tmp_path / "run"
    pretrain([f"data.path={data}", *COMMON, "epochs=1", "max_steps=3", f"checkpoint_path={run}"])
    before = files_of(run)
    result = pretrain([f"data.path={data}", *COMMON, "epochs=1", f"checkpoint_path={run}"], check=False)
    out = result.stdout + result.stderr
    assert result.returncode != 0 and f"checkpoint_path={run} already holds a run" in out, out[-2000:]
    assert f"resume_from={run}" in out
    assert files_of(run) == before  # config, metrics and checkpoints untouched
    # the dataset moved: the same metadata.json elsewhere is still the run's data, so it continues
    moved = shutil.copytree(data, tmp_path / "moved")
    pretrain([f"data.path={moved}", *COMMON, "epochs=1", f"resume_from={run}"])
    assert losses(run) == full


def test_sigterm_on_a_checkpoint_step_then_sigkill_keeps_a_checkpoint(data, full, tmp_path):
    run = tmp_path / "run"
    proc = pretrain([f"data.path={data}", *COMMON, "epochs=1", "keep_last=1", f"checkpoint_path={run}"],
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 300
        # keep_last=1: step_3 lives only until step_4's save, so wait for it or any later one
        while not any(p.name.startswith("step_") and int(p.name[5:]) >= 3 for p in ckpt.complete_checkpoints(run)):
            assert time.time() < deadline and proc.poll() is None
            time.sleep(0.01)
        proc.send_signal(signal.SIGTERM)  # every step is a checkpoint step here
        seen_none = False
        end = time.time() + 1.0
        while time.time() < end and proc.poll() is None:  # the window where the old code had none
            seen_none |= not ckpt.complete_checkpoints(run)
            time.sleep(0.002)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert not seen_none
    assert ckpt.complete_checkpoints(run)
    pretrain([f"data.path={data}", *COMMON, "epochs=1", f"resume_from={run}"])
    after = losses(run)
    assert after == full


def test_a_prune_cut_short_leaves_no_checkpoint_that_looks_complete(data, full, tmp_path, monkeypatch):
    run = tmp_path / "run"
    pretrain([f"data.path={data}", *COMMON, "epochs=1", "max_steps=4", "keep_last=10", f"checkpoint_path={run}"])

    def killed_midway(path, ignore_errors=False):  # deletes one data file, then the process "dies"
        next(path.glob("*.distcp")).unlink()
        raise KeyboardInterrupt

    monkeypatch.setattr(ckpt.shutil, "rmtree", killed_midway)
    with pytest.raises(KeyboardInterrupt):
        ckpt.prune_step_checkpoints(run, keep_last=1)
    monkeypatch.undo()
    for checkpoint in ckpt.complete_checkpoints(run):  # each whole: its data files all there
        ckpt.read_metadata(checkpoint)
        assert list(checkpoint.glob("*.distcp")), checkpoint
    assert [p.name for p in ckpt.complete_checkpoints(run)] == ["step_2", "step_3", "step_4"]
    pretrain([f"data.path={data}", *COMMON, "epochs=1", f"resume_from={run}"])
    assert losses(run) == full
    assert not (run / "checkpoints" / "step_1").exists()  # the next prune finished the job
