"""A full disk or a read-only run directory ends training with one line saying so and naming the
place (not the serializer's "unexpected pos" after a traceback), and a checkpoint cut short by a
full disk leaves nothing behind. Each case trains onto a small tmpfs of its own; mounting one
needs privileges, so the cases are skipped where the machine refuses the mount."""

import subprocess

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
