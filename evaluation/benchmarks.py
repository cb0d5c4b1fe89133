"""The benchmarks of the reference HRM-Text evaluation: data, prompts and metrics, row for row.

Each benchmark reads its rows (the Hugging Face hub, or `data_dir/<Benchmark>/<split>.jsonl` /
`.parquet` in the hub dataset's own columns), checks them against its schema, and builds the
reference's prompt for each one. `compute_metrics` turns the generations into the reference's
metrics. Hub data (evaluated split / few-shot rows):

  GSM8k               openai/gsm8k main                       test, 0-shot
  MATH                EleutherAI/hendrycks_math (7 subjects)  test, 0-shot
  DROP                EleutherAI/drop                         validation, 3 fixed curated shots
  MMLU                cais/mmlu all                           test, the subject's first 5 dev rows
                                                              (high_school_european_history: 3)
  ARC                 allenai/ai2_arc ARC-Challenge           test, validation[:25]
  HellaSwag           Rowan/hellaswag                         validation, train[:10]
  Winogrande          allenai/winogrande winogrande_debiased  validation, train[:5]
  BoolQ               google/boolq                            validation, train[:5]
  MMLUPro             TIGER-Lab/MMLU-Pro default              test, 0-shot
  AIMEMajorityVoting  math-ai/aime{year}                      test, n samples per problem
"""

import json
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from evaluation import scoring


class BenchmarkDataError(ValueError):
    """A benchmark file or row that does not fit the benchmark's schema."""


@dataclass
class Item:
    prompt: str
    gold: Any
    group: str = ""  # MMLU subject / MMLU-Pro category


@dataclass
class Source:
    path: str
    config: str | None
    split: str


# ---------------------------------------------------------------- rows


def load_rows(folder: str, source: Source, data_dir: str | None, first: int | None = None,
              configs: tuple[str | None, ...] | None = None) -> tuple[list[dict], str]:
    """(rows, where they came from): the split's rows (the first `first` of them if set)."""
    if data_dir is not None:
        base = Path(data_dir) / folder / source.split
        jsonl, parquet = base.with_suffix(".jsonl"), base.with_suffix(".parquet")
        if jsonl.is_file():
            rows = []
            with open(jsonl) as f:
                for number, line in enumerate(f, 1):
                    if not line.strip():
                        continue
                    try:
                        rows.append(json.loads(line))
                    except json.JSONDecodeError as e:
                        raise BenchmarkDataError(f"{jsonl}: row {number}: not valid JSON ({e.msg})") from None
            where = str(jsonl)
        elif parquet.is_file():
            import pyarrow.parquet as pq

            rows, where = pq.read_table(parquet).to_pylist(), str(parquet)
        else:
            raise BenchmarkDataError(f"{folder}: neither {jsonl} nor {parquet} exists; put the hub "
                                     f"dataset {source.path} ({source.split}) there, or drop data_dir")
    else:
        import datasets

        split = source.split if first is None else f"{source.split}[:{first}]"
        rows = []
        for config in configs or (source.config,):
            rows += datasets.load_dataset(source.path, config, split=split).to_list()
        where = f"{source.path} ({source.split})"
    if not rows:
        raise BenchmarkDataError(f"{where}: no rows; the {folder} benchmark needs its {source.split} split")
    return (rows if first is None else rows[:first]), where


def _field_error(row: Any, field: str, kind: str, check: Callable[[Any], bool]) -> str | None:
    if not isinstance(row, dict):
        return f"a row must be a JSON object, got {type(row).__name__}"
    if field not in row:
        return f"field {field!r} is missing"
    if not check(row[field]):
        return f"field {field!r} must be {kind}, got {row[field]!r}"
    return None


def _is_str(v):
    return isinstance(v, str)


def _is_str_list(v):
    return isinstance(v, list) and len(v) > 0 and all(isinstance(x, str) for x in v)


def _is_int(v):
    return isinstance(v, int) and not isinstance(v, bool)


# ---------------------------------------------------------------- benchmarks


