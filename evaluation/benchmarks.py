"""The eight benchmarks: where their data lives, how a row becomes a prompt, how an answer is scored.

Data comes from the Hugging Face hub through `datasets.load_dataset(path, config, split=...)`, or,
with `data_dir=DIR`, from `DIR/<Benchmark>/<split>.jsonl` (or `.parquet`) in the hub dataset's own
column schema (for offline machines). Hub datasets used (eval split / few-shot split):

  GSM8k       openai/gsm8k, main                                  test / train
  MATH        EleutherAI/hendrycks_math, its 7 subject configs    test / train  (all 5000 test rows)
  DROP        ucinlp/drop                                         validation / train
  MMLU        cais/mmlu, all                                      test / dev (same subject)
  ARC-C       allenai/ai2_arc, ARC-Challenge                      test / train
  HellaSwag   Rowan/hellaswag                                     validation / train
  Winogrande  allenai/winogrande, winogrande_xl                   validation / train
  BoolQ       google/boolq                                        validation / train

Every benchmark is generative: the prompt is an instruction line, the few-shot examples written as
"<question>\\nAnswer: <answer>" blocks, then the question; the model's response is the answer.
Multiple-choice benchmarks list lettered options and expect a letter back.
"""

import json
import random
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from evaluation import scoring


@dataclass(frozen=True)
class HubSource:
    path: str
    configs: tuple[str | None, ...]  # rows of several configs are concatenated (MATH's subjects)
    eval_split: str
    fewshot_split: str


@dataclass
class Item:
    prompt: str
    reference: Any  # what the benchmark's `score` compares against
    group: str = ""  # macro-average group (MMLU subject)
    options: tuple[str, ...] = ()  # multiple choice only


def load_rows(name: str, source: HubSource, split: str, data_dir: str | None) -> list[dict]:
    if data_dir is None:
        import datasets

        rows = []
        for config in source.configs:
            rows += datasets.load_dataset(source.path, config, split=split).to_list()
        return rows
    base = Path(data_dir) / name / split
    jsonl, parquet = base.with_suffix(".jsonl"), base.with_suffix(".parquet")
    if jsonl.is_file():
        with open(jsonl) as f:
            return [json.loads(line) for line in f if line.strip()]
    if parquet.is_file():
        import pyarrow.parquet as pq

        return pq.read_table(parquet).to_pylist()
    raise FileNotFoundError(f"{name}: neither {jsonl} nor {parquet} exists")


class Benchmark:
    """One benchmark. Subclasses define the source, the row -> text mapping and the scoring."""

    name: str
    source: HubSource
    metric_names: tuple[str, ...] = ("accuracy",)
    correct_metric = "accuracy"  # the 0/1 metric that pass@k counts
    macro_average = False
    # The label that opens every question block ("Question:"...), where a benchmark has one: a
    # generation that runs on into an invented next block is cut there before its answer is read.
    block_label: str | None = None

    # ---- prompts
    def instruction(self, row: dict) -> str:
        raise NotImplementedError

    def question(self, row: dict) -> str:
        raise NotImplementedError

    def shot_answer(self, row: dict) -> str:
        raise NotImplementedError

    def reference(self, row: dict) -> Any:
        raise NotImplementedError

    def options(self, row: dict) -> list[str]:
        return []  # open-ended

    def group(self, row: dict) -> str:
        return ""  # only macro-averaged benchmarks group their items

    def select_shots(self, row: dict, pool: list[dict], k: int, rng: random.Random) -> list[dict]:
        return rng.sample(pool, min(k, len(pool)))

    def make_item(self, row: dict, shots: list[dict]) -> Item:
        blocks = [self.instruction(row)]
        blocks += [f"{self.question(shot)}\nAnswer: {self.shot_answer(shot)}" for shot in shots]
        blocks.append(self.question(row))
        return Item(prompt="\n\n".join(blocks), reference=self.reference(row), group=self.group(row),
                    options=tuple(self.options(row)))

    def make_items(self, rows: list[dict], pool: list[dict], num_fewshot: int, seed: int) -> list[Item]:
        # One generator for the whole benchmark: the shots depend only on the seed and the row order.
        rng = random.Random(seed)
        return [self.make_item(row, self.select_shots(row, pool, num_fewshot, rng) if num_fewshot else [])
                for row in rows]

    # ---- scoring
    def own_response(self, generation: str) -> str:
        """The generation up to any invented next few-shot block (its answer is not this item's)."""
        return generation.split(f"\n\n{self.block_label}")[0] if self.block_label else generation

    def extract(self, generation: str, item: Item) -> Any:
        raise NotImplementedError

    def score(self, answer: Any, item: Item) -> dict[str, float]:
        """Metrics of one extracted answer; None (invalid) scores zero."""
        if answer is None:
            return {name: 0.0 for name in self.metric_names}
        return self.score_valid(answer, item)

    def score_valid(self, answer: Any, item: Item) -> dict[str, float]:
        return {"accuracy": float(self.equivalent(answer, item.reference, item))}

    def equivalent(self, a: Any, b: Any, item: Item) -> bool:
        return a == b


