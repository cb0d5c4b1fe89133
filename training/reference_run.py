"""Run directories written by the reference (sapientinc/HRM-Text pretrain.py), read as ours.

Its layout: <run_dir>/all_config.yaml (the config; the net named by `arch.name`, a module@class),
<run_dir>/train_metadata.yaml (the dataset's metadata: tokenizer_info, vocab_size, max_seq_len),
<run_dir>/fsdp2_epoch_{1..N}/ (distributed checkpoints, directly in the run directory, complete
once DCP's `.metadata` exists). Its DCP keys name the reference's modules: `model.<fqn>` for the
weights, `optim.state.<fqn>.{step,exp_avg,exp_avg_sq,param_ema}` for AdamATan2's state (the same
state names as ours). `reference_fqn` maps our parameter names onto its.
"""

import re
from pathlib import Path

# the reference's arch.name -> our net
REFERENCE_NETS = {
    "baselines.hrm_nocarry_bp_warmup@HierarchicalReasoningModel": "hrm",
    "baselines.transformer_wrapper@TransformerWrapper": "transformer",
    "baselines.trm_nocarry@TinyRecursiveModel": "trm",  # trm_match_recurrence when half_layers
    "baselines.rins_nocarry@RINS": "rins",
    "baselines.ut_nocarry@UniversalTransformer": "ut",
}
REFERENCE_DATASET_METADATA = "train_metadata.yaml"
DCP_METADATA = ".metadata"
EPOCH_CHECKPOINT = re.compile(r"^fsdp2_epoch_(\d+)$")


def is_reference_config(config: dict) -> bool:
    return "name" in config.get("arch", {}) and "net" not in config["arch"]


def reference_arch(arch: dict) -> dict:
    """The reference's arch node as our ArchConfig fields: `name` becomes `net`, `head` (always
    the LM head) goes."""
    name = arch["name"]
    if name not in REFERENCE_NETS:
        raise ValueError(f"arch.name={name!r} is not one of the reference's nets ({', '.join(REFERENCE_NETS)})")
    net = REFERENCE_NETS[name]
    if net == "trm" and arch.get("half_layers"):
        net = "trm_match_recurrence"
    return {**{k: v for k, v in arch.items() if k not in ("name", "head")}, "net": net}


def epoch_checkpoints(run_dir: str | Path) -> list[Path]:
    """The reference's complete epoch checkpoints in a run directory, oldest first."""
    found = []
    for path in Path(run_dir).glob("fsdp2_epoch_*"):
        match = EPOCH_CHECKPOINT.match(path.name)
        if match and (path / DCP_METADATA).exists():
            found.append((int(match.group(1)), path))
    return [path for _, path in sorted(found)]


def is_reference_checkpoint(path: Path) -> bool:
    """A checkpoint directly in its run directory (ours live under <run_dir>/checkpoints/)."""
    return (path.parent / "all_config.yaml").exists() and EPOCH_CHECKPOINT.match(path.name) is not None


def reference_fqn(name: str, net: str) -> str:
    """Our parameter or buffer name -> the reference's, for a model of this net:
        embed_tokens.weight           embed_tokens.embedding_weight
        lm_head.weight                lm_head.weight
        net.z_L_init                  model.zL_init
        net.stacks.{L,H}.layers.*     model.{L,H}_level.core.layers.* (hrm, trm, ut: a recurrent block
                                      around a Transformer), model.{L,H}_level.layers.* (rins),
                                      model.layers.* (transformer)
    """
    if name == "embed_tokens.weight":
        return "embed_tokens.embedding_weight"
    if name == "net.z_L_init":
        return "model.zL_init"
    match = re.match(r"^net\.stacks\.([LH])\.(layers\..*)$", name)
    if match:
        role, rest = match.groups()
        if net == "transformer":
            return f"model.{rest}"
        if net == "rins":
            return f"model.{role}_level.{rest}"
        return f"model.{role}_level.core.{rest}"
    return name
