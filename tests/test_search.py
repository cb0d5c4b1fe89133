"""Test-time search (evaluation/search): every method's pick and compute on a scripted policy and a
scripted verifier, against picks and counts worked out by hand from the methods' definitions."""

import re

import pytest

from evaluation.search.compute_optimal import ProblemResult, compute_optimal, difficulty_bins
from evaluation.search.methods import Completion, SearchConfig, search
from evaluation.search.verifiers import ProgrammaticVerifier, aggregate, split_steps


class ScriptedPolicy:
    """Test helper, not a model. `script[prefix]` lists the continuations of that response prefix,
    handed out in order over the requests that arrive for it (cycled). A continuation ending in "!"
    ends the response (the "!" is dropped). Tokens are characters: a request reads
    len(problem) + len(prefix) prompt tokens and generates len(text) tokens; flops = 10 per prompt
    token + 1 per generated token, so a swapped argument changes every total."""

    def __init__(self, script: dict[str, list[str]]):
        self.script = script
        self.served = {prefix: 0 for prefix in script}
        self.calls = []

    def complete(self, requests, temperature, max_new_tokens, step_delimiter, seed):
        self.calls.append({"n": len(requests), "temperature": temperature, "delimiter": step_delimiter, "seed": seed})
        out = []
        for (problem, prefix), budget in zip(requests, max_new_tokens):
            options = self.script[prefix]
            text = options[self.served[prefix] % len(options)]
            self.served[prefix] += 1
            finished = text.endswith("!")
            text = text.removesuffix("!")[:budget]
            out.append(Completion(text, len(text), len(problem) + len(prefix), finished))
        return out

    def flops(self, prompt_tokens, new_tokens):
        return 10 * prompt_tokens + new_tokens


def scripted_verifier(step_scores: dict[str, float]) -> ProgrammaticVerifier:
    """Each step scores what the table says, whatever came before it."""
    return ProgrammaticVerifier(lambda problem, previous, step: step_scores[step])


def answer_of(problem_index: int, text: str):
    """The answer of a test solution: the number after 'ans', else None."""
    return int(text.rsplit("ans", 1)[1]) if "ans" in text else None


# ---------------------------------------------------------------- steps and aggregation


def test_steps_split_on_the_delimiter_and_blank_steps_drop():
    assert split_steps("a\nb\n\nc\n") == ["a", "b", "c"]
    assert split_steps("a\nb\n\nc d\n\n", "\n\n") == ["a\nb", "c d"]
    assert split_steps("") == []


def test_aggregation_modes():
    assert aggregate([0.9, 0.5, 0.8], "min") == 0.5
    assert aggregate([0.9, 0.5, 0.8], "prod") == pytest.approx(0.36)
    assert aggregate([0.9, 0.5, 0.8], "last") == 0.8
    assert aggregate([], "min") == 0.0
    with pytest.raises(ValueError, match="aggregation 'mean'"):
        aggregate([1.0], "mean")


# ---------------------------------------------------------------- sampling methods

# Six samples of problem "Q" (prompt: 1 token). Step scores make min, prod and last pick three
# different samples:            min   prod    last
#   s0 "u\nans7"  (0.9, 0.5)    0.5   0.45    0.5
#   s1 "v\nw\nans5" (.6,.6,.7)  0.6   0.252   0.7
#   s2 "x\nans5"  (1.0, 0.48)   0.48  0.48    0.48
#   s3 "y\nz"     (0.55, 0.9)   0.55  0.495   0.9     no answer
#   s4 "t\nans7"  (0.3, 0.99)   0.3   0.297   0.99
#   s5 "ans3"     (0.1)         0.1   0.1     0.1
SAMPLES = ["u\nans7", "v\nw\nans5", "x\nans5", "y\nz", "t\nans7", "ans3"]
# The score of each step, keyed by the solution up to and including it:
SAMPLE_STEP_SCORES = {"u": 0.9, "u\nans7": 0.5, "v": 0.6, "v\nw": 0.6, "v\nw\nans5": 0.7, "x": 1.0,
                      "x\nans5": 0.48, "y": 0.55, "y\nz": 0.9, "t": 0.3, "t\nans7": 0.99, "ans3": 0.1}


def sample_verifier():
    return ProgrammaticVerifier(lambda problem, previous, step: SAMPLE_STEP_SCORES["\n".join(previous + [step])])


