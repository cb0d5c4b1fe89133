"""Every override key found in the reference's configs and README recipes (sapientinc/HRM-Text:
config/cfg_pretrain.yaml, cfg_sft.yaml, arch/net/*, arch/size/*, data/*, its PretrainConfig and
model configs, the README's training and SFT commands) composes here and reaches the field it
sets there. Values differ from the defaults, so a key that is accepted but lost fails."""

import pytest

from training.config import compose

# (overrides, field path, expected value); the net or size group comes first where the key is
# one of that net's (the reference lists a net's keys in its arch/net file only)
CASES = [
    # cfg_pretrain.yaml and PretrainConfig
    (["global_batch_size=172032"], "global_batch_size", 172032),
    (["epochs=3"], "epochs", 3),
    (["checkpoint_interval=2"], "checkpoint_interval", 2),
    (["lr=2.5e-4"], "lr", 2.5e-4),
    (["lr_min_ratio=0.5"], "lr_min_ratio", 0.5),
    (["lr_warmup_steps=100"], "lr_warmup_steps", 100),
    (["weight_decay=0.05"], "weight_decay", 0.05),
    (["beta1=0.8"], "beta1", 0.8),
    (["beta2=0.99"], "beta2", 0.99),
    (["ema=0.999"], "ema", 0.999),
    (["ema=null"], "ema", None),
    (["fwd_bwd_dtype=float32"], "fwd_bwd_dtype", "float32"),
    (["fwd_bwd_dtype=bfloat16"], "fwd_bwd_dtype", "bfloat16"),
    (["project_name=proj"], "project_name", "proj"),
    (["run_name=run"], "run_name", "run"),
    (["checkpoint_path=/runs/a"], "checkpoint_path", "/runs/a"),
    (["+checkpoint_path=/runs/b"], "checkpoint_path", "/runs/b"),  # the README's SFT recipe
    (["resume_from=/runs/a"], "resume_from", "/runs/a"),
    (["resume_from=/runs/a", "resume_epoch=2"], "resume_epoch", 2),
    (["resume_from=/runs/a", "weights_only_resume_from_ema=true"], "weights_only_resume_from_ema", True),
    (["seed=3"], "seed", 3),
    (["log_interval=5"], "log_interval", 5),
    # data groups and keys
    (["data=hlm"], "data.path", "/dev/shm/sampled"),
    (["data.path=/dev/shm/other"], "data.path", "/dev/shm/other"),
    (["data.target_only=false"], "data.target_only", False),
    # arch/size keys
    (["arch/size@arch=L"], "arch.hidden_size", 1280),
    (["arch/size@arch=B"], "arch.n_layers", 12),
    (["arch/size@arch=XXL"], "arch.n_layers", 72),
    (["arch/size@arch=XXL_wide"], "arch.hidden_size", 2560),
    (["arch.n_layers=16"], "arch.n_layers", 16),
    (["arch.hidden_size=1024", "arch.num_heads=8"], "arch.hidden_size", 1024),
    (["arch.num_heads=6"], "arch.num_heads", 6),
    (["arch.expansion=2"], "arch.expansion", 2.0),
    (["arch.norm_type=post"], "arch.norm_type", "post"),
    (["arch.norm_eps=1e-5"], "arch.norm_eps", 1e-5),
    (["arch.rope_theta=500000"], "arch.rope_theta", 500000.0),
    (["arch.pos_emb_type=none"], "arch.pos_emb_type", "none"),
    (["arch.init_type=fixed_normal"], "arch.init_type", "fixed_normal"),
    (["arch.init_type=megatron"], "arch.init_type", "megatron"),
    (["arch.init_std=0.01"], "arch.init_std", 0.01),
    (["+arch.init_std=0.01"], "arch.init_std", 0.01),
    (["arch.attn_type=causal"], "arch.attn_type", "causal"),
    # arch/net keys, per net
    (["arch/net@arch=transformer"], "arch.net", "transformer"),
    (["arch.half_layers=false"], "arch.half_layers", False),
    (["arch.H_cycles=3"], "arch.H_cycles", 3),
    (["arch.L_cycles=2"], "arch.L_cycles", 2),
    (["+arch.H_override.n_layers=4"], "arch.H_override", {"n_layers": 4}),
    (["arch.bp_warmup_ratio=0.1"], "arch.bp_warmup_ratio", 0.1),
    (["arch.bp_max_steps=6"], "arch.bp_max_steps", 6),
    (["arch.bp_min_steps=3"], "arch.bp_min_steps", 3),
    (["arch/net@arch=trm", "arch.H_bp_steps=2"], "arch.H_bp_steps", 2),
    (["arch/net@arch=trm", "arch.L_bp_steps=2"], "arch.L_bp_steps", 2),
    (["arch/net@arch=trm_match_recurrence", "arch.L_bp_steps=2"], "arch.L_bp_steps", 2),
    (["arch/net@arch=rins", "arch.L_cycles=5"], "arch.L_cycles", 5),
    (["arch/net@arch=rins", "arch.L_bp_cycles=2"], "arch.L_bp_cycles", 2),
    (["arch/net@arch=ut", "arch.cycles=6"], "arch.cycles", 6),
    (["arch/net@arch=ut", "arch.bp_cycles=3"], "arch.bp_cycles", 3),
]


def field(cfg, path: str):
    for part in path.split("."):
        cfg = getattr(cfg, part)
    return cfg


@pytest.mark.parametrize("overrides,path,expected", CASES, ids=[" ".join(c[0]) for c in CASES])
def test_reference_override_reaches_its_field(overrides, path, expected):
    assert field(compose("cfg_pretrain", overrides), path) == expected


def test_reference_readme_recipes():
    """The README's L-size pretraining command and its SFT command, as written there."""
    cfg = compose("cfg_pretrain", ["arch/size@arch=L", "lr=2.5e-4", "global_batch_size=172032"])
    assert (cfg.arch.n_layers, cfg.arch.hidden_size, cfg.lr, cfg.global_batch_size) == (24, 1280, 2.5e-4, 172032)
    sft = compose("cfg_sft", ["arch/size@arch=XL", "data.path=/dev/shm/sft_data", "resume_from=/path/to/pretrain_ckpt",
                              "+checkpoint_path=/path/to/sft_out"])
    assert (sft.arch.hidden_size, sft.data.path, sft.resume_from, sft.checkpoint_path) == \
        (1536, "/dev/shm/sft_data", "/path/to/pretrain_ckpt", "/path/to/sft_out")
    with_ema = compose("cfg_sft", ["data.path=/d", "resume_from=/r", "weights_only_resume_from_ema=true"])
    assert with_ema.weights_only_resume_from_ema is True


def test_every_reference_group_option_composes():
    """Every net and size file of the reference exists here under its name, and its data groups."""
    for net in ("hrm", "transformer", "trm", "trm_match_recurrence", "rins", "ut"):
        assert compose("cfg_pretrain", [f"arch/net@arch={net}"]).arch.net == net
    for size, layers in (("B", 12), ("L", 24), ("XL", 32), ("XXL", 72), ("XXL_wide", 32)):
        assert compose("cfg_pretrain", [f"arch/size@arch={size}"]).arch.n_layers == layers
    assert compose("cfg_sft", ["data=sft", "data.path=/d", "resume_from=/r"]).data.path == "/d"


def test_a_key_no_net_reads_still_fails():
    """`+key=` is read as set-or-add, but the schema still refuses what it does not know."""
    with pytest.raises(SystemExit, match="arch.nonesuch"):
        compose("cfg_pretrain", ["+arch.nonesuch=1"])
