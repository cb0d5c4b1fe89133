"""The reference's protocol, byte for byte: the prompts evaluation.main sends to the engine for the
fixture rows (hub schemas), and the generation settings per benchmark.

Every expected prompt below is written out by hand from the reference's templates
(sapientinc/HRM-Text evaluation/benchmarks.py): MCQ blocks "<query>\\nA. <choice>\\n...Answer: X"
joined by blank lines with a bare "Answer:" cue last; shots are the first k rows of the reference's
few-shot split; the whole prompt is stripped before the engine wraps it in boq + conditions + eoq.
"""

import hashlib
from pathlib import Path

from evaluation import main as eval_main

FIXTURES = str(Path(__file__).parent / "fixtures" / "eval")


class RecordingEngine:
    """Test helper, not a model: records each call and answers every sample with `answer`."""

    def __init__(self, answer="A"):
        self.answer = answer
        self.calls = []

    def known_conditions(self):
        return ["direct", "cot", "synth"]

    def generate(self, prompts, condition, max_new_tokens, temperature, num_samples, batch_size, seed=0,
                 max_context=None):
        self.calls.append({"prompts": list(prompts), "condition": condition, "max_new_tokens": max_new_tokens,
                           "temperature": temperature, "num_samples": num_samples, "batch_size": batch_size,
                           "max_context": max_context})
        return [[self.answer] * num_samples for _ in prompts]


def run_all(tmp_path, *extra):
    engine = RecordingEngine()
    eval_main.main([f"ckpt_path={tmp_path}", f"data_dir={FIXTURES}", *extra], engine=engine)
    return engine


def prompts_by_call(engine):
    return {(c["condition"], c["max_context"], c["max_new_tokens"]): c["prompts"] for c in engine.calls}


def test_generation_settings_per_benchmark(tmp_path):
    engine = run_all(tmp_path)
    settings = [(c["condition"], c["max_context"], c["max_new_tokens"], c["temperature"], c["batch_size"],
                 len(c["prompts"])) for c in engine.calls]
    assert settings == [
        ("synth,cot", 3072, 3072, 0.0, 33, 4 + 4),  # GSM8k + MATH: until eoa or the context is full
        ("direct", 3072, 3072, 0.0, 33, 4),  # DROP
        ("direct", 4096, 1, 0.0, 1, 5 + 3 + 3 + 3 + 3),  # MMLU, ARC, HellaSwag, Winogrande, BoolQ: one token
    ]


def test_chain_of_thought_prompts_are_the_bare_problem(tmp_path):
    cot = prompts_by_call(run_all(tmp_path))[("synth,cot", 3072, 3072)]
    assert cot[0] == ("Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in "
                      "May. How many clips did Natalia sell altogether in April and May?")
    assert cot[4] == "What is $\\frac{1}{4} + \\frac{1}{4}$?"


def test_drop_prompt(tmp_path):
    drop = prompts_by_call(run_all(tmp_path))[("direct", 3072, 3072)]
    # The reference's three curated shots (its DROP.EXAMPLES, each followed by "\n\n"): 3762
    # characters, sha256 taken from the reference's file.
    prefix, target = drop[3][:3762], drop[3][3762:]
    assert hashlib.sha256(prefix.encode()).hexdigest() == \
        "b861d317ffe2a2a92b1966675067dbc50309cacca76c065df7279fe7bc322f21"
    assert prefix.startswith("To start the season, the Lions traveled south to Tampa") and \
        prefix.endswith("\nQ: How many years before Navarrase used the captivity of John II?\nA: 9\n\n")
    assert target == "The treaty was signed on 3 September 1783 in Paris, ending the war.\nQ: When was the treaty signed?\nA:"
    assert all(p.startswith(prefix) for p in drop)