def run(method, aggregation="min", samples=SAMPLES, verifier=None, **kw):
    policy = ScriptedPolicy({"": [s + "!" for s in samples]})
    cfg = SearchConfig(method=method, n=len(samples), aggregation=aggregation, **kw)
    [outcome] = search(policy, verifier or sample_verifier(), ["Q"], cfg, answer_of)
    return outcome, policy


@pytest.mark.parametrize("aggregation, expected", [("min", 1), ("prod", 3), ("last", 4)])
def test_best_of_n_picks_the_best_aggregated_score(aggregation, expected):
    outcome, _ = run("best_of_n", aggregation)
    assert outcome.text == SAMPLES[expected]


def test_best_of_n_tie_goes_to_the_first_sample():
    # both samples score 0.8 (min), in either order the first wins
    outcome, _ = run("best_of_n", samples=["x\nans5", "u\nans7"],
                     verifier=scripted_verifier({"x": 0.8, "ans5": 0.9, "u": 0.8, "ans7": 0.8}))
    assert outcome.text == "x\nans5"
    outcome, _ = run("best_of_n", samples=["u\nans7", "x\nans5"],
                     verifier=scripted_verifier({"x": 0.8, "ans5": 0.9, "u": 0.8, "ans7": 0.8}))
    assert outcome.text == "u\nans7"


def test_majority_vote_counts_valid_answers_and_breaks_ties_by_first_seen():
    # answers 7, 5, 5, None, 7, 3: 7 and 5 both twice, 7 seen first -> s0
    outcome, _ = run("majority")
    assert (outcome.text, outcome.answer) == ("u\nans7", 7)
    outcome, _ = run("majority", samples=["ans3", "u\nans7", "x\nans5", "v\nw\nans5"])
    assert outcome.answer == 5 and outcome.text == "x\nans5"
    outcome, _ = run("majority", samples=["y\nz", "u"])  # no valid answer: the first sample
    assert outcome.text == "y\nz" and outcome.answer is None


@pytest.mark.parametrize("aggregation, expected", [
    # min: 7 -> 0.5 + 0.3 = 0.8, 5 -> 0.6 + 0.48 = 1.08, 3 -> 0.1: answer 5, its best s1 (0.6)
    ("min", 1),
    # last: 7 -> 0.5 + 0.99 = 1.49, 5 -> 0.7 + 0.48 = 1.18: answer 7, its best s4 (0.99)
    ("last", 4),
    # prod: 7 -> 0.45 + 0.297 = 0.747, 5 -> 0.252 + 0.48 = 0.732: answer 7, its best s0 (0.45)
    ("prod", 0),
])
def test_weighted_best_of_n_sums_scores_over_equal_answers(aggregation, expected):
    outcome, _ = run("weighted_best_of_n", aggregation)
    assert outcome.text == SAMPLES[expected]


def test_weighted_best_of_n_ties():
    scores = {"a": 0.5, "b": 0.25, "c": 0.25, "ans1": 1.0, "ans2": 1.0}
    # 1 -> 0.5, 2 -> 0.5 (two samples of 0.25): equal sums, answer 1 seen first, wins
    outcome, _ = run("weighted_best_of_n", samples=["a\nans1", "b\nans2", "c\nans2"],
                     verifier=scripted_verifier(scores))
    assert outcome.text == "a\nans1"
    # the winning answer's samples tie (0.25 each): its first sample
    outcome, _ = run("weighted_best_of_n", samples=["a\nz", "c\nans2", "b\nans2"],
                     verifier=scripted_verifier({**scores, "z": 0.9}))
    assert outcome.text == "c\nans2"
    # no valid answer: best-of-N's pick (s1, 0.9 > 0.5)
    outcome, _ = run("weighted_best_of_n", samples=["a\nz", "z"], verifier=scripted_verifier({**scores, "z": 0.9}))
    assert outcome.text == "z"


def test_greedy_decodes_once_at_temperature_zero():
    outcome, policy = run("greedy", samples=["ans3", "u\nans7"])
    assert outcome.text == "ans3"
    assert policy.calls == [{"n": 1, "temperature": 0.0, "delimiter": None, "seed": 0}]


