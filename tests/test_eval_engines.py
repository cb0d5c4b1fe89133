"""TransformersEngine on a tiny random hrm_text model directory (CPU, no network)."""

import json
from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import HrmTextConfig, HrmTextForCausalLM, PreTrainedTokenizerFast

from evaluation.engines import CONDITIONS_FILE, PLAIN_CONDITION, TransformersEngine, UnknownConditionError, build_engine

SPECIALS = ["<|pad|>", "<|boq|>", "<|eoq|>", "<|eoa|>", "<|direct|>", "<|cot|>", "<|synth|>", "<unk>"]
WORDS = "the a b c d e f g h hello world one two three".split()


def _write_model_dir(path, with_conditions=True):
    vocab = {token: i for i, token in enumerate(SPECIALS + WORDS)}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>", pad_token="<|pad|>", bos_token="<|boq|>",
                            eos_token="<|eoa|>", additional_special_tokens=SPECIALS[1:7]).save_pretrained(path)
    torch.manual_seed(0)
    # initializer_range 0.5 keeps the embedding scale (1/range) small enough for varied random outputs.
    config = HrmTextConfig(vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                           num_attention_heads=2, head_dim=16, max_position_embeddings=64, initializer_range=0.5,
                           H_cycles=2, L_cycles=2)
    HrmTextForCausalLM(config).save_pretrained(path)
    if with_conditions:
        spec = {"condition_mapping": {"direct": "<|direct|>", "cot": "<|cot|>", "synth": "<|synth|>"},
                "boq": "<|boq|>", "eoq": "<|eoq|>", "eoa": "<|eoa|>"}
        (path / CONDITIONS_FILE).write_text(json.dumps(spec))


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    path = tmp_path_factory.mktemp("hf_model")
    _write_model_dir(path)
    return TransformersEngine(path, device="cpu")


def test_batched_greedy_equals_one_at_a_time(engine):
    assert engine.known_conditions() == ["direct", "cot", "synth"]
    prompts = ["hello world", "a b c d e f", "one"]  # different lengths: left padding in a batch
    batched = engine.generate(prompts, "direct", max_new_tokens=6, temperature=0.0, num_samples=2, batch_size=8)
    single = [engine.generate([p], "direct", 6, 0.0, 1, 1)[0][0] for p in prompts]
    assert [samples[0] for samples in batched] == single
    assert all(samples[0] == samples[1] for samples in batched)  # greedy samples are identical
    assert len(set(single)) > 1  # the check above is not vacuous


def test_sampling_shapes_and_unknown_condition(engine):
    out = engine.generate(["hello", "a b", "c"], "cot", max_new_tokens=4, temperature=1.0, num_samples=3, batch_size=4)
    assert [len(samples) for samples in out] == [3, 3, 3]
    torch.manual_seed(1234)  # the global state must not matter: the run is seeded
    again = engine.generate(["hello", "a b", "c"], "cot", max_new_tokens=4, temperature=1.0, num_samples=3, batch_size=4)
    assert again == out
    with pytest.raises(UnknownConditionError, match="unknown condition 'think'.*knows: direct, cot, synth"):
        engine.generate(["hello"], "think", 4, 0.0, 1, 1)


def test_build_engine_picks_transformers_for_hf_dir_and_plain_without_conditions(tmp_path):
    from omegaconf import OmegaConf

    _write_model_dir(tmp_path, with_conditions=False)
    engine = build_engine(OmegaConf.create({"ckpt_path": str(tmp_path), "ckpt_epoch": None, "use_ema": True}))
    assert isinstance(engine, TransformersEngine)
    assert engine.known_conditions() == [PLAIN_CONDITION]
    assert len(engine.generate(["hello world"], PLAIN_CONDITION, 3, 0.0, 1, 1)[0]) == 1


def test_multi_tag_condition_and_context_limits(engine):
    # "synth,cot": boq, one token per condition in the given order, the text, eoq.
    ids = engine.encode_prompt("hello world", "synth,cot")
    vocab = engine.tokenizer.get_vocab()
    assert ids == [vocab[t] for t in ("<|boq|>", "<|synth|>", "<|cot|>", "hello", "world", "<|eoq|>")]
    # the reference tokenizes one string: boq + the conditions' tokens + prompt + eoq
    reference = engine.tokenizer("<|boq|><|synth|><|cot|>hello world<|eoq|>", add_special_tokens=False)["input_ids"]
    assert ids == reference
    prompts = ["hello world", "a b c d e f", "one"]  # 5, 9 and 4 tokens with boq, condition, eoq
    free = engine.generate(prompts, "direct", max_new_tokens=6, temperature=0.0, num_samples=1, batch_size=8,
                           max_context=64)
    limited = engine.generate(prompts, "direct", max_new_tokens=6, temperature=0.0, num_samples=1, batch_size=8,
                              max_context=7)
    tokens = lambda text: text.split()  # the word-level vocabulary decodes one word per token
    # "a b c d e f" (9 tokens >= 7) does not fit: "" and counted as overlong, as in the reference.
    assert (limited[1][0], limited[1][0].stop) == ("", "overlong")
    # The others keep at most max_context - prompt_len tokens (2 and 3): a prefix of the free run.
    for (free_text,), (text,), room in zip(free, limited, (2, None, 3)):
        if room is None:
            continue
        assert tokens(text) == tokens(free_text)[:room]
        assert text.stop == ("length" if len(tokens(free_text)) >= room else "eoa")
    assert {g[0].stop for g in free} <= {"eoa", "length"}


def test_seed_readme_command_runs_on_a_model_directory(tmp_path):
    from evaluation.main import main

    model_dir = tmp_path / "model"
    _write_model_dir(model_dir)
    fixtures = Path(__file__).parent / "fixtures" / "eval"
    report = main([f"ckpt_path={model_dir}", "run_only=[MATH,DROP,ARC,MMLU]", "generation_config.batch_size=16",
                   f"data_dir={fixtures}", "limit=1"])  # the default protocol: up to 3072 tokens of context
    results = report["results"]
    assert list(results) == ["MATH", "DROP", "ARC", "MMLU"]
    assert results["MATH"]["generation_config"]["condition"] == "synth,cot"
    assert all(r["num_items"] == 1 for r in results.values())
    assert (model_dir / "eval_results.json").is_file()


def test_a_model_directory_without_weights_fails_in_one_line(tmp_path):
    from evaluation.main import main

    model_dir = tmp_path / "model"
    _write_model_dir(model_dir)
    (model_dir / "model.safetensors").unlink()
    with pytest.raises(ValueError, match=rf"ckpt_path={model_dir}: .*model.safetensors.*; give a complete model "
                                         r"directory \(export a run with python -m conversion.convert_to_hf\)"):
        main([f"ckpt_path={model_dir}", f"data_dir={Path(__file__).parent / 'fixtures' / 'eval'}",
              "run_only=[ARC]", "limit=1"])
