"""Answer extraction and metrics of every benchmark on hand-written generations."""

from decimal import Decimal

import pytest

from evaluation import scoring
from evaluation.benchmarks import BENCHMARKS, Item


# ---------------------------------------------------------------- GSM8k


@pytest.mark.parametrize("generation, expected", [
    ("48 + 24 = 72. The answer is 72.", "72"),
    ("The bakery takes in $2,400 per day.", "2400"),
    ("So she pays \\boxed{\\$1,234.50} in total.", "1234.50"),
    ("First 3 + 4 = 7, then \\boxed{18} and some trailing 5", "18"),
    ("Tom has 7 - 3 = 4 left.\n#### 4", "4"),
    ("The answer is 1,000, not 999.", "1000"),
    ("He owes -5 dollars", "-5"),
    ("It costs $ 7 and then 10-3 = 7 is left", "7"),
    ("Total: 72.00", "72"),
    ("I cannot tell.", None),
])
def test_gsm8k_number_extraction(generation, expected):
    got = scoring.extract_number(generation)
    assert got == (None if expected is None else Decimal(expected))


def test_gsm8k_reference_and_score():
    gsm8k = BENCHMARKS["GSM8k"]
    row = {"question": "q", "answer": "It takes 1,200*2 = <<1200*2=2400>>2400.\n#### 2,400"}
    item = gsm8k.make_item(row, [])
    assert item.reference == Decimal(2400)
    assert gsm8k.score(gsm8k.extract("so \\boxed{2400.0}", item), item) == {"accuracy": 1.0}
    assert gsm8k.score(gsm8k.extract("so 2399", item), item) == {"accuracy": 0.0}
    assert gsm8k.score(gsm8k.extract("no idea", item), item) == {"accuracy": 0.0}
    # The few-shot answer drops calculator annotations and states the final answer in a box.
    assert gsm8k.shot_answer(row) == "It takes 1,200*2 = 2400.\nThe answer is \\boxed{2,400}."


def test_last_boxed():
    assert scoring.last_boxed("a \\boxed{1} b \\boxed{\\frac{1}{2}} c") == "\\frac{1}{2}"
    assert scoring.last_boxed("\\fbox{3}") == "3"
    assert scoring.last_boxed("$\\boxed 5$") == "5"
    assert scoring.last_boxed("\\boxed{cut off") is None
    assert scoring.last_boxed("nothing") is None


# ---------------------------------------------------------------- MATH


@pytest.mark.parametrize("solution, generation, correct", [
    ("$\\boxed{\\frac{1}{2}}$", "The probability is $0.5$.", True),
    ("$\\boxed{\\frac{1}{2}}$", "so the answer is \\boxed{\\dfrac12}", True),
    ("$\\boxed{x^2 + 2x + 1}$", "\\boxed{1 + 2x + x^2}", True),
    ("so $x = \\boxed{4}$.", "\\boxed{4}", True),
    ("the remainder is $\\boxed{2}$.", "\\boxed{3}", False),
])
def test_math_equivalence(solution, generation, correct):
    math = BENCHMARKS["MATH"]
    item = math.make_item({"problem": "p", "solution": solution, "level": "Level 1", "type": "Algebra"}, [])
    answer = math.extract(generation, item)
    assert answer is not None
    assert math.score(answer, item) == {"accuracy": float(correct)}


def test_math_invalid_answer():
    math = BENCHMARKS["MATH"]
    item = math.make_item({"problem": "p", "solution": "$\\boxed{2}$", "level": "", "type": ""}, [])
    assert math.extract("I do not know.", item) is None
    assert math.score(None, item) == {"accuracy": 0.0}


# ---------------------------------------------------------------- DROP


def test_drop_normalization():
    assert scoring.normalize_drop("The Smith-Jones  family.") == "smith jones family"
    assert scoring.normalize_drop("2") == scoring.normalize_drop("2.0") == "2.0"


def test_drop_metrics_hand_computed():
    # pred bag {calvin, johnson, caught, it}: vs "Calvin Johnson" P 2/4, R 2/2 -> F1 2/3 -> 0.67;
    # vs "Johnson" P 1/4, R 1 -> 0.4. Max over gold answers: 0.67. No exact match.
    assert scoring.drop_metrics("Calvin Johnson caught it", ["Calvin Johnson", "Johnson"]) == {"em": 0.0, "f1": 0.67}
    # Normalization makes articles, case and the final period irrelevant.
    assert scoring.drop_metrics("The Delhi.", ["Delhi", "Lucknow"]) == {"em": 1.0, "f1": 1.0}
    # "2 field goals" vs "2": {2.0, field, goals} vs {2.0}: P 1/3, R 1 -> 0.5.
    assert scoring.drop_metrics("2 field goals", ["2"]) == {"em": 0.0, "f1": 0.5}
    # A number answer needs its number: word overlap alone gives nothing.
    assert scoring.drop_metrics("3 yards", ["2 yards"]) == {"em": 0.0, "f1": 0.0}
    assert scoring.drop_metrics("two", ["2"]) == {"em": 0.0, "f1": 0.0}


