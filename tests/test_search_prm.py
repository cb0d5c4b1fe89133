"""PRMVerifier on tiny Hugging Face PRM directories built on the spot (random weights), in the
documented step-tag convention, against the convention computed by hand with transformers; and
malformed directories failing with a message that names the fault."""

import json

import pytest
import torch

from evaluation.search.verifiers import OutcomeVerifier, PRMVerifier

WORDS = ["[UNK]", "[PAD]", "ки", "+", "-", "sum", "2", "3", "5", "2+3=5", "answer", "is", "6", "<tag>"]


def save_tokenizer(path):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]", pad_token="[PAD]")
    tokenizer.save_pretrained(path)
    return tokenizer


def save_model(path, head: str, num_labels: int = 2):
    from transformers import LlamaConfig, LlamaForCausalLM, LlamaForTokenClassification

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(WORDS), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=64,
                         num_labels=num_labels, pad_token_id=1)
    model = (LlamaForCausalLM if head == "lm" else LlamaForTokenClassification)(config)
    model.save_pretrained(path)
    return model.eval()


@pytest.fixture(scope="module", params=["lm", "classifier"])
def prm_dir(request, tmp_path_factory):
    path = tmp_path_factory.mktemp(f"prm_{request.param}")
    return path, save_tokenizer(path), save_model(path, request.param), request.param


def reference_scores(tokenizer, model, head, problem, steps, tag="ки"):
    """Math-Shepherd's recipe by hand: tag each step, read the good-vs-bad softmax (or label 1) at the tags."""
    text = problem + " " + "\n".join(f"{step} {tag}" for step in steps)
    ids = tokenizer(text, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0]
    at_tags = logits[ids[0] == tokenizer.convert_tokens_to_ids(tag)]
    if head == "lm":
        good, bad = tokenizer.convert_tokens_to_ids(["+", "-"])
        return torch.softmax(at_tags[:, [good, bad]], -1)[:, 0].tolist()
    return torch.softmax(at_tags, -1)[:, 1].tolist()


def test_prm_scores_each_step_at_its_tag(prm_dir):
    path, tokenizer, model, head = prm_dir
    verifier = PRMVerifier(path, device="cpu", batch_size=2)
    solutions = [["2+3=5", "answer is 5"], ["2+3=5"], ["2+3=5", "answer is 6", "sum 6"]]
    scores = verifier.score("sum 2 3", solutions)
    assert [len(s) for s in scores] == [2, 1, 3]
    for steps, got in zip(solutions, scores):
        assert got == pytest.approx(reference_scores(tokenizer, model, head, "sum 2 3", steps), abs=1e-5)
    # causal: a step's score does not depend on the steps after it, and padding in a batch changes nothing
    assert scores[1][0] == pytest.approx(scores[0][0], abs=1e-5)
    assert len({round(s, 4) for s in scores[2]}) > 1  # random weights still tell the steps apart


def test_outcome_verifier_scores_the_whole_solution_as_one_step(prm_dir):
    path, tokenizer, model, head = prm_dir
    outcome = OutcomeVerifier(PRMVerifier(path, device="cpu"))
    [[score]] = outcome.score("sum 2 3", [["2+3=5", "answer is 5"]])
    assert score == pytest.approx(reference_scores(tokenizer, model, head, "sum 2 3", ["2+3=5\nanswer is 5"])[0],
                                  abs=1e-5)


def test_prm_json_names_other_tokens(tmp_path):
    tokenizer = save_tokenizer(tmp_path)
    model = save_model(tmp_path, "lm")
    (tmp_path / "prm.json").write_text(json.dumps({"step_tag": "<tag>", "good_token": "-", "bad_token": "+"}))
    [scores] = PRMVerifier(tmp_path, device="cpu").score("sum 2 3", [["2+3=5", "answer is 5"]])
    swapped = reference_scores(tokenizer, model, "lm", "sum 2 3", ["2+3=5", "answer is 5"], tag="<tag>")
    assert scores == pytest.approx([1 - s for s in swapped], abs=1e-5)


@pytest.mark.parametrize("fault, message", [
    ("no_config", "no config.json"),
    ("no_weights", "cannot load the model weights"),
    ("no_tokenizer", "cannot load its tokenizer"),
    ("tag_not_a_token", "step_tag 'STEP' is not one token"),
    ("unknown_key", "prm.json: unknown keys \\['tag'\\]"),
    ("three_labels", "needs 2 labels"),
    ("base_model", "neither a ...ForCausalLM"),
])
def test_malformed_prm_directories_fail_clearly(tmp_path, fault, message):
    if fault != "no_tokenizer":
        save_tokenizer(tmp_path)
    if fault == "three_labels":
        save_model(tmp_path, "classifier", num_labels=3)
    elif fault == "base_model":
        save_model(tmp_path, "lm")
        config = json.loads((tmp_path / "config.json").read_text())
        (tmp_path / "config.json").write_text(json.dumps({**config, "architectures": ["LlamaModel"]}))
    elif fault != "no_config":
        save_model(tmp_path, "lm")
    if fault == "no_weights":
        for file in tmp_path.glob("*.safetensors"):
            file.unlink()
    if fault == "tag_not_a_token":
        (tmp_path / "prm.json").write_text(json.dumps({"step_tag": "STEP"}))
    if fault == "unknown_key":
        (tmp_path / "prm.json").write_text(json.dumps({"tag": "ки"}))
    with pytest.raises(ValueError, match=message):
        PRMVerifier(tmp_path, device="cpu")


def test_evaluation_main_searches_with_a_prm_directory(demo_run, tmp_path, monkeypatch):
    """search=beam with a PRM directory on two GSM8k fixture items: one response per item; the
    engine is asked for step continuations (stop ids, response prefixes) at the search temperature."""
    from pathlib import Path

    from evaluation import main as eval_main
    from simple_inference_engine import SimpleEngine

    engine = SimpleEngine.from_checkpoint(demo_run[1], device="cpu")
    save_tokenizer(tmp_path / "prm")
    save_model(tmp_path / "prm", "lm")
    calls = []
    generate_ids = engine.generate_ids
    monkeypatch.setattr(engine, "generate_ids", lambda prompts, *a, **kw: calls.append((len(prompts), a, kw)) or
                        generate_ids(prompts, *a, **kw))
    args = [f"ckpt_path={demo_run[1]}", f"data_dir={Path(__file__).parent / 'fixtures' / 'eval'}", "run_only=[GSM8k]",
            "limit=2", "generation_config.condition=direct", "generation_config.max_tokens=6",
            f"results_path={tmp_path / 'results.json'}"]
    report = eval_main.main(args + ["search=beam", "search.n=4", "search.width=2", "search.max_steps=2",
                                    "search.temperature=0.5", f"search.verifier={tmp_path / 'prm'}"], engine=engine)
    assert report["results"]["GSM8k"]["metrics"]["n"] == 2
    assert calls[0][0] == 2 * 4  # round 1: 4 first steps per item
    assert all(kw["context_len"] == 3072 for _, _, kw in calls)  # the plan's max_context
    assert all(a[1] == 0.5 and kw["stop_ids"] for _, a, kw in calls)
    assert report["config"]["search"]["method"] == "beam"
    with pytest.raises(ValueError, match="search.verifier=PATH"):
        eval_main.main(args + ["search=best_of_n"], engine=engine)
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['beams'\] in search"):
        eval_main.main(args + ["search.beams=4"], engine=engine)
    with pytest.raises(ValueError, match="unknown search method 'beems'"):
        eval_main.main(args + ["search=beems"], engine=engine)
