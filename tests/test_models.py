"""Model behaviour against independent references: hand-written gradient routes from docs/DESIGN.md, "Model",
a float64 recomputation of the loss, and a KV-cache decode against one packed forward."""

import math

import pytest
import torch
import yaml

from models import attention as attn_lib
from models.layers import CachedContext, PackedContext
from models.lm_head import IGNORE_LABEL, loss_and_metrics, sample_ids_from_cu_seqlens
from models.model import LanguageModel
from models.flops import executed_flops, executed_flops_per_token
from models.nets import NET_CLASSES, bp_steps_at
from training.model_table import GPU_SIZES, build_on_meta, count_parameters
from training.config import CONFIG_DIR, compose
from training.run_dir import read_arch

CPU_SIZES = ["tiny", "small"]


def tiny_arch(net: str, **overrides):
    arch = compose("cfg_pretrain", [f"arch/net@arch={net}", "arch/size@arch=tiny"]).arch
    return arch.model_copy(update=overrides)


def packed_inputs(lengths, prefixes, total_len, vocab, generator):
    """A packed batch: samples back to back, then a padding tail."""
    cu = [0]
    for n in lengths:
        cu.append(cu[-1] + n)
    ids = torch.randint(0, vocab, (1, total_len), generator=generator)
    pos = torch.zeros(1, total_len, dtype=torch.long)
    for start, n in zip(cu[:-1], lengths):
        pos[0, start:start + n] = torch.arange(n)
    return ids, pos, torch.tensor(cu, dtype=torch.int32), torch.tensor(prefixes, dtype=torch.int32)


def packed_context(cu, prefixes, total_len, arch):
    layout = attn_lib.build_layout(cu, prefixes, total_len=total_len, max_seqlen=total_len,
                                   backend="sdpa", attn_type=arch.attn_type)
    return PackedContext(layout)


@pytest.mark.parametrize("net", list(NET_CLASSES))
@pytest.mark.parametrize("size", GPU_SIZES)
def test_every_gpu_size_instantiates_on_meta(net, size):
    model = build_on_meta(net, size, 65536)
    n = count_parameters(model)
    print(f"{net} {size}: {n / 1e6:.0f}M params")
    assert n > 1e8


@pytest.mark.parametrize("net", list(NET_CLASSES))
@pytest.mark.parametrize("size", CPU_SIZES)
def test_cpu_sizes_forward_backward(net, size):
    arch = compose("cfg_pretrain", [f"arch/net@arch={net}", f"arch/size@arch={size}"]).arch
    torch.manual_seed(0)
    model = LanguageModel(arch, 512)
    model.init_weights()
    g = torch.Generator().manual_seed(0)
    ids, pos, cu, pre = packed_inputs([9, 5, 7], [4, 1, 3], 24, 512, g)
    logits = model(ids, pos, packed_context(cu, pre, 24, arch))
    assert logits.shape == (1, 24, 512)
    logits.float().pow(2).mean().backward()
    # trm trains no embedding, as the reference's (test_which_setting_trains_the_embedding)
    untrained = {"embed_tokens.weight"} if net == "trm" else set()
    for name, p in model.named_parameters():
        if name in untrained:
            assert p.grad is None, name
        else:
            assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name
    assert model.net.z_L_init.grad is None  # a buffer, never trained


# Gradient routes written out by hand from docs/DESIGN.md, "Model" (1 = the call carries gradient).
HRM_ROUTES = {  # calls: L L L H L L L H
    2: [0, 0, 0, 0, 0, 0, 1, 1],
    3: [0, 0, 0, 1, 0, 0, 1, 1],
    4: [0, 0, 0, 1, 0, 1, 1, 1],
    5: [0, 0, 0, 1, 1, 1, 1, 1],
}
BASELINE_ROUTES = {
    "transformer": (["L"], [1]),
    "trm": (["L", "H", "L", "H"], [0, 0, 1, 1]),
    "trm_match_recurrence": (["L", "L", "L", "H"] * 2, [0, 0, 0, 1, 1, 1, 1, 1]),
    "rins": (["L"] * 7 + ["H"], [0, 0, 0, 1, 1, 1, 1, 1]),
    "ut": (["L"] * 4, [0, 0, 1, 1]),
}