def test_drop_extraction_and_reference():
    drop = BENCHMARKS["DROP"]
    row = {"section_id": "s", "query_id": "q", "passage": "p", "question": "q?",
           "answers_spans": {"spans": ["Johnson", "Johnson", "Calvin Johnson"], "types": ["span"] * 3}}
    item = drop.make_item(row, [])
    assert item.reference == ["Johnson", "Calvin Johnson"]
    assert drop.extract("The answer is: Calvin Johnson.\nHe caught it.", item) == "Calvin Johnson"
    assert drop.extract("   \n ", item) is None
    assert drop.score(None, item) == {"em": 0.0, "f1": 0.0}


# ---------------------------------------------------------------- multiple choice

FOUR = ["Paris", "London", "Rome", "Berlin"]


@pytest.mark.parametrize("generation, expected", [
    ("B", "B"),
    ("b", "B"),
    ("(B)", "B"),
    ("B.", "B"),
    ("B) London", "B"),
    ("Answer: b) London", "B"),
    ("c. Rome", "C"),
    ("e.g. Rome", None),  # "e." is no option letter, and the line is not option C's text
    ("C: Rome\nbecause it is the capital", "C"),
    ("**B**", "B"),
    ("The answer is B", "B"),
    ("Answer: (b)", "B"),
    ("I think the answer is d.", "D"),
    ("B London", "B"),
    ("The correct option is C.", "C"),
    ("london", "B"),  # the option's text
    ("E", None),  # no option E
    ("The answer is (E).", None),
    ("A dog would say Paris", None),  # starts with the article "A", names no option
    ("The answer is a city", None),
    ("", None),
])
def test_choice_extraction(generation, expected):
    assert scoring.extract_choice(generation, FOUR) == expected


def test_boolq_yes_no_text_and_letters():
    boolq = BENCHMARKS["BoolQ"]
    item = boolq.make_item({"question": "is it", "answer": False, "passage": "p"}, [])
    assert item.reference == "B" and item.options == ("yes", "no")
    assert boolq.score(boolq.extract("No.", item), item) == {"accuracy": 1.0}
    assert boolq.score(boolq.extract("Yes", item), item) == {"accuracy": 0.0}
    assert boolq.extract("Maybe", item) is None


def test_mcq_references_from_hub_schemas():
    arc = BENCHMARKS["ARC-C"].make_item(
        {"id": "x", "question": "q", "choices": {"text": ["a", "b", "c", "d"], "label": ["1", "2", "3", "4"]},
         "answerKey": "3"}, [])
    assert arc.reference == "C" and "\nC. c\n" in arc.prompt
    hella = BENCHMARKS["HellaSwag"].make_item(
        {"ind": 1, "activity_label": "Home", "ctx_a": "", "ctx_b": "", "ctx": "[header] How to x [title] Do y.",
         "endings": ["[step] e0", "e1", "e2", "e3"], "source_id": "", "split": "val", "split_type": "", "label": "2"},
        [])
    assert hella.reference == "C" and "Home: How to x. Do y." in hella.prompt and "A. e0" in hella.prompt
    wino = BENCHMARKS["Winogrande"].make_item({"sentence": "s _", "option1": "x", "option2": "y", "answer": "2"}, [])
    assert wino.reference == "B" and wino.options == ("x", "y")
    mmlu = BENCHMARKS["MMLU"].make_item({"question": "q", "subject": "astronomy", "choices": ["a", "b", "c", "d"],
                                         "answer": 3}, [])
    assert mmlu.reference == "D" and mmlu.group == "astronomy"


# ---------------------------------------------------------------- voting, pass@k, aggregation