class Benchmark:
    """One benchmark: `items` (prompt + gold per row) and `compute_metrics` over generations."""

    name: str
    folder: str  # data_dir sub-folder; the reference's benchmark name
    source: Source
    generation_overrides: dict = {}  # generation settings the benchmark itself imposes
    schema: dict[str, tuple[str, Callable[[Any], bool]]] = {}
    shot_schema: dict | None = None  # few-shot rows' schema when it differs from `schema`

    def __init__(self, data_dir: str | None = None, limit: int | None = None, **options):
        self.options = options
        self.items = self.build(data_dir, limit)

    # ---- data
    def rows(self, source: Source, data_dir, first=None, schema=None, **kw) -> list[dict]:
        rows, where = load_rows(self.folder, source, data_dir, first, **kw)
        checks = self.schema if schema is None else schema
        for number, row in enumerate(rows, 1):
            problem = next((e for f, (kind, check) in checks.items()
                            if (e := _field_error(row, f, kind, check))), None)
            problem = problem or self.row_error(row)
            if problem:
                raise BenchmarkDataError(f"{where}: row {number}: {problem} ({self.name} schema)")
        return rows

    def row_error(self, row: dict) -> str | None:
        """A cross-field schema problem of one row (an answer outside its options), or None."""
        return None

    def build(self, data_dir, limit) -> list[Item]:
        raise NotImplementedError

    # ---- metrics
    def compute_metrics(self, items: list[Item], generations: list[list[str]]) -> dict:
        raise NotImplementedError


# ================================================================ chain of thought


class GSM8k(Benchmark):
    name = folder = "GSM8k"
    source = Source("openai/gsm8k", "main", "test")
    schema = {"question": ("a string", _is_str),
              "answer": ("a string ending in '#### <integer>'", _is_str)}

    def row_error(self, row):
        try:
            scoring.gsm8k_gold(row["answer"])
        except ValueError:
            return f"field 'answer' must end in '#### <integer>', got {row['answer'][-40:]!r}"
        return None

    def build(self, data_dir, limit):
        rows = self.rows(self.source, data_dir)[:limit]
        return [Item(row["question"], scoring.gsm8k_gold(row["answer"])) for row in rows]

    def compute_metrics(self, items, generations):
        correct = invalid = 0
        for item, (text, *_) in zip(items, generations, strict=True):
            answer = scoring.gsm8k_answer(text)
            invalid += answer is None
            correct += answer is not None and answer == item.gold
        n = len(items)
        return {"n": n, "acc": correct / max(1, n), "invalid": invalid / max(1, n)}


MATH_SUBJECTS = ("algebra", "counting_and_probability", "geometry", "intermediate_algebra",
                 "number_theory", "prealgebra", "precalculus")


class MATH(Benchmark):
    name = folder = "MATH"
    source = Source("EleutherAI/hendrycks_math", None, "test")
    schema = {"problem": ("a string", _is_str), "solution": ("a string with a \\boxed{} answer", _is_str)}

    def row_error(self, row):
        return None if scoring.last_boxed(row["solution"]) is not None else \
            "field 'solution' has no \\boxed{} answer"

    def build(self, data_dir, limit):
        rows = self.rows(self.source, data_dir, configs=MATH_SUBJECTS)[:limit]
        return [Item(row["problem"], scoring.last_boxed(row["solution"])) for row in rows]

    def compute_metrics(self, items, generations):
        correct = invalid = 0
        for item, (text, *_) in zip(items, generations, strict=True):
            right, no_box = scoring.math_verdict(item.gold, text)
            correct += right
            invalid += no_box
        n = len(items)
        return {"n": n, "acc": correct / max(1, n), "invalid": invalid / max(1, n)}


# ================================================================ reading comprehension


