"""The run directory: what pretrain.py writes and what resume, generation, evaluation and export
read (docs/DESIGN.md, "Run directory"). Its one home: no other module names these files.

    <run_dir>/all_config.yaml        the validated training config
    <run_dir>/train_metadata.yaml    start time, world size, device, parameters, schedule
    <run_dir>/dataset_metadata.json  the sampled dataset's metadata.json
    <run_dir>/tokenizer/             a copy of the tokenizer with its tokenizer_info.json
    <run_dir>/code/                  a snapshot of the code that ran
    <run_dir>/metrics.jsonl          one line per logged step (training/logger.py, METRICS_FILE)
    <run_dir>/checkpoints/<name>/    distributed checkpoints (training/checkpoint.py)

The reference's run directories (training/reference_run.py) load for generation, evaluation,
export, SFT and warm starts.
"""

import json
import shutil
from pathlib import Path
from typing import NamedTuple

import torch
import yaml

from data_io.text_tokenizer import TextTokenizer, tokenizer_file, tokenizer_from_info
from models.config import ArchConfig
from models.model import LanguageModel, model_vocab_size
from training import checkpoint as ckpt
from training import reference_run
from training.logger import METRICS_FILE

CONFIG = "all_config.yaml"
TRAIN_METADATA = "train_metadata.yaml"
DATASET_METADATA = "dataset_metadata.json"
TOKENIZER_DIR = "tokenizer"
TOKENIZER_INFO = "tokenizer_info.json"
CODE_DIR = "code"
# what the code snapshot holds, relative to the project root
CODE_PATTERNS = ("*.py", "config/**/*.yaml", "models/*.py", "training/*.py", "data_io/*.py")
PROJECT_ROOT = Path(__file__).resolve().parent.parent
# keys that left the architecture schema; runs saved before still load
_FORMER_ARCH_KEYS = ("attn_backend",)


class RunDirError(ValueError):
    """A run directory that cannot serve the request; the message names the file and the fix."""


def read_config(run_dir: str | Path) -> dict:
    path = Path(run_dir) / CONFIG
    if not path.is_file():
        raise RunDirError(f"{run_dir}: no {CONFIG}; pass a run directory written by pretrain.py")
    return yaml.safe_load(path.read_text())


def read_arch(config: dict, override: dict | None = None) -> ArchConfig:
    """The architecture of a saved config: ours, or the reference's (training/reference_run.py)."""
    arch = reference_run.reference_arch(config["arch"]) if reference_run.is_reference_config(config) else config["arch"]
    saved = {k: v for k, v in arch.items() if k not in _FORMER_ARCH_KEYS}
    return ArchConfig.model_validate({**saved, **(override or {})})


def write_run_files(run_dir: Path, config: dict, dataset_path: str | Path, dataset_metadata: dict,
                    train_metadata: dict) -> None:
    """Config, metadata, the tokenizer and a code snapshot: everything but checkpoints and metrics."""
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / CONFIG).write_text(yaml.safe_dump(config, sort_keys=False))
    (run_dir / TRAIN_METADATA).write_text(yaml.safe_dump(train_metadata, sort_keys=False))
    copy_tokenizer(dataset_metadata["tokenizer_info"], Path(dataset_path), run_dir / TOKENIZER_DIR)
    (run_dir / DATASET_METADATA).write_text(json.dumps(dataset_metadata, indent=1))
    for pattern in CODE_PATTERNS:
        for src in PROJECT_ROOT.glob(pattern):
            dst = run_dir / CODE_DIR / src.relative_to(PROJECT_ROOT)
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst)


def copy_tokenizer(tokenizer_info: dict, dataset_path: Path, tok_dir: Path) -> None:
    """The tokenizer travels with the run, so evaluation and export work once /dev/shm is wiped.
    A relative tokenizer_path is relative to the dataset; tiktoken names are kept as they are."""
    info = dict(tokenizer_info)
    source = tokenizer_file(info, dataset_path)
    tok_dir.mkdir(exist_ok=True)
    if source is not None:
        shutil.copy2(source, tok_dir / "tokenizer.json")
        info["tokenizer_path"] = f"{TOKENIZER_DIR}/tokenizer.json"
    (tok_dir / TOKENIZER_INFO).write_text(json.dumps(info, indent=1))


def check_unclaimed(run_dir: Path, continued: Path | None) -> None:
    """A run directory belongs to one run: a new run, or a warm start from another, never writes
    into an existing one (it would overwrite its config and metrics, and pruning would delete
    checkpoints by the old run's steps). Only the run itself continues there (`continued`: the
    run a resume continues exactly, resumes_exactly)."""
    if continued is not None and run_dir.resolve() == continued.resolve():
        return
    held = [name for name in (CONFIG, METRICS_FILE, ckpt.checkpoint_dir(run_dir).name) if (run_dir / name).exists()]
    if held:
        raise RunDirError(f"checkpoint_path={run_dir} already holds a run ({', '.join(held)}); give a new "
                          f"checkpoint_path (resume_from={run_dir} on that run's own data continues it there)")