def observed_route(net: str, bp_steps: int, arch=None):
    """Run forward+backward, observing each stack call from outside: its role, and whether its
    output received a gradient."""
    torch.manual_seed(0)
    model = LanguageModel(arch or tiny_arch(net), 256)
    model.init_weights()
    calls = []

    def watch(role):
        def hook(module, inputs, output):
            record = {"role": role, "grad": False}
            calls.append(record)
            if output.requires_grad:
                output.register_hook(lambda g: record.update(grad=bool(g.abs().sum() > 0)))
        return hook

    stacks = model.net.stacks
    if "H" in stacks:
        stacks["L"].register_forward_hook(watch("L"))
        stacks["H"].register_forward_hook(watch("H"))
    else:
        shared = stacks["L"]
        roles = iter(NET_CLASSES[net].roles(model.arch))
        shared.register_forward_hook(lambda m, i, o: watch(next(roles))(m, i, o))
    g = torch.Generator().manual_seed(1)
    ids, pos, cu, pre = packed_inputs([6, 5], [3, 2], 12, 256, g)
    model(ids, pos, packed_context(cu, pre, 12, model.arch), bp_steps=bp_steps).sum().backward()
    return [c["role"] for c in calls], [int(c["grad"]) for c in calls]


@pytest.mark.parametrize("bp_steps", [2, 3, 4, 5])
def test_hrm_gradient_routing(bp_steps):
    roles, grads = observed_route("hrm", bp_steps)
    assert roles == ["L", "L", "L", "H"] * 2
    assert grads == HRM_ROUTES[bp_steps]
    # the last b calls carry gradient: min(H_cycles, b-1) H calls and the rest L calls
    assert sum(grads) == bp_steps


@pytest.mark.parametrize("net", list(BASELINE_ROUTES))
def test_baseline_gradient_routing_is_fixed(net):
    expected_roles, expected_grads = BASELINE_ROUTES[net]
    for bp_steps in (2, 5):  # the baselines ignore the HRM warmup
        roles, grads = observed_route(net, bp_steps)
        assert roles == expected_roles
        assert grads == expected_grads


def test_bp_steps_warmup():
    """The reference's rule, steps counted from 1 (the first update): b = bp_min_steps +
    int(min(1, step / (ratio * total)) * (bp_max_steps - bp_min_steps)); here 2 + int(3 step / 200)."""
    arch = tiny_arch("hrm")  # bp 2 -> 5, warmup over the first 20%
    total = 1000
    steps = (1, 66, 67, 133, 134, 199, 200, 1000)
    assert [bp_steps_at(arch, s, total) for s in steps] == [2, 2, 3, 3, 4, 4, 5, 5]
    assert bp_steps_at(arch.model_copy(update={"bp_warmup_ratio": 0.0}), 1, total) == 5
    # from 3: 3 + int(2 step / 200)
    arch3 = compose("cfg_pretrain", ["arch/size@arch=tiny", "arch.bp_min_steps=3"]).arch
    assert [bp_steps_at(arch3, s, total) for s in (1, 99, 100, 200)] == [3, 3, 4, 5]


@pytest.mark.parametrize("net,overrides,roles,grads", [
    ("trm", ["arch.H_bp_steps=2"], ["L", "H", "L", "H"], [0, 1, 1, 1]),
    ("trm_match_recurrence", ["arch.H_bp_steps=1", "arch.L_bp_steps=1"], ["L", "L", "L", "H"] * 2,
     [0, 0, 0, 0, 0, 0, 1, 1]),
    ("rins", ["arch.L_cycles=5", "arch.L_bp_cycles=2"], ["L"] * 5 + ["H"], [0, 0, 0, 1, 1, 1]),
    ("ut", ["arch.cycles=6", "arch.bp_cycles=3"], ["L"] * 6, [0, 0, 0, 1, 1, 1]),
])
def test_gradient_call_counts_are_config_keys(net, overrides, roles, grads):
    """The baselines' cycle and gradient counts are the reference's keys: an override changes the
    calls observed from outside."""
    arch = compose("cfg_pretrain", [f"arch/net@arch={net}", "arch/size@arch=tiny", *overrides]).arch
    assert observed_route(net, 5, arch) == (roles, grads)


