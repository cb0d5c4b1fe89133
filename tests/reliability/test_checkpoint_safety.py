"""A checkpoint is data, never code: a poisoned `.metadata` (DCP's pickle) or RNG file is refused
by every tool that reads checkpoints, and the payload never runs."""

import os
import pickle
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from training import checkpoint as ckpt

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "tests" / "fixtures" / "eval"


class _ShellThenReal:
    """Unpickles by running a shell command that creates $MARK, then returns the genuine object, so
    a loader that unpickles freely would run it and carry on as if nothing happened."""

    def __init__(self, genuine: bytes):
        self.genuine = genuine

    def __reduce__(self):
        source = f"__import__('os').system('touch \"$MARK\"') or __import__('pickle').loads({self.genuine!r})"
        return eval, (source,)


def poison(checkpoint: Path) -> None:
    metadata = checkpoint / ".metadata"
    metadata.write_bytes(pickle.dumps(_ShellThenReal(metadata.read_bytes())))


def run_tool(args: list[str], mark: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "MARK": str(mark)}
    return subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


@pytest.fixture
def poisoned_run(demo_run, tmp_path):
    data, run = demo_run
    copy = tmp_path / "poisoned_run"
    shutil.copytree(run, copy)
    checkpoint = ckpt.find_checkpoint(copy)
    poison(checkpoint)
    # The payload is live: a plain unpickler runs it.
    live = tmp_path / "live"
    result = run_tool(["-c", f"import pickle; pickle.load(open({str(checkpoint / '.metadata')!r}, 'rb'))"], live)
    assert result.returncode == 0 and live.exists(), result.stderr
    return data, copy, checkpoint


def test_every_checkpoint_reader_refuses_poisoned_metadata(poisoned_run, tmp_path):
    data, run, checkpoint = poisoned_run
    tools = {
        "convert_to_hf": ["-m", "conversion.convert_to_hf", "--ckpt_path", str(run), "--out_dir", str(tmp_path / "hf")],
        "evaluation": ["-m", "evaluation.main", f"ckpt_path={run}", f"data_dir={FIXTURES}", "run_only=[GSM8k]",
                       "limit=1", f"results_path={tmp_path / 'eval.json'}"],
        "inference CLI": ["simple_inference_engine.py", "generate", "--run", str(run), "--prompt", "1 + 2 ="],
        "resume": ["pretrain.py", "--config-name", "cfg_demo", f"data.path={data / 'sampled'}", f"resume_from={run}",
                   "max_steps=31"],
    }
    for tool, args in tools.items():
        mark = tmp_path / f"ran_{tool.replace(' ', '_')}"
        result = run_tool(args, mark)
        out = result.stdout + result.stderr
        assert result.returncode != 0, (tool, out[-2000:])
        assert "refusing to load" in out and str(checkpoint / ".metadata") in out, (tool, out[-2000:])
        assert not mark.exists(), f"{tool} ran the payload"
    assert not (tmp_path / "hf" / "model.safetensors").exists() and not (tmp_path / "eval.json").exists()


def test_resume_refuses_a_poisoned_rng_file(demo_run, tmp_path):
    data, run = demo_run
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    rng = ckpt.find_checkpoint(copy) / "rng_rank0.pt"
    torch.save({"torch": _ShellThenReal(pickle.dumps(None))}, rng)
    mark = tmp_path / "ran"
    result = run_tool(["pretrain.py", "--config-name", "cfg_demo", f"data.path={data / 'sampled'}",
                       f"resume_from={copy}", "max_steps=31"], mark)
    out = result.stdout + result.stderr
    assert result.returncode != 0 and f"{rng}: refusing to load" in out, out[-2000:]
    assert not mark.exists()


def test_metadata_pointing_outside_its_folder_is_refused(demo_run, tmp_path):
    _, run = demo_run
    checkpoint = tmp_path / "ck"
    shutil.copytree(ckpt.find_checkpoint(run), checkpoint)
    metadata = ckpt.read_metadata(checkpoint)
    next(iter(metadata.storage_data.values())).relative_path = "../../secrets.distcp"
    (checkpoint / ".metadata").write_bytes(pickle.dumps(metadata))
    with pytest.raises(ckpt.CheckpointError, match="points outside its folder"):
        ckpt.read_metadata(checkpoint)


def test_a_damaged_checkpoint_is_named_with_the_fix(demo_run, tmp_path):
    """A partial copy (COMPLETE there, a storage file cut short or absent) fails with one line
    naming the folder, the file and the fix, not with DCP's EOFError or FileNotFoundError."""
    from training.run_dir import load_run

    data, run = demo_run
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    checkpoint = ckpt.find_checkpoint(copy)
    shard = checkpoint / "__0_0.distcp"
    size = shard.stat().st_size
    os.truncate(shard, size // 2)
    fix = "copy it again, or pick another with resume_epoch=/resume_step= (training) or ckpt_epoch"
    tools = {
        "evaluation": ["-m", "evaluation.main", f"ckpt_path={copy}", f"data_dir={FIXTURES}", "run_only=[GSM8k]",
                       "limit=1", f"results_path={tmp_path / 'eval.json'}"],
        "resume": ["pretrain.py", "--config-name", "cfg_demo", f"data.path={data / 'sampled'}", f"resume_from={copy}",
                   "max_steps=31"],
    }
    for tool, args in tools.items():
        result = run_tool(args, tmp_path / "unused")
        out = result.stdout + result.stderr
        assert result.returncode != 0 and "Traceback" not in out, (tool, out[-2000:])
        assert (f"damaged checkpoint {checkpoint}: __0_0.distcp is truncated ({size // 2} bytes, its items need "
                f"{size})") in out and fix in out, (tool, out[-2000:])
    shard.unlink()
    with pytest.raises(ckpt.CheckpointError, match=re.escape(f"damaged checkpoint {checkpoint}: __0_0.distcp is missing; {fix}")):
        load_run(copy)
