"""Scoring with the reference's verdicts, benchmark by benchmark, on hand-written generations.

Each expected value is worked out by hand from the reference's rules (sapientinc/HRM-Text
evaluation/benchmarks.py): MCQ answers are one stripped, upper-cased token, anything else is
invalid and earns 1/num_options; GSM8k reads the last non-empty \\boxed{} (else the whole
generation) as int(float); MATH compares boxed contents with math-verify; DROP is lm-eval's
em/f1 with the whole generation as one span; AIME votes on boxed integers 1..999.
"""

import pytest

from evaluation import scoring
from evaluation.benchmarks import (AIMEMajorityVoting, BoolQ, DROP, GSM8k, MATH, MMLU, MMLUPro, Item,
                                   Winogrande)


def metrics(cls, items, texts, **options):
    benchmark = cls.__new__(cls)  # scoring needs no data
    benchmark.options = options
    return benchmark.compute_metrics(items, [t if isinstance(t, list) else [t] for t in texts])


def test_last_boxed_follows_the_reference():
    assert scoring.last_boxed("a \\boxed{1} then \\boxed{\\frac{1}{2}} end") == "\\frac{1}{2}"
    assert scoring.last_boxed("\\fbox{ 7 }") == "7"
    assert scoring.last_boxed("\\fbox{7} \\boxed{8}") == "8"  # \boxed wins wherever it is
    assert scoring.last_boxed("\\boxed 5 and later {x}") == "x"  # the first brace after the command
    assert scoring.last_boxed("\\boxed{12") is None  # cut off inside the box
    assert scoring.last_boxed("no box") is None


def test_gsm8k_verdicts():
    assert scoring.gsm8k_gold("She pays 1,200 + 34 = <<1200+34=1234>>1,234.\n#### 1,234") == 1234
    texts = [
        "48 + 24 = 72, so \\boxed{72}",  # right
        "so \\boxed{72.9}",  # int(float("72.9")) = 72: right
        "The answer is 72.",  # no box: the whole text is not a number -> invalid
        " 72 ",  # no box, the whole text is a number: right
        "\\boxed{} The answer is 72",  # an empty box falls back to the whole text -> invalid
        "\\boxed{$71}",  # valid, wrong
    ]
    got = metrics(GSM8k, [Item("", 72)] * len(texts), texts)
    assert got == {"n": 6, "acc": pytest.approx(3 / 6), "invalid": pytest.approx(2 / 6)}


def test_math_verdicts():
    cases = [
        ("\\frac{1}{2}", "so \\boxed{0.5}", True, False),
        ("\\frac{1}{2}", "\\boxed{\\dfrac12}", False, False),  # math-verify does not read \dfrac12
        ("4", "so x = 4", True, True),  # no box: the whole text parsed, right, yet counted invalid
        ("x^2 + 2x + 1", "\\boxed{x^2 + 2x + 1}", True, False),
        ("x^2 + 2x + 1", "\\boxed{1 + 2x + x^2}", False, False),  # a bare gold parses as its last number
        ("2", "\\boxed{3}", False, False),
    ]
    for gold, text, correct, invalid in cases:
        assert scoring.math_verdict(gold, text) == (correct, invalid), (gold, text)
    got = metrics(MATH, [Item("", gold) for gold, *_ in cases], [text for _, text, *_ in cases])
    assert got == {"n": 6, "acc": pytest.approx(3 / 6), "invalid": pytest.approx(1 / 6)}


def test_drop_verdicts():
    drop = DROP("tests/fixtures/eval")
    golds = [item.gold for item in drop.items]
    assert golds == [[("2",), ("two",)], [("Calvin Johnson",), ("Johnson",)], [("Delhi", "Lucknow")],
                     [("3 September 1783",)]]
    expect = [  # (generation, em, f1)
        (" 2\n", 1, 1.0),
        ("Calvin Johnson caught it", 0, 0.67),  # bag {calvin johnson caught it} vs {calvin johnson}
        ("Delhi", 0, 0.5),  # one of two gold spans: aligned F1 (1 + 0) / 2
        ("3 September 1783", 1, 1.0),
    ]
    for item, (text, em, f1) in zip(drop.items, expect):
        assert scoring.drop_metrics(text, item.gold) == {"em": em, "f1": pytest.approx(f1)}, text
    # Both spans in one string are still one predicted span against two gold spans.
    assert scoring.drop_metrics("Delhi and Lucknow", golds[2]) == {"em": 0, "f1": pytest.approx(0.25)}
    got = metrics(DROP, drop.items, [text for text, *_ in expect])
    assert got == {"n": 4, "em": pytest.approx(2 / 4), "f1": pytest.approx((1 + 0.67 + 0.5 + 1) / 4)}