def test_sampling_methods_compute():
    # six samples of "Q": prompt 1 token each; generated 6 + 8 + 6 + 3 + 6 + 4 = 33 characters
    for method, verifier_calls in (("majority", 0), ("best_of_n", 6), ("weighted_best_of_n", 6)):
        outcome, policy = run(method, temperature=0.7, seed=5)
        assert (outcome.compute.tokens, outcome.compute.verifier_calls, outcome.compute.flops) == \
            (33, verifier_calls, 6 * 10 * 1 + 33)
        assert policy.calls == [{"n": 6, "temperature": 0.7, "delimiter": None, "seed": 5}]


def test_methods_run_problems_independently_in_one_batch():
    policy = ScriptedPolicy({"": ["u\nans7!", "x\nans5!", "ans3!", "v\nw\nans5!"]})
    cfg = SearchConfig(method="best_of_n", n=2)
    first, second = search(policy, sample_verifier(), ["Q", "QQ"], cfg, answer_of)
    assert (first.text, second.text) == ("u\nans7", "v\nw\nans5")  # 0.5 > 0.48; 0.1 < 0.6
    assert (first.compute.flops, second.compute.flops) == (2 * 10 * 1 + 12, 2 * 10 * 2 + 12)
    assert policy.calls[0]["n"] == 4


# ---------------------------------------------------------------- beam search and DVTS

# Problem "P" (1 token). A continuation ending in "!" finishes the response. Step scores:
TREE_SCORES = {"a": 0.9, "b": 0.2, "c": 0.7, "d": 0.4, "e": 0.8, "f": 0.3, "g": 0.95, "h": 0.6, "i": 0.99, "j": 1.0}
BEAM_TREE = {
    "": ["a\n", "b\n", "c\n", "d!"],
    "a\n": ["e!", "f\n"],
    "c\n": ["g!", "h!"],
    "a\nf\n": ["i!", "j!"],
}


def tree_search(method, script, scores, aggregation, n=4, width=2, max_steps=40):
    policy = ScriptedPolicy(script)
    cfg = SearchConfig(method=method, n=n, width=width, aggregation=aggregation, max_steps=max_steps, seed=3)
    [outcome] = search(policy, scripted_verifier(scores), ["P"], cfg, answer_of)
    return outcome, policy


def test_beam_search_by_hand():
    """N=4, M=2: 4 first steps; d finishes (0.4); a (0.9) and c (0.7) are kept over b (0.2) and each
    expanded twice: ae, cg, ch finish, af stays open alone and is expanded twice: afi, afj finish.
      min:  d .4, ae .8, cg .7, ch .6, afi .3, afj .3 -> ae
      last: d .4, ae .8, cg .95, ch .6, afi .99, afj 1.0 -> afj"""
    outcome, policy = tree_search("beam", BEAM_TREE, TREE_SCORES, "min")
    assert outcome.text == "a\ne"
    assert tree_search("beam", BEAM_TREE, TREE_SCORES, "last")[0].text == "a\nf\nj"
    assert policy.served == {"": 4, "a\n": 2, "c\n": 2, "a\nf\n": 2}  # b was never expanded
    assert [(c["n"], c["delimiter"], c["seed"]) for c in policy.calls] == [(4, "\n", 3), (4, "\n", 4), (2, "\n", 5)]
    # generated: round 0 a\n b\n c\n d = 7, round 1 e f\n g h = 5, round 2 i j = 2 -> 14 tokens;
    # prompts: 4 x 1 (P), 4 x 3 (P + "a\n" or "c\n"), 2 x 5 (P + "a\nf\n") -> 26 prompt tokens
    assert (outcome.compute.tokens, outcome.compute.verifier_calls, outcome.compute.flops) == \
        (14, 4 + 4 + 2, 10 * 26 + 14)


def test_beam_search_step_limit_completes_open_beams():
    """max_steps=2: af is still open after round 2 and counts as complete (min .3, last .3);
    last: d .4, ae .8, cg .95, ch .6, af .3 -> cg."""
    outcome, policy = tree_search("beam", BEAM_TREE, TREE_SCORES, "last", max_steps=2)
    assert outcome.text == "c\ng"
    assert policy.served["a\nf\n"] == 0
    assert (outcome.compute.tokens, outcome.compute.verifier_calls) == (12, 8)