@pytest.mark.parametrize("net,inject,trained", [("trm", False, False), ("trm", True, True),
                                                 ("trm_match_recurrence", False, True), ("hrm", False, True)])
def test_which_setting_trains_the_embedding(net, inject, trained):
    """Without input injection the embedded input reaches the recurrence only as z_H's start, so
    the embedding is trained only when the first H call carries gradient: trm (H_bp_steps 1) never,
    as the reference's; trm_match_recurrence (2) and hrm at b = 5 do. inject_input trains trm's."""
    arch = compose("cfg_pretrain", [f"arch/net@arch={net}", "arch/size@arch=tiny", f"arch.inject_input={inject}"]).arch
    torch.manual_seed(0)
    model = LanguageModel(arch, 256)
    model.init_weights()
    g = torch.Generator().manual_seed(1)
    ids, pos, cu, pre = packed_inputs([6, 5], [3, 2], 12, 256, g)
    model(ids, pos, packed_context(cu, pre, 12, arch), bp_steps=5).float().pow(2).mean().backward()
    grad = model.embed_tokens.weight.grad
    assert (grad is not None and grad.abs().sum().item() > 0) == trained


def test_embedding_gets_no_gradient_at_hrm_bp_2():
    """b = 2: only the last H and L calls carry gradient, and neither sees x (reference rule)."""
    torch.manual_seed(0)
    model = LanguageModel(tiny_arch("hrm"), 256)
    model.init_weights()
    g = torch.Generator().manual_seed(1)
    ids, pos, cu, pre = packed_inputs([6, 5], [3, 2], 12, 256, g)
    model(ids, pos, packed_context(cu, pre, 12, model.arch), bp_steps=2).float().pow(2).mean().backward()
    assert model.embed_tokens.weight.grad is None and model.lm_head.weight.grad is not None


def test_pos_emb_none_makes_the_prefix_permutation_equivariant():
    """Without position embeddings, bidirectional attention over a prompt cannot tell its tokens'
    order: permuting the prompt permutes its outputs. With RoPE it does not."""
    g = torch.Generator().manual_seed(4)
    ids = torch.randint(0, 256, (1, 7), generator=g)
    perm = torch.tensor([3, 0, 6, 1, 5, 2, 4])
    for pos_emb, equivariant in (("none", True), ("rope", False)):
        arch = compose("cfg_pretrain", ["arch/size@arch=tiny", f"arch.pos_emb_type={pos_emb}"]).arch
        torch.manual_seed(0)
        model = LanguageModel(arch, 256).double()
        model.init_weights()
        ctx = packed_context(torch.tensor([0, 7], dtype=torch.int32), torch.tensor([7], dtype=torch.int32), 7, arch)
        with torch.no_grad():
            out = model(ids, torch.arange(7)[None], ctx)[0]
            out_perm = model(ids[:, perm], torch.arange(7)[None], ctx)[0]
        assert torch.allclose(out_perm, out[perm], atol=1e-9) == equivariant, pos_emb


