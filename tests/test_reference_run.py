"""A run directory in the reference's layout (sapientinc/HRM-Text pretrain.py: all_config.yaml with
arch.name, train_metadata.yaml, fsdp2_epoch_N/ with its module names in the DCP keys and zL_init in
bfloat16), built here from the demo run, loads for generation, export and SFT."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed.checkpoint as dcp
import yaml
from torch.distributed.checkpoint.metadata import TensorStorageMetadata

from simple_inference_engine import SimpleEngine
from training import checkpoint as ckpt
from training.run_dir import load_run

ROOT = Path(__file__).resolve().parent.parent
REFERENCE_LAYER_PREFIX = {"L": "model.L_level.core.layers", "H": "model.H_level.core.layers"}


def reference_name(ours: str) -> str:
    """Our parameter name -> the reference's for hrm, written out from its module tree
    (LMHead(model=HierarchicalReasoningModel): embed_tokens.embedding_weight, lm_head.weight,
    model.{H,L}_level.core.layers.*, model.zL_init)."""
    if ours == "embed_tokens.weight":
        return "embed_tokens.embedding_weight"
    if ours == "net.z_L_init":
        return "model.zL_init"
    if ours.startswith("net.stacks."):
        role, rest = ours[len("net.stacks."):].split(".layers.", 1)
        return f"{REFERENCE_LAYER_PREFIX[role]}.{rest}"
    assert ours == "lm_head.weight", ours
    return ours


def read_all(path: Path) -> dict[str, torch.Tensor]:
    reader = dcp.FileSystemReader(str(path))
    meta = reader.read_metadata().state_dict_metadata
    state = {k: torch.empty(m.size, dtype=m.properties.dtype) for k, m in meta.items()
             if isinstance(m, TensorStorageMetadata)}
    dcp.load(state, storage_reader=reader, no_dist=True)
    return state


@pytest.fixture(scope="module")
def reference_run(demo_run, tmp_path_factory):
    """The demo run's last checkpoint rewritten as the reference writes a run directory."""
    _, run = demo_run
    ours = read_all(ckpt.find_checkpoint(run))
    model_state, optim_state = {}, {}
    for key, tensor in ours.items():
        if key.startswith("model."):
            name = reference_name(key[len("model."):])
            model_state[name] = tensor.bfloat16() if name == "model.zL_init" else tensor  # as the reference keeps it
        elif key.startswith("optim.state."):
            name, field = key[len("optim.state."):].rsplit(".", 1)
            optim_state.setdefault(reference_name(name), {})[field] = tensor
    ref = tmp_path_factory.mktemp("reference") / "run"
    (ref / "fsdp2_epoch_1").mkdir(parents=True)
    dcp.save({"model": model_state, "optim": {"state": optim_state}}, checkpoint_id=str(ref / "fsdp2_epoch_1"),
             no_dist=True)
    config = yaml.safe_load((run / "all_config.yaml").read_text())
    arch = config["arch"]
    reference_arch = {"name": "baselines.hrm_nocarry_bp_warmup@HierarchicalReasoningModel", "head": "lm_head@LMHead",
                      **{k: arch[k] for k in ("half_layers", "H_cycles", "L_cycles", "H_override", "bp_warmup_ratio",
                                              "bp_max_steps", "n_layers", "hidden_size", "num_heads", "expansion",
                                              "norm_type", "norm_eps", "rope_theta", "pos_emb_type", "init_type")}}
    (ref / "all_config.yaml").write_text(yaml.safe_dump({
        "arch": reference_arch, "data": {"path": config["data"]["path"], "target_only": True},
        "global_batch_size": 1024, "epochs": 1, "lr": 3e-3, "lr_min_ratio": 0.1, "lr_warmup_steps": 30,
        "weight_decay": 0.1, "beta1": 0.9, "beta2": 0.95, "ema": config["ema"], "fwd_bwd_dtype": "bfloat16",
        "project_name": "demo", "run_name": "ref", "checkpoint_path": str(ref), "resume_from": None,
        "resume_epoch": None, "weights_only_resume_from_ema": False, "seed": 0, "checkpoint_interval": 1,
        "log_interval": 5}))
    metadata = json.loads((run / "dataset_metadata.json").read_text())
    info = json.loads((run / "tokenizer" / "tokenizer_info.json").read_text())
    info["tokenizer_path"] = str(run / info["tokenizer_path"])  # the reference keeps the tokenizer's own path
    vocab = ours["model.embed_tokens.weight"].shape[0]
    (ref / "train_metadata.yaml").write_text(yaml.safe_dump({
        "tokenizer_info": info, "vocab_size": vocab, "max_seq_len": metadata["max_seq_len"],
        "total_length": metadata["total_length"]}))
    return run, ref