DROP_SHOTS = (
    "To start the season, the Lions traveled south to Tampa, Florida to take on the Tampa Bay Buccaneers. "
    "The Lions scored first in the first quarter with a 23-yard field goal by Jason Hanson. The Buccaneers "
    "tied it up with a 38-yard field goal by Connor Barth, then took the lead when Aqib Talib intercepted a "
    "pass from Matthew Stafford and ran it in 28 yards. The Lions responded with a 28-yard field goal. In "
    "the second quarter, Detroit took the lead with a 36-yard touchdown catch by Calvin Johnson, and later "
    "added more points when Tony Scheffler caught an 11-yard TD pass. Tampa Bay responded with a 31-yard "
    "field goal just before halftime. The second half was relatively quiet, with each team only scoring "
    "one touchdown. First, Detroit's Calvin Johnson caught a 1-yard pass in the third quarter. The game's "
    "final points came when Mike Williams of Tampa Bay caught a 5-yard pass. The Lions won their regular "
    "season opener for the first time since 2007\nQ: How many points did the buccaneers need to tie in the "
    "first?\nA: 3",
    "Trying to snap a two-game skid, the Bills flew to Gillette Stadium for a Week 3 divisional fight with "
    "the New England Patriots. In the first quarter, QB J. P. Losman was immediately injured on the first "
    "offensive play of the game. He would finish the series, but ended up on the bench for the rest of the "
    "game. After New England took the lead with kicker Stephen Gostkowski's 24-yard field goal, rookie QB "
    "Trent Edwards played the rest of the game for Buffalo. The Bills would get their only score of the "
    "game as RB Marshawn Lynch got an 8-yard TD run, and a Rian Lindell extra point put the Bills ahead "
    "surprisingly 7-3. However, in the second quarter, the Patriots were able to open up their running game "
    "when Bills rookie standout Paul Posluszny was lost due to a broken arm. This left passing lanes open, "
    "and for the rest of the game, the Patriots dominated. QB Tom Brady's 8-yard TD pass to TE Benjamin "
    "Watson and a 3-yard TD pass to WR Randy Moss made it 17-7 at the half. In the third quarter, New "
    "England continued its conquest with Brady's 4-yard TD pass to WR Jabar Gaffney and RB Sammy Morris' "
    "4-yard TD run. In the fourth quarter, the Patriots ended the day with Brady and Moss hooking up with "
    "each other again on a 45-yard TD pass.\nQ: How many games had the Bills won before this game?\nA: 0",
    "The French king, John II, had been held captive in England. The Treaty of Br\u00e9tigny set his ransom at "
    "3 million crowns and allowed for hostages to be held in lieu of John. The hostages included two of his "
    "sons, several princes and nobles, four inhabitants of Paris, and two citizens from each of the "
    "nineteen principal towns of France. While these hostages were held, John returned to France to try "
    "and raise funds to pay the ransom. In 1362 John's son Louis of Anjou, a hostage in English-held "
    "Calais, escaped captivity. So, with his stand-in hostage gone, John felt honor-bound to return to "
    "captivity in England. The French crown had been at odds with Navarre since 1354, and in 1363 the "
    "Navarrese used the captivity of John II in London and the political weakness of the Dauphin to try to "
    "seize power. Although there was no formal treaty, Edward III supported the Navarrese moves, "
    "particularly as there was a prospect that he might gain control over the northern and western "
    "provinces as a consequence. With this in mind, Edward deliberately slowed the peace negotiations. In "
    "1364, John II died in London, while still in honourable captivity. Charles V succeeded him as king of "
    "France. On 7 May 1364, one month after the dauphin's accession and three days before his coronation "
    "as Charles V, the Navarrese suffered a crushing defeat at the Battle of Cocherel.\nQ: How many years "
    "before Navarrase used the captivity of John II?\nA: 9",
)


def _is_drop_answer(v):
    return isinstance(v, dict) and isinstance(v.get("number"), str) and isinstance(v.get("spans"), list) \
        and isinstance(v.get("date"), dict) and all(isinstance(v["date"].get(k), str) for k in ("day", "month", "year"))


def _is_drop_validated(v):
    return isinstance(v, dict) and all(isinstance(v.get(k), list) for k in ("number", "date", "spans")) \
        and len(v["number"]) == len(v["date"]) == len(v["spans"])


