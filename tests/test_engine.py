"""The generation engine against independent references: greedy decoding by full recomputation
through the training's packed attention (no cache, one sequence at a time), and sampling filters
computed by hand."""

import math

import pytest
import torch

from inference.sampling import Sampling, choose_tokens, filtered_logits, unit_interval
from models import attention as attn_lib
from models.layers import PackedContext
from simple_inference_engine import SimpleEngine, cache_length, prefill_bucket
from training.run_dir import load_run


@pytest.fixture(scope="module")
def engine(demo_run):
    _, run = demo_run
    model, tokenizer, context_len, _ = load_run(run, device="cpu")
    return SimpleEngine(model, tokenizer, context_len, compile=False)


@torch.no_grad()
def recompute_greedy(model, prompt, max_new_tokens, eoa, context_len):
    """Greedy decoding with no cache: every step reruns the whole sequence as one packed training
    sample (prompt as prefix, generated tokens causal)."""
    seq, out = list(prompt), []
    while True:
        n = len(seq)
        layout = attn_lib.build_layout(torch.tensor([0, n], dtype=torch.int32),
                                       torch.tensor([len(prompt)], dtype=torch.int32), n, n, "sdpa")
        token = int(model(torch.tensor([seq]), torch.arange(n)[None], PackedContext(layout))[0, -1].argmax())
        if token == eoa:
            return out
        out.append(token)
        if len(out) >= max_new_tokens or n >= context_len:  # the next token would sit at position n
            return out
        seq.append(token)


PROBLEMS = ("add 1 2", "sort 321", "reverse 12345", "add 999 999", "sort 98765", "add 5 70", "reverse 10",
            "sort 55", "add 31 4")


def test_batched_packed_generation_equals_recomputation(engine):
    """Slot refill (9 prompts, 3 slots), packed prefill chunks, an over-long prompt, eoa and the
    token limit, num_samples > 1 sharing one prefill: all token for token as the no-cache reference."""
    eoa = engine.tokenizer.special_ids["<|eoa|>"]
    prompts = [engine.encode_prompt(p, "direct") for p in PROBLEMS]
    prompts.insert(4, [5] * (engine.context_len + 1))
    for max_new in (3, 12):
        want = [[] if len(p) >= engine.context_len else recompute_greedy(engine.model, p, max_new, eoa, engine.context_len)
                for p in prompts]
        assert any(0 < len(w) < max_new for w in want) or max_new == 3  # some stop at eoa
        engine.prefill_tokens = 24  # a few prompts per prefill chunk
        got = engine.generate_ids(prompts, max_new, batch_size=3, progress=False)
        assert got == want, max_new
        got = engine.generate_ids(prompts, max_new, batch_size=4, num_samples=2, progress=False)
        assert got == [w for w in want for _ in range(2)]
    engine.prefill_tokens = 2048


def test_generation_stops_when_the_context_is_full(engine):
    eoa = engine.tokenizer.special_ids["<|eoa|>"]
    prompts = [engine.encode_prompt(p, "direct") for p in PROBLEMS[:4]]
    context = max(len(p) for p in prompts) + 2
    short = SimpleEngine(engine.model, engine.tokenizer, context, compile=False)
    hook = engine.model.lm_head.register_forward_hook(lambda m, i, out: out.index_fill(-1, torch.tensor([eoa]), -1e4))
    try:
        got = short.generate_ids(prompts, 50, batch_size=2, progress=False)
        want = [recompute_greedy(engine.model, p, 50, eoa, context) for p in prompts]
    finally:
        hook.remove()
    assert got == want
    assert [len(g) for g in got] == [context - len(p) + 1 for p in prompts]


def test_flex_decode_mask_equals_the_dense_mask(engine):
    prompts = [engine.encode_prompt(p, "direct") for p in PROBLEMS[:3]]
    flex = SimpleEngine(engine.model, engine.tokenizer, engine.context_len, compile=False, decode_attention="flex")
    assert flex.generate_ids(prompts, 4, batch_size=2, progress=False) == \
        engine.generate_ids(prompts, 4, batch_size=2, progress=False)


def test_sampling_is_seeded_and_independent_of_the_batch(engine):
    prompts = [engine.encode_prompt(p, "direct") for p in PROBLEMS[:4]]
    kw = dict(temperature=1.5, num_samples=3, progress=False, top_p=0.95)
    a = engine.generate_ids(prompts, 6, batch_size=2, seed=7, **kw)
    b = engine.generate_ids(prompts, 6, batch_size=8, seed=7, **kw)
    c = engine.generate_ids(prompts, 6, batch_size=8, seed=8, **kw)
    assert a == b and a != c
    assert len({tuple(x) for x in a}) > len(prompts)  # samples of one prompt differ
    greedy = engine.generate_ids(prompts, 6, batch_size=4, progress=False)
    assert engine.generate_ids(prompts, 6, batch_size=4, temperature=2.0, top_k=1, progress=False) == greedy
    texts = engine.generate(list(PROBLEMS[:2]), "direct", 6, temperature=0.0, num_samples=3, progress=False)
    assert all(len(set(t)) == 1 and len(t) == 3 for t in texts)