def test_beam_search_ties_keep_the_earlier_candidate():
    """N=2, M=2: one beam kept; x and y tie (0.5), x is kept; its continuations p and q tie, p wins."""
    script = {"": ["x\n", "y\n"], "x\n": ["p!", "q!"], "y\n": ["r!"]}
    outcome, policy = tree_search("beam", script, {"x": 0.5, "y": 0.5, "p": 0.5, "q": 0.5, "r": 1.0}, "min",
                                  n=2, width=2)
    assert outcome.text == "x\np"
    assert policy.served["y\n"] == 0


DVTS_TREE = {
    "": ["a\n", "b\n", "c\n", "d!"],
    "a\n": ["e!", "f\n"],
    "a\nf\n": ["i!", "j!"],
}


def test_dvts_by_hand():
    """N=4, M=2: two subtrees of two first steps each. Subtree 0 draws a (.9), b (.2) and keeps
    a; subtree 1 draws c (.7), d (.95, finished) and ends with d."""
    scores = {**TREE_SCORES, "d": 0.95, "f": 0.85, "j": 0.5}
    # subtree 0: round 1 e (min .8, last .8) vs f (min .85, last .85) -> f, open;
    #            round 2 i (min .85, last .99) vs j (min .5, last .5) -> i: final afi (min .85, last .99)
    # subtree 1: d .95, finished in round 0
    #   min:  afi .85 vs d .95 -> d;   last: afi .99 vs d .95 -> afi
    outcome, policy = tree_search("dvts", DVTS_TREE, scores, "min")
    assert outcome.text == "d"
    assert tree_search("dvts", DVTS_TREE, scores, "last")[0].text == "a\nf\ni"
    # generated: round 0 a\n b\n c\n d = 7, round 1 e f\n = 3, round 2 i j = 2 -> 12 tokens;
    # prompts: 4 x 1, 2 x 3, 2 x 5 -> 20 prompt tokens; verifier: 4 + 2 + 2 scored
    assert (outcome.compute.tokens, outcome.compute.verifier_calls, outcome.compute.flops) == (12, 8, 10 * 20 + 12)
    assert [c["n"] for c in policy.calls] == [4, 2, 2]


def test_dvts_tie_between_subtrees_goes_to_the_first_subtree():
    """last: subtree 0 ends with afi (.99) in round 2, subtree 1 with d (.99) in round 0: the tie
    goes to subtree 0, though subtree 1 finished first."""
    scores = {**TREE_SCORES, "d": 0.99, "f": 0.85, "j": 0.5}
    outcome, _ = tree_search("dvts", DVTS_TREE, scores, "last")
    assert outcome.text == "a\nf\ni"


def test_tree_search_token_budget_ends_a_candidate():
    """max_new_tokens=3: a\\n (2 tokens) may generate 1 more: f\\n is cut to "f" and ends there."""
    policy = ScriptedPolicy({"": ["a\n"], "a\n": ["f\n"]})
    cfg = SearchConfig(method="beam", n=1, width=1, max_new_tokens=3)
    [outcome] = search(policy, scripted_verifier(TREE_SCORES), ["P"], cfg, answer_of)
    assert outcome.text == "a\nf" and outcome.compute.tokens == 3
    assert len(policy.calls) == 2


def test_search_config_errors():
    with pytest.raises(ValueError, match="unknown search method 'beems'"):
        SearchConfig(method="beems")
    with pytest.raises(ValueError, match="temperature > 0"):
        SearchConfig(method="beam", temperature=0)
    with pytest.raises(ValueError, match="needs a verifier"):
        search(ScriptedPolicy({"": ["x!"]}), None, ["P"], SearchConfig(method="dvts"), answer_of)


# ---------------------------------------------------------------- the step-by-step demo task


def test_demo_step_task_and_its_step_checker():
    import random

    from data_io.demo import check_step, make_step_problem

    steps = ["23+45=68", "68+17=85", "answer 85"]
    assert [check_step("sum 23 45 17", steps[:k], s) for k, s in enumerate(steps)] == [True, True, True]
    # a wrong sum, a right sum of a wrong running total, an early answer, a line past the answer
    assert not check_step("sum 23 45 17", [], "23+45=67")
    assert not check_step("sum 23 45 17", ["23+45=67"], "67+17=84")
    assert check_step("sum 23 45 17", ["23+45=67"], "68+17=85")  # judged on its own
    assert not check_step("sum 23 45 17", ["23+45=68"], "answer 68")
    assert not check_step("sum 23 45 17", steps, "answer 85")
    rng = random.Random(0)
    for _ in range(50):
        instruction, response = make_step_problem(rng)
        numbers = [int(n) for n in instruction.split()[1:]]
        lines = response.split("\n")
        assert 4 <= len(numbers) <= 5 and all(1 <= n <= 9 for n in numbers) and len(lines) == len(numbers)
        assert lines[-1] == f"answer {sum(numbers)}"
        assert all(check_step(instruction, lines[:k], line) for k, line in enumerate(lines))


