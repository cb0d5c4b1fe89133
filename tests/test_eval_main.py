"""evaluation.main end to end over the eight fixture benchmarks with a deterministic stub engine."""

import json
from pathlib import Path

import pytest

from evaluation import main as eval_main
from evaluation.engines import UnknownConditionError, require_known_condition

FIXTURES = str(Path(__file__).parent / "fixtures" / "eval")


class LookupStubEngine:
    """Test helper, not a model: answers each prompt from a table.

    A key is a substring of one evaluation question; the key found last in the prompt wins (few-shot
    examples come before the question). A value is a response or a list of responses cycled over
    the samples. Prompts without a key get an unparseable answer. Every call is recorded.
    """

    def __init__(self, answers: dict, conditions=("direct", "cot")):
        self.answers = answers
        self.conditions = list(conditions)
        self.calls = []

    def known_conditions(self):
        return self.conditions

    def generate(self, prompts, condition, max_new_tokens, temperature, num_samples, batch_size):
        require_known_condition(condition, self.known_conditions())
        self.calls.append({"num_prompts": len(prompts), "condition": condition, "max_new_tokens": max_new_tokens,
                           "temperature": temperature, "num_samples": num_samples, "batch_size": batch_size})
        outputs = []
        for prompt in prompts:
            keys = [k for k in self.answers if k in prompt]
            response = self.answers[max(keys, key=prompt.rfind)] if keys else "I am not sure."
            responses = [response] if isinstance(response, str) else response
            outputs.append([responses[i % len(responses)] for i in range(num_samples)])
        return outputs


ANSWERS = {
    # GSM8k: right, right ($ and comma), wrong; the tulip question gets no answer (invalid).
    "Natalia sold clips": "She sold 48 / 2 = 24 in May, so 48 + 24 = 72. The answer is \\boxed{72}.",
    "A bakery sells": "1,200 * 2 = $2,400.",
    "Tom has 7 marbles": "Tom has 5 left. #### 5",
    # MATH: 0.5 for 1/2, a reordered polynomial, x = 4 right; 3 wrong.
    "\\frac{1}{4} + \\frac{1}{4}": "The sum is \\boxed{0.5}.",
    "Solve for $x$": "So \\boxed{4}.",
    "Expand $(x+1)^2$": "\\boxed{1 + 2x + x^2}",
    "17 is divided by 5": "\\boxed{3}",
    # DROP: em 1/f1 1, em 0/f1 0.67, em 1/f1 1.
    "How many field goals": "2",
    "Who caught the touchdown pass": "Calvin Johnson caught it",
    "Which cities did": "Delhi",
    # MMLU: astronomy 1 of 2, biology 2 of 2 -> macro 0.75.
    "Red Planet": "B",
    "closest star": "The answer is (B)",
    "photosynthesis": "C. Carbon dioxide",
    "basic unit of life": "Cell",
    # ARC-C: right, right (numeric labels), invalid letter.
    "rotates faster": "C",
    "mass of a rock": "A",
    "rubber band vibrates": "E",
    # HellaSwag, Winogrande, BoolQ: 2 of 3 each.
    "sitting on a roof": "D",
    "walks to a barbell": "B",
    "water a cactus": "A",
    "better surgeon": "A",
    "trophy does not fit": "B",
    "menudo": "A",
    "is the sun a star": "Yes",
    "do penguins live": "B",
    "is water wet": "no",
}

EXPECTED = {
    "GSM8k": {"accuracy": 0.5, "num_invalid": 1},
    "MATH": {"accuracy": 0.75, "num_invalid": 0},
    "DROP": {"em": 2 / 3, "f1": (1 + 0.67 + 1) / 3, "num_invalid": 0},
    "MMLU": {"accuracy": 0.75, "num_groups": 2, "num_invalid": 0},
    "ARC-C": {"accuracy": 2 / 3, "num_invalid": 1},
    "HellaSwag": {"accuracy": 2 / 3, "num_invalid": 0},
    "Winogrande": {"accuracy": 2 / 3, "num_invalid": 0},
    "BoolQ": {"accuracy": 2 / 3, "num_invalid": 0},
}