def test_greedy_samples_are_decoded_once_in_evaluation(engine):
    """Greedy majority voting (num_samples > 1 at temperature 0) decodes each prompt once: the
    sequences that end are as many as the prompts, the samples the greedy generation repeated."""
    from evaluation.engines import NativeEngine

    greedy = engine.generate(list(PROBLEMS[:2]), "direct", 6, progress=False)
    before = engine.stats.stopped_at_eoa + engine.stats.hit_token_limit
    texts = NativeEngine(engine).generate(list(PROBLEMS[:2]), "direct", 6, 0.0, num_samples=4, batch_size=8)
    assert engine.stats.stopped_at_eoa + engine.stats.hit_token_limit - before == 2
    assert texts == [g * 4 for g in greedy]


def test_filters_match_hand_computation():
    probs = torch.tensor([[0.5, 0.25, 0.15, 0.06, 0.04]])
    logits = probs.log()
    kept = lambda s: torch.isfinite(filtered_logits(logits, s))[0].tolist()  # noqa: E731
    assert kept(Sampling(1.0, top_k=2)) == [True, True, False, False, False]
    assert kept(Sampling(1.0, top_p=0.75)) == [True, True, False, False, False]  # 0.5 + 0.25 reaches 0.75
    assert kept(Sampling(1.0, top_p=0.76)) == [True, True, True, False, False]
    assert kept(Sampling(1.0, min_p=0.2)) == [True, True, True, False, False]  # >= 0.2 * 0.5
    assert kept(Sampling(1.0, min_p=0.2, top_p=0.6)) == [True, True, False, False, False]
    # temperature 2 flattens: probabilities proportional to sqrt(p)
    scaled = torch.softmax(filtered_logits(logits, Sampling(2.0)), -1)
    torch.testing.assert_close(scaled, probs.sqrt() / probs.sqrt().sum())
    with pytest.raises(ValueError, match="top_p"):
        Sampling(1.0, top_p=0.0)


def test_draws_follow_the_distribution():
    """Gumbel-max over the hash noise: frequencies over 20000 sequences match softmax within 4 sigma."""
    probs = torch.tensor([0.5, 0.3, 0.15, 0.05])
    n = 20000
    logits = probs.log().expand(n, 4)
    tokens = choose_tokens(logits, Sampling(1.0, seed=3), torch.arange(n), torch.zeros(n, dtype=torch.long))
    freq = torch.bincount(tokens, minlength=4).float() / n
    assert ((freq - probs).abs() < 4 * (probs * (1 - probs) / n).sqrt()).all(), freq
    # step and sequence both change the draw
    again = choose_tokens(logits, Sampling(1.0, seed=3), torch.arange(n), torch.ones(n, dtype=torch.long))
    assert 0.3 < (again != tokens).float().mean() < 0.9


def test_noise_of_the_extreme_hashes_keeps_filtered_tokens_out():
    """The largest and smallest 32-bit hashes map strictly inside (0, 1), so their Gumbel noise is
    finite: a token filtered to -inf (top-k) never wins, whatever hash its draw gets."""
    u = unit_interval(torch.tensor([0, 1, (1 << 32) - 2, (1 << 32) - 1]))
    assert ((u > 0) & (u < 1)).all() and torch.isfinite(torch.log(-torch.log(u))).all()
    logits = torch.tensor([[5.0, 4.0, -1.0]])
    noisy = filtered_logits(logits, Sampling(1.0, top_k=2)) - torch.log(-torch.log(u[[0, 3, 3]]))[None]
    assert noisy.argmax(-1).item() in (0, 1)


def test_batch_size_auto_and_bad_values(engine):
    assert engine._batch_size("auto", 100, 256) == 16
    assert engine._batch_size(64, 5, 256) == 8  # no more slots than the next power of two of the work
    with pytest.raises(ValueError, match="batch_size"):
        engine._batch_size(0, 5, 256)
    assert math.isfinite(engine.model.kv_cache_bytes_per_row(256))


def test_cache_and_prefill_lengths_are_few_shapes():
    # the cache: the next power of two of the work, at least 256, at most the context
    assert [cache_length(n, 4096) for n in (1, 256, 257, 700, 1025, 4096, 9000)] == [256, 256, 512, 1024, 2048,
                                                                                       4096, 4096]
    assert cache_length(1500, 2000) == 2000
    # a prefill chunk: the next of 1024, 4096, 16384 tokens, beyond it a multiple of 16384
    assert [prefill_bucket(n) for n in (1, 1024, 1025, 16384, 16385, 40000)] == [1024, 1024, 4096, 16384, 32768, 49152]


