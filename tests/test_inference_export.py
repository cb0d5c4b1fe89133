"""The native engine and the Hugging Face export on a real (small) demo run: the export loads in
transformers' own HrmTextForCausalLM and matches the native model; batched generation with slot
refill equals one-at-a-time generation; evaluation.main runs every benchmark on the run."""

import copy
import json
from pathlib import Path

import pytest
import torch

from conversion.convert_to_hf import check_exportable, convert
from models.layers import PackedContext
from models import attention as attn_lib
from simple_inference_engine import SimpleEngine, heldout_accuracy
from training.run_dir import load_run

FIXTURES = Path(__file__).parent / "fixtures" / "eval"


@pytest.fixture(scope="module")
def engine(demo_run):
    _, run = demo_run
    model, tokenizer, context_len, _ = load_run(run, device="cpu")
    return SimpleEngine(model, tokenizer, context_len, compile=False)


@pytest.fixture(scope="module")
def export(demo_run, tmp_path_factory):
    _, run = demo_run
    return convert(run, tmp_path_factory.mktemp("hf") / "model")


def test_export_loads_natively_and_matches(engine, export):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    hf = AutoModelForCausalLM.from_pretrained(export).eval()  # no trust_remote_code
    assert type(hf).__name__ == "HrmTextForCausalLM"
    tok = AutoTokenizer.from_pretrained(export)
    special = engine.tokenizer.special_ids
    assert tok.bos_token_id == special["<|boq|>"] and tok.eos_token_id == special["<|eoa|>"]

    prompt = engine.encode_prompt("add 12 34", "direct")
    response = engine.tokenizer.encode_batch(["46"])[0] + [special["<|eoa|>"]]
    ids = torch.tensor([prompt + response])
    n = ids.shape[1]
    token_type_ids = torch.zeros_like(ids)
    token_type_ids[0, :len(prompt)] = 1
    with torch.no_grad():
        theirs = hf(input_ids=ids, token_type_ids=token_type_ids).logits[0]
        layout = attn_lib.build_layout(torch.tensor([0, n], dtype=torch.int32), torch.tensor([len(prompt)], dtype=torch.int32),
                                       total_len=n, max_seqlen=n, backend="sdpa")
        ours = engine.model(ids, torch.arange(n)[None], PackedContext(layout))[0]
    assert (theirs - ours).abs().max().item() < 1e-4

    # transformers' greedy generate() equals the native engine's greedy output, token for token
    for text in ("add 12 34", "reverse 9081", "sort 5129"):
        p = engine.encode_prompt(text, "direct")
        native = engine.generate_ids([p], max_new_tokens=12)[0]
        x = torch.tensor([p])
        out = hf.generate(x, token_type_ids=torch.ones_like(x), max_new_tokens=12, do_sample=False,
                          eos_token_id=special["<|eoa|>"], pad_token_id=special["<|pad|>"])[0, len(p):].tolist()
        if out and out[-1] == special["<|eoa|>"]:
            out = out[:-1]
        assert out == native, (text, out, native)


def test_tiktoken_export_keeps_the_special_token_ids(tmp_path):
    """A tiktoken run's specials sit above the encoding's max_token_value (past a gap and the
    encoding's own special token here, as in cl100k_base); the exported tokenizer must give them
    the same ids and encode text as tiktoken does."""
    import tiktoken
    from transformers import AutoTokenizer

    from conversion.convert_to_hf import export_tokenizer
    from data_io.text_tokenizer import load_tokenizer

    ranks = {bytes([i]): i for i in range(256)} | {b"ab": 256, b"abab": 257}
    enc = tiktoken.Encoding(name="toy", pat_str=r"\S+|\s+", mergeable_ranks=ranks, special_tokens={"<|endoftext|>": 260})
    tokenizer = load_tokenizer(enc)
    assert tokenizer.special_ids["<|boq|>"] == 261
    export_tokenizer(tokenizer, tmp_path)
    hf = AutoTokenizer.from_pretrained(tmp_path)
    assert {token: hf.convert_tokens_to_ids(token) for token in tokenizer.special_ids} == tokenizer.special_ids
    for text in ("xabab y", "caf\u00e9 <|endoftext|> ab"):
        assert hf(text, add_special_tokens=False)["input_ids"] == enc.encode_ordinary(text)
    boq, direct = tokenizer.special_ids["<|boq|>"], tokenizer.special_ids["<|direct|>"]
    assert hf("<|boq|><|direct|>ab", add_special_tokens=False)["input_ids"] == [boq, direct, 256]