class DROP(Benchmark):
    """Passages from EleutherAI/drop; em/f1 by lm-eval's DROP functions, as the reference scores."""

    name = folder = "DROP"
    source = Source("EleutherAI/drop", None, "validation")
    schema = {"passage": ("a string", _is_str), "question": ("a string", _is_str),
              "answer": ("an object with string 'number', list 'spans' and 'date' {day, month, year}", _is_drop_answer),
              "validated_answers": ("an object of equally long 'number', 'date', 'spans' lists", _is_drop_validated)}

    def build(self, data_dir, limit):
        num_shots = self.options.get("num_shots", 3)
        if not 0 <= num_shots <= len(DROP_SHOTS):
            raise ValueError(f"DROP: num_shots must be 0..{len(DROP_SHOTS)}, got {num_shots}")
        prefix = "".join(f"{shot}\n\n" for shot in DROP_SHOTS[:num_shots])
        rows = self.rows(self.source, data_dir)[:limit]
        return [Item(f"{prefix}{row['passage']}\nQ: {row['question']}\nA:", scoring.drop_golds(row)) for row in rows]

    def compute_metrics(self, items, generations):
        em = f1 = 0.0
        for item, (text, *_) in zip(items, generations, strict=True):
            scores = scoring.drop_metrics(text, item.gold)
            em += scores["em"]
            f1 += scores["f1"]
        n = len(items)
        return {"n": n, "em": em / max(1, n), "f1": f1 / max(1, n)}


# ================================================================ multiple choice


@dataclass
class MCQ:
    query: str
    choices: list[str]
    gold_index: int


def mcq_block(doc: MCQ, with_answer: bool) -> str:
    """"<query>\\nA. <choice>\\n...Answer:" (a shot carries " <letter>" after the cue)."""
    lines = [doc.query.strip()]
    lines += [f"{letter}. {choice.strip()}" for letter, choice in zip(scoring.letters(len(doc.choices)), doc.choices)]
    cue = f"Answer: {scoring.letters(len(doc.choices))[doc.gold_index]}" if with_answer else "Answer:"
    return "\n".join(lines + [cue])


def mcq_prompt(doc: MCQ, shots: list[MCQ]) -> str:
    return "".join(mcq_block(shot, True) + "\n\n" for shot in shots) + mcq_block(doc, False)


class MultipleChoice(Benchmark):
    """Answered with one generated token: an option letter, or invalid (credited 1/num_options)."""

    generation_overrides = {"max_tokens": 1}
    shot_source: Source
    default_shots: int

    def doc(self, row: dict) -> MCQ:
        raise NotImplementedError

    def build(self, data_dir, limit):
        num_shots = self.options.get("num_shots", self.default_shots)
        shots = [self.doc(r) for r in self.rows(self.shot_source, data_dir, first=num_shots)] if num_shots else []
        rows = self.rows(self.source, data_dir)[:limit]
        return [self.item(self.doc(row), shots) for row in rows]

    def item(self, doc: MCQ, shots: list[MCQ], group: str = "") -> Item:
        gold = (scoring.letters(len(doc.choices))[doc.gold_index], len(doc.choices))
        return Item(mcq_prompt(doc, shots), gold, group)

    def verdicts(self, items, generations):
        for item, (text, *_) in zip(items, generations, strict=True):
            gold_letter, num_options = item.gold
            yield item, scoring.mcq_verdict(text, gold_letter, num_options)

    def compute_metrics(self, items, generations):
        correct = invalid = 0.0
        for _, (credit, bad) in self.verdicts(items, generations):
            correct += credit
            invalid += bad
        n = len(items)
        return {"n": n, "acc": correct / max(1, n), "invalid": invalid / max(1, n)}


def _answer_in_choices(row, choices_field="choices"):
    if not 0 <= row["answer"] < len(row[choices_field]):
        return f"field 'answer' must index field {choices_field!r} (0..{len(row[choices_field]) - 1}), got {row['answer']!r}"
    return None


class MMLU(MultipleChoice):
    """The subject's first 5 dev rows as shots (`special_shots` overrides per subject); accuracy
    macro-averaged over subjects."""

    name = folder = "MMLU"
    source = Source("cais/mmlu", "all", "test")
    shot_source = Source("cais/mmlu", "all", "dev")
    default_shots = 5
    schema = {"question": ("a string", _is_str), "subject": ("a string", _is_str),
              "choices": ("a non-empty list of strings", _is_str_list), "answer": ("an integer option index", _is_int)}
    row_error = staticmethod(_answer_in_choices)

    def build(self, data_dir, limit):
        num_shots = self.options.get("num_shots", self.default_shots)
        special = self.options.get("special_shots") or {}
        by_subject = defaultdict(list)
        for row in self.rows(self.shot_source, data_dir):
            by_subject[row["subject"]].append(self.doc(row))
        rows = self.rows(self.source, data_dir)[:limit]
        return [self.item(self.doc(row), by_subject[row["subject"]][:special.get(row["subject"], num_shots)],
                          row["subject"]) for row in rows]

    def doc(self, row):
        return MCQ(row["question"], row["choices"], row["answer"])

    def compute_metrics(self, items, generations):
        stats = defaultdict(lambda: {"n": 0, "correct": 0.0, "invalid": 0})
        for item, (credit, bad) in self.verdicts(items, generations):
            stats[item.group]["n"] += 1
            stats[item.group]["correct"] += credit
            stats[item.group]["invalid"] += bad
        return scoring.micro_macro(stats)


