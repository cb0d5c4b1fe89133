"""evaluation.main as users run it: the seed README's commands, names and aliases, results with
over-long and truncated counts, and one-line errors for benchmark rows outside their schema."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from evaluation import main as eval_main
from evaluation.benchmarks import BenchmarkDataError
from evaluation.engines import Generation, UnknownConditionError

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = str(ROOT / "tests" / "fixtures" / "eval")


class ScriptedEngine:
    """Test helper, not a model: answers from a table (key: a substring of the prompt's last
    question; value: a Generation), else "A" ended by eoa. Records each call's settings."""

    def __init__(self, answers=None):
        self.answers = answers or {}
        self.calls = []

    def known_conditions(self):
        return ["direct", "cot", "synth"]

    def generate(self, prompts, condition, max_new_tokens, temperature, num_samples, batch_size, seed=0,
                 max_context=None):
        self.calls.append({"condition": condition, "max_new_tokens": max_new_tokens, "batch_size": batch_size,
                           "max_context": max_context, "num_prompts": len(prompts), "num_samples": num_samples})
        out = []
        for prompt in prompts:
            last = prompt.split("\n\n")[-1]
            hits = [v for k, v in self.answers.items() if k in last]
            out.append([hits[0] if hits else Generation("A", "eoa")] * num_samples)
        return out


def test_seed_readme_command_with_arc_and_batch_size(tmp_path):
    engine = ScriptedEngine()
    report = eval_main.main([f"ckpt_path={tmp_path}", "run_only=[MATH,DROP,ARC,MMLU]",
                             "generation_config.batch_size=16", f"data_dir={FIXTURES}"], engine=engine)
    assert list(report["results"]) == ["MATH", "DROP", "ARC", "MMLU"]
    assert {c["batch_size"] for c in engine.calls} == {16}  # the command line overrides every benchmark
    written = json.loads((tmp_path / "eval_results.json").read_text())  # the default results path
    # "A" always: ARC's golds are C, A (label "1", re-lettered) and D
    assert written["results"]["ARC"]["metrics"]["acc"] == pytest.approx(1 / 3)


def test_arc_c_alias_max_context_and_multi_tag_condition(tmp_path):
    engine = ScriptedEngine()
    report = eval_main.main([f"ckpt_path={tmp_path}", f"data_dir={FIXTURES}", "run_only=[ARC-C,GSM8k]",
                             "generation_config.max_context=2048", "benchmarks.ARC-C.num_shots=1"], engine=engine)
    assert list(report["results"]) == ["ARC", "GSM8k"]
    assert report["results"]["ARC"]["options"] == {"num_shots": 1}
    assert [(c["condition"], c["max_context"], c["max_new_tokens"]) for c in engine.calls] == \
        [("direct", 2048, 1), ("synth,cot", 2048, 2048)]


def test_overlong_and_truncated_are_counted_per_benchmark(tmp_path):
    engine = ScriptedEngine({"Natalia": Generation("", "overlong"), "bakery": Generation("1,200 * 2 =", "length"),
                             "Tom has": Generation("\\boxed{4}", "eoa")})
    report = eval_main.main([f"ckpt_path={tmp_path}", f"data_dir={FIXTURES}", "run_only=[GSM8k,BoolQ]"],
                            engine=engine)
    gsm8k = report["results"]["GSM8k"]
    assert (gsm8k["num_items"], gsm8k["num_overlong"], gsm8k["num_truncated"]) == (4, 1, 1)
    assert gsm8k["metrics"] == {"n": 4, "acc": 0.25, "invalid": 0.75}  # "" and "A" are invalid too
    assert report["results"]["BoolQ"]["num_overlong"] == 0
    table = eval_main.format_table(report["results"])
    assert "overlong" in table.splitlines()[0] and "GSM8k" in table