def test_multiple_choice_prompts(tmp_path):
    mcq = prompts_by_call(run_all(tmp_path))[("direct", 4096, 1)]
    mmlu, arc, hellaswag, winogrande, boolq = mcq[:5], mcq[5:8], mcq[8:11], mcq[11:14], mcq[14:]

    # MMLU: the subject's dev rows in order (astronomy has 2 of the 5 asked for).
    assert mmlu[0] == (
        "How many moons does Mars have?\nA. 0\nB. 1\nC. 2\nD. 3\nAnswer: C\n\n"
        "What is the largest planet of the solar system?\nA. Earth\nB. Jupiter\nC. Neptune\nD. Mercury\nAnswer: B\n\n"
        "Which planet is known as the Red Planet?\nA. Venus\nB. Mars\nC. Jupiter\nD. Saturn\nAnswer:")
    # high_school_european_history: 3 shots (special_shots), not the 4 its dev split holds.
    assert mmlu[4] == (
        "European history dev question 1?\nA. h1a\nB. h1b\nC. h1c\nD. h1d\nAnswer: B\n\n"
        "European history dev question 2?\nA. h2a\nB. h2b\nC. h2c\nD. h2d\nAnswer: C\n\n"
        "European history dev question 3?\nA. h3a\nB. h3b\nC. h3c\nD. h3d\nAnswer: D\n\n"
        "Which treaty ended the Thirty Years' War?\nA. Peace of Westphalia\nB. Treaty of Utrecht\n"
        "C. Treaty of Versailles\nD. Congress of Vienna\nAnswer:")

    # ARC: shots from the validation split; numeric labels are re-lettered by position.
    arc_shots = (
        "George wants to warm his hands quickly by rubbing them. Which skin surface will produce the most heat?\n"
        "A. dry palms\nB. wet palms\nC. palms covered with oil\nD. palms covered with lotion\nAnswer: A\n\n"
        "Which of the following is a renewable resource?\nA. coal\nB. wind\nC. natural gas\nAnswer: B\n\n"
        "What is the main source of energy for Earth's water cycle?\nA. the Moon\nB. the Sun\nC. wind\n"
        "D. volcanoes\nE. tides\nAnswer: B\n\n")
    assert arc[1] == arc_shots + ("Which tool is best for measuring the mass of a rock?\nA. balance\n"
                                  "B. thermometer\nC. ruler\nD. graduated cylinder\nAnswer:")

    # HellaSwag: "<ctx_a> <ctx_b.capitalize()>" (the rest of ctx_b lower-cased: "The Lady" -> "The lady";
    # an empty ctx_b leaves a space before the newline), endings as given.
    hellaswag_shots = (
        "Then, the man writes over the snow covering the window of a car, and a woman wearing winter clothes "
        "smiles. Then\nQuestion: Which is the most logical continuation?\n"
        "A. , the man adds wax to the windshield and cuts it.\n"
        "B. , a person board a ski lift, while two men supporting the head of the person wearing winter clothes "
        "snow as the we girls sled.\n"
        "C. , the man puts on a christmas coat, knitted with netting.\n"
        "D. , the man continues removing the snow on his car.\nAnswer: D\n\n"
        "A woman mixes flour and sugar in a bowl. She\nQuestion: Which is the most logical continuation?\n"
        "A. drives the bowl to the store.\nB. adds eggs and stirs the dough.\nC. throws the bowl at the wall.\n"
        "D. paints the bowl blue.\nAnswer: B\n\n"
        "A boy sits on a chair holding a guitar. He\nQuestion: Which is the most logical continuation?\n"
        "A. strums the strings and sings.\nB. eats the guitar.\nC. throws the chair.\nD. dives into a pool.\n"
        "Answer: A\n\n")
    assert hellaswag[1] == hellaswag_shots + (
        "A lady walks to a barbell. She bends down and grabs the pole. The lady\n"
        "Question: Which is the most logical continuation?\nA. swings and lands in her arms.\n"
        "B. pulls the barbell forward.\nC. pulls a rope attached to the barbell.\n"
        "D. stands and lifts the weight over her head.\nAnswer:")
    assert hellaswag[2] == hellaswag_shots + (
        "[header] How to water a cactus [title] Check the soil. \n"
        "Question: Which is the most logical continuation?\n"
        "A. [step] Water only when the soil is completely dry.\nB. [step] Paint the cactus green.\n"
        "C. [step] Put the cactus in the freezer.\nD. [step] Water it every hour.\nAnswer:")

    # Winogrande: the sentence with its blank, the two options.
    assert winogrande[0] == (
        "John moved the couch from the garage to the backyard to create space. The _ is small.\n"
        "A. garage\nB. backyard\nAnswer: A\n\n"
        "The doctor diagnosed Justin with bipolar and Robert with anxiety. _ had terrible nerves recently.\n"
        "A. Justin\nB. Robert\nAnswer: B\n\n"
        "The ice melted faster than the stone because the _ was warmer inside.\nA. ice\nB. stone\nAnswer: A\n\n"
        "Sarah was a much better surgeon than Maria so _ always got the harder cases.\n"
        "A. Sarah\nB. Maria\nAnswer:")

    # BoolQ: "<passage>\nQuestion: <question.capitalize()>?" with Yes/No options.
    assert boolq[1] == (
        "At the Liberation of France in the summer of 1944, Metropolitan France kept GMT+2 as it was the time "
        "then used by the Allies. France is one hour ahead of the United Kingdom for most of the year.\n"
        "Question: Is france the same timezone as the uk?\nA. Yes\nB. No\nAnswer: B\n\n"
        "Botanically, a tomato is a fruit, a berry, consisting of the ovary together with its seeds.\n"
        "Question: Is a tomato a fruit?\nA. Yes\nB. No\nAnswer: A\n\n"
        "Spiders have no wings and cannot fly, although some young spiders drift on silk threads in the wind.\n"
        "Question: Can a spider fly?\nA. Yes\nB. No\nAnswer: B\n\n"
        "Penguins are a group of aquatic flightless birds. They live almost exclusively in the Southern "
        "Hemisphere.\nQuestion: Do penguins live at the north pole?\nA. Yes\nB. No\nAnswer:")


def test_mmlu_pro_and_aime_prompts(tmp_path):
    engine = run_all(tmp_path, "run_only=[MMLU-Pro,AIME]", "benchmarks.AIME.n=3")
    mmlu_pro, aime = engine.calls[0], engine.calls[1]
    # MMLU-Pro: the trailing newline after the last option is stripped with the prompt.
    assert mmlu_pro["prompts"][0] == "What is 7 * 8?\nOptions:\n(A) 54\n(B) 56\n(C) 58\n(D) 64"
    assert (mmlu_pro["condition"], mmlu_pro["max_new_tokens"], mmlu_pro["num_samples"]) == ("synth,cot", 3072, 1)
    assert aime["prompts"][1] == "Find the remainder when $2^{10}$ is divided by $1000$."
    assert aime["num_samples"] == 3


def test_maj_vote_config_is_the_references(tmp_path):
    config = Path(eval_main.__file__).parent / "config" / "hrm_maj_vote_benchmarking.yaml"
    engine = run_all(tmp_path, f"config={config}", "limit=1")
    (call,) = engine.calls
    assert {k: call[k] for k in ("condition", "max_context", "max_new_tokens", "temperature", "num_samples",
                                 "batch_size")} == {"condition": "synth,cot", "max_context": 4096,
                                                    "max_new_tokens": 4096, "temperature": 0.6,
                                                    "num_samples": 256, "batch_size": 25}