@pytest.mark.parametrize("net", list(NET_CLASSES))
def test_kv_cache_decode_matches_packed_forward(net):
    """Prefill prompts with prefix semantics, then decode token by token (two rows of different
    prompt lengths): logits equal one packed prefix-LM forward over prompt+response."""
    torch.manual_seed(0)
    arch = tiny_arch(net)
    model = LanguageModel(arch, 256).double()
    model.init_weights()
    model.eval()
    g = torch.Generator().manual_seed(2)
    prompts = [torch.randint(0, 256, (n,), generator=g) for n in (5, 3)]
    responses = [torch.randint(0, 256, (n,), generator=g) for n in (4, 6)]

    # reference: each sample packed alone, prefix = prompt
    references = []
    for p, r in zip(prompts, responses):
        seq = torch.cat([p, r])[None]
        n = seq.shape[1]
        ctx = packed_context(torch.tensor([0, n], dtype=torch.int32), torch.tensor([len(p)], dtype=torch.int32), n, arch)
        with torch.no_grad():
            references.append(model(seq, torch.arange(n)[None], ctx)[0])

    B, cache_len = 2, 16
    cache = model.new_kv_cache(B, cache_len)
    prompt_lens = torch.tensor([len(p) for p in prompts])
    width = int(prompt_lens.max())
    ids = torch.zeros(B, width, dtype=torch.long)
    for b, p in enumerate(prompts):
        ids[b, :len(p)] = p
    pos = torch.arange(width).expand(B, width)
    with torch.no_grad():
        prefill = model(ids, pos, CachedContext(cache, pos, attn_lib.generation_mask(pos, prompt_lens, cache_len)))
    for b, p in enumerate(prompts):
        torch.testing.assert_close(prefill[b, :len(p)], references[b][:len(p)], atol=1e-4, rtol=0)

    # decode: row b feeds its response tokens one at a time at positions len(p_b) + t
    steps = max(len(r) for r in responses) - 1
    for t in range(steps):
        tok = torch.stack([r[min(t, len(r) - 1)] for r in responses])[:, None]
        q_pos = (prompt_lens + t)[:, None]
        with torch.no_grad():
            out = model(tok, q_pos, CachedContext(cache, q_pos, attn_lib.generation_mask(q_pos, prompt_lens, cache_len)))
        for b, (p, r) in enumerate(zip(prompts, responses)):
            if t < len(r):
                torch.testing.assert_close(out[b, 0], references[b][len(p) + t], atol=1e-4, rtol=0)


def test_loss_matches_float64_recomputation():
    g = torch.Generator().manual_seed(3)
    V, N = 11, 14
    logits = torch.randn(N, V, generator=g)
    # samples: [0,5) [5,9) [9,12), padding tail [12,14)
    cu = torch.tensor([0, 5, 9, 12, 12], dtype=torch.int32)
    labels = torch.randint(0, V, (N,), generator=g)
    labels[[0, 1, 5, 9, 12, 13]] = IGNORE_LABEL  # prompts and padding carry no label
    sample_ids = sample_ids_from_cu_seqlens(cu, N)
    loss_sum, metrics = loss_and_metrics(lambda h: h, logits, labels, sample_ids, num_samples=4, chunk_size=3)

    expected = 0.0
    count = 0
    lp = logits.double().log_softmax(-1)
    for i in range(N):
        if labels[i] != IGNORE_LABEL:
            expected -= lp[i, labels[i]].item()
            count += 1
    assert abs(loss_sum.item() - expected) < 1e-4
    assert metrics["loss"][1].item() == count == 8
    assert abs(metrics["loss"][0].item() / count - expected / count) < 1e-5


@pytest.mark.parametrize("compiled", [False, True])
def test_chunked_loss_gradients_match_full_logits_in_float64(compiled):
    """Chunks under activation checkpointing, eager or compiled (two full chunks and a shorter
    last one), give the loss and gradients of the plain full-logits loss."""
    g = torch.Generator().manual_seed(5)
    head = torch.nn.Linear(6, 13, bias=False)
    hidden = torch.randn(10, 6, generator=g, requires_grad=True)
    labels = torch.randint(0, 13, (10,), generator=g)
    labels[[0, 4]] = IGNORE_LABEL
    loss_sum, _ = loss_and_metrics(head, hidden, labels, torch.zeros(10, dtype=torch.long), 1, chunk_size=4,
                                   compiled=compiled)
    loss_sum.backward()
    h64, w64 = hidden.detach().double().requires_grad_(), head.weight.detach().double().requires_grad_()
    loss64 = torch.nn.functional.cross_entropy(h64 @ w64.T, labels, ignore_index=IGNORE_LABEL, reduction="sum")
    loss64.backward()
    assert abs(loss_sum.item() - loss64.item()) < 1e-4
    torch.testing.assert_close(hidden.grad.double(), h64.grad, atol=1e-5, rtol=0)
    torch.testing.assert_close(head.weight.grad.double(), w64.grad, atol=1e-5, rtol=0)