def test_unknown_names_and_conditions_fail_clearly(tmp_path):
    with pytest.raises(ValueError, match="unknown benchmark 'GSM8K'; valid: GSM8k, MATH, DROP, MMLU, ARC, .*ARC-C=ARC"):
        eval_main.main([f"ckpt_path={tmp_path}", "run_only=[GSM8K]"], engine=ScriptedEngine())
    with pytest.raises(UnknownConditionError, match="unknown condition 'think' in 'synth,think'"):
        eval_main.main([f"ckpt_path={tmp_path}", f"data_dir={FIXTURES}", "run_only=[GSM8k]",
                        "generation_config.condition=synth,think"], engine=ScriptedEngine())
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['max_new_tokens'\] in generation_config"):
        eval_main.main([f"ckpt_path={tmp_path}", "generation_config.max_new_tokens=4"], engine=ScriptedEngine())


def _write(folder: Path, name: str, split: str, rows: list) -> None:
    (folder / name).mkdir(parents=True, exist_ok=True)
    (folder / name / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


BOOLQ_ROW = {"question": "is it", "passage": "It is.", "answer": True}
MMLU_ROW = {"question": "q", "subject": "s", "choices": ["a", "b", "c", "d"], "answer": 1}
WINO_ROW = {"sentence": "_ won.", "option1": "x", "option2": "y", "answer": "1"}


@pytest.mark.parametrize("name, split, rows, message", [
    ("BoolQ", "validation", [BOOLQ_ROW, dict(BOOLQ_ROW, answer="false")],
     r"BoolQ/validation.jsonl: row 2: field 'answer' must be a JSON boolean \(true/false\), got 'false'"),
    ("MMLU", "test", [dict(MMLU_ROW, answer=-1)],
     r"MMLU/test.jsonl: row 1: field 'answer' must index field 'choices' \(0..3\), got -1"),
    ("Winogrande", "validation", [WINO_ROW, WINO_ROW, dict(WINO_ROW, answer=0)],
     r"Winogrande/validation.jsonl: row 3: field 'answer' must be \"1\" or \"2\", got 0"),
    ("MMLU", "test", [{k: v for k, v in MMLU_ROW.items() if k != "subject"}],
     r"MMLU/test.jsonl: row 1: field 'subject' is missing"),
    ("BoolQ", "validation", [], r"BoolQ/validation.jsonl: no rows"),
])
def test_rows_outside_the_schema_are_refused(tmp_path, name, split, rows, message):
    data = tmp_path / "data"
    _write(data, name, split, rows)
    _write(data, "BoolQ", "train", [BOOLQ_ROW])
    _write(data, "MMLU", "dev", [MMLU_ROW])
    _write(data, "Winogrande", "train", [WINO_ROW])
    with pytest.raises(BenchmarkDataError, match=message):
        eval_main.main([f"ckpt_path={tmp_path}", f"data_dir={data}", f"run_only=[{name}]"], engine=ScriptedEngine())


def test_command_line_exits_non_zero_with_one_line(tmp_path):
    data = tmp_path / "data"
    _write(data, "BoolQ", "validation", [dict(BOOLQ_ROW, answer="false")])
    _write(data, "BoolQ", "train", [BOOLQ_ROW])
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    result = subprocess.run([sys.executable, "-m", "evaluation.main", f"ckpt_path={tmp_path}", f"data_dir={data}",
                             "run_only=[BoolQ]"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode != 0
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and "BoolQ/validation.jsonl: row 1: field 'answer'" in last
    assert "Traceback" not in result.stderr


def test_baseline_config_is_the_references_vllm_protocol(tmp_path):
    class PlainEngine(ScriptedEngine):
        def known_conditions(self):
            return ["plain"]

    engine = PlainEngine({"field goals": Generation("2\n\nThe Bears", "length")})
    config = ROOT / "evaluation" / "config" / "baseline_benchmarking.yaml"
    report = eval_main.main([f"ckpt_path={tmp_path}", f"data_dir={FIXTURES}", f"config={config}"], engine=engine)
    assert list(report["results"]) == ["DROP", "MMLU", "ARC", "HellaSwag", "Winogrande", "BoolQ"]
    assert [(c["condition"], c["max_context"], c["max_new_tokens"]) for c in engine.calls] == \
        [("plain", 3072, 16), ("plain", 3072, 1)]
    drop = report["results"]["DROP"]
    # "2\n\nThe Bears" is cut at the stop string: "2" is right for the first of 4 questions.
    assert drop["metrics"]["em"] == pytest.approx(1 / 4) and drop["num_truncated"] == 0
    assert report["results"]["MMLU"]["options"] == {"special_shots": {"high_school_european_history": 3}}


class SamplesEngine(ScriptedEngine):
    """Answers each prompt containing a key with the key's list of samples, one per sample."""

    def generate(self, prompts, condition, max_new_tokens, temperature, num_samples, batch_size, seed=0,
                 max_context=None):
        super().generate(prompts, condition, max_new_tokens, temperature, num_samples, batch_size, seed, max_context)
        return [next(v for k, v in self.answers.items() if k in p)[:num_samples] for p in prompts]


def test_aime_majority_voting_and_mmlu_pro_offline(tmp_path):
    engine = SamplesEngine({
        "17_b": ["\\boxed{70}", "\\boxed{49}", "\\boxed{49}", "70"],  # gold 70: votes 70, 49, 49, 70 (tie: 70 first)
        "2^{10}": ["\\boxed{24}", "\\boxed{1024}", "\\boxed{42}", "\\boxed{42}"],  # gold 24; 1024 casts no vote
        "divisors": ["\\boxed{8}", "\\boxed{8}", "\\boxed{6}", "none"],  # gold 9 (from the solution's box): never
        "7 * 8": ["(B)"], "prime": ["The answer is \\boxed{(D)}"], "final say": ["It is B."],
    })
    config = ROOT / "evaluation" / "config" / "hrm_maj_vote_benchmarking.yaml"
    report = eval_main.main([f"ckpt_path={tmp_path}", f"data_dir={FIXTURES}", f"config={config}",
                             "benchmarks.AIME.n=4", "benchmarks.AIME.pass_k=[1,2,4]"], engine=engine)
    aime = report["results"]["AIMEMajorityVoting"]["metrics"]
    assert engine.calls[0]["num_samples"] == 4 and engine.calls[0]["max_context"] == 4096
    assert [aime[f"{i}_valid"] for i in range(3)] == [4, 3, 3]
    assert [aime[f"{i}_cons_count"] for i in range(3)] == [2, 2, 2]
    # top-1: 70 (tie, first seen) right, 42 wrong, 8 wrong; top-2: 70 right, [42, 24] right, [8, 6] wrong
    assert aime["maj_pass@1"] == pytest.approx(1 / 3) and aime["maj_pass@2"] == pytest.approx(2 / 3)
    assert aime["maj_pass@4"] == pytest.approx(2 / 3)
    # correct samples c = 2, 1, 0 of n = 4: pass@1 = (2/4 + 1/4 + 0) / 3;
    # pass@2 = (1 - C(2,2)/C(4,2) + 1 - C(3,2)/C(4,2) + 0) / 3 = (5/6 + 1/2) / 3; pass@4 = (1 + 1 + 0) / 3
    assert aime["pass@1"] == pytest.approx(0.75 / 3)
    assert aime["pass@2"] == pytest.approx((5 / 6 + 1 / 2) / 3)
    assert aime["pass@4"] == pytest.approx(2 / 3)

    mmlu_pro = eval_main.main([f"ckpt_path={tmp_path}", f"data_dir={FIXTURES}", "run_only=[MMLU-Pro]"],
                              engine=engine)["results"]["MMLUPro"]["metrics"]
    # math: (B) right, (D) right; law: "It is B." reads B, gold A -> 0
    assert (mmlu_pro["acc_math"], mmlu_pro["acc_law"], mmlu_pro["acc"]) == (1.0, 0.0, 0.5)


def test_results_merge_per_benchmark_atomically(tmp_path):
    def run(*args):
        return eval_main.main([f"ckpt_path={tmp_path}", f"data_dir={FIXTURES}", *args], engine=ScriptedEngine())

    run("run_only=[ARC]")
    arc = json.loads((tmp_path / "eval_results.json").read_text())["results"]["ARC"]
    run("run_only=[BoolQ]")
    written = json.loads((tmp_path / "eval_results.json").read_text())
    assert list(written["results"]) == ["ARC", "BoolQ"] and written["results"]["ARC"] == arc  # ARC kept as it was
    run("run_only=[ARC]", "limit=1")  # ARC again: its own entry is replaced, BoolQ stays
    written = json.loads((tmp_path / "eval_results.json").read_text())
    assert (written["results"]["ARC"]["num_items"], written["results"]["ARC"]["limit"]) == (1, 1)
    assert written["results"]["BoolQ"]["num_items"] == 3 and written["results"]["BoolQ"]["limit"] is None
    assert written["results"]["BoolQ"]["checkpoint"] == tmp_path.name  # not a run: the folder evaluated
    assert sorted(p.name for p in tmp_path.iterdir()) == ["eval_results.json"]  # no temporary file left


def test_a_file_that_is_not_a_results_file_is_refused_before_generating(tmp_path):
    results = tmp_path / "results.json"
    results.write_text("my notes")
    engine = ScriptedEngine()
    with pytest.raises(ValueError, match="results.json: not a results file of evaluation.main .*results_path=FILE"):
        eval_main.main([f"ckpt_path={tmp_path}", f"data_dir={FIXTURES}", "run_only=[ARC]",
                        f"results_path={results}"], engine=engine)
    assert engine.calls == [] and results.read_text() == "my notes"


def test_results_record_the_checkpoint_evaluated(demo_run, tmp_path):
    from evaluation.engines import NativeEngine
    from simple_inference_engine import SimpleEngine

    _, run = demo_run
    engine = NativeEngine(SimpleEngine.from_checkpoint(run, device="cpu"))
    report = eval_main.main([f"ckpt_path={run}", f"data_dir={FIXTURES}", "run_only=[ARC]", "limit=1",
                             f"results_path={tmp_path / 'results.json'}"], engine=engine)
    # the demo run stops after 30 steps (max_steps=30) and checkpoints there
    assert {k: report["results"]["ARC"][k] for k in ("checkpoint", "step", "use_ema")} == \
        {"checkpoint": "step_30", "step": 30, "use_ema": True}


@pytest.mark.parametrize("args, message", [
    ([], r"ckpt_path is missing: give ckpt_path=RUN_DIR"),
    (["limit=abc"], r"limit='abc': must be a whole number >= 1 \(rows per benchmark\), or null for all"),
    (["limit=0"], r"limit=0: must be a whole number >= 1"),
    (["generation_config.temperature=abc"], r"generation_config.temperature='abc': must be a number >= 0"),
    (["generation_config.batch_size=abc"], r"generation_config.batch_size='abc': must be a whole number >= 1"),
    (["generation_config.num_samples=0"], r"generation_config.num_samples=0: must be a whole number >= 1"),
    (["benchmarks.ARC.generation_config.max_context=x"], r"benchmarks.ARC.generation_config.max_context='x'"),
    (["search.n=x"], r"search.n='x': must be a whole number >= 1"),
    (["run_only=[ARC"], r"cannot read 'run_only=\[ARC' .*a list as key=\[A,B\]"),
    (["config=/nope.yaml"], r"config=/nope.yaml: no such file; .*bundled: .*hrm_maj_vote_benchmarking.yaml"),
])
def test_bad_config_values_fail_naming_the_key(tmp_path, args, message):
    engine = ScriptedEngine()
    ckpt = [] if not args else [f"ckpt_path={tmp_path}"]
    with pytest.raises(ValueError, match=message):
        eval_main.main([*ckpt, f"data_dir={FIXTURES}", "run_only=[ARC]", *args], engine=engine)
    assert engine.calls == []


def test_offline_without_data_dir_names_the_files_to_provide(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")  # as conftest: no test touches the network
    with pytest.raises(ValueError, match=r"ARC: .*offline, give data_dir=DIR with DIR/ARC/test.jsonl and "
                                         r"DIR/ARC/validation.jsonl"):
        eval_main.main([f"ckpt_path={tmp_path}", "run_only=[ARC]"], engine=ScriptedEngine())
    # the layout named is the one the loader reads: the fixtures hold exactly those files
    assert sorted(p.name for p in (Path(FIXTURES) / "ARC").iterdir()) == ["test.jsonl", "validation.jsonl"]