@pytest.mark.parametrize("use_ema", [True, False])
def test_reference_run_generates_as_the_same_weights(reference_run, use_ema):
    run, ref = reference_run
    ours = load_run(run, use_ema=use_ema)
    theirs = load_run(ref, ckpt_epoch=1, use_ema=use_ema)
    assert theirs.checkpoint == ref / "fsdp2_epoch_1" and theirs.context_len == ours.context_len
    with torch.no_grad():
        ours.model.net.z_L_init.copy_(ours.model.net.z_L_init.bfloat16())  # what the reference layout stores
    for name, tensor in ours.model.state_dict().items():
        torch.testing.assert_close(theirs.model.state_dict()[name], tensor, rtol=0, atol=0, msg=name)
    prompts = ["add 1 2", "sort 321", "reverse 12345"]
    engines = [SimpleEngine(r.model, r.tokenizer, r.context_len, compile=False) for r in (ours, theirs)]
    outputs = [e.generate_ids([e.encode_prompt(p, "direct") for p in prompts], max_new_tokens=6) for e in engines]
    assert outputs[0] == outputs[1]


def test_reference_run_exports(reference_run, tmp_path):
    from safetensors.torch import load_file

    from conversion.convert_to_hf import convert

    run, ref = reference_run
    ours = load_file(convert(run, tmp_path / "ours") / "model.safetensors")
    theirs = load_file(convert(ref, tmp_path / "theirs") / "model.safetensors")
    assert ours.keys() == theirs.keys()
    for name in ours:
        expected = ours[name].bfloat16().float() if name == "model.z_L_init" else ours[name]
        torch.testing.assert_close(theirs[name], expected, rtol=0, atol=0, msg=name)


def test_sft_from_a_reference_run(reference_run, demo_run, tmp_path):
    """cfg_sft with resume_from=<reference run>: its live weights and optimizer state (step counts
    continue) are where SFT starts; lr=0 keeps the weights for the one step taken."""
    data, _ = demo_run
    run, ref = reference_run
    sft = tmp_path / "sft"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, str(ROOT / "pretrain.py"), "--config-name", "cfg_sft",
                             "arch/size@arch=tiny", f"resume_from={ref}", f"data.path={data}/sampled", "ema=0.99",
                             f"+checkpoint_path={sft}", "max_steps=1", "lr=0.0", "global_batch_size=1024",
                             "fwd_bwd_dtype=float32", "compile=false", "wandb_mode=disabled"],
                            cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    started = read_all(ckpt.find_checkpoint(sft))
    pretrained = read_all(ref / "fsdp2_epoch_1")
    torch.testing.assert_close(started["model.lm_head.weight"], pretrained["model.lm_head.weight"], rtol=0, atol=0)
    torch.testing.assert_close(started["model.embed_tokens.weight"], pretrained["model.embed_tokens.embedding_weight"],
                               rtol=0, atol=0)
    steps = pretrained["optim.state.lm_head.weight.step"].item()
    assert steps == 30 and started["optim.state.lm_head.weight.step"].item() == steps + 1