def test_exact_accuracy_needs_every_valid_token_right():
    V = 5
    labels = torch.tensor([IGNORE_LABEL, 1, 2, IGNORE_LABEL, 3, 4, IGNORE_LABEL, 0, IGNORE_LABEL])
    predicted = torch.tensor([0, 1, 2, 0, 3, 0, 4, 0, 2])  # sample 0 all right, sample 1 one wrong, sample 2 right
    logits = torch.nn.functional.one_hot(predicted, V).float()
    cu = torch.tensor([0, 3, 6, 8, 8], dtype=torch.int32)  # tail token 8 is padding
    _, metrics = loss_and_metrics(lambda h: h, logits, labels, sample_ids_from_cu_seqlens(cu, 9), num_samples=4, chunk_size=2)
    assert [x.item() for x in metrics["exact_accuracy"]] == [2.0, 3.0]
    assert [x.item() for x in metrics["token_accuracy"]] == [4.0, 5.0]


def test_embedding_and_init_statistics():
    arch = compose("cfg_pretrain", ["arch/size@arch=small"]).arch
    torch.manual_seed(0)
    model = LanguageModel(arch, 4096)
    model.init_weights()
    d = arch.hidden_size
    assert abs(model.embed_tokens.weight.std().item() - 1 / math.sqrt(d)) < 0.02 / math.sqrt(d) * 10
    assert model.embedding_scale == pytest.approx(math.sqrt(d))
    down = model.net.stacks["L"].layers[0].mlp.down_proj.weight  # fan_in = intermediate size
    assert abs(down.std().item() * math.sqrt(down.shape[1]) - 1) < 0.03
    assert down.abs().max().item() <= 3 * 1.0148 / math.sqrt(down.shape[1])  # tails folded inside 3 std
    assert arch.stack().intermediate_size == 768  # 4 * 256 * 2/3 = 682.7 -> 768
    z = model.net.z_L_init
    assert abs(z.std().item() - 1) < 0.15 and "net.z_L_init" in model.state_dict()


# Hand-computed from the reference's TransformerConfig.init_config, hrm at size small (hidden 256,
# SwiGLU 768, 8 layers: 4 per stack) with H_override n_layers 2: (in, attn out, mlp out) per stack.
H, F = 256, 768
INIT_CASES = {
    ("lecun_normal", None): {"L": (H ** -0.5, H ** -0.5, F ** -0.5), "H": (H ** -0.5, H ** -0.5, F ** -0.5)},
    ("lecun_normal", 0.5): {"L": (H ** -0.5, H ** -0.5, F ** -0.5), "H": (H ** -0.5, H ** -0.5, F ** -0.5)},
    ("fixed_normal", None): {"L": (0.02, 0.02, 0.02), "H": (0.02, 0.02, 0.02)},
    ("fixed_normal", 0.05): {"L": (0.05, 0.05, 0.05), "H": (0.05, 0.05, 0.05)},
    ("megatron", None): {"L": (1 / 16, 1 / 16 / math.sqrt(8), 1 / 16 / math.sqrt(8)),
                         "H": (1 / 16, 1 / 16 / 2, 1 / 16 / 2)},
    ("megatron", 0.01): {"L": (0.01, 0.01 / math.sqrt(8), 0.01 / math.sqrt(8)), "H": (0.01, 0.005, 0.005)},
}