def test_prompts_carry_every_condition_as_training_packs_them(engine):
    """data_io.tokenize packs a row as boq + one token per condition + text + eoq; held-out rows
    may give the condition as null, a comma list or a list."""
    import tiktoken

    from data_io.text_tokenizer import load_tokenizer

    toy = tiktoken.Encoding(name="toy", pat_str=r"\S+|\s+", mergeable_ranks={bytes([i]): i for i in range(256)},
                            special_tokens={})
    tokenizer = load_tokenizer(toy)  # knows direct, cot and synth
    with_conditions = SimpleEngine(engine.model, tokenizer, engine.context_len, compile=False)
    ids = tokenizer.special_ids
    assert with_conditions.encode_prompt("2 + 2", "cot,synth") == [
        ids["<|boq|>"], ids["<|cot|>"], ids["<|synth|>"], *toy.encode_ordinary("2 + 2"), ids["<|eoq|>"]]
    with pytest.raises(ValueError, match="unknown condition"):
        with_conditions.encode_prompt("2 + 2", "cot,nonesuch")
    rows = [{"instruction": "2 + 2", "response": "4", "condition": None},
            {"instruction": "2 + 2", "response": "4", "condition": ["direct"]},
            {"instruction": "2 + 2", "response": "4"}]
    assert 0.0 <= heldout_accuracy(engine, rows, max_new_tokens=2) <= 1.0


def test_test_time_recurrence_override(demo_run):
    _, run = demo_run
    model, tokenizer, context_len, _ = load_run(run, arch_override={"H_cycles": 4})
    assert model.arch.H_cycles == 4 and model.net.num_calls == 16  # trained with 2 x (3 L + H)
    deeper = SimpleEngine(model, tokenizer, context_len, compile=False)
    assert len(deeper.generate_ids([deeper.encode_prompt("add 1 2", "direct")], max_new_tokens=3)[0]) <= 3


def test_nets_without_a_faithful_hrm_text_form_refuse_to_export():
    from training.config import compose

    for net in ("trm", "rins", "ut"):
        arch = compose("cfg_pretrain", [f"arch/net@arch={net}"]).arch
        with pytest.raises(SystemExit, match="exportable nets: hrm, transformer"):
            check_exportable(arch)


def test_batched_generation_with_refill_equals_one_at_a_time(engine):
    rows = [line for line in ("add 1 2", "sort 321", "reverse 12345", "add 999 999", "sort 98765", "add 5 70",
                              "reverse 10", "sort 55")]
    prompts = [engine.encode_prompt(r, "direct") for r in rows]
    alone = [engine.generate_ids([p], max_new_tokens=6)[0] for p in prompts]
    batched = engine.generate_ids(prompts, max_new_tokens=6, batch_size=3)  # 8 prompts through 3 slots
    assert batched == alone
    assert all(len(g) <= 6 for g in alone)


def test_compiled_generation_compiles_one_graph_per_shape_for_every_module_call(engine):
    """The engine compiles the model's stacks, each call handed its own KV cache: one graph for the
    decode step (batch 4) and one for the packed prefill's padded length serve every call of both
    stacks. Greedy tokens match the eager path through slot refill, eoa, the token limit, an
    over-long prompt and num_samples > 1 (the prompt's KV copied); a partial batch after a full
    one reuses the graphs."""
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    model = copy.deepcopy(engine.model)
    assert model.net.num_calls > 2 and len(model.net.stacks) == 2  # several calls of two stacks
    compiled = SimpleEngine(model, engine.tokenizer, engine.context_len, compile=True)
    prompts = [engine.encode_prompt(r, "direct") for r in ("add 1 2", "sort 321", "reverse 12345", "add 5 70")]
    overlong = [5] * (engine.context_len + 1)
    runs = [(prompts + [overlong], 4, 2), (prompts[:3], 3, 1)]  # 9 sequences through 4 slots, then 3
    for batch, max_new_tokens, num_samples in runs:
        got = compiled.generate_ids(batch, max_new_tokens, batch_size=4, num_samples=num_samples)
        assert got == engine.generate_ids(batch, max_new_tokens, batch_size=4, num_samples=num_samples)
    assert counters["stats"]["unique_graphs"] == 2
    # the runs above ended sequences both ways
    assert compiled.stats.stopped_at_eoa > 0 and compiled.stats.hit_token_limit > 0
    assert compiled.stats.overlong_prompts == 1


