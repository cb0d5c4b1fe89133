import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("WANDB_MODE", "disabled")  # no test touches the network
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import subprocess  # noqa: E402

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def demo_run(tmp_path_factory):
    """A small real run: the demo corpus (tokenizer trained on the spot) and 30 training steps of
    the demo HRM. Returns (data_dir, run_dir)."""
    base = tmp_path_factory.mktemp("demo")
    data, run = base / "data", base / "run"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    subprocess.run([sys.executable, "-m", "data_io.demo", "--out", str(data), "--train-size", "3000",
                    "--heldout-size", "40", "--epochs", "1"], cwd=ROOT, env=env, check=True, capture_output=True)
    subprocess.run([sys.executable, str(ROOT / "pretrain.py"), "--config-name", "cfg_demo", f"data.path={data}/sampled",
                    f"checkpoint_path={run}", "max_steps=30", "global_batch_size=1024", "log_interval=10",
                    "checkpoint_every_steps=null", "epochs=1"], cwd=ROOT, env=env, check=True, capture_output=True)
    return data, run


@pytest.fixture
def one_rank_group(tmp_path):
    """A one-process gloo group, for code that needs torch.distributed (FSDP2, DCP) in-process."""
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    yield
    dist.destroy_process_group()