def test_all_benchmarks_end_to_end(tmp_path, capsys):
    engine = LookupStubEngine(ANSWERS)
    report = eval_main.main([f"ckpt_path={tmp_path}", f"data_dir={FIXTURES}"], engine=engine)

    written = json.loads((tmp_path / "eval_results.json").read_text())  # the default results path
    assert written == json.loads(json.dumps(report))
    assert list(written["results"]) == list(EXPECTED)
    for name, expected in EXPECTED.items():
        metrics = written["results"][name]["metrics"]
        for key, value in expected.items():
            assert metrics[key] == pytest.approx(value), (name, key)
    assert written["results"]["MMLU"]["num_fewshot"] == 5

    # One engine call per distinct generation config; the five multiple-choice benchmarks share one.
    calls = {(c["condition"], c["max_new_tokens"]): c["num_prompts"] for c in engine.calls}
    assert calls == {("cot", 512): 4, ("cot", 1024): 4, ("direct", 32): 3, ("direct", 16): 4 + 3 + 3 + 3 + 3}
    table = capsys.readouterr().out
    assert "Winogrande" in table and "0.6667" in table


def test_run_only_and_generation_override(tmp_path):
    engine = LookupStubEngine(ANSWERS)
    out = tmp_path / "sub" / "results.json"
    eval_main.main([f"ckpt_path={tmp_path}", f"data_dir={FIXTURES}", "run_only=[GSM8k,MMLU]",
                    "generation_config.batch_size=4", "benchmarks.MMLU.num_fewshot=0", f"results_path={out}",
                    "limit=2"], engine=engine)
    results = json.loads(out.read_text())["results"]
    assert list(results) == ["GSM8k", "MMLU"]
    assert [c["batch_size"] for c in engine.calls] == [4, 4]
    assert [c["num_prompts"] for c in engine.calls] == [2, 2]
    assert results["GSM8k"]["generation_config"]["batch_size"] == 4
    assert results["MMLU"]["num_fewshot"] == 0 and results["MMLU"]["metrics"]["accuracy"] == 0.5


def test_sampling_config_gives_maj_and_pass(tmp_path):
    answers = dict(ANSWERS, **{"Tom has 7 marbles": ["\\boxed{4}", "\\boxed{5}", "\\boxed{4}"]})
    engine = LookupStubEngine(answers)
    sampling = Path(eval_main.__file__).parent / "config" / "sampling.yaml"
    eval_main.main([f"ckpt_path={tmp_path}", f"data_dir={FIXTURES}", f"config={sampling}", "run_only=[GSM8k]"],
                   engine=engine)
    metrics = json.loads((tmp_path / "eval_results.json").read_text())["results"]["GSM8k"]["metrics"]
    assert engine.calls == [{"num_prompts": 4, "condition": "cot", "max_new_tokens": 512, "temperature": 0.7,
                             "num_samples": 8, "batch_size": 32}]
    # Tom: samples 4,5,4,4,5,4,4,5 -> 5 of 8 right, vote 4; two items always right; tulips invalid.
    assert metrics["maj@8_accuracy"] == pytest.approx(3 / 4)
    assert metrics["accuracy"] == pytest.approx((1 + 1 + 5 / 8 + 0) / 4)
    assert metrics["pass@8"] == pytest.approx(3 / 4)
    assert metrics["pass@2"] == pytest.approx((1 + 1 + (1 - 3 / 28) + 0) / 4)  # C(3,2)/C(8,2) = 3/28
    assert metrics["num_invalid"] == 8


def test_unknown_benchmark_lists_valid_ones(tmp_path):
    with pytest.raises(ValueError, match="unknown benchmark 'GSM8K'.*valid: GSM8k, MATH, DROP, MMLU, ARC-C"):
        eval_main.main([f"ckpt_path={tmp_path}", "run_only=[GSM8K]"], engine=LookupStubEngine({}))


def test_run_only_single_name_without_brackets(tmp_path):
    engine = LookupStubEngine(ANSWERS)
    report = eval_main.main([f"ckpt_path={tmp_path}", f"data_dir={FIXTURES}", "run_only=BoolQ"], engine=engine)
    assert list(report["results"]) == ["BoolQ"]


def test_unknown_key_fails(tmp_path):
    with pytest.raises(ValueError, match="unknown key.*batchsize"):
        eval_main.main([f"ckpt_path={tmp_path}", "generation_config.batchsize=4"], engine=LookupStubEngine({}))


def test_unknown_condition_lists_known_ones(tmp_path):
    with pytest.raises(UnknownConditionError, match="unknown condition 'cot'.*knows: direct"):
        eval_main.main([f"ckpt_path={tmp_path}", f"data_dir={FIXTURES}"],
                       engine=LookupStubEngine(ANSWERS, conditions=["direct"]))


def test_help_prints_usage_and_keys(capsys):
    assert eval_main.main(["--help"]) == {}
    out = capsys.readouterr().out
    assert "usage: python -m evaluation.main ckpt_path=" in out and "generation_config:" in out and "run_only" in out