# ---------------------------------------------------------------- compute-optimal selection


def test_difficulty_bins_cut_sorted_pass_rates_into_equal_bins():
    # ascending pass rate, ties by problem order: 1 (.1), 3 (.1), 2 (.5), 4 (.7), 0 (.9)
    assert difficulty_bins([0.9, 0.1, 0.5, 0.1, 0.7], 2) == [1, 0, 0, 0, 1]
    assert difficulty_bins([0.9, 0.1, 0.5, 0.1], 4) == [3, 0, 2, 1]


def test_compute_optimal_picks_the_best_method_per_bin_and_budget():
    r = lambda correct, tokens: ProblemResult(bool(correct), tokens, 10.0 * tokens)
    results = {
        "A": {"4": [r(1, 10), r(0, 20), r(1, 30), r(0, 40)], "16": [r(1, 1)] * 4},
        "B": {"4": [r(0, 1), r(1, 2), r(0, 3), r(0, 4)]},
    }
    bins = [1, 0, 1, 0]  # bin 0 (hard): problems 1, 3; bin 1: problems 0, 2
    # bin 0: A 0 right, B 1 -> B; bin 1: A 2, B 0 -> A. Picked: A, B, A, B -> 1 + 1 + 1 + 0 right,
    # tokens 10 + 2 + 30 + 4. Budget 16 is not run by every method: left out.
    assert compute_optimal(results, bins) == {"4": {"accuracy": 0.75, "tokens": 11.5, "flops": 115.0, "choice": ["B", "A"]}}
    # a tie within a bin goes to the method listed first
    results["B"]["4"][3] = r(0, 4)
    results["A"]["4"][1] = r(1, 20)  # bin 0: A 1, B 1
    assert compute_optimal(results, bins)["4"]["choice"] == ["A", "A"]


# ---------------------------------------------------------------- the native engine as the policy


@pytest.fixture(scope="module")
def engine_policy(demo_run):
    from evaluation.search.policy import EnginePolicy
    from simple_inference_engine import SimpleEngine

    return EnginePolicy(SimpleEngine.from_checkpoint(demo_run[1], device="cpu"), "direct", batch_size=4)


def test_engine_policy_flops_follow_the_counter_by_hand(engine_policy):
    """tiny HRM: 2 layers per stack, d 128, SwiGLU f 512, H_cycles 2 x (L_cycles 3 + 1) = 8 stack
    calls per token, forward only. A sequence of S tokens: S x (8 x 2 x (2 (5 d^2 + 3 d f) + 2 d S)
    + 2 d V)."""
    d, f, V = 128, 512, engine_policy.engine.model.vocab_size
    S = 17 + 5
    per_token = 8 * 2 * (2 * (5 * d * d + 3 * d * f) + 2 * d * S) + 2 * d * V
    assert engine_policy.flops(17, 5) == S * per_token


@pytest.fixture
def no_eoa(engine_policy):
    """The model never ends its answer (the barely trained demo model answers in two tokens)."""
    import torch

    eoa = engine_policy.engine.tokenizer.special_ids["<|eoa|>"]
    hook = engine_policy.engine.model.lm_head.register_forward_hook(
        lambda m, i, out: out.index_fill(-1, torch.tensor([eoa]), -1e4))
    yield
    hook.remove()