def _is_arc_choices(v):
    return isinstance(v, dict) and _is_str_list(v.get("text")) and _is_str_list(v.get("label")) \
        and len(v["text"]) == len(v["label"])


class ARC(MultipleChoice):
    name = folder = "ARC"
    source = Source("allenai/ai2_arc", "ARC-Challenge", "test")
    shot_source = Source("allenai/ai2_arc", "ARC-Challenge", "validation")
    default_shots = 25
    schema = {"question": ("a string", _is_str), "answerKey": ("a string", _is_str),
              "choices": ("an object with equally long 'text' and 'label' string lists", _is_arc_choices)}

    def row_error(self, row):
        labels = row["choices"]["label"]
        return None if row["answerKey"] in labels else \
            f"field 'answerKey' must be one of the choice labels {labels}, got {row['answerKey']!r}"

    def doc(self, row):
        return MCQ(row["question"], row["choices"]["text"], row["choices"]["label"].index(row["answerKey"]))


class HellaSwag(MultipleChoice):
    name = folder = "HellaSwag"
    source = Source("Rowan/hellaswag", None, "validation")
    shot_source = Source("Rowan/hellaswag", None, "train")
    default_shots = 10
    schema = {"ctx_a": ("a string", _is_str), "ctx_b": ("a string", _is_str),
              "endings": ("a non-empty list of strings", _is_str_list),
              "label": ("an ending index (integer or digit string)", lambda v: str(v).isdigit() and not isinstance(v, bool))}

    def row_error(self, row):
        return None if int(row["label"]) < len(row["endings"]) else \
            f"field 'label' must index field 'endings' (0..{len(row['endings']) - 1}), got {row['label']!r}"

    def doc(self, row):
        # str.capitalize() also lower-cases the rest of ctx_b, as the reference does.
        query = f"{row['ctx_a']} {row['ctx_b'].capitalize()}\nQuestion: Which is the most logical continuation?"
        return MCQ(query, row["endings"], int(row["label"]))


class Winogrande(MultipleChoice):
    name = folder = "Winogrande"
    source = Source("allenai/winogrande", "winogrande_debiased", "validation")
    shot_source = Source("allenai/winogrande", "winogrande_debiased", "train")
    default_shots = 5
    schema = {"sentence": ("a string", _is_str), "option1": ("a string", _is_str), "option2": ("a string", _is_str),
              "answer": ('"1" or "2"', lambda v: v in ("1", "2"))}

    def doc(self, row):
        return MCQ(row["sentence"], [row["option1"], row["option2"]], int(row["answer"]) - 1)


class BoolQ(MultipleChoice):
    name = folder = "BoolQ"
    source = Source("google/boolq", None, "validation")
    shot_source = Source("google/boolq", None, "train")
    default_shots = 5
    schema = {"passage": ("a string", _is_str), "question": ("a string", _is_str),
              "answer": ("a JSON boolean (true/false)", lambda v: isinstance(v, bool))}

    def doc(self, row):
        query = f"{row['passage']}\nQuestion: {row['question'].capitalize()}?"
        return MCQ(query, ["Yes", "No"], 1 - int(row["answer"]))


# ================================================================ MMLU-Pro and AIME