def test_multiple_choice_verdicts():
    # gold B of 4 options: " B" and "b" are right, "A" wrong, "E", "B." and "" (an over-long
    # prompt's empty answer) invalid with 1/4 credit each.
    assert [scoring.mcq_verdict(t, "B", 4) for t in (" B", "b", "A", "E", "B.", "")] == \
        [(1.0, False), (1.0, False), (0.0, False), (0.25, True), (0.25, True), (0.25, True)]
    items = [Item("", ("A", 2))] * 3
    assert metrics(Winogrande, items, ["A", "Yes", "B"]) == {"n": 3, "acc": pytest.approx(1.5 / 3),
                                                            "invalid": pytest.approx(1 / 3)}
    assert metrics(BoolQ, items, ["A", "a", "B"])["acc"] == pytest.approx(2 / 3)


def test_mmlu_macro_average_over_subjects():
    items = [Item("", ("B", 4), "astronomy")] * 2 + [Item("", ("C", 4), "law")] * 3
    got = metrics(MMLU, items, ["B", "x", "C", "C", "A"])
    # astronomy (1 + 0.25) / 2 = 0.625; law 2 / 3; acc is the mean of the two subjects.
    assert got["acc_astronomy"] == pytest.approx(0.625) and got["acc_law"] == pytest.approx(2 / 3)
    assert got["acc"] == pytest.approx((0.625 + 2 / 3) / 2)
    assert got["invalid"] == pytest.approx((0.5 + 0) / 2)
    assert got["n"] == 2 and got["n_astronomy"] == 2 and got["n_law"] == 3


def test_mmlu_pro_verdicts():
    assert scoring.mmlu_pro_letter("The answer is (B).", 4) == "B"
    assert scoring.mmlu_pro_letter("I think C, so \\boxed{D}", 4) == "D"
    assert scoring.mmlu_pro_letter("maybe C but (A) in the end", 4) == "A"  # a bracketed letter wins
    assert scoring.mmlu_pro_letter("It is B, I think", 10) == "I"  # the last lone letter, "I" is option I
    assert scoring.mmlu_pro_letter("It is B, I think", 4) == "B"
    assert scoring.mmlu_pro_letter("\\boxed{} none", 4) is None  # empty box: the text, no letter
    items = [Item("", ("B", 4), "math"), Item("", ("D", 10), "math"), Item("", ("A", 4), "law")]
    got = metrics(MMLUPro, items, ["(B)", "no idea", "\\boxed{C}"])
    assert got["acc_math"] == pytest.approx((1 + 0.1) / 2) and got["acc_law"] == 0
    assert got["acc"] == pytest.approx((1.1 / 2 + 0) / 2) and got["invalid_math"] == 0.5


def test_aime_majority_voting_and_pass_at_k():
    items = [Item("", 70), Item("", 24), Item("", 9)]
    samples = [
        ["\\boxed{70}", "\\boxed{70}", "\\boxed{12}", "\\boxed{12}", "\\boxed{12}"],
        ["24", "\\boxed{024}", "\\boxed{1000}", "no answer", "\\boxed{24.0}"],  # 1000 and 24.0 cast no vote
        ["\\boxed{5}", "\\boxed{9}", "\\boxed{9}", "\\boxed{5}", ""],  # 5 and 9 tie: 5 came first
    ]
    got = metrics(AIMEMajorityVoting, items, samples, pass_k=[1, 2, 10])
    # Per problem: valid votes and the top answer's count.
    assert [got[f"{i}_valid"] for i in range(3)] == [5, 2, 4]
    assert [got[f"{i}_cons_count"] for i in range(3)] == [3, 2, 2]
    # maj_pass@1: [12] misses 70, [24] has 24, [5] misses 9; maj_pass@2 finds all three.
    assert got["maj_pass@1"] == pytest.approx(1 / 3)
    assert got["maj_pass@2"] == 1 and got["maj_pass@10"] == 1
    # c = 2 correct of n = 5 in each: pass@1 = 1 - 3/5, pass@2 = 1 - C(3,2)/C(5,2) = 1 - 3/10;
    # pass@10 with n = 5 < 10 stays 0, as the reference leaves it.
    assert got["pass@1"] == pytest.approx(0.4) and got["pass@2"] == pytest.approx(0.7)
    assert got["pass@10"] == 0
    assert scoring.pass_at_k(256, 1, 100) == pytest.approx(100 / 256)