@pytest.mark.parametrize("init_type,init_std", list(INIT_CASES))
def test_init_schemes_as_the_reference(init_type, init_std):
    """Every projection's std per scheme, with megatron's depth scaling per stack (the H stack
    made shallower by H_override); embedding and LM head at the H stack's input std, the embedding
    output scaled by its inverse."""
    overrides = ["arch/size@arch=small", f"arch.init_type={init_type}", "+arch.H_override.n_layers=2"]
    if init_std is not None:
        overrides.append(f"arch.init_std={init_std}")
    arch = compose("cfg_pretrain", overrides).arch
    torch.manual_seed(0)
    model = LanguageModel(arch, 4096)
    model.init_weights()
    expected = INIT_CASES[(init_type, init_std)]
    for role, (in_std, attn_out, mlp_out) in expected.items():
        stack = model.net.stacks[role]
        assert len(stack.layers) == {"L": 4, "H": 2}[role]
        weights = {"gqkv_proj": (torch.cat([l.attn.gqkv_proj.weight.flatten() for l in stack.layers]), in_std),
                   "gate_up_proj": (torch.cat([l.mlp.gate_up_proj.weight.flatten() for l in stack.layers]), in_std),
                   "o_proj": (torch.cat([l.attn.o_proj.weight.flatten() for l in stack.layers]), attn_out),
                   "down_proj": (torch.cat([l.mlp.down_proj.weight.flatten() for l in stack.layers]), mlp_out)}
        for name, (w, std) in weights.items():
            assert w.std().item() == pytest.approx(std, rel=0.02), (role, name)
            assert w.abs().max().item() <= 3 * 1.0148 * std, (role, name)
    head_std = expected["H"][0]
    assert model.embed_tokens.weight.std().item() == pytest.approx(head_std, rel=0.02)
    assert model.lm_head.weight.std().item() == pytest.approx(head_std, rel=0.02)
    assert model.embedding_scale == pytest.approx(1 / head_std)


def test_runs_saved_with_the_backend_in_the_architecture_still_load():
    # attn_backend moved from arch to the execution keys; such runs' all_config.yaml keep it in arch
    saved = {"arch": {**tiny_arch("hrm").model_dump(), "attn_backend": "fa4"}}
    assert read_arch(saved) == tiny_arch("hrm")


def test_cfg_pretrain_holds_no_arch_key_that_a_group_overrides():
    """A key edited in cfg_pretrain.yaml must take effect: no arch/net or arch/size file sets it
    again (the groups are applied after cfg_pretrain's own keys)."""
    pretrain_keys = set(yaml.safe_load((CONFIG_DIR / "cfg_pretrain.yaml").read_text())["arch"])
    groups = sorted((CONFIG_DIR / "arch").glob("*/*.yaml"))
    assert len(groups) >= 10 and "n_layers" not in pretrain_keys
    overridden = {g.name: sorted(pretrain_keys & set(yaml.safe_load(g.read_text()))) for g in groups}
    assert {name: keys for name, keys in overridden.items() if keys} == {}
    # and an edited value reaches the schema: attn_type is set by cfg_pretrain alone
    assert compose("cfg_pretrain", ["arch.attn_type=causal"]).arch.attn_type == "causal"


def test_executed_flops_from_query_key_pairs_by_hand():
    """A one-layer transformer (hidden 128, SwiGLU 512 = 4 * 128 * 2/3 rounded up to 256) and vocab 256 on 10 tokens attending 40
    pairs: per token forward 2 (5 d^2 + 3 d f) projections and 2 d V head, per pair 4 d
    (scores and weighted values); a training step is 3x forward."""
    arch = tiny_arch("transformer", n_layers=1)
    d, f, v = 128, arch.stack().intermediate_size, 256
    assert f == 512
    forward = 10 * (2 * (5 * d * d + 3 * d * f) + 2 * d * v) + 40 * 4 * d
    assert executed_flops(arch, v, num_tokens=10, attn_pairs=40) == pytest.approx(3 * forward)
    # the half-context convention is the same count at pairs = tokens * context / 2
    assert executed_flops(arch, v, 10, 10 * 64 // 2) == pytest.approx(10 * executed_flops_per_token(arch, v, 64))