# ================================================================ open-ended answers


class GSM8k(Benchmark):
    name = "GSM8k"
    source = HubSource("openai/gsm8k", ("main",), "test", "train")
    block_label = "Question:"

    def instruction(self, row):
        return "Solve the math word problem step by step. Give the final numeric answer as \\boxed{answer}."

    def question(self, row):
        return f"{self.block_label} {row['question']}"

    def shot_answer(self, row):
        reasoning, final = row["answer"].split("####")
        reasoning = re.sub(r"<<[^>]*>>", "", reasoning).strip()  # calculator annotations
        return f"{reasoning}\nThe answer is \\boxed{{{final.strip()}}}."

    def reference(self, row):
        return scoring.gsm8k_reference(row["answer"])

    def extract(self, generation, item):
        return scoring.extract_number(generation)


class MATH(Benchmark):
    name = "MATH"
    source = HubSource(
        "EleutherAI/hendrycks_math",
        ("algebra", "counting_and_probability", "geometry", "intermediate_algebra", "number_theory",
         "prealgebra", "precalculus"),
        "test", "train")
    block_label = "Problem:"

    def instruction(self, row):
        return "Solve the problem step by step. Put the final answer in \\boxed{}."

    def question(self, row):
        return f"{self.block_label} {row['problem']}"

    def shot_answer(self, row):
        return row["solution"]

    def reference(self, row):
        boxed = scoring.last_boxed(row["solution"])
        gold = scoring.parse_math(f"${boxed}$") if boxed is not None else None
        if gold is None:
            raise ValueError(f"MATH solution without a parseable \\boxed{{}} answer: {row['solution'][-200:]!r}")
        return gold

    def extract(self, generation, item):
        return scoring.parse_math(generation)

    def equivalent(self, a, b, item):
        return scoring.math_equivalent(b, a)


class DROP(Benchmark):
    """EM/F1 in the official style.

    The hub schema flattens all gold answers into `answers_spans.spans` (for validation, every
    validated answer's spans, numbers and dates), so each span is scored as one alternative gold
    answer and the best one counts; a multi-span gold answer cannot be reassembled from it.
    """

    name = "DROP"
    source = HubSource("ucinlp/drop", (None,), "validation", "train")
    metric_names = ("em", "f1")
    correct_metric = "em"
    block_label = "Passage:"

    def instruction(self, row):
        return "Answer the question about the passage with a number or a short span from the passage."

    def question(self, row):
        return f"{self.block_label} {row['passage']}\nQuestion: {row['question']}"

    def shot_answer(self, row):
        return row["answers_spans"]["spans"][0]

    def reference(self, row):
        return list(dict.fromkeys(row["answers_spans"]["spans"]))  # distinct, in order

    def extract(self, generation, item):
        return scoring.extract_short_answer(generation)

    def score_valid(self, answer, item):
        return scoring.drop_metrics(answer, item.reference)

    def equivalent(self, a, b, item):
        return scoring.normalize_drop(a) == scoring.normalize_drop(b)


# ================================================================ multiple choice


class MultipleChoice(Benchmark):
    """Generative multiple choice: the options are listed as "A. ...", the reference is a letter."""

    def stem(self, row: dict) -> str:
        raise NotImplementedError

    def answer_index(self, row: dict) -> int:
        raise NotImplementedError

    def instruction(self, row):
        return "Answer the multiple choice question with the letter of the correct option."

    def question(self, row):
        letters = scoring.option_letters(len(self.options(row)))
        listed = "\n".join(f"{letter}. {option}" for letter, option in zip(letters, self.options(row)))
        return f"{self.stem(row)}\n{listed}"

    def shot_answer(self, row):
        return self.reference(row)

    def reference(self, row):
        return scoring.option_letters(len(self.options(row)))[self.answer_index(row)]

    def extract(self, generation, item):
        return scoring.extract_choice(generation, item.options)