def test_generation_stops_at_eoa_token_limit_and_skips_overlong_prompts(engine):
    eoa = engine.tokenizer.special_ids["<|eoa|>"]
    prompts = [engine.encode_prompt("add 1 2", "direct"), [5] * (engine.context_len + 3),
               engine.encode_prompt("sort 321", "direct")]
    stats = engine.stats
    # a head that always prefers eoa: every generation ends at once, empty
    hook = engine.model.lm_head.register_forward_hook(lambda m, i, out: out.index_fill(-1, torch.tensor([eoa]), 1e4))
    try:
        before = (stats.stopped_at_eoa, stats.overlong_prompts)
        assert engine.generate_ids(prompts, max_new_tokens=5, batch_size=2) == [[], [], []]
        assert (stats.stopped_at_eoa, stats.overlong_prompts) == (before[0] + 2, before[1] + 1)
    finally:
        hook.remove()
    # a head that never says eoa: generations stop at the token limit
    hook = engine.model.lm_head.register_forward_hook(lambda m, i, out: out.index_fill(-1, torch.tensor([eoa]), -1e4))
    try:
        limited = engine.generate_ids(prompts, max_new_tokens=3, batch_size=2)
    finally:
        hook.remove()
    assert [len(g) for g in limited] == [3, 0, 3]


def test_generation_continues_a_response_prefix_and_stops_at_stop_ids(engine):
    """Reference: one uninterrupted greedy generation. Continuing from its first k tokens as a
    response prefix gives the rest of it (the prefix is fed causally, as if generated); a stop id
    ends the sequence right after its first occurrence, keeping it."""
    eoa = engine.tokenizer.special_ids["<|eoa|>"]
    prompts = [engine.encode_prompt(r, "direct") for r in ("add 1 2", "sort 321", "reverse 12345")]
    hook = engine.model.lm_head.register_forward_hook(lambda m, i, out: out.index_fill(-1, torch.tensor([eoa]), -1e4))
    try:
        full = engine.generate_ids(prompts, max_new_tokens=10, batch_size=2)
        for k in (1, 4):
            rest = engine.generate_ids(prompts, max_new_tokens=10 - k, batch_size=2,
                                       response_prefixes=[g[:k] for g in full])
            assert rest == [g[k:] for g in full]
        stop = full[0][3]
        stopped = engine.generate_ids(prompts, max_new_tokens=10, batch_size=2, stop_ids={stop})
        # many stop ids (a delimiter's every token in a real vocabulary), none of the others generated
        unused = set(range(engine.model.vocab_size)) - {t for g in full for t in g}
        many = engine.generate_ids(prompts, max_new_tokens=10, batch_size=2, stop_ids={stop, *sorted(unused)[:200]})
        with pytest.raises(ValueError, match="stop_ids"):
            engine.generate_ids(prompts, max_new_tokens=10, batch_size=2, stop_ids={engine.model.vocab_size})
    finally:
        hook.remove()
    assert stopped == many == [g[:g.index(stop) + 1] if stop in g else g for g in full]
    assert len(stopped[0]) <= 4