def test_pass_at_k_hand_computed():
    assert scoring.pass_at_k(5, 2, 1) == pytest.approx(0.4)  # 1 - C(3,1)/C(5,1) = 1 - 3/5
    assert scoring.pass_at_k(5, 2, 2) == pytest.approx(0.7)  # 1 - C(3,2)/C(5,2) = 1 - 3/10
    assert scoring.pass_at_k(5, 2, 4) == 1.0  # only 3 wrong samples: any 4 hold a correct one
    assert scoring.pass_at_k(4, 0, 2) == 0.0
    assert scoring.pass_at_k(10, 3, 5) == pytest.approx(1 - 21 / 252)  # C(7,5)=21, C(10,5)=252
    with pytest.raises(ValueError):
        scoring.pass_at_k(4, 1, 5)
    assert scoring.pass_ks(8) == [1, 2, 4, 8]
    assert scoring.pass_ks(5) == [1, 2, 4, 5]
    assert scoring.pass_ks(1) == [1]


def test_majority_vote():
    eq = lambda a, b: a == b  # noqa: E731
    assert scoring.majority_vote([Decimal("8"), Decimal("8.0"), 7, None, 7, 7], eq) == 7
    assert scoring.majority_vote([3, 4, 4, 3], eq) == 3  # tie: the answer seen first
    assert scoring.majority_vote([None, None], eq) is None
    # MATH answers vote through math_verify: 1/2 and 0.5 are one answer.
    math = BENCHMARKS["MATH"]
    answers = [scoring.parse_math(t) for t in ("\\boxed{3}", "\\boxed{\\frac{1}{2}}", "\\boxed{0.5}")]
    voted = scoring.majority_vote(answers, lambda a, b: math.equivalent(a, b, None))
    assert voted is answers[1]


def test_evaluate_generations_maj_and_pass():
    gsm8k = BENCHMARKS["GSM8k"]
    items = [Item(prompt="p", reference=Decimal(72)), Item(prompt="p", reference=Decimal(5))]
    generations = [
        ["\\boxed{72}", "it is 72", "71", "no idea"],  # 2 of 4 correct, one invalid; vote 72
        ["\\boxed{6}", "6", "5", "5.0"],  # 2 of 4 correct; tie 6 vs 5, 6 seen first
    ]
    m = scoring.evaluate_generations(gsm8k, items, generations)
    assert m["accuracy"] == pytest.approx(0.5)
    assert m["maj@4_accuracy"] == pytest.approx(0.5)
    assert m["pass@1"] == pytest.approx(0.5)
    assert m["pass@2"] == pytest.approx(1 - 1 / 6)  # both items: 1 - C(2,2)/C(4,2)
    assert m["pass@4"] == 1.0
    assert (m["num_items"], m["num_samples"], m["num_invalid"]) == (2, 4, 1)
    assert m["invalid_rate"] == pytest.approx(1 / 8)


@pytest.mark.parametrize("name, row, generation, score", [
    # a model that runs on past its answer into an invented next few-shot block: that block's
    # answer is not this item's
    ("GSM8k", {"question": "q", "answer": "#### 7"}, "3 + 4 = 7. The answer is 7.\n\nQuestion: x\nThe answer is 9",
     {"accuracy": 1.0}),
    ("MATH", {"problem": "p", "solution": "so \\boxed{2}", "type": "Algebra", "level": "Level 1"},
     "1 + 1 = \\boxed{2}\n\nProblem: next\nSo \\boxed{5}", {"accuracy": 1.0}),
    ("DROP", {"passage": "p", "question": "q", "answers_spans": {"spans": ["Paris"], "types": ["span"]}},
     "Answer: Paris\n\nPassage: other\nQuestion: q2\nAnswer: Rome", {"em": 1.0, "f1": 1.0}),
    ("BoolQ", {"passage": "p", "question": "q", "answer": False},
     "Answer: B\n\nPassage: p2\nQuestion: q2?\nA. yes\nB. no\nAnswer: A", {"accuracy": 1.0}),
])
def test_an_invented_next_block_is_not_scored(name, row, generation, score):
    benchmark = BENCHMARKS[name]
    item = benchmark.make_item(row, [])
    assert scoring.evaluate_generations(benchmark, [item], [[generation]])[benchmark.correct_metric] == \
        score[benchmark.correct_metric]


def test_mmlu_macro_average_over_subjects():
    mmlu = BENCHMARKS["MMLU"]
    options = ("a", "b", "c", "d")
    items = [Item("p", "A", "astronomy", options)] + [Item("p", "A", "biology", options) for _ in range(3)]
    m = scoring.evaluate_generations(mmlu, items, [["A"], ["B"], ["B"], ["zzz"]])
    assert m["accuracy"] == pytest.approx(0.5)  # (1 + 0) / 2 subjects; the micro average would be 0.25
    assert m["num_groups"] == 2 and m["num_invalid"] == 1