def check_resume_compatible(config: dict, resume_dir: Path, weights_only: bool) -> None:
    """Raise RunDirError when `config` cannot continue the run in `resume_dir`: a different
    architecture (the gradient-depth schedule may change), or the EMA switched on or off."""
    old = read_config(resume_dir)
    if not weights_only and (old.get("ema") is None) != (config.get("ema") is None):
        # The EMA lives in the optimizer state: a run without one has none to resume, and a run
        # that stops updating its EMA would keep a stale one that evaluation and export would use.
        raise RunDirError(f"resume_from={resume_dir}: ema: run has {old.get('ema')!r}, config has "
                          f"{config.get('ema')!r}; a resume can change the EMA rate but not switch the EMA on or off")
    old_arch = read_arch(old).model_dump()
    diffs = [f"arch.{k}: run has {old_arch.get(k)!r}, config has {v!r}" for k, v in config["arch"].items()
             if k not in ArchConfig.schedule_keys() and old_arch.get(k) != v]
    if diffs:
        raise RunDirError(f"resume_from={resume_dir}: architecture differs from the checkpoint's ({', '.join(diffs)}); "
                          "pass the run's arch/net and arch/size overrides")


def dataset_changes(resume_dir: Path, dataset_metadata: dict) -> list[str] | None:
    """The metadata.json keys in which the dataset to train on (its metadata.json, as the dataset
    read it) differs from the one the run in resume_dir trained on: none for the same dataset,
    wherever it lies now (the tokenizer's path aside: it moves with the data). None when the run
    kept no copy to compare with."""
    def comparable(metadata: dict) -> dict:
        return {**metadata, "tokenizer_info": {k: v for k, v in metadata.get("tokenizer_info", {}).items()
                                               if k != "tokenizer_path"}}

    saved = resume_dir / DATASET_METADATA
    if not saved.is_file():
        return None
    try:
        old = comparable(json.loads(saved.read_text()))
    except (ValueError, AttributeError) as err:  # not JSON, or not an object
        raise RunDirError(f"{saved}: unreadable ({err!r}); copy the run directory again") from None
    new = comparable(dataset_metadata)
    return sorted(k for k in old.keys() | new.keys() if old.get(k) != new.get(k))


def resumes_exactly(config: dict, resume_dir: Path, checkpoint: Path, dataset_metadata: dict) -> bool:
    """Whether resume_from continues the run exactly (its step, data position and RNG) rather than
    warm-starting at step 0 as the reference's resume does (docs/DESIGN.md, Decisions, "Resume and
    warm starts"): it continues when the checkpoint records its position, weights_only_resume_from_ema
    is off and data.path holds the dataset the run trained on. Refused: data.path is the run's own
    path but the dataset there changed since (a continuation would read other samples at the saved
    position, and a warm start is not what the command asks for), unless resume_other_data=true,
    which takes it as other data."""
    if config.get("weights_only_resume_from_ema") or not ckpt.has_trainer_state(checkpoint):
        return False
    data_path = Path(config["data"]["path"])
    run_data_path = read_config(resume_dir).get("data", {}).get("path")
    same_path = run_data_path is not None and Path(run_data_path).resolve() == data_path.resolve()
    changes = dataset_changes(resume_dir, dataset_metadata)
    if changes is None:  # a run without its dataset's metadata: the path decides
        return same_path
    if same_path and changes and not config.get("resume_other_data"):
        raise RunDirError(f"resume_from={resume_dir}: the dataset at data.path={data_path} is not the one the run "
                          f"trained on ({data_path / 'metadata.json'} differs from {resume_dir / DATASET_METADATA} in "
                          f"{', '.join(changes)}); restore it to continue the run, or pass resume_other_data=true "
                          "to warm-start on it at step 0")
    return not changes


class LoadedRun(NamedTuple):
    model: LanguageModel
    tokenizer: TextTokenizer
    context_len: int
    checkpoint: Path


def load_run(run_dir: str | Path, ckpt_epoch: int | None = None, ckpt_step: int | None = None,
             use_ema: bool = True, arch_override: dict | None = None, device="cpu") -> LoadedRun:
    """The model (weights of the latest complete checkpoint, or of an epoch or step), its
    tokenizer and context length, for generation, evaluation and export."""
    run_dir = Path(run_dir)
    config = read_config(run_dir)
    arch = read_arch(config, arch_override)
    checkpoint = ckpt.find_checkpoint(run_dir, ckpt_epoch, ckpt_step)
    if reference_run.is_reference_config(config):
        # its dataset metadata (tokenizer_info with the tokenizer's own path) and unrounded vocabulary
        meta = yaml.safe_load((run_dir / reference_run.REFERENCE_DATASET_METADATA).read_text())
        info = meta["tokenizer_info"]
        vocab_size = meta.get("vocab_size") or info["vocab_size"]
    else:
        meta = json.loads((run_dir / DATASET_METADATA).read_text())
        info = json.loads((run_dir / TOKENIZER_DIR / TOKENIZER_INFO).read_text())
        vocab_size = model_vocab_size(info["vocab_size"])
    tokenizer = tokenizer_from_info(info, run_dir)
    model = LanguageModel(arch, vocab_size)
    ckpt.load_model_weights(checkpoint, model, use_ema=use_ema)
    model.to(device).eval()
    return LoadedRun(model, tokenizer, meta["max_seq_len"] - 1, checkpoint)