class MMLU(MultipleChoice):
    name = "MMLU"
    source = HubSource("cais/mmlu", ("all",), "test", "dev")
    macro_average = True

    def instruction(self, row):
        subject = row["subject"].replace("_", " ")
        return f"The following are multiple choice questions about {subject}. " \
               "Answer with the letter of the correct option."

    def select_shots(self, row, pool, k, rng):
        # The standard 5-shot MMLU prompt: the subject's own dev questions, in dev order.
        return [shot for shot in pool if shot["subject"] == row["subject"]][:k]

    def group(self, row):
        return row["subject"]

    def stem(self, row):
        return row["question"]

    def options(self, row):
        return row["choices"]

    def answer_index(self, row):
        return int(row["answer"])


class ARCChallenge(MultipleChoice):
    name = "ARC-C"
    source = HubSource("allenai/ai2_arc", ("ARC-Challenge",), "test", "train")

    def stem(self, row):
        return row["question"]

    def options(self, row):
        return row["choices"]["text"]

    def answer_index(self, row):
        # Some rows label options "1".."4" instead of "A".."D"; options are re-lettered by position.
        return row["choices"]["label"].index(row["answerKey"])


def _clean_hellaswag(text: str) -> str:
    # WikiHow rows carry markup such as " [title]" and "[header]"; drop it and collapse spaces.
    text = text.replace(" [title]", ". ")
    text = re.sub(r"\[.*?\]", "", text)
    return " ".join(text.split())


class HellaSwag(MultipleChoice):
    name = "HellaSwag"
    source = HubSource("Rowan/hellaswag", (None,), "validation", "train")

    def instruction(self, row):
        return "Choose the most plausible continuation of the text. Answer with the letter of the correct option."

    def stem(self, row):
        return _clean_hellaswag(f"{row['activity_label']}: {row['ctx']}")

    def options(self, row):
        return [_clean_hellaswag(ending) for ending in row["endings"]]

    def answer_index(self, row):
        return int(row["label"])


class Winogrande(MultipleChoice):
    name = "Winogrande"
    source = HubSource("allenai/winogrande", ("winogrande_xl",), "validation", "train")

    def instruction(self, row):
        return "Choose the option that correctly fills the blank (_). Answer with the letter of the correct option."

    def stem(self, row):
        return row["sentence"]

    def options(self, row):
        return [row["option1"], row["option2"]]

    def answer_index(self, row):
        return int(row["answer"]) - 1


class BoolQ(MultipleChoice):
    name = "BoolQ"
    source = HubSource("google/boolq", (None,), "validation", "train")
    block_label = "Passage:"

    def instruction(self, row):
        return "Answer the question about the passage. Answer with the letter of the correct option."

    def stem(self, row):
        return f"{self.block_label} {row['passage']}\nQuestion: {row['question']}?"

    def options(self, row):
        return ["yes", "no"]

    def answer_index(self, row):
        return 0 if row["answer"] else 1


BENCHMARKS: dict[str, Benchmark] = {
    b.name: b for b in (GSM8k(), MATH(), DROP(), MMLU(), ARCChallenge(), HellaSwag(), Winogrande(), BoolQ())
}


def get_benchmark(name: str) -> Benchmark:
    if name not in BENCHMARKS:
        raise ValueError(f"unknown benchmark {name!r}; valid: {', '.join(BENCHMARKS)}")
    return BENCHMARKS[name]


def load_items(benchmark: Benchmark, data_dir: str | None, num_fewshot: int, limit: int | None,
               seed: int) -> list[Item]:
    """The benchmark's evaluation items (the first `limit` rows if set), each with its few-shot prompt."""
    rows = load_rows(benchmark.name, benchmark.source, benchmark.source.eval_split, data_dir)
    if limit is not None:
        rows = rows[:limit]
    pool = load_rows(benchmark.name, benchmark.source, benchmark.source.fewshot_split, data_dir) if num_fewshot else []
    if num_fewshot and len(pool) < num_fewshot:
        print(f"[eval] {benchmark.name}: only {len(pool)} few-shot rows for {num_fewshot}-shot prompts")
    return benchmark.make_items(rows, pool, num_fewshot, seed)