def test_split_decoding_is_refused_where_it_cannot_run(engine):
    with pytest.raises(ValueError, match="decode_attention='split' is unavailable: split decoding needs a CUDA device"):
        SimpleEngine(engine.model, engine.tokenizer, engine.context_len, compile=False, decode_attention="split")


def test_from_checkpoint_loads_in_the_asked_precision(demo_run):
    _, run = demo_run
    default = SimpleEngine.from_checkpoint(run, device="cpu")
    half = SimpleEngine.from_checkpoint(run, device="cpu", dtype=torch.bfloat16)
    assert {p.dtype for p in default.model.parameters()} == {torch.float32}  # CPU default: the saved fp32
    assert {p.dtype for p in half.model.parameters()} == {torch.bfloat16}
    # the bf16 weights are the fp32 checkpoint's, rounded
    assert torch.equal(half.model.lm_head.weight, default.model.lm_head.weight.to(torch.bfloat16))
    assert half.model.new_kv_cache(1, 8).calls[0].k[0].dtype == torch.bfloat16


def cli_error(capsys, argv) -> str:
    """The last line main() writes to stderr as it exits with a failure."""
    import simple_inference_engine

    with pytest.raises(SystemExit) as exited:
        simple_inference_engine.main(argv)
    assert exited.value.code not in (0, None)
    message = str(exited.value.code) if isinstance(exited.value.code, str) else capsys.readouterr().err
    return message.strip().splitlines()[-1]


@pytest.mark.parametrize("flags, message", [
    (["--batch-size", "0"], "argument --batch-size: 0 must be >= 1; give a number >= 1 or 'auto'"),
    (["--batch-size", "-3"], "argument --batch-size: -3 must be >= 1"),
    (["--max-new-tokens", "0"], "argument --max-new-tokens: 0 must be >= 1"),
    (["--num-samples", "0"], "argument --num-samples: 0 must be >= 1"),
    (["--num-samples", "4"], "argument --num-samples: 4 greedy generations .* are all alike"),
    (["--temperature", "-1"], r"argument --temperature: temperature=-1.0 must be >= 0"),
    (["--temperature", "1", "--top-p", "2"], r"argument --top-p: top_p=2.0 must lie in \(0, 1\]"),
    (["--temperature", "1", "--min-p", "1"], r"argument --min-p: min_p=1.0 must lie in \[0, 1\)"),
])
def test_cli_refuses_bad_flags_before_loading_the_run(capsys, flags, message):
    # the run does not exist: a flag's error shows that it is checked before any loading
    import re

    assert re.search(message, cli_error(capsys, ["generate", "--run", "/nonexistent", "--prompt", "add 1 2", *flags]))


@pytest.mark.parametrize("content, message", [
    (None, "heldout.jsonl does not exist; give a JSONL file"),
    ("", "heldout.jsonl holds no rows"),
    ('{"instruction": "add 1 2", "response": "3"}\n\n{"instruction": "add 1 2"\n', r"heldout.jsonl:3: not valid JSON"),
    ('{"instruction": "add 1 2", "response": "3"}\n{"instruction": "add 2 2"}\n',
     "heldout.jsonl:2: field 'response' is missing"),
])
def test_cli_refuses_a_bad_heldout_file_before_loading_the_run(capsys, tmp_path, content, message):
    import re

    heldout = tmp_path / "heldout.jsonl"
    if content is not None:
        heldout.write_text(content)
    assert re.search(message, cli_error(capsys, ["heldout", "--run", "/nonexistent", "--heldout", str(heldout)]))
    assert re.search("is a folder", cli_error(capsys, ["heldout", "--run", "/nonexistent", "--heldout", str(tmp_path)]))


def test_cli_names_an_unknown_condition_and_helps(capsys, demo_run, tmp_path):
    import simple_inference_engine

    data, run = demo_run
    assert cli_error(capsys, ["generate", "--run", str(run), "--prompt", "add 1 2", "--condition", "nope"]) == \
        "error: --condition nope: unknown condition ['nope']; this run's tokenizer knows ['direct']"
    heldout = tmp_path / "heldout.jsonl"
    heldout.write_text('{"instruction": "add 1 2", "response": "3", "condition": "cot"}\n')
    assert cli_error(capsys, ["heldout", "--run", str(run), "--heldout", str(heldout)]) == \
        f"error: {heldout}:1: unknown condition ['cot']; this run's tokenizer knows ['direct']"
    with pytest.raises(SystemExit):
        simple_inference_engine.main(["generate", "--help"])
    shown = capsys.readouterr().out
    assert 'example:\n  python simple_inference_engine.py generate --run RUN_DIR --prompt "add 17 25"' in shown
    assert "(default: 64)" in shown and "(default: direct)" in shown