class MMLUPro(Benchmark):
    """Zero-shot, options listed as "(A) ..."; the answer is read from the generation's text."""

    name = folder = "MMLUPro"
    source = Source("TIGER-Lab/MMLU-Pro", "default", "test")
    schema = {"question": ("a string", _is_str), "options": ("a non-empty list of strings", _is_str_list),
              "answer": ("an option letter", _is_str), "category": ("a string", _is_str)}

    def row_error(self, row):
        valid = scoring.letters(len(row["options"]))
        return None if row["answer"] in valid else f"field 'answer' must be one of {valid}, got {row['answer']!r}"

    def build(self, data_dir, limit):
        items = []
        for row in self.rows(self.source, data_dir)[:limit]:
            listed = "".join(f"({letter}) {option}\n" for letter, option in zip(scoring.letters(len(row["options"])), row["options"]))
            items.append(Item(f"{row['question']}\nOptions:\n{listed}", (row["answer"], len(row["options"])), row["category"]))
        return items

    def compute_metrics(self, items, generations):
        stats = defaultdict(lambda: {"n": 0, "correct": 0.0, "invalid": 0})
        for item, (text, *_) in zip(items, generations, strict=True):
            gold, num_options = item.gold
            answer = scoring.mmlu_pro_letter(text, num_options)
            s = stats[item.group]
            s["n"] += 1
            if answer is None:
                s["invalid"] += 1
                s["correct"] += 1 / num_options
            else:
                s["correct"] += answer == gold
        return scoring.micro_macro(stats)


def _is_int_like(v):
    try:
        int(v)
        return not isinstance(v, bool)
    except (TypeError, ValueError):
        return False


class AIMEMajorityVoting(Benchmark):
    """n samples per problem; maj_pass@k (gold among the k most voted valid answers), unbiased
    pass@k, and per problem the valid-vote count and the top answer's vote count."""

    name = folder = "AIMEMajorityVoting"
    schema = {"problem": ("a string", _is_str)}

    @property
    def source(self):
        return Source(f"math-ai/aime{self.options.get('year', '25')}", None, "test")

    @property
    def generation_overrides(self):
        return {"num_samples": self.options.get("n", 256)}

    def row_error(self, row):
        gold = row.get("answer")
        if gold is None and isinstance(row.get("solution"), str):
            gold = scoring.last_boxed(row["solution"])
        return None if _is_int_like(gold) else \
            f"field 'answer' must be an integer (or 'solution' must box one), got {row.get('answer')!r}"

    def build(self, data_dir, limit):
        items = []
        for row in self.rows(self.source, data_dir)[:limit]:
            gold = row.get("answer")
            if gold is None:
                gold = scoring.last_boxed(row["solution"])
            items.append(Item(row["problem"], int(gold)))
        return items

    def compute_metrics(self, items, generations):
        pass_k = self.options.get("pass_k", [1, 10, 100])
        out, maj, unbiased = {}, {k: 0 for k in pass_k}, {k: 0.0 for k in pass_k}
        for i, (item, samples) in enumerate(zip(items, generations, strict=True)):
            votes = [v for v in map(scoring.aime_vote, samples) if v is not None]
            correct = sum(scoring.aime_correct(item.gold, text) for text in samples)
            out[f"{i}_valid"] = len(votes)
            out[f"{i}_cons_count"] = max(votes.count(v) for v in votes) if votes else 0
            for k in pass_k:
                maj[k] += scoring.majority_pass_at_k(votes, item.gold, k)
                if len(samples) >= k:  # the reference leaves pass@k at 0 when n < k
                    unbiased[k] += scoring.pass_at_k(len(samples), correct, k)
        n = len(items)
        out |= {f"maj_pass@{k}": v / max(1, n) for k, v in maj.items()}
        out |= {f"pass@{k}": v / max(1, n) for k, v in unbiased.items()}
        return out


# ---------------------------------------------------------------- registry

BENCHMARKS: dict[str, type[Benchmark]] = {
    cls.name: cls for cls in (GSM8k, MATH, DROP, MMLU, ARC, HellaSwag, Winogrande, BoolQ, MMLUPro, AIMEMajorityVoting)
}
ALIASES = {"ARC-C": "ARC", "MMLU-Pro": "MMLUPro", "AIME": "AIMEMajorityVoting"}


def canonical_name(name: str) -> str:
    name = ALIASES.get(name, name)
    if name not in BENCHMARKS:
        raise ValueError(f"unknown benchmark {name!r}; valid: {', '.join(BENCHMARKS)} "
                         f"(aliases: {', '.join(f'{a}={b}' for a, b in ALIASES.items())})")
    return name
