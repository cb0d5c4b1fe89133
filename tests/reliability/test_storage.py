"""A full disk or a read-only run directory ends training with one line saying so and naming the
place (not the serializer's "unexpected pos" after a traceback), and a checkpoint cut short by a
full disk leaves nothing behind. Each case trains onto a small tmpfs of its own; mounting one
needs privileges, so the cases are skipped where the machine refuses the mount."""

import datetime
import errno
import multiprocessing
import subprocess
from pathlib import Path

import pytest

from test_training import pretrain, write_sampled


@pytest.fixture
def small_disk(tmp_path):
    point = tmp_path / "disk"
    point.mkdir()

    def mount(options: str):
        result = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(point)], capture_output=True)
        if result.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here ({result.stderr.decode().strip()})")
        return point

    yield mount
    subprocess.run(["umount", str(point)], capture_output=True)


@pytest.mark.parametrize("options, says", [("size=2m", "the disk is full"), ("size=2m,ro", "the file system is read-only")])
def test_full_or_read_only_storage_is_named_in_one_line(small_disk, tmp_path, options, says):
    data = write_sampled(tmp_path / "data", [(8, 8)] * 40, epochs=1)
    disk = small_disk(options)  # 2 MiB: room for the run's files, not for a checkpoint (about 5 MiB)
    run = disk / "run"
    result = pretrain([f"data.path={data}", "global_batch_size=256", "max_steps=2", "checkpoint_every_steps=1",
                       f"checkpoint_path={run}"], check=False)
    messages = [line[line.index("pretrain.py: "):] for line in result.stderr.splitlines() if "pretrain.py: " in line]
    assert result.returncode != 0 and len(messages) == 1, result.stderr[-3000:]  # (after the progress bar's \r)
    assert says in messages[0] and str(run) in messages[0], messages[0]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    if "ro" not in options.split(","):
        assert not list((run / "checkpoints").iterdir())  # the partial checkpoint is gone, its space freed


def _save_with_rank_0_refused(rank: int, store: str, target: str, outcome: str) -> None:
    """One rank of a two-process save in which rank 0 alone cannot write the COMPLETE marker."""
    import torch
    import torch.distributed as dist

    from training import checkpoint as ckpt

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2,
                            timeout=datetime.timedelta(seconds=30))
    write = ckpt._write_synced

    def refuse_marker(path, data):
        if path.name == ckpt.MARKER:
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        write(path, data)

    if rank == 0:
        ckpt._write_synced = refuse_marker
    model = torch.nn.Linear(4, 3)
    try:
        ckpt.save_checkpoint(Path(target), model, torch.optim.SGD(model.parameters(), lr=0.1), {"step": 1})
        result = "saved"
    except Exception as err:
        result = f"{type(err).__name__}: {err}"
    Path(f"{outcome}{rank}").write_text(result)


def test_a_save_failing_on_one_rank_fails_on_every_rank(tmp_path):
    """Rank 0 alone fails (its COMPLETE marker is refused): rank 1 must fail too, at once, rather
    than wait at a barrier rank 0 never reaches (until the process group's timeout)."""
    spawn = multiprocessing.get_context("spawn")
    args = (str(tmp_path / "store"), str(tmp_path / "step_1"), str(tmp_path / "outcome"))
    ranks = [spawn.Process(target=_save_with_rank_0_refused, args=(rank, *args)) for rank in (0, 1)]
    for process in ranks:
        process.start()
    for process in ranks:
        process.join(timeout=120)
        if process.is_alive():
            process.kill()
    outcomes = [(tmp_path / f"outcome{rank}").read_text() for rank in (0, 1)]
    assert outcomes[0].startswith("CheckpointError") and "the disk is full" in outcomes[0], outcomes[0]
    assert outcomes[1].startswith("CheckpointError") and "rank 0 failed" in outcomes[1], outcomes[1]
    assert not (tmp_path / "step_1").exists()