def test_evaluation_runs_every_benchmark_on_the_demo_run(demo_run, tmp_path):
    from evaluation.main import main

    _, run = demo_run
    results_path = tmp_path / "eval.json"
    report = main([f"ckpt_path={run}", f"data_dir={FIXTURES}", f"results_path={results_path}", "limit=2",
                   "generation_config.condition=direct", "generation_config.max_tokens=4",
                   "generation_config.batch_size=4", "generation_config.max_context=64"])
    written = json.loads(results_path.read_text())
    eight = {"GSM8k", "MATH", "DROP", "MMLU", "ARC", "HellaSwag", "Winogrande", "BoolQ"}
    assert set(written["results"]) == eight == set(report["results"])
    # MCQ prompts with their shots do not fit 64 tokens: answered "" and counted.
    assert written["results"]["MMLU"]["num_overlong"] == 2
    with pytest.raises(ValueError, match="GSM8k"):
        main([f"ckpt_path={run}", f"data_dir={FIXTURES}", "run_only=[NoSuchBench]"])
    with pytest.raises(Exception, match="direct"):  # the demo tokenizer knows only `direct`
        main([f"ckpt_path={run}", f"data_dir={FIXTURES}", "run_only=[GSM8k]", "generation_config.condition=cot"])


def test_native_and_transformers_engines_apply_the_same_context_limits(engine, export):
    from evaluation.engines import NativeEngine, TransformersEngine

    native, hf = NativeEngine(engine), TransformersEngine(export, device="cpu")
    prompts = ["add 12 34", "reverse 9081726354", "sort 5129"]
    lengths = [len(engine.encode_prompt(p, "direct")) for p in prompts]
    max_context = lengths[0] + 2  # the first keeps 2 tokens at most; the longer second does not fit
    assert lengths[1] >= max_context
    results = [e.generate(prompts, "direct", max_new_tokens=8, temperature=0.0, num_samples=1, batch_size=2,
                          max_context=max_context) for e in (native, hf)]
    assert [[(g, g.stop) for g in s] for s in results[0]] == [[(g, g.stop) for g in s] for s in results[1]]
    assert (results[0][1][0], results[0][1][0].stop) == ("", "overlong")
    free = native.generate(prompts[:1], "direct", 8, 0.0, 1, 1)[0][0]
    assert results[0][0][0] == engine.tokenizer.decode(engine.tokenizer.encode_batch([free])[0][:2]) or \
        results[0][0][0].stop == "eoa"


def test_export_refuses_a_folder_that_is_not_an_earlier_export(tmp_path):
    from data_io import DataError

    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "config.json").write_text("{}")  # a user's file: not to be overwritten
    # the run does not exist: the folder is checked before anything is loaded
    with pytest.raises(DataError, match=rf"--out_dir {folder} is not empty and holds no earlier export"):
        convert(tmp_path / "no_run", folder)
    assert (folder / "config.json").read_text() == "{}"


def test_export_replaces_an_earlier_export_and_keeps_other_files(demo_run, tmp_path):
    _, run = demo_run
    out = convert(run, tmp_path / "hf")
    manifest = out / ".convert_to_hf_manifest.json"
    first = set(json.loads(manifest.read_text())["written"])
    assert first == {p.name for p in out.iterdir()} - {manifest.name}
    # an earlier export that wrote one more file, and a user's notes beside the export
    (out / "old_weights.bin").write_text("stale")
    manifest.write_text(json.dumps({"written": sorted(first | {"old_weights.bin"})}))
    (out / "notes.txt").write_text("mine")
    convert(run, out)
    assert {p.name for p in out.iterdir()} == first | {manifest.name, "notes.txt"}
    assert not list(tmp_path.glob(".*partial"))  # the staging folder is gone


@pytest.mark.parametrize("flags, message", [
    (["--tokenizer_path", "/nonexistent"], "argument --tokenizer_path: /nonexistent: no tokenizer.json there; "
                                           "give a tokenizer.json, a folder holding one, or tiktoken:NAME"),
    (["--ckpt_use_ema", "maybe"], "argument --ckpt_use_ema: expected true or false, got 'maybe'"),
])
def test_export_command_line_names_the_bad_flag(capsys, tmp_path, flags, message):
    from conversion.convert_to_hf import main

    with pytest.raises(SystemExit) as exited:
        main(["--ckpt_path", str(tmp_path), "--out_dir", str(tmp_path / "hf"), *flags])
    assert exited.value.code == 2 and capsys.readouterr().err.strip().splitlines()[-1].endswith(message)