def test_engine_policy_continues_prefixes_stops_at_the_delimiter_and_repeats_with_its_seed(engine_policy, no_eoa):
    problem = "reverse 93021"
    [full] = engine_policy.complete([(problem, "")], 0.0, [8], None, 0)
    assert full.finished and full.prompt_tokens == len(engine_policy.engine.encode_prompt(problem, "direct"))
    assert full.num_tokens == 8
    # a character from the middle of the answer as the delimiter: the step ends right after its
    # first occurrence (one character lies within one token)
    delimiter = full.text[len(full.text) // 2]
    assert delimiter.isascii()
    [step] = engine_policy.complete([(problem, "")], 0.0, [8], delimiter, 0)
    assert not step.finished and step.text == full.text[:full.text.index(delimiter) + len(delimiter)]
    # continuing the step gives the rest of the greedy generation
    [rest] = engine_policy.complete([(problem, step.text)], 0.0, [8 - step.num_tokens], None, 0)
    assert step.text + rest.text == full.text
    assert rest.prompt_tokens == full.prompt_tokens + step.num_tokens
    # a sampled beam search repeats exactly with its seed
    verifier = ProgrammaticVerifier(lambda problem, previous, s: len(s) % 3 / 2)
    cfg = SearchConfig(method="beam", n=4, width=2, max_new_tokens=8, max_steps=3, step_delimiter=delimiter, seed=1)
    runs = [search(engine_policy, verifier, [problem, "sort 321"], cfg, answer_of) for _ in range(2)]
    assert runs[0] == runs[1]
    assert all(o.compute.tokens > 0 and o.compute.verifier_calls >= 4 for o in runs[0])


# ---------------------------------------------------------------- the demo's command line


@pytest.mark.parametrize("flags, message", [
    (["--budgets", "1,x"], r"argument --budgets: 'x' is not a whole number; give a comma list of whole numbers"),
    (["--budgets", "4,0"], r"argument --budgets: 0 must be >= 1"),
    (["--aggregation", "mean"], r"argument --aggregation: invalid choice: 'mean'"),
    (["--batch-size", "0"], r"argument --batch-size: 0 must be >= 1"),
    (["--temperature", "-1"], r"argument --temperature: -1.0 must be >= 0"),
])
def test_demo_refuses_bad_flags_before_loading(capsys, tmp_path, flags, message):
    from evaluation.search import demo

    with pytest.raises(SystemExit) as exited:
        demo.main(["--run", "/nonexistent", "--heldout", "/nonexistent.jsonl", "--out", str(tmp_path), *flags])
    assert exited.value.code == 2 and re.search(message, capsys.readouterr().err.strip().splitlines()[-1])


def test_demo_names_a_bad_run_or_heldout_file_in_one_line(tmp_path):
    from evaluation.search import demo

    steps = tmp_path / "steps.jsonl"
    steps.write_text('{"instruction": "sum 2 3", "response": "2 + 3 = 5\\nanswer 5"}\n')
    cases = [(["--run", str(tmp_path / "nope"), "--heldout", str(steps)], f"error: {tmp_path / 'nope'}: no all_config.yaml"),
             (["--run", str(tmp_path), "--heldout", str(tmp_path / "missing.jsonl")], "--heldout .*missing.jsonl does not exist"),
             (["--run", str(tmp_path), "--heldout", str(steps.with_name("plain.jsonl"))],
              r"plain.jsonl:1: field 'response' does not end in an `answer N` line")]
    steps.with_name("plain.jsonl").write_text('{"instruction": "add 2 3", "response": "5"}\n')
    for argv, message in cases:
        with pytest.raises(SystemExit) as exited:
            demo.main(argv + ["--out", str(tmp_path / "out")])
        assert re.search(message, str(exited.value.code)), exited.value.code
    assert not (tmp_path / "out").exists()  # nothing written on failure


def test_demo_help_shows_every_default(capsys):
    from evaluation.search import demo

    with pytest.raises(SystemExit):
        demo.main(["--help"])
    shown = " ".join(capsys.readouterr().out.split())
    assert "samples per problem for its pass rate (default 16)" in shown and "sampling seed (default 0)" in shown


def test_demo_refuses_a_run_without_the_step_condition(demo_run, tmp_path):
    from evaluation.search import demo

    steps = tmp_path / "steps.jsonl"
    steps.write_text('{"instruction": "sum 2 3", "response": "2 + 3 = 5\\nanswer 5"}\n')
    with pytest.raises(SystemExit) as exited:  # the demo corpus of additions trains condition direct only
        demo.main(["--run", str(demo_run[1]), "--heldout", str(steps), "--out", str(tmp_path / "out")])
    assert "unknown condition ['cot']; this run's tokenizer knows ['direct']" in str(exited.value.code)
